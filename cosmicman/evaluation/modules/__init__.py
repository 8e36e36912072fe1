"""Hugging Face ``evaluate`` modules of the metrics, one folder each, loaded by path (metric_modules.py)."""
