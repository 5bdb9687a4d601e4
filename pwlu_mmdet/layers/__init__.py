"""PWLU layers (need only torch; registered in mmengine's root MODELS when it is installed)."""
from .pwlu import PWLU, alignment_iou

__all__ = ['PWLU', 'alignment_iou']
