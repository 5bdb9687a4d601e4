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

    Hyper-parameters (the PWLU paper reduces ``S`` below the APL paper's setting for ImageNet
    but its text does not give the value used): ``S = 2`` hinges by default. Every ``a`` starts
    at 0, so the unit starts as ReLU like the other learnable activations here; the hinge
    positions ``b`` start evenly spread over ``[-hinge_range, hinge_range]`` (0 for ``S = 1``),
    inside the typical range of a normalised input. The APL paper also puts an L2 penalty on
    ``a`` and ``b``; here they get the optimizer's weight decay like any other parameter.

    Args:
        num_channels (int, optional): Number of channels ``C`` (dim 1 of the input). Required
            when ``mode='channel'``. Defaults to None.
        num_hinges (int): ``S``, hinges per channel. Defaults to 2.
        mode (str): ``'channel'`` (APL's per-unit parameters, per channel for conv maps) or
            ``'layer'`` (one set shared by all channels). Defaults to ``'channel'``.
        hinge_range (float): Initial hinges are spread over ``[-hinge_range, hinge_range]``.
            Defaults to 1.0.

    Shape:
        - Input: ``(N, C)`` or ``(N, C, *spatial)``.
        - Output: same shape and dtype as the input (computed in the promoted dtype of input
          and parameters, so half inputs with float32 parameters are computed in float32).
    """

    def __init__(self, num_channels: Optional[int] = None, num_hinges: int = 2,
                 mode: str = 'channel', hinge_range: float = 1.0) -> None:
        super().__init__()
        sets = check_sets('APL', num_channels, mode)
        if int(num_hinges) != num_hinges or num_hinges < 1:
            raise ValueError(f'APL: num_hinges must be a positive integer, got {num_hinges}')
        if not hinge_range >= 0:
            raise ValueError(f'APL: hinge_range must be >= 0, got {hinge_range}')
        self.num_channels = None if num_channels is None else int(num_channels)
        self.num_hinges = int(num_hinges)
        self.mode = mode
        self.hinge_range = float(hinge_range)
        self.slopes = nn.Parameter(torch.empty(self.num_hinges, sets))  # a
        self.hinges = nn.Parameter(torch.empty(self.num_hinges, sets))  # b
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``a = 0`` (ReLU), ``b`` evenly spread over ``[-hinge_range, hinge_range]``."""
        with torch.no_grad():
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
        return f'num_channels={channels}, num_hinges={self.num_hinges}, mode={self.mode}'
