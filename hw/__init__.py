"""Amaranth hardware generators for IntegerModel layers (never imports torch)."""
