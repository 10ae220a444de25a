"""Training: recipe, cached data pipeline, train/evaluate loops, fit orchestration, report (torch)."""
