"""andon.service."""
