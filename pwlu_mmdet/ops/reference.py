"""Pure-PyTorch PWLU: the readable definition the compiled op is tested against, and the
table form of Sec. 4.3 that exports to ONNX.

:func:`pwlu_reference` follows docs/method.md (Eq. 1-4) literally; autograd differentiates it
with the interval index treated as a constant, which yields exactly the gradients of Table 1.
:func:`piece_table` and :func:`pwlu_from_table` are the inference form, in standard ops only.
"""
from typing import Tuple

import torch

from ._checks import check_pwlu_args, check_range_eps


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype PWLU computes in: ``x``'s, but float32 for float16 and bfloat16 (as the
    kernels)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def guard_range(left_bound: torch.Tensor, right_bound: torch.Tensor,
                range_eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(B_L, B_R)`` with ``B_R >= B_L + range_eps * max(1, |B_L|, |B_R|)``.

    Where the range is wide enough ``B_R`` is returned bit-exact (``torch.where``, not
    ``B_L + width``). Where it is not (or ``B_R`` is NaN), ``B_L + min_width`` is used, with the
    scale detached: the gradient then reaches ``B_L`` (shifting the range) but not ``B_R``.
    ``range_eps = 0`` returns the bounds unchanged. The compiled op applies the same guard in
    its kernels (``make_range`` in ``csrc/ops/pwlu_element.h``).
    """
    check_range_eps(range_eps)
    if range_eps == 0:
        return left_bound, right_bound
    scale = torch.maximum(left_bound.detach().abs(), right_bound.detach().abs())
    min_width = range_eps * scale.clamp_min(1.0)
    return left_bound, torch.where(right_bound - left_bound >= min_width, right_bound,
                                   left_bound + min_width)


def pwlu_reference(x: torch.Tensor, points: torch.Tensor, left_bound: torch.Tensor,
                   right_bound: torch.Tensor, left_slope: torch.Tensor,
                   right_slope: torch.Tensor, range_eps: float = 0.0) -> torch.Tensor:
    """Piecewise Linear Unit, pure PyTorch (slow, differentiable, any device).

    Same signature, shapes and dtype rules as :func:`pwlu_mmdet.ops.pwlu`.
    """
    num_sets, n = check_pwlu_args(x, points, left_bound, right_bound, left_slope, right_slope)
    dtype = compute_dtype(x)
    left_bound, right_bound = guard_range(left_bound.to(dtype), right_bound.to(dtype), range_eps)
    channels = x.shape[1]
    # Work on (C, M): one row per channel, every other dim flattened.
    xc = x.to(dtype).transpose(0, 1).reshape(channels, -1)
    pts = points.to(dtype).expand(channels, n + 1)
    lb, rb, ls, rs = (p.to(dtype).expand(channels).unsqueeze(1)
                      for p in (left_bound, right_bound, left_slope, right_slope))

    d = (rb - lb) / n
    with torch.no_grad():
        t = (xc - lb) * (n / (rb - lb))
        below = t < 0
        above = t >= n
        idx = torch.nan_to_num(t, nan=0.0).clamp(0, n - 1).floor().long()
    b_idx = lb + idx * d
    y_idx = pts.gather(1, idx)
    k_idx = (pts.gather(1, idx + 1) - y_idx) / d
    inside = (xc - b_idx) * k_idx + y_idx
    left = (xc - lb) * ls + pts[:, :1]
    right = (xc - rb) * rs + pts[:, -1:]
    # At x = +-inf with a zero outer slope the limit is the end point, not 0 * inf = NaN.
    infinite = torch.isinf(xc)
    left = torch.where(infinite & (ls == 0), pts[:, :1].expand_as(left), left)
    right = torch.where(infinite & (rs == 0), pts[:, -1:].expand_as(right), right)
    y = torch.where(below, left, torch.where(above, right, inside))

    y = y.reshape((channels, x.shape[0]) + tuple(x.shape[2:])).transpose(0, 1)
    return y.to(x.dtype).contiguous(memory_format=suggest_memory_format(x))


def pwlu_reference_(x: torch.Tensor, points: torch.Tensor, left_bound: torch.Tensor,
                    right_bound: torch.Tensor, left_slope: torch.Tensor,
                    right_slope: torch.Tensor, range_eps: float = 0.0) -> torch.Tensor:
    """In-place :func:`pwlu_reference`: computed, then copied into ``x``, which is returned."""
    return x.copy_(pwlu_reference(x, points, left_bound, right_bound, left_slope, right_slope,
                                  range_eps))


def suggest_memory_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format PWLU's output keeps: channels-last if ``x`` is, else contiguous."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous():
        return torch.channels_last
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d) \
            and not x.is_contiguous():
        return torch.channels_last_3d
    return torch.contiguous_format


def relu_with_moments_reference(x: torch.Tensor, per_channel: bool = True):
    """``relu(x)`` and the mean and population variance of ``x`` per channel (or overall).

    Same contract as :func:`pwlu_mmdet.ops.relu_with_moments`.
    """
    if not x.is_floating_point():
        raise TypeError(f'relu_with_moments: x must be a floating-point tensor, got {x.dtype}')
    if x.dim() < 2:
        raise ValueError('relu_with_moments: x must have shape (N, C) or (N, C, *spatial), '
                         f'got {tuple(x.shape)}')
    sets = x.shape[1] if per_channel else 1
    dtype = compute_dtype(x)
    y = torch.relu(x).contiguous(memory_format=suggest_memory_format(x))
    if x.numel() == 0:
        zeros = x.new_zeros((sets, ), dtype=dtype)
        return y, zeros, zeros.clone()
    dims = [d for d in range(x.dim()) if not per_channel or d != 1]
    var, mean = torch.var_mean(x.detach().to(dtype), dim=dims, correction=0)
    return y, mean.reshape(sets), var.reshape(sets)


def piece_table(points: torch.Tensor, left_bound: torch.Tensor, right_bound: torch.Tensor,
                left_slope: torch.Tensor, right_slope: torch.Tensor,
                range_eps: float = 0.0) -> Tuple[torch.Tensor, ...]:
    """The Sec. 4.3 form of PWLU parameters: a slope and an intercept per piece.

    Built from the guarded range exactly as the compiled kernels build theirs
    (``csrc/ops/pwlu_element.h``), in float32 (float64 for float64 parameters).

    Returns:
        tuple[Tensor, Tensor, Tensor, Tensor]: ``(B_L, N / (B_R - B_L), S, O)``: the left bound
        and inverse interval width per set, and slopes ``S`` and intercepts ``O`` of shape
        ``(sets, N + 2)`` (the left piece, the N intervals, the right piece).
    """
    n = points.shape[1] - 1
    dtype = torch.float64 if points.dtype == torch.float64 else torch.float32
    lb, rb = (t.to(dtype) for t in guard_range(left_bound, right_bound, range_eps))
    pts = points.to(dtype)
    ls, rs = left_slope.to(dtype), right_slope.to(dtype)
    inv_width = n / (rb - lb)
    step = (rb - lb) / n
    i = torch.arange(n, device=pts.device, dtype=dtype)
    inner_slope = (pts[:, 1:] - pts[:, :-1]) * inv_width.unsqueeze(1)
    demarcation = lb.unsqueeze(1) + i * step.unsqueeze(1)
    inner_intercept = pts[:, :-1] - demarcation * inner_slope
    slopes = torch.cat([ls.unsqueeze(1), inner_slope, rs.unsqueeze(1)], dim=1)
    intercepts = torch.cat([(pts[:, 0] - lb * ls).unsqueeze(1), inner_intercept,
                            (pts[:, n] - rb * rs).unsqueeze(1)], dim=1)
    return lb, inv_width, slopes, intercepts


def pwlu_from_table(x: torch.Tensor, table: Tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``y = x * S_j + O_j`` of ``x`` ``(N, C, *)`` on a :func:`piece_table`, standard ops
    only (exports to plain ONNX)."""
    lb, inv_width, slopes, intercepts = table
    sets, pieces = slopes.shape
    view = (1, sets) + (1, ) * (x.dim() - 2)
    xc = x.to(slopes.dtype)
    t = (xc - lb.reshape(view)) * inv_width.reshape(view)
    t = torch.where(torch.isnan(t), torch.zeros_like(t), t)  # NaN x: entry 0, y stays NaN
    entry = torch.clamp(torch.floor(t), -1, pieces - 2) + 1  # in [0, N + 1] as in the kernels
    offset = torch.arange(sets, device=x.device, dtype=entry.dtype) * pieces
    index = (entry + offset.reshape(view)).long()
    slope = slopes.reshape(-1)[index]
    intercept = intercepts.reshape(-1)[index]
    y = xc * slope + intercept
    # At x = +-inf with a zero slope the limit is the intercept, not 0 * inf = NaN.
    y = torch.where(torch.isinf(xc) & (slope == 0), intercept, y)
    return y.to(x.dtype)
