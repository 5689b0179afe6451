"""Prediction on new scans, written to CSV with QC columns."""
