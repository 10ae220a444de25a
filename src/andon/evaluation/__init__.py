"""Metrics, calibration and plots shared by training reports and ``andon evaluate`` (torch-free)."""
