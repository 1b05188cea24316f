"""Checks of lesson gpt (being written)."""
