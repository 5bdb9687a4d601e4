"""pwlu-mmdet: the Piecewise Linear Unit (PWLU) for MMDetection."""
from .version import __version__
from .ops import compiled_available, pwlu, pwlu_reference
from .layers import PWLU, alignment_iou

__all__ = ['__version__', 'pwlu', 'pwlu_reference', 'compiled_available', 'PWLU',
           'alignment_iou']
