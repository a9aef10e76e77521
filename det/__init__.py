"""det package."""
