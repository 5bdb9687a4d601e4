"""What several test modules share. Imported as ``helpers``: pytest puts ``tests/`` on
``sys.path`` for its ``conftest.py``, as torchvision's tests import ``common_utils``."""
import importlib.util
import os.path as osp
from typing import Optional, Sequence

import pytest
import torch

from pwlu_mmdet import PWLU

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
# Every device a test runs on; CUDA cases carry the needs_cuda marker (skipped without a GPU).
DEVICES = ['cpu', pytest.param('cuda', marks=pytest.mark.needs_cuda)]
# The quick start's small PWLU Mask R-CNN.
SYNTHETIC_PWLU_CONFIG = osp.join(ROOT, 'configs', 'synthetic',
                                 'mask-rcnn_r18-tiny_fpn_gn-all-pwlu_synthetic.py')


def load_script(path: str):
    """Import a script of the repository (``tools/...``, ``benchmarks/...``) as a module.

    Args:
        path (str): Its path from the repository root, e.g. ``'tools/train.py'``.
    """
    name = osp.splitext(osp.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, osp.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def known_layer(left: Sequence[float], right: Sequence[float],
                num_channels: Optional[int] = None, mode: str = 'channel') -> PWLU:
    """A phase-II PWLU (ReLU points, 4 intervals) with the given per-set range ``[B_L, B_R]``."""
    layer = PWLU(num_channels, num_intervals=4, mode=mode)
    with torch.no_grad():
        layer.num_batches_tracked.fill_(1)  # statistics "seen": no realign() warning
        layer.realign()
    layer.set_relu_range(torch.tensor(left, dtype=torch.float32),
                         torch.tensor(right, dtype=torch.float32))
    return layer


def channel_input(values: Sequence[Sequence[float]]) -> torch.Tensor:
    """``(N=1, C, W)`` input whose channel ``c`` holds ``values[c]``."""
    return torch.tensor(values, dtype=torch.float32).unsqueeze(0)


def normal_input(seed: int, shape: Sequence[int] = (4, 3, 6, 6), mean: float = 0.0,
                 std: float = 1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normally distributed input with the given mean and standard deviation, from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * std + mean).to(dtype)
