"""The PWLU operator.

``pwlu``, ``pwlu_`` and ``relu_with_moments`` call the compiled CPU/CUDA kernels
(``torch.ops.pwlu_mmdet.*``, loaded and given their fake kernels in :mod:`pwlu_mmdet.ops._op`).
Where the extension is not built they are the pure-PyTorch references instead, with one
warning.
"""
import torch

from ._op import compiled_available, warn_fallback
from .reference import (guard_range, piece_table, pwlu_from_table, pwlu_reference,
                        pwlu_reference_, relu_with_moments_reference)

__all__ = ['pwlu', 'pwlu_', 'pwlu_reference', 'guard_range', 'relu_with_moments',
           'relu_with_moments_reference', 'piece_table', 'pwlu_from_table',
           'compiled_available']


def pwlu(x: torch.Tensor, points: torch.Tensor, left_bound: torch.Tensor,
         right_bound: torch.Tensor, left_slope: torch.Tensor, right_slope: torch.Tensor,
         range_eps: float = 0.0) -> torch.Tensor:
    """Piecewise Linear Unit (Eq. 1-4, docs/method.md), compiled CPU/CUDA kernels.

    Args:
        x (Tensor): Input of shape ``(N, C)`` or ``(N, C, *spatial)``; channel dim is 1.
            Any floating dtype; float16/bfloat16 are computed in float32.
        points (Tensor): ``Y_0..Y_K`` of shape ``(C, K+1)`` (channel-wise) or ``(1, K+1)``
            (layer-wise, shared by all channels).
        left_bound (Tensor): ``B_L`` of shape ``(C,)`` or ``(1,)``.
        right_bound (Tensor): ``B_R``, same shape; ``B_R > B_L``.
        left_slope (Tensor): ``K_L``, same shape.
        right_slope (Tensor): ``K_R``, same shape.
        range_eps (float): Guard of the range: where ``B_R - B_L`` is below
            ``range_eps * max(1, |B_L|, |B_R|)``, ``B_L`` plus that width is used as ``B_R``
            (its gradient then goes to ``B_L``), so that training can neither collapse nor
            flip the range (:func:`guard_range`). 0 uses ``B_R`` as given. Defaults to 0.

    Returns:
        Tensor: ``y`` with ``x``'s shape, dtype and memory format. Differentiable w.r.t. all
        six inputs (Table 1, docs/method.md).
    """
    return torch.ops.pwlu_mmdet.pwlu.default(x, points, left_bound, right_bound, left_slope,
                                             right_slope, range_eps)


def pwlu_(x: torch.Tensor, points: torch.Tensor, left_bound: torch.Tensor,
          right_bound: torch.Tensor, left_slope: torch.Tensor, right_slope: torch.Tensor,
          range_eps: float = 0.0) -> torch.Tensor:
    """In-place :func:`pwlu` for inference (as ``relu_`` is to ``relu``): writes the output into
    ``x`` and returns it, allocating nothing for a dense ``x``. It has no backward: it raises
    where autograd would need one (use it under ``torch.no_grad()``).
    """
    torch.ops.pwlu_mmdet.pwlu_.default(x, points, left_bound, right_bound, left_slope,
                                       right_slope, range_eps)
    return x  # the op returns nothing, so that torch.compile can functionalize it


def relu_with_moments(x: torch.Tensor, per_channel: bool = True):
    """PWLU's phase I in one pass: ``relu(x)`` and the statistics of ``x``.

    Args:
        x (Tensor): Input of shape ``(N, C)`` or ``(N, C, *spatial)``.
        per_channel (bool): Statistics per channel (shape ``(C,)``) or over the whole tensor
            (shape ``(1,)``). Defaults to True.

    Returns:
        tuple[Tensor, Tensor, Tensor]: ``relu(x)`` (differentiable, ``x``'s dtype and memory
        format), and the mean and population variance of ``x`` in float32 (float64 for
        float64 ``x``); zeros when ``x`` is empty.
    """
    return torch.ops.pwlu_mmdet.relu_with_moments.default(x, per_channel)


if not compiled_available():  # the extension is not built (or not for this torch)
    warn_fallback()
    pwlu, pwlu_, relu_with_moments = pwlu_reference, pwlu_reference_, relu_with_moments_reference
