"""What the ``Act*`` components share: converting themselves as they are built."""
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .conversion import convert_activations

__all__ = ['convert_component', 'example', 'feature_maps']


def example(channels: int, size: Union[int, Tuple[int, int]], batch: int = 1) -> torch.Tensor:
    """A trace input of shape ``(batch, channels, *size)`` that leaves the global RNG alone
    (building a model must give the same weights with or without the conversion)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, channels, *size, generator=generator)


def convert_component(module: nn.Module, act_cfg: Optional[dict], *inputs,
                      names: Optional[Dict[str, Dict[str, Optional[str]]]] = None) -> None:
    """Give every activation site of the component ``module`` a layer built from ``act_cfg``.

    Frozen sites are converted too, and so are activations of the component's outputs (the
    layers that consume them are outside the trace); the names of the ``Act*`` classes are
    kept, so that their checkpoints keep loading.

    Args:
        module (nn.Module): The component, built as mmdet builds it.
        act_cfg (dict, optional): See :func:`convert_activations`.
        *inputs: The positional arguments of one forward of ``module``.
        names (dict, optional): See :func:`convert_activations`.
    """
    convert_activations(module, act_cfg, inputs=inputs, names=names, frozen='convert',
                        clamps='convert')


def feature_maps(channels: int, levels: int) -> Sequence[torch.Tensor]:
    """One small map per FPN level, halving in size: a head's trace input."""
    return tuple(example(channels, max(16 >> i, 1)) for i in range(levels))
