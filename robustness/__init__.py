"""robustness package."""
