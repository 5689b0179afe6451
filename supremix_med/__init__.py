"""supremix-med: deep regression on medical images with supervised contrastive pre-training (SupReMix)."""

__version__ = "0.1.0"
