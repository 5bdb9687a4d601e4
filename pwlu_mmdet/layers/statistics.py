"""What measures the PWLU layers of a model at run time (needs only torch).

* :func:`find_pwlu_layers`: every PWLU of a model, by name, in module order;
* :func:`alignment_iou`: the Eq. 7 IoU of a learnable range with an input range;
* :class:`InputStatistics`: per-set input statistics through forward pre-hooks, and their
  alignment with ``[B_L, B_R]`` (:class:`LayerAlignment`), summarised per stage by
  :func:`summarize_stages`;
* :func:`statistics_step` and :func:`realign_model`: the two phase operations on a whole model.

The hooks of :class:`InputStatistics` read the input only: the layers' parameters and buffers are
never written. Used by :class:`pwlu_mmdet.engine.PWLUHook` (one training iteration at the
logging interval), by :mod:`pwlu_mmdet.analysis` (over K batches), by the DDP gradient sync and
by the benchmarks.
"""
import contextlib
import sys
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .pwlu import PWLU

__all__ = ['alignment_iou', 'find_pwlu_layers', 'unwrap_model', 'statistics_step',
           'realign_model', 'LayerAlignment', 'InputStatistics', 'stage_name',
           'summarize_stages']

LayerList = Union[Dict[str, PWLU], Sequence[Tuple[str, PWLU]]]


def alignment_iou(left_bound: torch.Tensor, right_bound: torch.Tensor, mean: torch.Tensor,
                  std: torch.Tensor, sigma: float = 3.0) -> torch.Tensor:
    """Alignment IoU of Eq. 7: ``|A n B| / |A u B|`` of two intervals on the real line.

    ``A = [left_bound, right_bound]`` is the learnable range and ``B = [mean - sigma * std,
    mean + sigma * std]`` the input's range. Degenerate (zero-length) unions count as IoU 1 when
    the intervals coincide and 0 otherwise.

    Args:
        left_bound (Tensor): ``B_L`` per parameter set.
        right_bound (Tensor): ``B_R``, same shape.
        mean (Tensor): Input mean per parameter set.
        std (Tensor): Input standard deviation per parameter set.
        sigma (float): Width of the input range in standard deviations. Defaults to 3.0.

    Returns:
        Tensor: IoU per parameter set, float32, in ``[0, 1]``.
    """
    a_lo, a_hi = left_bound.float(), right_bound.float()
    b_lo, b_hi = (mean - sigma * std).float(), (mean + sigma * std).float()
    inter = (torch.minimum(a_hi, b_hi) - torch.maximum(a_lo, b_lo)).clamp_min(0)
    union = torch.maximum(a_hi, b_hi) - torch.minimum(a_lo, b_lo)
    same = (a_lo == b_lo) & (a_hi == b_hi)
    return torch.where(union > 0, inter / union.clamp_min(torch.finfo(torch.float32).tiny),
                       same.float())


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a ``DataParallel``/``DistributedDataParallel`` or mmengine wrapper.

    mmengine's wrappers are recognised by mmengine's own ``is_model_wrapper``, looked up only
    when ``mmengine.model`` is already imported (a model can only be in such a wrapper then):
    measuring a model never imports mmengine.
    """
    mmengine_model = sys.modules.get('mmengine.model')
    if mmengine_model is not None:
        wrapped = mmengine_model.is_model_wrapper(model)
    else:
        wrapped = isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel))
    return model.module if wrapped else model


def find_pwlu_layers(model: nn.Module) -> List[Tuple[str, PWLU]]:
    """``(name, layer)`` of every PWLU in ``model`` (unwrapped if needed), in module order.

    The order is the same on every rank, so per-layer collectives in this order match up.
    """
    return [(name, m) for name, m in unwrap_model(model).named_modules() if isinstance(m, PWLU)]


@contextlib.contextmanager
def statistics_step(module: nn.Module) -> Iterator[None]:
    """Make the block one statistics step for every PWLU in ``module`` (Eq. 5).

    For training loops without :class:`pwlu_mmdet.engine.PWLUHook` (which does this around
    every training iteration) in which a PWLU runs several times per step::

        for batch in loader:
            with statistics_step(model):
                loss = model(batch)
            loss.backward()

    Args:
        module (nn.Module): A PWLU or a model containing PWLU layers.
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
    """Realign every PWLU of ``model`` that is still in phase I (Eq. 6).

    Layers are visited in module order, which is the same on every rank, so the per-layer
    collectives of :meth:`PWLU.realign` match up under ``torch.distributed``.

    Args:
        model (nn.Module): The model or its wrapper.
        distributed (bool, optional): Passed to :meth:`PWLU.realign`. Defaults to None.

    Returns:
        dict[str, tuple[float, float]]: Per realigned layer, the mean alignment IoU (Eq. 7)
        of its learnable range with its input range ``mu +- sigma * std`` before and after the
        reset (after is 1 up to the minimum range width).
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
    """The stage a layer belongs to: the first ``depth`` components of its parent module.

    ``backbone.layer1.0.act1 -> backbone.layer1``, ``backbone.act1 -> backbone``,
    ``roi_head.bbox_head.shared_convs.0.activate -> roi_head.bbox_head``,
    ``rpn_head.rpn_act -> rpn_head``. A top-level layer (no parent) is its own stage; with
    ``depth=0`` every layer is in the stage ``'all'``.

    Args:
        name (str): Dotted module name of the layer.
        depth (int): Number of leading name components that make a stage. Defaults to 2.

    Returns:
        str: The stage name.
    """
    if depth <= 0:
        return 'all'
    parts = name.split('.')
    if len(parts) == 1:
        return name
    return '.'.join(parts[:-1][:depth])


@dataclass
class LayerAlignment:
    """Input statistics of one PWLU layer and their alignment with its learnable range.

    Every tensor is float64 on the CPU with one entry per parameter set (``C`` channel-wise,
    1 layer-wise).

    Attributes:
        name (str): Module name of the layer.
        mode (str): ``'channel'`` or ``'layer'``.
        realigned (bool): Whether the layer was in phase II.
        count (int): Input elements per parameter set that were seen.
        mean (Tensor): Mean of the input.
        std (Tensor): Population standard deviation of the input.
        left_bound (Tensor): ``B_L`` (of :meth:`PWLU.valid_range`).
        right_bound (Tensor): ``B_R`` (of :meth:`PWLU.valid_range`).
        outside (Tensor): Fraction of the inputs below ``B_L`` or above ``B_R``.
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
    """Per-set sums of one layer: elements, ``n * mean``, ``n * (var + mean^2)``, outside."""

    def __init__(self) -> None:
        self.count = 0  # elements per set (a Python int: the shape is known without a sync)
        self.sum = None
        self.sum_sq = None
        self.outside = None

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
            mean, var = mean.reshape(sets).double(), var.reshape(sets).double()
            left, right = layer.valid_range()
            left = left.detach().to(xf.dtype).reshape(view)
            right = right.detach().to(xf.dtype).reshape(view)
            outside = ((xf < left) | (xf > right)).sum(dim=dims).reshape(sets).double()
            if self.sum is None:
                self.sum, self.sum_sq, self.outside = (torch.zeros_like(mean) for _ in range(3))
            self.count += n
            self.sum += n * mean
            self.sum_sq += n * (var + mean * mean)
            self.outside += outside


class InputStatistics:
    """Collects per-set input statistics of PWLU layers through forward pre-hooks.

    Use it as a context manager around the forwards to observe, then read :meth:`results`::

        stats = InputStatistics(find_pwlu_layers(model))
        with stats:
            for batch in batches:
                model(batch)
        alignment = stats.results()   # {name: LayerAlignment}

    The hooks only read the input (``valid_range()`` of the layer gives ``B_L``/``B_R`` at the
    time of each forward); statistics are pooled over all forwards of all batches (a layer called
    several times per batch, e.g. a head shared by FPN levels, contributes every call). The
    running sums stay on the input's device until :meth:`results`.

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
                mean = acc.sum.cpu() / acc.count
                var = (acc.sum_sq.cpu() / acc.count - mean * mean).clamp_min(0)
                std = var.sqrt()
                outside = acc.outside.cpu() / acc.count
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

    The mean IoU is over every parameter set (channel) of the stage's layers; the fraction
    outside is over every input element of the stage. Layers that saw no input are skipped.

    Args:
        alignment (Iterable[LayerAlignment]): Per-layer results of :meth:`InputStatistics.results`.
        depth (int): See :func:`stage_name`. Defaults to 2.

    Returns:
        OrderedDict[str, tuple[float, float]]: ``{stage: (mean IoU, fraction outside)}`` in
        order of first appearance, then ``'all'`` (every layer) last; empty when nothing was seen.
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
