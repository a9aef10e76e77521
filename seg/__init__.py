"""seg package."""
