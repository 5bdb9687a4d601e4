"""Data sets that need no MMDetection: the synthetic COCO-format shapes data set."""
from .synthetic_coco import SYNTHETIC_CLASSES, generate_synthetic_coco, render_image

__all__ = ['SYNTHETIC_CLASSES', 'generate_synthetic_coco', 'render_image']
