"""andon.training."""
