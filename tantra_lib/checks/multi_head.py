"""Checks of lesson multi_head (being written)."""
