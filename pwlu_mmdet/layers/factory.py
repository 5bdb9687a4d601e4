"""Building an activation site from an ``act_cfg`` with torch only (no mmengine registry).

The ``Act*`` components build their sites through mmengine's ``MODELS``; code that must run
without OpenMMLab packages (the Table 4 benchmark on a bare GPU machine) builds the same layers
here by name. Both fill in the site's width the same way (:func:`site_kwargs`).
"""
import inspect
from typing import Optional

import torch
from torch import nn

from .apl import APL
from .frelu import FReLU
from .pau import PAU
from .prelu import ChannelPReLU
from .pwlu import PWLU

__all__ = ['Swish', 'TORCH_ACTIVATIONS', 'site_kwargs', 'build_activation']


class Swish(nn.Module):
    """``x * sigmoid(x)``, computed as mmcv's ``Swish`` (the configs' ``type='Swish'``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


# The names the configs use, with the classes mmengine's MODELS gives them.
TORCH_ACTIVATIONS = {
    'ReLU': nn.ReLU,
    'Swish': Swish,
    'SiLU': nn.SiLU,
    'PReLU': nn.PReLU,
    'ChannelPReLU': ChannelPReLU,
    'PWLU': PWLU,
    'FReLU': FReLU,
    'APL': APL,
    'PAU': PAU,
}


def site_kwargs(cls, act_cfg: dict, num_channels: Optional[int] = None,
                inplace: Optional[bool] = None) -> dict:
    """``act_cfg`` without ``type``, plus the site's ``num_channels`` and ``inplace`` where
    ``cls``'s constructor takes them and ``act_cfg`` does not set them.

    Args:
        cls (type): The activation class.
        act_cfg (dict): The activation config (``type`` is dropped).
        num_channels (int, optional): The site's width. Defaults to None (not passed).
        inplace (bool, optional): The site's in-place choice. Defaults to None (not passed).

    Returns:
        dict: Keyword arguments for ``cls``.
    """
    kwargs = {k: v for k, v in act_cfg.items() if k != 'type'}
    params = inspect.signature(cls).parameters
    if num_channels is not None and 'num_channels' in params:
        kwargs.setdefault('num_channels', num_channels)
    if inplace is not None and 'inplace' in params:
        kwargs.setdefault('inplace', inplace)
    return kwargs


def build_activation(act_cfg: dict, num_channels: Optional[int] = None,
                     inplace: Optional[bool] = None) -> nn.Module:
    """Build one activation site from ``act_cfg`` (a name of :data:`TORCH_ACTIVATIONS` or a
    class as ``type``), told its width, as the ``Act*`` components do through the registry.

    Args:
        act_cfg (dict): e.g. ``dict(type='FReLU', norm_cfg=dict(type='BN'))``.
        num_channels (int, optional): The site's width. Defaults to None.
        inplace (bool, optional): See :func:`site_kwargs`. Defaults to None.

    Returns:
        nn.Module: The activation.
    """
    act_type = act_cfg['type']
    cls = act_type if inspect.isclass(act_type) else TORCH_ACTIVATIONS.get(act_type)
    if cls is None:
        raise KeyError(f'unknown activation {act_type!r}; torch-only names: '
                       f'{sorted(TORCH_ACTIVATIONS)} (or pass a class as type)')
    return cls(**site_kwargs(cls, act_cfg, num_channels, inplace))
