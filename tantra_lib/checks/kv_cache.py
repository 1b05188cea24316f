"""Checks of lesson kv_cache (being written)."""
