"""Python side of the compiled operator: loading, autograd and fake (meta) kernels.

The schemas and the CPU/CUDA kernels live in C++ (``csrc/ops``); what ``torch.compile`` and
autograd need is registered here with ``torch.library`` (the pytorch/extension-cpp pattern).
"""
import warnings

import torch

from ._checks import check_pwlu_args
from .reference import compute_dtype, suggest_memory_format

try:
    from pwlu_mmdet import _C  # noqa: F401  (loads the library, registers torch.ops.pwlu_mmdet)
    _LOAD_ERROR = None
except (ImportError, OSError) as e:  # not built, or built against another torch
    _LOAD_ERROR = e

if _LOAD_ERROR is None:

    @torch.library.register_fake('pwlu_mmdet::pwlu')
    def _pwlu_fake(x, points, left_bound, right_bound, left_slope, right_slope):
        check_pwlu_args(x, points, left_bound, right_bound, left_slope, right_slope)
        return torch.empty_like(x, memory_format=suggest_memory_format(x))

    @torch.library.register_fake('pwlu_mmdet::pwlu_backward')
    def _pwlu_backward_fake(grad_output, x, points, left_bound, right_bound, left_slope,
                            right_slope, input_grad, param_grads):
        check_pwlu_args(x, points, left_bound, right_bound, left_slope, right_slope)
        none = points.new_empty((0, ))
        grad_x = (torch.empty_like(x, memory_format=suggest_memory_format(x))
                  if input_grad else x.new_empty((0, )))
        if not param_grads:
            return grad_x, none, none, none, none, none
        return (grad_x, torch.empty_like(points, memory_format=torch.contiguous_format),
                *(p.new_empty(p.shape) for p in (left_bound, right_bound, left_slope,
                                                  right_slope)))

    def _setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def _backward(ctx, grad_output):
        needs = ctx.needs_input_grad
        param_grads = any(needs[1:])
        grads = torch.ops.pwlu_mmdet.pwlu_backward.default(grad_output, *ctx.saved_tensors,
                                                           needs[0], param_grads)
        return tuple(g if need else None for g, need in zip(grads, needs))

    torch.library.register_autograd('pwlu_mmdet::pwlu', _backward, setup_context=_setup_context)

    @torch.library.register_fake('pwlu_mmdet::relu_with_moments')
    def _relu_with_moments_fake(x, per_channel):
        sets = x.shape[1] if per_channel else 1
        stat = x.new_empty((sets, ), dtype=compute_dtype(x))
        return torch.empty_like(x, memory_format=suggest_memory_format(x)), stat, stat.clone()

    def _relu_setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1], output[2])
        ctx.save_for_backward(output[0])

    def _relu_backward(ctx, grad_y, grad_mean, grad_var):
        # The statistics are bookkeeping, not part of the model: only y is differentiable.
        (y, ) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward.default(grad_y, y, 0), None

    torch.library.register_autograd('pwlu_mmdet::relu_with_moments', _relu_backward,
                                    setup_context=_relu_setup_context)


def compiled_available() -> bool:
    """True when the compiled operator (``pwlu_mmdet._C``) is loaded."""
    return _LOAD_ERROR is None


def warn_fallback() -> None:
    warnings.warn(
        f'pwlu_mmdet: the compiled PWLU operator could not be loaded ({_LOAD_ERROR}); using the '
        'pure-PyTorch reference, which is much slower. Rebuild with '
        '`pip install --no-build-isolation -e .` against the installed torch.',
        RuntimeWarning, stacklevel=3)
