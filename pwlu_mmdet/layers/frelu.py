"""Funnel activation (FReLU; Ma et al., "Funnel Activation for Visual Recognition",
arXiv:2007.11824), the PWLU paper's F-ReLU."""
import copy
import math
from typing import Optional

import torch
from torch import nn

from ._common import check_input

__all__ = ['FReLU']

# GroupNorm, not the Funnel paper's BatchNorm: the detection configs train from scratch with 2
# images per GPU, where batch statistics are too noisy (the reason the rest of the model uses
# GN), and GN behaves the same in training and inference.
_DEFAULT_NORM = dict(type='GN', num_groups=32)


def build_norm(norm_cfg: dict, num_channels: int) -> nn.Module:
    """A 2-D normalisation layer from an mmcv-style config, with torch only.

    ``'GN'`` uses ``gcd(num_groups, num_channels)`` groups: one config serves sites of every
    width (the Act* components hand the same ``act_cfg`` to all of them), and a width that is not
    a multiple of ``num_groups`` gets the largest group count that divides it.

    Args:
        norm_cfg (dict): ``type`` is ``'GN'`` (``num_groups``, default 32), ``'BN'`` or
            ``'SyncBN'``; the other keys go to the torch constructor (``eps``, ``momentum``,
            ``affine``, ...).
        num_channels (int): Channels to normalise.

    Returns:
        nn.Module: ``nn.GroupNorm``, ``nn.BatchNorm2d`` or ``nn.SyncBatchNorm``.
    """
    cfg = dict(norm_cfg)
    norm_type = cfg.pop('type', None)
    if norm_type == 'GN':
        groups = math.gcd(int(cfg.pop('num_groups', 32)), num_channels)
        return nn.GroupNorm(groups, num_channels, **cfg)
    if norm_type in ('BN', 'BN2d'):
        return nn.BatchNorm2d(num_channels, **cfg)
    if norm_type == 'SyncBN':
        return nn.SyncBatchNorm(num_channels, **cfg)
    raise ValueError(f"FReLU: norm_cfg type must be 'GN', 'BN' or 'SyncBN' (or norm_cfg=None), "
                     f'got {norm_type!r}')


class FReLU(nn.Module):
    """``y = max(x, T(x))``, ``T`` a ``k x k`` depthwise conv followed by a normalisation.

    The funnel condition ``T(x)`` looks at a spatial window, so FReLU is a many-to-one function,
    unlike the scalar activations. Two choices differ from the Funnel paper, both configurable:

    * Normalisation: GroupNorm with 32 groups by default (the paper uses BatchNorm): from-scratch
      detection training with 2 images per GPU needs batch-independent statistics, as the rest
      of the GN-all models do. ``norm_cfg=dict(type='BN')`` restores the paper's form, e.g. for
      ImageNet-style classification.
    * Inputs that are not spatial maps (the box head's fc layers, ``(N, C)``):
      ``flat_input='funnel'`` (default) treats them as ``1 x 1`` maps, where the zero-padded
      window reduces to its centre tap ``w_c``. GroupNorm would normalise a ``1 x 1`` map across
      the channels of a group (one channel per group: ``T`` the constant ``beta_c``, a shifted
      ReLU), so there only its affine is applied, ``T = gamma_c w_c x + beta_c``: a per-channel
      funnel, the form a BatchNorm funnel has at inference. BatchNorm stays per channel and is
      applied as it is. ``flat_input='relu'`` computes ``max(x, 0)`` there instead.

    Args:
        num_channels (int): Number of channels ``C`` (dim 1 of the input).
        kernel_size (int): Odd window size of the depthwise conv. Defaults to 3.
        norm_cfg (dict, optional): Normalisation after the conv (see :func:`build_norm`);
            ``None`` for none (the conv then has a bias). Defaults to
            ``dict(type='GN', num_groups=32)``.
        flat_input (str): ``'funnel'`` or ``'relu'``, what ``(N, C)`` inputs get (above).
            Defaults to ``'funnel'``.

    Shape:
        - Input: ``(N, C, H, W)`` or ``(N, C)``.
        - Output: same shape and dtype as the input.
    """

    def __init__(self, num_channels: int, kernel_size: int = 3,
                 norm_cfg: Optional[dict] = _DEFAULT_NORM, flat_input: str = 'funnel') -> None:
        super().__init__()
        if num_channels is None or int(num_channels) != num_channels or num_channels < 1:
            raise ValueError(f'FReLU: num_channels must be a positive integer (the depthwise '
                             f'conv has one filter per channel), got {num_channels}')
        if int(kernel_size) != kernel_size or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f'FReLU: kernel_size must be a positive odd integer (the output '
                             f'keeps the input size), got {kernel_size}')
        if flat_input not in ('funnel', 'relu'):
            raise ValueError(f"FReLU: flat_input must be 'funnel' or 'relu', got {flat_input!r}")
        self.num_channels = int(num_channels)
        self.kernel_size = int(kernel_size)
        self.flat_input = flat_input
        self.norm_cfg = copy.deepcopy(norm_cfg)
        self.conv = nn.Conv2d(self.num_channels, self.num_channels, self.kernel_size,
                              padding=self.kernel_size // 2, groups=self.num_channels,
                              bias=norm_cfg is None)
        self.norm = nn.Identity() if norm_cfg is None else build_norm(norm_cfg, self.num_channels)

    def funnel_condition(self, x: torch.Tensor) -> torch.Tensor:
        """``T(x)`` of a ``(N, C, H, W)`` input."""
        return self.norm(self.conv(x))

    def _flat_condition(self, x: torch.Tensor) -> torch.Tensor:
        """``T(x)`` of an ``(N, C)`` input (see the class docstring)."""
        if not isinstance(self.norm, nn.GroupNorm):
            return self.funnel_condition(x[:, :, None, None]).flatten(1)
        t = self.conv(x[:, :, None, None]).flatten(1)
        if self.norm.affine:
            t = torch.addcmul(self.norm.bias, t, self.norm.weight)
        return t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input('FReLU', x, self.num_channels)
        if x.dim() == 2:
            if self.flat_input == 'relu':
                return torch.relu(x)
            return torch.maximum(x, self._flat_condition(x))
        if x.dim() != 4:
            raise ValueError(f'FReLU expects (N, C, H, W) or (N, C) input, got shape '
                             f'{tuple(x.shape)}')
        return torch.maximum(x, self.funnel_condition(x))

    def extra_repr(self) -> str:
        norm = None if self.norm_cfg is None else self.norm_cfg.get('type')
        return (f'num_channels={self.num_channels}, kernel_size={self.kernel_size}, '
                f'norm={norm}, flat_input={self.flat_input}')
