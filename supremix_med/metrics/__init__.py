"""Regression metrics (MAE, MSE, GM, Pearson, Spearman), shot-wise metrics, brain-age-gap bias correction."""
