"""pwlu-mmdet: the Piecewise Linear Unit (PWLU) for MMDetection."""
import importlib.util

from .version import __version__
from .ops import compiled_available, pwlu, pwlu_reference
from .layers import PWLU, alignment_iou
from .layers.pwlu import statistics_step

# The MMEngine integration (PWLUHook, PWLUOptimWrapperConstructor, the checkpoint-loading fix)
# registers itself on import; the layer and the op above need nothing but torch.
if importlib.util.find_spec('mmengine') is not None:
    from . import engine  # noqa: F401

__all__ = ['__version__', 'pwlu', 'pwlu_reference', 'compiled_available', 'PWLU',
           'alignment_iou', 'statistics_step']
