"""Let mmengine 0.10.7 load its own checkpoints under torch >= 2.6 (``weights_only=True``).

mmengine calls ``torch.load`` without ``weights_only``, and torch >= 2.6 then refuses what its
checkpoints hold besides tensors (``HistoryBuffer`` objects with numpy values and bound methods,
``collections.Counter`` milestones), so ``--resume`` and testing from a checkpoint fail. While
mmengine's ``CheckpointLoader.load_checkpoint`` runs, and only then, exactly those globals are
allowed (``torch.serialization.safe_globals``); ``weights_only`` stays True. ``getattr`` is
replaced by a stand-in that returns public ``HistoryBuffer`` methods only. docs/training.md
gives the reasons and the alternatives rejected.

Nothing is patched on import: ``import pwlu_mmdet.engine`` calls
:func:`patch_mmengine_checkpoint_loading`; :func:`mmengine_checkpoint_globals` allows the
globals around any other loading code.
"""
import collections
import contextlib
import functools
import pickle
from typing import Any, Iterator, List

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

__all__ = ['mmengine_safe_globals', 'mmengine_checkpoint_globals',
           'patch_mmengine_checkpoint_loading']


def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """``getattr`` restricted to public methods of ``HistoryBuffer``: its statistics methods
    pickle as ``getattr(HistoryBuffer, 'min')``."""
    is_buffer = isinstance(obj, HistoryBuffer) or (isinstance(obj, type)
                                                   and issubclass(obj, HistoryBuffer))
    if is_buffer and isinstance(name, str) and not name.startswith('_'):
        attr = getattr(obj, name)
        if callable(attr):
            return attr
    raise pickle.UnpicklingError(
        f'pwlu_mmdet: refusing getattr({type(obj).__name__}, {name!r}) while loading an '
        'mmengine checkpoint; only public HistoryBuffer methods are allowed')


def mmengine_safe_globals() -> List[Any]:
    """The globals (with the names they are pickled under) an mmengine checkpoint needs."""
    # numpy moved numpy.core to numpy._core in 2.0; checkpoints written with either name exist.
    core = np._core if hasattr(np, '_core') else np.core
    multiarray = core.multiarray
    reconstruct, scalar = multiarray._reconstruct, multiarray.scalar
    entries: List[Any] = [
        HistoryBuffer, collections.Counter, np.ndarray, np.dtype,
        (reconstruct, 'numpy.core.multiarray._reconstruct'),
        (reconstruct, 'numpy._core.multiarray._reconstruct'),
        (scalar, 'numpy.core.multiarray.scalar'),
        (scalar, 'numpy._core.multiarray.scalar'),
        (_history_buffer_getattr, 'builtins.getattr'),
    ]
    # numpy >= 1.25 pickles dtypes as instances of per-type classes (numpy.dtypes.Float64DType).
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        entries += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith('DType')]
    return entries


_HINT = ('\npwlu_mmdet allowed the globals mmengine checkpoints normally need (see '
         'pwlu_mmdet/utils/checkpoint.py); this checkpoint needs more. If you trust its source, '
         'add them with torch.serialization.add_safe_globals([...]) before loading.')


@contextlib.contextmanager
def mmengine_checkpoint_globals() -> Iterator[None]:
    """Within the block, ``torch.load`` (``weights_only=True``) also accepts
    :func:`mmengine_safe_globals`; a refused global raises with a hint on what to do."""
    with torch.serialization.safe_globals(mmengine_safe_globals()):
        try:
            yield
        except pickle.UnpicklingError as e:
            raise pickle.UnpicklingError(f'{e}{_HINT}') from e


def patch_mmengine_checkpoint_loading() -> None:
    """Run mmengine's ``CheckpointLoader.load_checkpoint`` in
    :func:`mmengine_checkpoint_globals` (idempotent)."""
    current = CheckpointLoader.__dict__['load_checkpoint'].__func__
    if getattr(current, '_pwlu_mmdet_patched', False):
        return

    @functools.wraps(current)
    def load_checkpoint(cls, filename, map_location=None, logger='current'):
        with mmengine_checkpoint_globals():
            return current(cls, filename, map_location, logger)

    load_checkpoint._pwlu_mmdet_patched = True
    CheckpointLoader.load_checkpoint = classmethod(load_checkpoint)
