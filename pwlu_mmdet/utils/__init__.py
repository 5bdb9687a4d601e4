"""Utilities. ``pwlu_mmdet.utils.dist`` needs only torch; ``pwlu_mmdet.utils.testing`` (tiny
model and dataset) needs mmengine."""
