"""Scoring predicted masks and boxes against the truth."""
