"""Held-out measures of a version and of the baselines, and the evaluate commands."""
