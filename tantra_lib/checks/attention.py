"""Checks of lesson attention (being written)."""
