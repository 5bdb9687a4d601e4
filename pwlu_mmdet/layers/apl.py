"""Adaptive Piecewise Linear unit (APL; Agostinelli et al., "Learning Activation Functions to
Improve Deep Neural Networks", arXiv:1412.6830)."""
from typing import Optional

import torch
from torch import nn

from ._common import check_input, check_sets, per_channel

__all__ = ['APL']


class APL(nn.Module):
    """``y = max(0, x) + sum_{s=1..S} a_{c,s} * max(0, b_{c,s} - x)`` with ``S`` learnable
    hinges per channel.

    Args:
        num_channels (int, optional): Number of channels ``C`` (dim 1 of the input). Required
            when ``mode='channel'``. Defaults to None.
        num_hinges (int): ``S``, hinges per channel. Defaults to 2.
        mode (str): ``'channel'`` (one set per channel) or ``'layer'`` (one set shared by all
            channels). Defaults to ``'channel'``.
        hinge_range (float): With ``init='relu'``, the hinges start evenly spread over
            ``[-hinge_range, hinge_range]``. Defaults to 1.0.
        init (str): ``'reference'``: the APL reference code's ``a ~ U(-0.5/S, 0.5/S)``,
            ``b ~ N(0, 0.5^2)``; ``'relu'``: ``a = 0`` (exactly ReLU) and spread hinges.
            Defaults to ``'reference'``.

    Note:
        The APL paper learns a set per unit (every position of a feature map); here a set is
        per channel, shared over the positions as PReLU's slope is, since a detector's feature
        maps change size from image to image. The PWLU paper lowers ``S`` for ImageNet without
        giving the value; ``S = 2`` here.

    Shape:
        - Input: ``(N, C)`` or ``(N, C, *spatial)``.
        - Output: same shape and dtype as the input (computed in the promoted dtype of input
          and parameters, so half inputs with float32 parameters are computed in float32).
    """

    def __init__(self, num_channels: Optional[int] = None, num_hinges: int = 2,
                 mode: str = 'channel', hinge_range: float = 1.0,
                 init: str = 'reference') -> None:
        super().__init__()
        sets = check_sets('APL', num_channels, mode)
        if int(num_hinges) != num_hinges or num_hinges < 1:
            raise ValueError(f'APL: num_hinges must be a positive integer, got {num_hinges}')
        if not hinge_range >= 0:
            raise ValueError(f'APL: hinge_range must be >= 0, got {hinge_range}')
        if init not in ('reference', 'relu'):
            raise ValueError(f"APL: init must be 'reference' or 'relu', got {init!r}")
        self.num_channels = None if num_channels is None else int(num_channels)
        self.num_hinges = int(num_hinges)
        self.mode = mode
        self.hinge_range = float(hinge_range)
        self.init = init
        self.slopes = nn.Parameter(torch.empty(self.num_hinges, sets))  # a
        self.hinges = nn.Parameter(torch.empty(self.num_hinges, sets))  # b
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise ``a`` and ``b`` as ``init`` says."""
        with torch.no_grad():
            if self.init == 'reference':
                bound = 0.5 / self.num_hinges
                self.slopes.uniform_(-bound, bound)
                self.hinges.normal_(0.0, 0.5)
                return
            self.slopes.zero_()
            r = self.hinge_range if self.num_hinges > 1 else 0.0
            spread = torch.linspace(-r, r, self.num_hinges, dtype=self.hinges.dtype)
            self.hinges.copy_(spread.unsqueeze(1).expand_as(self.hinges))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input('APL', x, self.num_channels)
        dtype = torch.promote_types(x.dtype, self.slopes.dtype)
        xc = x.to(dtype)
        y = torch.relu(xc)
        for a, b in zip(self.slopes, self.hinges):
            y = y + per_channel(a, xc, dtype) * torch.relu(per_channel(b, xc, dtype) - xc)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        channels = self.num_channels if self.num_channels is not None else 'any'
        return (f'num_channels={channels}, num_hinges={self.num_hinges}, mode={self.mode}, '
                f'init={self.init}')
