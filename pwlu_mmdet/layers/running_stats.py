"""Phase-I running statistics of a PWLU: the EMA of Eq. 5, its steps, and the ranks combined.

Every statistic here is a mixture of distributions known by their moments (the calls of a
step, the ranks at the switch, the calls a measurement saw), and :func:`pool_moments` is the
one formula for it. docs/realignment.md explains the choices.
"""
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

__all__ = [
    'pool_moments', 'StatisticsStep', 'update_running', 'combine_ranks', 'Combined',
    'add_per_set_counters'
]

Moments = Tuple[torch.Tensor, torch.Tensor]


def pool_moments(moments: Sequence[Moments], weights: Optional[Sequence[float]] = None
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean and variance of a mixture of distributions, per set.

    Over the components whose mean and variance are both finite, with weights ``w_i``
    normalised over them: ``mean = sum_i w_i mu_i`` and ``var = sum_i w_i (var_i +
    (mu_i - mean)^2)`` (the law of total variance in its deviations form, which stays accurate
    where the means are far from zero; ``E[x^2] - mean^2`` does not).

    Args:
        moments (Sequence[tuple[Tensor, Tensor]]): ``(mean, var)`` per component, each of
            shape ``(sets,)``.
        weights (Sequence[float], optional): A weight per component, e.g. its element count.
            Defaults to None: equal weights, and a single component is returned unchanged.

    Returns:
        tuple[Tensor, Tensor, Tensor, Tensor]: ``mean``, ``var`` (arbitrary where ``finite``
        is False), ``finite`` (bool: the set had a finite component) and ``skipped`` (int64:
        its components with non-finite moments).
    """
    if len(moments) == 1 and weights is None:
        mean, var = moments[0]
        finite = torch.isfinite(mean) & torch.isfinite(var)
        return mean, var, finite, (~finite).long()
    means = torch.stack([mean for mean, _ in moments])
    variances = torch.stack([var for _, var in moments])
    ok = torch.isfinite(means) & torch.isfinite(variances)
    if weights is None:
        w = ok.to(means.dtype)
    else:
        w = torch.as_tensor(weights, dtype=means.dtype, device=means.device)
        w = torch.where(ok, w.reshape(-1, *[1] * (means.dim() - 1)), 0.0)
    total = w.sum(0)
    total = torch.where(total > 0, total, 1.0)
    mean = (torch.where(ok, means, 0.0) * w).sum(0) / total
    spread = torch.where(ok, variances + (means - mean).square(), 0.0)
    var = (spread * w).sum(0) / total
    return mean, var, ok.any(0), (~ok).sum(0)


class StatisticsStep:
    """The statistics step of one layer: how deeply it is opened, and its calls' moments.

    Steps nest: only the outermost :meth:`end` closes the step and hands its calls over.
    """

    def __init__(self) -> None:
        self.depth = 0
        self.moments: List[Moments] = []

    def begin(self) -> None:
        self.depth += 1

    def end(self, force: bool = False) -> List[Moments]:
        """Leave one level (every level with ``force``); the pooled calls once it is closed."""
        if self.depth == 0:
            return []
        self.depth = 0 if force else self.depth - 1
        if self.depth:
            return []
        moments, self.moments = self.moments, []
        return moments

    def drop(self) -> None:
        self.depth = 0
        self.moments = []


@torch.no_grad()
def update_running(layer, moments: Sequence[Moments]) -> None:
    """One EMA update (Eq. 5) of ``layer``'s buffers from the calls of one step.

    The calls weigh the same whatever their element counts. Per set, calls with non-finite
    moments are left out and counted in ``channel_batches_skipped``; a set without a finite
    call keeps its statistics. ``std`` is the population one (correction 0), the paper's.
    """
    mean, var, finite, skipped = pool_moments(moments)
    m = layer.momentum
    new_mean = (layer.running_mean * (1 - m)).add_(mean.to(layer.running_mean.dtype), alpha=m)
    new_std = (layer.running_std * (1 - m)).add_(var.sqrt().to(layer.running_std.dtype),
                                                 alpha=m)
    layer.running_mean.copy_(torch.where(finite, new_mean, layer.running_mean))
    layer.running_std.copy_(torch.where(finite, new_std, layer.running_std))
    layer.num_batches_tracked.add_(1)
    layer.channel_batches_tracked.add_(finite)
    layer.channel_batches_skipped.add_(skipped)


class Combined(NamedTuple):
    """A layer's running statistics combined over the ranks (:func:`combine_ranks`)."""
    mean: torch.Tensor  # float32 per set; 0 where no rank has statistics
    std: torch.Tensor  # float32 per set; 1 where no rank has statistics
    ranks: torch.Tensor  # per set: ranks with finite statistics for it
    layer_ranks: int  # ranks that tracked at least one step
    tracked: torch.Tensor  # per set: channel_batches_tracked summed over the ranks
    skipped: torch.Tensor  # per set: channel_batches_skipped summed over the ranks


@torch.no_grad()
def combine_ranks(layer, distributed: Optional[bool] = None) -> Combined:
    """``layer``'s running statistics, per set the equal-weight mixture of the ranks that have
    them (DDP ranks run equally many steps), gathered in float64.

    A collective when ``distributed``: every rank must call it, for the layers in the same
    order. ``None``: when ``torch.distributed`` runs more than one rank.
    """
    if distributed is None:
        distributed = (dist.is_available() and dist.is_initialized()
                       and dist.get_world_size() > 1)
    sets = layer.running_mean.numel()
    has = layer.channel_batches_tracked > 0
    nan = float('nan')
    local = torch.cat([
        torch.where(has, layer.running_mean.double(), nan),
        torch.where(has, layer.running_std.double().square(), nan),
        layer.channel_batches_tracked.double(),
        layer.channel_batches_skipped.double(),
        (layer.num_batches_tracked > 0).double().reshape(1)])
    if distributed:
        gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, local)
    else:
        gathered = [local]
    parts = [g.split([sets] * 4 + [1]) for g in gathered]
    mean, var, _, skipped_ranks = pool_moments([(p[0], p[1]) for p in parts])
    ranks = len(parts) - skipped_ranks
    present = ranks > 0
    return Combined(
        mean=torch.where(present, mean, 0.0).float(),
        std=torch.where(present, var.sqrt(), 1.0).float(),
        ranks=ranks,
        layer_ranks=int(sum(p[4].item() for p in parts)),
        tracked=sum(p[2] for p in parts).round().long(),
        skipped=sum(p[3] for p in parts).round().long())


def add_per_set_counters(state_dict: dict, prefix: str) -> None:
    """Give a state dict without the per-set counters (an older layer's) their values, in place.

    Those layers updated every set in every step, so ``channel_batches_tracked`` is
    ``num_batches_tracked``, except where the running statistics are not finite (a non-finite
    batch poisoned them): such a set restarts from ``(0, 1)`` with no update counted. Nothing
    was skipped. A state dict without ``running_mean`` is left alone.
    """
    mean = state_dict.get(prefix + 'running_mean')
    std = state_dict.get(prefix + 'running_std')
    count = state_dict.get(prefix + 'num_batches_tracked')
    if mean is None or std is None or count is None:
        return
    tracked_key = prefix + 'channel_batches_tracked'
    if tracked_key not in state_dict:
        finite = torch.isfinite(mean) & torch.isfinite(std)
        state_dict[tracked_key] = torch.where(finite, count.to(torch.long), 0)
        state_dict[prefix + 'running_mean'] = torch.where(finite, mean, 0.0)
        state_dict[prefix + 'running_std'] = torch.where(finite, std, 1.0)
    skipped_key = prefix + 'channel_batches_skipped'
    if skipped_key not in state_dict:
        state_dict[skipped_key] = torch.zeros(mean.shape, dtype=torch.long, device=mean.device)
