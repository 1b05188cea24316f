"""Checks of lesson pretrained (being written)."""
