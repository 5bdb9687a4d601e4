"""Padé Activation Unit (PAU; Molina et al., "Padé Activation Units: End-to-end Learning of
Flexible Activation Functions in Deep Networks", arXiv:1907.06732), its "safe" form."""
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from ._common import check_input, check_sets, per_channel

__all__ = ['PAU']

# Safe PAU of degrees (5, 4) fitted to leaky ReLU (slope 0.01) on [-3, 3] by least squares
# (float64, L-BFGS; max. error 0.03, at the kink that a rational function rounds off). The PAU
# paper initialises from the same kind of fit, so the unit starts close to the ReLU family.
_LEAKY_RELU_NUMERATOR = (0.029431212, 0.62611280, 2.3778935, 3.1428500, 1.5353466, 0.26005784)
_LEAKY_RELU_DENOMINATOR = (1.2263226, 4.4455734, 0.94066515, 0.35300433)


class PAU(nn.Module):
    """Safe Padé Activation Unit of degrees ``(m, n)``::

        y = P(x) / Q(x),  P(x) = sum_{j=0..m} a_j x^j,  Q(x) = 1 + sum_{k=1..n} |b_k| |x|^k

    The "safe" denominator is at least 1, so ``y`` has no poles whatever the coefficients.
    The defaults are the PAU paper's (and the PWLU paper's) setting: ``(m, n) = (5, 4)``, one
    coefficient set per layer, initialised as leaky ReLU. Both polynomials are evaluated by
    Horner's rule (``m + n`` multiply-adds).

    Args:
        num_channels (int, optional): Number of channels ``C``. Required when
            ``mode='channel'``; checked against the input when given. Defaults to None.
        degrees (tuple[int, int]): ``(m, n)``, numerator and denominator degrees, ``m >= 0``,
            ``n >= 1``. Defaults to ``(5, 4)``.
        mode (str): ``'layer'`` (one set of ``m + n + 1`` coefficients, the PAU paper's) or
            ``'channel'`` (one set per channel). Defaults to ``'layer'``.
        numerator (Sequence[float], optional): Initial ``a_0 .. a_m``. Defaults to the leaky
            ReLU fit, which exists for ``(5, 4)`` only; other degrees need both sequences.
        denominator (Sequence[float], optional): Initial ``b_1 .. b_n`` (their absolute values
            are used). Defaults as ``numerator``.

    Shape:
        - Input: ``(N, C)`` or ``(N, C, *spatial)``.
        - Output: same shape and dtype as the input (computed in the promoted dtype of input
          and coefficients: ``x^5`` of a half input would overflow).
    """

    def __init__(self, num_channels: Optional[int] = None, degrees: Tuple[int, int] = (5, 4),
                 mode: str = 'layer', numerator: Optional[Sequence[float]] = None,
                 denominator: Optional[Sequence[float]] = None) -> None:
        super().__init__()
        sets = check_sets('PAU', num_channels, mode)
        if (len(degrees) != 2 or any(int(d) != d for d in degrees) or degrees[0] < 0
                or degrees[1] < 1):
            raise ValueError(f'PAU: degrees must be (m, n) with integers m >= 0, n >= 1, got '
                             f'{degrees}')
        m, n = int(degrees[0]), int(degrees[1])
        if (numerator is None) != (denominator is None):
            raise ValueError('PAU: give both numerator and denominator, or neither')
        if numerator is None:
            if (m, n) != (5, 4):
                raise ValueError(f'PAU: the leaky ReLU initialisation exists for degrees (5, 4); '
                                 f'degrees {(m, n)} need numerator= and denominator=')
            numerator, denominator = _LEAKY_RELU_NUMERATOR, _LEAKY_RELU_DENOMINATOR
        if len(numerator) != m + 1 or len(denominator) != n:
            raise ValueError(f'PAU: degrees {(m, n)} need {m + 1} numerator and {n} denominator '
                             f'coefficients, got {len(numerator)} and {len(denominator)}')
        self.num_channels = None if num_channels is None else int(num_channels)
        self.degrees = (m, n)
        self.mode = mode
        self.numerator = nn.Parameter(
            torch.tensor([float(a) for a in numerator]).repeat(sets, 1))  # (sets, m + 1)
        self.denominator = nn.Parameter(
            torch.tensor([float(b) for b in denominator]).repeat(sets, 1))  # (sets, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input('PAU', x, self.num_channels)
        dtype = torch.promote_types(x.dtype, self.numerator.dtype)
        xc = x.to(dtype)
        a = self.numerator
        p = per_channel(a[:, -1], xc, dtype)
        for j in range(a.shape[1] - 2, -1, -1):
            p = p * xc + per_channel(a[:, j], xc, dtype)
        b = self.denominator.abs()
        ax = xc.abs()
        q = per_channel(b[:, -1], xc, dtype)
        for k in range(b.shape[1] - 2, -1, -1):
            q = q * ax + per_channel(b[:, k], xc, dtype)
        return (p / (q * ax + 1)).to(x.dtype)

    def extra_repr(self) -> str:
        channels = self.num_channels if self.num_channels is not None else 'any'
        return f'num_channels={channels}, degrees={self.degrees}, mode={self.mode}'
