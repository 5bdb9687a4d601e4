"""Channel-wise PReLU (He et al., "Delving Deep into Rectifiers", arXiv:1502.01852).

mmcv already registers ``torch.nn.PReLU`` as ``'PReLU'``; its argument is ``num_parameters``, so
the ``Act*`` components (which fill in ``num_channels``) would build it with one slope shared by
all channels. ``ChannelPReLU`` takes ``num_channels`` and learns one slope per channel, the form
the PReLU paper uses and the PWLU paper compares with.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ._common import check_input, check_sets

__all__ = ['ChannelPReLU']


class ChannelPReLU(nn.Module):
    """``y = max(0, x) + a_c * min(0, x)`` with a learnable slope ``a_c`` per channel.

    Args:
        num_channels (int, optional): Number of channels ``C`` (dim 1 of the input). Required
            when ``mode='channel'``. Defaults to None.
        mode (str): ``'channel'`` (one slope per channel) or ``'layer'`` (one slope shared by
            all channels, ``nn.PReLU()``). Defaults to ``'channel'``.
        init (float): Initial slope. Defaults to 0.25 (the PReLU paper's).

    Shape:
        - Input: ``(N, C)`` or ``(N, C, *spatial)``.
        - Output: same shape, dtype and memory format as the input.
    """

    def __init__(self, num_channels: Optional[int] = None, mode: str = 'channel',
                 init: float = 0.25) -> None:
        super().__init__()
        sets = check_sets('ChannelPReLU', num_channels, mode)
        self.num_channels = None if num_channels is None else int(num_channels)
        self.mode = mode
        self.weight = nn.Parameter(torch.full((sets, ), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input('ChannelPReLU', x, self.num_channels)
        # F.prelu needs the weight in the input's dtype (AMP runs half inputs).
        return F.prelu(x, self.weight.to(x.dtype))

    def extra_repr(self) -> str:
        channels = self.num_channels if self.num_channels is not None else 'any'
        return f'num_channels={channels}, mode={self.mode}'
