"""Python side of the compiled operator: loading and fake (meta) kernels.

The schemas, the CPU/CUDA kernels and the autograd kernels live in C++ (``csrc/ops``; autograd
in C++ because the Python ``register_autograd`` path costs more than the kernels on small
inputs); the fake kernels that ``torch.compile`` traces with are registered here with
``torch.library.register_fake``.
"""
import warnings

import torch

from ._checks import check_pwlu_args, check_range_eps
from .reference import compute_dtype, suggest_memory_format

try:
    from pwlu_mmdet import _C  # noqa: F401  (loads the library, registers torch.ops.pwlu_mmdet)
    _LOAD_ERROR = None
except (ImportError, OSError) as e:  # not built, or built against another torch
    _LOAD_ERROR = e

if _LOAD_ERROR is None:

    @torch.library.register_fake('pwlu_mmdet::pwlu')
    def _pwlu_fake(x, points, left_bound, right_bound, left_slope, right_slope, range_eps=0.0):
        check_pwlu_args(x, points, left_bound, right_bound, left_slope, right_slope)
        check_range_eps(range_eps)
        return torch.empty_like(x, memory_format=suggest_memory_format(x))

    @torch.library.register_fake('pwlu_mmdet::pwlu_')
    def _pwlu_inplace_fake(x, points, left_bound, right_bound, left_slope, right_slope,
                           range_eps=0.0):
        check_pwlu_args(x, points, left_bound, right_bound, left_slope, right_slope)
        check_range_eps(range_eps)

    @torch.library.register_fake('pwlu_mmdet::pwlu_backward')
    def _pwlu_backward_fake(grad_output, x, points, left_bound, right_bound, left_slope,
                            right_slope, range_eps, input_grad, param_grads):
        check_pwlu_args(x, points, left_bound, right_bound, left_slope, right_slope)
        check_range_eps(range_eps)
        none = points.new_empty((0, ))
        grad_x = (torch.empty_like(x, memory_format=suggest_memory_format(x))
                  if input_grad else x.new_empty((0, )))
        if not param_grads:
            return grad_x, none, none, none, none, none
        return (grad_x, torch.empty_like(points, memory_format=torch.contiguous_format),
                *(p.new_empty(p.shape) for p in (left_bound, right_bound, left_slope,
                                                  right_slope)))

    @torch.library.register_fake('pwlu_mmdet::relu_with_moments')
    def _relu_with_moments_fake(x, per_channel):
        sets = x.shape[1] if per_channel else 1
        stat = x.new_empty((sets, ), dtype=compute_dtype(x))
        return torch.empty_like(x, memory_format=suggest_memory_format(x)), stat, stat.clone()


def compiled_available() -> bool:
    """True when the compiled operator (``pwlu_mmdet._C``) is loaded."""
    return _LOAD_ERROR is None


def warn_fallback() -> None:
    warnings.warn(
        f'pwlu_mmdet: the compiled PWLU operator could not be loaded ({_LOAD_ERROR}); using the '
        'pure-PyTorch reference, which is much slower. Rebuild with '
        '`pip install --no-build-isolation -e .` against the installed torch.',
        RuntimeWarning, stacklevel=3)
