"""The PWLU layers of a whole model: finding them, their two phase operations, and measuring
how their learnable ranges fit their inputs (Eq. 7). Needs only torch."""
import contextlib
import sys
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .pwlu import PWLU
from .running_stats import pool_moments

__all__ = ['alignment_iou', 'find_pwlu_layers', 'unwrap_model', 'statistics_step',
           'realign_model', 'LayerAlignment', 'InputStatistics', 'stage_name',
           'summarize_stages']

LayerList = Union[Dict[str, PWLU], Sequence[Tuple[str, PWLU]]]


def alignment_iou(left_bound: torch.Tensor, right_bound: torch.Tensor, mean: torch.Tensor,
                  std: torch.Tensor, sigma: float = 3.0) -> torch.Tensor:
    """Alignment IoU of Eq. 7: ``|A n B| / |A u B|`` of ``A = [left_bound, right_bound]`` and
    ``B = [mean - sigma * std, mean + sigma * std]``, per set, float32.

    A zero-length union counts as 1 where the intervals coincide, else 0.
    """
    a_lo, a_hi = left_bound.float(), right_bound.float()
    b_lo, b_hi = (mean - sigma * std).float(), (mean + sigma * std).float()
    inter = (torch.minimum(a_hi, b_hi) - torch.maximum(a_lo, b_lo)).clamp_min(0)
    union = torch.maximum(a_hi, b_hi) - torch.minimum(a_lo, b_lo)
    same = (a_lo == b_lo) & (a_hi == b_hi)
    return torch.where(union > 0, inter / union.clamp_min(torch.finfo(torch.float32).tiny),
                       same.float())


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a ``DataParallel``/``DistributedDataParallel`` or mmengine wrapper."""
    # mmengine's wrappers can only exist once mmengine.model is imported: never import it here.
    mmengine_model = sys.modules.get('mmengine.model')
    if mmengine_model is not None:
        wrapped = mmengine_model.is_model_wrapper(model)
    else:
        wrapped = isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel))
    return model.module if wrapped else model


def find_pwlu_layers(model: nn.Module) -> List[Tuple[str, PWLU]]:
    """``(name, layer)`` of every PWLU in ``model`` (unwrapped), in module order: the same on
    every rank, so per-layer collectives in this order match up."""
    return [(name, m) for name, m in unwrap_model(model).named_modules() if isinstance(m, PWLU)]


@contextlib.contextmanager
def statistics_step(module: nn.Module) -> Iterator[None]:
    """Make the block one statistics step for every PWLU in ``module`` (a layer or a model).

    For loops without ``PWLUHook`` (which opens one per iteration) where a layer runs several
    times per step; steps nest (:meth:`PWLU.begin_statistics_step`).
    """
    layers = [layer for _, layer in find_pwlu_layers(module)]
    for layer in layers:
        layer.begin_statistics_step()
    try:
        yield
    finally:
        for layer in layers:
            layer.end_statistics_step()


@torch.no_grad()
def realign_model(model: nn.Module, distributed: Optional[bool] = None
                  ) -> Dict[str, Tuple[float, float]]:
    """Realign every PWLU of ``model`` still in phase I, in module order (Eq. 6).

    Args:
        model (nn.Module): The model or its wrapper.
        distributed (bool, optional): Passed to :meth:`PWLU.realign`. Defaults to None.

    Returns:
        dict[str, tuple[float, float]]: Per realigned layer, the mean Eq. 7 IoU of its range
        with ``mu +- sigma * std`` of its statistics before and after the reset.
    """
    summary = {}
    for name, layer in find_pwlu_layers(model):
        if layer.realigned:
            continue
        left, right = layer.valid_range()
        left, right = left.detach().clone(), right.detach().clone()
        layer.realign(distributed=distributed, name=name)
        # realign() wrote the (rank-combined) statistics back into the buffers.
        mean, std = layer.running_mean, layer.running_std
        before = alignment_iou(left, right, mean, std, layer.sigma).mean().item()
        left, right = layer.valid_range()
        after = alignment_iou(left, right, mean, std, layer.sigma).mean().item()
        summary[name] = (before, after)
    return summary


def stage_name(name: str, depth: int = 2) -> str:
    """The stage of a layer: the first ``depth`` components of its parent module's name.

    ``backbone.layer1.0.act1 -> backbone.layer1``, ``rpn_head.rpn_act -> rpn_head``; a
    top-level layer is its own stage; ``depth=0`` puts every layer in ``'all'``.
    """
    if depth <= 0:
        return 'all'
    parts = name.split('.')
    if len(parts) == 1:
        return name
    return '.'.join(parts[:-1][:depth])


@dataclass
class LayerAlignment:
    """Input statistics of one PWLU and their alignment with its range (float64 CPU tensors,
    one entry per set).

    Attributes:
        name (str): Module name of the layer.
        mode (str): ``'channel'`` or ``'layer'``.
        realigned (bool): Whether the layer was in phase II.
        count (int): Input elements per set that were seen.
        mean (Tensor): Mean of the input, each call weighted the same.
        std (Tensor): Population standard deviation of that mixture.
        left_bound (Tensor): ``B_L`` (of :meth:`PWLU.valid_range`).
        right_bound (Tensor): ``B_R``.
        outside (Tensor): Fraction of the inputs outside ``[B_L, B_R]``, each call weighted
            the same.
        iou (Tensor): Eq. 7 IoU of ``[B_L, B_R]`` with ``[mean - s * std, mean + s * std]``.
        sigma (float): ``s`` used for ``iou``.
    """
    name: str
    mode: str
    realigned: bool
    count: int
    mean: torch.Tensor
    std: torch.Tensor
    left_bound: torch.Tensor
    right_bound: torch.Tensor
    outside: torch.Tensor
    iou: torch.Tensor
    sigma: float

    @property
    def num_sets(self) -> int:
        """Number of parameter sets (channels, or 1 layer-wise)."""
        return self.iou.numel()


class _Accumulator:
    """One layer's calls: the moments of each call's input and its fraction outside."""

    def __init__(self) -> None:
        self.count = 0  # elements per set (a Python int: the shape is known without a sync)
        self.moments: List[Tuple[torch.Tensor, torch.Tensor]] = []
        self.outside: List[torch.Tensor] = []

    def add(self, layer: PWLU, x: torch.Tensor) -> None:
        if x.numel() == 0:
            return
        with torch.no_grad():
            xf = layer.channels_first(x.detach())
            if not xf.is_floating_point() or xf.dtype in (torch.float16, torch.bfloat16):
                xf = xf.float()
            sets = layer.num_sets
            if layer.mode == 'channel':
                dims = [0] + list(range(2, xf.dim()))
                n = xf.numel() // xf.shape[1]
                view = (1, -1) + (1, ) * (xf.dim() - 2)
            else:
                dims = list(range(xf.dim()))
                n = xf.numel()
                view = (1, ) * xf.dim()
            var, mean = torch.var_mean(xf, dim=dims, correction=0)
            left, right = layer.valid_range()
            left = left.detach().to(xf.dtype).reshape(view)
            right = right.detach().to(xf.dtype).reshape(view)
            outside = ((xf < left) | (xf > right)).sum(dim=dims).reshape(sets).double() / n
            self.moments.append((mean.reshape(sets).double(), var.reshape(sets).double()))
            self.outside.append(outside)
            self.count += n


class InputStatistics:
    """Collects per-set input statistics of PWLU layers through forward pre-hooks.

    Use it as a context manager around the forwards to observe, then read :meth:`results`::

        stats = InputStatistics(find_pwlu_layers(model))
        with stats:
            for batch in batches:
                model(batch)
        alignment = stats.results()   # {name: LayerAlignment}

    The hooks only read the input and ``B_L``/``B_R`` at each forward. A layer's statistics
    are the mixture of all its calls (over the batches, and the FPN levels of a shared head),
    each call weighted the same, as the statistics the reset is made from are.

    Args:
        layers (dict | Sequence[tuple[str, PWLU]]): The layers to observe, by name.
        sigma (float, optional): Width of the input range in standard deviations for the IoU.
            Defaults to None: each layer's own ``sigma`` (3 by default).
    """

    def __init__(self, layers: LayerList, sigma: Optional[float] = None) -> None:
        items = layers.items() if isinstance(layers, dict) else layers
        self.layers: 'OrderedDict[str, PWLU]' = OrderedDict(items)
        self.sigma = sigma
        self._handles: List = []
        self._acc: Dict[str, _Accumulator] = {}
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._acc = {name: _Accumulator() for name in self.layers}

    @property
    def attached(self) -> bool:
        """Whether the pre-hooks are registered."""
        return bool(self._handles)

    def attach(self) -> 'InputStatistics':
        """Register the forward pre-hooks (idempotent)."""
        if not self._handles:
            for name, layer in self.layers.items():
                self._handles.append(layer.register_forward_pre_hook(self._make_hook(name)))
        return self

    def detach(self) -> None:
        """Remove the forward pre-hooks (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> 'InputStatistics':
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def _make_hook(self, name: str):
        acc = self._acc

        def hook(layer: PWLU, args: tuple) -> None:
            if args and isinstance(args[0], torch.Tensor):
                acc[name].add(layer, args[0])

        return hook

    def add(self, name: str, x: torch.Tensor) -> None:
        """Account for ``x`` as an input of layer ``name`` (what the pre-hook does)."""
        self._acc[name].add(self.layers[name], x)

    def results(self, include_empty: bool = False) -> 'OrderedDict[str, LayerAlignment]':
        """Statistics and alignment per layer, in layer order.

        Args:
            include_empty (bool): Also return layers that saw no input (count 0, NaN
                statistics). Defaults to False.

        Returns:
            OrderedDict[str, LayerAlignment]: Per observed layer.
        """
        out = OrderedDict()
        for name, layer in self.layers.items():
            acc = self._acc[name]
            sets = layer.num_sets
            left, right = (t.detach().double().cpu().reshape(sets) for t in layer.valid_range())
            if acc.count == 0:
                if not include_empty:
                    continue
                nan = torch.full((sets, ), float('nan'), dtype=torch.float64)
                mean = std = outside = iou = nan
            else:
                # Each call weighs the same, as in the statistics the reset is made from.
                mean, var, finite, _ = pool_moments([(m.cpu(), v.cpu()) for m, v in acc.moments])
                mean = torch.where(finite, mean, float('nan'))
                std = torch.where(finite, var.clamp_min(0).sqrt(), float('nan'))
                outside = torch.stack(acc.outside).cpu().mean(0)
                sigma = layer.sigma if self.sigma is None else self.sigma
                iou = alignment_iou(left, right, mean, std, sigma).double()
            out[name] = LayerAlignment(
                name=name, mode=layer.mode, realigned=layer.realigned, count=acc.count,
                mean=mean, std=std, left_bound=left, right_bound=right, outside=outside, iou=iou,
                sigma=layer.sigma if self.sigma is None else self.sigma)
        return out


def summarize_stages(alignment: Iterable[LayerAlignment], depth: int = 2
                     ) -> 'OrderedDict[str, Tuple[float, float]]':
    """Mean IoU and fraction of inputs outside ``[B_L, B_R]`` per stage and overall.

    The IoU is the mean over the sets of the stage's layers; the fraction outside weights each
    layer's by its elements. Layers that saw no input are skipped.

    Returns:
        OrderedDict[str, tuple[float, float]]: ``{stage: (mean IoU, fraction outside)}`` in
        order of appearance, then ``'all'``; empty when nothing was seen.
    """
    sums: 'OrderedDict[str, List[float]]' = OrderedDict()
    for res in alignment:
        if res.count == 0:
            continue
        for stage in dict.fromkeys((stage_name(res.name, depth), 'all')):
            s = sums.setdefault(stage, [0.0, 0, 0.0, 0])
            s[0] += res.iou.sum().item()
            s[1] += res.num_sets
            s[2] += (res.outside * res.count).sum().item()
            s[3] += res.count * res.num_sets
    if 'all' in sums:
        sums.move_to_end('all')
    return OrderedDict((k, (v[0] / v[1], v[2] / v[3])) for k, v in sums.items())
