"""Checks of lesson positional (being written)."""
