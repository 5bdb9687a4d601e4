"""Utilities. ``pwlu_mmdet.utils.testing`` (tiny model and dataset) needs mmengine."""
