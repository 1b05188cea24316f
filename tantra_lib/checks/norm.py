"""Checks of lesson norm (being written)."""
