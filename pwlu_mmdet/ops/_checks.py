"""Argument checks shared by the reference, the fake kernel and the Python entry point.

The C++ op checks the same conditions with the same messages (``csrc/ops/pwlu_common.h``), so a
bad call fails alike whichever implementation runs.
"""
import math
from typing import Tuple

import torch

PARAM_NAMES = ('left_bound', 'right_bound', 'left_slope', 'right_slope')


def check_pwlu_args(x: torch.Tensor, points: torch.Tensor, left_bound: torch.Tensor,
                    right_bound: torch.Tensor, left_slope: torch.Tensor,
                    right_slope: torch.Tensor) -> Tuple[int, int]:
    """Validate a ``pwlu`` call.

    Returns:
        tuple[int, int]: ``(P, K)``: parameter sets (1 layer-wise, C channel-wise), intervals.
    """
    tensors = dict(x=x, points=points, left_bound=left_bound, right_bound=right_bound,
                   left_slope=left_slope, right_slope=right_slope)
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f'pwlu: {name} must be a Tensor, got {type(t).__name__}')
        if not t.is_floating_point():
            raise TypeError(f'pwlu: {name} must be a floating-point tensor, got {t.dtype}')
        if t.device != x.device:
            raise ValueError(f'pwlu: {name} is on {t.device} but x is on {x.device}; '
                             'all tensors must be on the same device')
    if x.dim() < 2:
        raise ValueError(f'pwlu: x must have shape (N, C) or (N, C, *spatial), '
                         f'got {tuple(x.shape)}')
    if points.dim() != 2:
        raise ValueError(f'pwlu: points must have shape (C, K+1) or (1, K+1), '
                         f'got {tuple(points.shape)}')
    num_sets, num_points = points.shape
    if num_points < 2:
        raise ValueError(f'pwlu: points must have at least 2 columns (K >= 1 intervals), '
                         f'got {tuple(points.shape)}')
    channels = x.shape[1]
    if num_sets not in (1, channels):
        raise ValueError(f'pwlu: points has {num_sets} rows but x has {channels} channels; '
                         'expected (C, K+1) channel-wise or (1, K+1) layer-wise')
    for name in PARAM_NAMES:
        t = tensors[name]
        if t.shape != (num_sets, ):
            raise ValueError(f'pwlu: {name} must have shape ({num_sets},) to match points '
                             f'{tuple(points.shape)}, got {tuple(t.shape)}')
        if t.dtype != points.dtype:
            raise TypeError(f'pwlu: {name} has dtype {t.dtype} but points has {points.dtype}; '
                            'all parameters must share one dtype')
    return num_sets, num_points - 1


def check_range_eps(range_eps: float) -> None:
    """Validate ``range_eps`` of a ``pwlu`` call (a finite number >= 0)."""
    if not (range_eps >= 0 and math.isfinite(range_eps)):
        raise ValueError(f'pwlu: range_eps must be a finite number >= 0, got {range_eps}')
