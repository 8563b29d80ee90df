"""Exact Lambda event shapes, one module per event source."""
