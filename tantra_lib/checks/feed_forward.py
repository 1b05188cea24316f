"""Checks of lesson feed_forward (being written)."""
