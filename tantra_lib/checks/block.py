"""Checks of lesson block (being written)."""
