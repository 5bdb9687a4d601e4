"""pwlu-mmdet: the Piecewise Linear Unit (PWLU) for MMDetection.

Importing this package, :mod:`pwlu_mmdet.ops` or :mod:`pwlu_mmdet.layers` needs only torch and
never imports mmengine. The OpenMMLab integration is imported explicitly, usually through a
config's ``custom_imports``:

* ``pwlu_mmdet.engine`` (mmengine): registers the activation layers, ``PWLUHook`` and
  ``PWLUOptimWrapperConstructor``, and makes mmengine's checkpoint loader accept its own
  checkpoints under torch >= 2.6 (:mod:`pwlu_mmdet.utils.checkpoint`);
* ``pwlu_mmdet.models`` (mmdet): the ``Act*`` components; imports ``pwlu_mmdet.engine``.
"""
from .layers import PWLU, alignment_iou, statistics_step
from .ops import compiled_available, pwlu, pwlu_reference
from .version import __version__

__all__ = ['__version__', 'pwlu', 'pwlu_reference', 'compiled_available', 'PWLU',
           'alignment_iou', 'statistics_step']
