"""Argument and input checks shared by the channel-wise baseline activations."""
from typing import Optional

import torch

__all__ = ['check_sets', 'check_input', 'per_channel']


def check_sets(layer: str, num_channels: Optional[int], mode: str) -> int:
    """Validate ``num_channels`` and ``mode``; return the number of parameter sets.

    Args:
        layer (str): Layer name for the error messages.
        num_channels (int, optional): Channel count, required when ``mode='channel'``.
        mode (str): ``'channel'`` (one parameter set per channel) or ``'layer'`` (one shared).

    Returns:
        int: ``num_channels`` channel-wise, 1 layer-wise.
    """
    if mode not in ('channel', 'layer'):
        raise ValueError(f"{layer}: mode must be 'channel' or 'layer', got {mode!r}")
    if num_channels is not None and (int(num_channels) != num_channels or num_channels < 1):
        raise ValueError(f'{layer}: num_channels must be a positive integer, got {num_channels}')
    if mode == 'channel' and num_channels is None:
        raise ValueError(f"{layer}: num_channels is required when mode='channel' (the Act* "
                         "components fill it in; pass it when building the layer yourself)")
    return int(num_channels) if mode == 'channel' else 1


def check_input(layer: str, x: torch.Tensor, num_channels: Optional[int]) -> None:
    """Raise ``ValueError`` unless ``x`` is ``(N, C, *spatial)`` with ``C == num_channels``."""
    if x.dim() < 2:
        raise ValueError(f'{layer} expects (N, C) or (N, C, *spatial) input, got shape '
                         f'{tuple(x.shape)}')
    if num_channels is not None and x.shape[1] != num_channels and not torch.jit.is_tracing():
        raise ValueError(f'{layer} was built for {num_channels} channels but the input has '
                         f'{x.shape[1]} (shape {tuple(x.shape)})')


def per_channel(param: torch.Tensor, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``param`` of shape ``(sets,)`` viewed to broadcast over dim 1 of ``x``, in ``dtype``."""
    return param.to(dtype).reshape((1, -1) + (1, ) * (x.dim() - 2))
