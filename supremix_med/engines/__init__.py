"""Ignite/MONAI pieces wired by bundle configs: batch preparation, pre-training, fine-tuning, evaluation."""
