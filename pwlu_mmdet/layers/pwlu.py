"""The PWLU activation layer (docs/method.md) with statistic-based realignment (Sec. 3.3).

Only torch is needed. ``import pwlu_mmdet.engine`` registers the class in mmengine's root
``MODELS`` (:mod:`pwlu_mmdet.engine.activations`), so that ``dict(type='PWLU', num_channels=64)``
builds in every OpenMMLab scope.
"""
import warnings
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import nn

from .. import ops
from ..ops import compiled_available, pwlu

__all__ = ['PWLU', 'pool_moments']

_PHASE_I = 1
_PHASE_II = 2
_PARAM_NAMES = ('points', 'left_bound', 'right_bound', 'left_slope', 'right_slope')


def pool_moments(moments: Sequence[Tuple[torch.Tensor, torch.Tensor]]
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean and variance of the equal-weight mixture of several calls' input distributions.

    Per set, over the calls whose mean and variance are both finite:
    ``mean = E_i[mu_i]`` and ``var = E_i[var_i + (mu_i - mean)^2]`` (the law of total
    variance; the deviations form keeps float32 accurate where the inputs' means are far from
    zero). Each call weighs the same whatever its number of elements: a head shared by the FPN
    levels sees most of its elements on the finest level, and weighting by elements would let
    that level alone set the range, leaving the coarse levels' inputs outside it.
    A single call is returned unchanged, to the bit.

    Args:
        moments (Sequence[tuple[Tensor, Tensor]]): ``(mean, var)`` per call, each of shape
            ``(sets,)``.

    Returns:
        tuple[Tensor, Tensor, Tensor, Tensor]: ``mean`` and ``var`` (arbitrary finite values
        where ``finite`` is False), ``finite`` (bool: the set had at least one finite call) and
        ``skipped`` (int64: the set's calls with non-finite statistics).
    """
    if len(moments) == 1:
        mean, var = moments[0]
        finite = torch.isfinite(mean) & torch.isfinite(var)
        return mean, var, finite, (~finite).long()
    means = torch.stack([mean for mean, _ in moments])
    variances = torch.stack([var for _, var in moments])
    ok = torch.isfinite(means) & torch.isfinite(variances)
    calls = ok.sum(0)
    denominator = calls.clamp_min(1).to(means.dtype)
    mean = torch.where(ok, means, 0.0).sum(0) / denominator
    spread = variances + (means - mean).square()
    var = torch.where(ok, spread, 0.0).sum(0) / denominator
    return mean, var, calls > 0, (~ok).sum(0)


class _Combined(NamedTuple):
    """Statistics of a layer combined over ranks (see ``PWLU._combined_statistics``)."""
    mean: torch.Tensor  # float32 per set
    std: torch.Tensor  # float32 per set
    ranks: torch.Tensor  # per set: ranks with finite statistics for it
    layer_ranks: int  # ranks that tracked at least one batch
    tracked: torch.Tensor  # per set: channel_batches_tracked summed over ranks
    skipped: torch.Tensor  # per set: channel_batches_skipped summed over ranks


class PWLU(nn.Module):
    """Piecewise Linear Unit with statistic-based realignment.

    Training has two phases (docs/method.md, "Initialisation and the two phases"):

    * Phase I (until :meth:`realign`): the output is exactly ``torch.relu(x)``. In training mode
      every non-empty forward updates per-channel running statistics of the input (float32 EMA
      of the mean and of the standard deviation, as BatchNorm); eval mode never updates them.
      Inside a statistics step (:meth:`begin_statistics_step`, opened by ``PWLUHook`` around
      every training iteration) the calls of a layer run several times per step, such as a head
      shared by the FPN levels, are pooled into one update. Per channel, batch statistics that
      are not finite are skipped and counted (``channel_batches_skipped``).
      The parameters do not take part in the forward and have ``requires_grad=False``, so no
      optimizer can move them (not even by weight decay or momentum) and
      ``DistributedDataParallel`` built in phase I does not reduce (nor wait for) their
      gradients. Use :class:`pwlu_mmdet.engine.PWLUOptimWrapperConstructor` so that they are in
      the optimizer anyway, and :class:`pwlu_mmdet.engine.PWLUHook` to switch phases and to
      synchronise their gradients under DDP in phase II.
    * Phase II: :meth:`realign` resets the parameters from the statistics (Eq. 6, the
      ``sigma`` rule), sets ``requires_grad=True`` and the layer computes the PWLU (Eq. 1-4) with
      the compiled op; all parameters are then trained normally.

    The phase is a persistent buffer, so it follows the checkpoint (resume before or after the
    switch, test-time loading); ``requires_grad`` follows the loaded phase.

    Args:
        num_channels (int, optional): Number of channels ``C`` (the ``channel_axis`` of the
            input). Required when ``mode='channel'``; checked against the input when given in
            ``'layer'`` mode.
        num_intervals (int): Number of intervals ``N``; even, so that zero is a demarcation
            point of the ReLU initialisation. Defaults to 16 (the paper's setting).
        mode (str): ``'channel'`` (one parameter set and statistics per channel) or
            ``'layer'`` (one set shared by all channels). Defaults to ``'channel'``.
        init_bound (float): Initial range ``[-init_bound, init_bound]`` of the ReLU
            initialisation; only used by a layer that is never realigned (phase I computes
            ``relu`` directly) and by channels that never had finite input statistics when it
            is. Defaults to 3.0, the 3-sigma range of unit-variance input.
        momentum (float): EMA momentum ``m`` of the running statistics. Defaults to 0.1.
        sigma (float): Width of the reset range in standard deviations (Eq. 6). Defaults to 3.0.
        inplace (bool): Write the output into the input where that is safe: in phase II under
            ``torch.no_grad()`` / ``torch.inference_mode()`` (inference), as ``ReLU(inplace=True)``
            does, saving the output allocation. Training always returns a new tensor (autograd
            needs the input of the PWLU backward). MMCV's ``ConvModule`` passes True. Defaults to
            False.
        range_eps (float): Smallest allowed range, relative to ``max(1, |B_L|, |B_R|)``. If
            training pushes ``B_R`` below ``B_L + range_eps * scale``, the forward uses
            ``B_L + range_eps * scale`` instead (a clamp, differentiable almost everywhere), so the
            op never divides by zero or flips its range. Defaults to 1e-3.
        eval_impl (str): How eval mode computes phase II. ``'auto'``: the compiled op (it builds
            the Sec. 4.3 tables per call, so nothing can go stale) when it is available, else
            ``'table'``. ``'table'``: standard torch ops on Sec. 4.3 tables that are cached
            between calls and rebuilt when a parameter, its device or dtype changes. ONNX export
            and tracing always use the table form without the cache (the custom op does not
            export). Defaults to ``'auto'``.
        channel_axis (int): Where the channels are: ``1`` for ``(N, C, *spatial)`` feature
            maps, ``-1`` for channels-last tokens ``(*, C)`` such as a transformer FFN's
            ``(B, L, C)``. Defaults to 1.

    Shape:
        - Input: ``(N, C)`` or ``(N, C, *spatial)``; ``(*, C)`` with ``channel_axis=-1``.
        - Output: same shape, dtype and memory format as the input.
    """

    def __init__(self,
                 num_channels: Optional[int] = None,
                 num_intervals: int = 16,
                 mode: str = 'channel',
                 init_bound: float = 3.0,
                 momentum: float = 0.1,
                 sigma: float = 3.0,
                 inplace: bool = False,
                 range_eps: float = 1e-3,
                 eval_impl: str = 'auto',
                 channel_axis: int = 1) -> None:
        super().__init__()
        if mode not in ('channel', 'layer'):
            raise ValueError(f"PWLU: mode must be 'channel' or 'layer', got {mode!r}")
        if mode == 'channel' and num_channels is None:
            raise ValueError("PWLU: num_channels is required when mode='channel'")
        if num_channels is not None and int(num_channels) < 1:
            raise ValueError(f'PWLU: num_channels must be positive, got {num_channels}')
        if int(num_intervals) != num_intervals or num_intervals < 2 or num_intervals % 2:
            raise ValueError('PWLU: num_intervals must be an even integer >= 2 (zero must be a '
                             f'demarcation point of the ReLU initialisation), got {num_intervals}')
        if not init_bound > 0:
            raise ValueError(f'PWLU: init_bound must be positive, got {init_bound}')
        if not 0 < momentum <= 1:
            raise ValueError(f'PWLU: momentum must be in (0, 1], got {momentum}')
        if not sigma > 0:
            raise ValueError(f'PWLU: sigma must be positive, got {sigma}')
        if not range_eps > 0:
            raise ValueError(f'PWLU: range_eps must be positive, got {range_eps}')
        if eval_impl not in ('auto', 'table'):
            raise ValueError(f"PWLU: eval_impl must be 'auto' or 'table', got {eval_impl!r}")
        if channel_axis not in (1, -1):
            raise ValueError(f'PWLU: channel_axis must be 1 or -1, got {channel_axis}')
        self.num_channels = None if num_channels is None else int(num_channels)
        self.num_intervals = int(num_intervals)
        self.mode = mode
        self.init_bound = float(init_bound)
        self.momentum = float(momentum)
        self.sigma = float(sigma)
        self.inplace = inplace  # used by inference only, see the docstring
        self.range_eps = float(range_eps)
        self.eval_impl = eval_impl
        self.channel_axis = channel_axis

        sets = self.num_channels if mode == 'channel' else 1
        n = self.num_intervals
        self.points = nn.Parameter(torch.empty(sets, n + 1))
        self.left_bound = nn.Parameter(torch.empty(sets))
        self.right_bound = nn.Parameter(torch.empty(sets))
        self.left_slope = nn.Parameter(torch.empty(sets))
        self.right_slope = nn.Parameter(torch.empty(sets))
        # Statistics are float32 whatever the input dtype (AMP), like BatchNorm's.
        self.register_buffer('running_mean', torch.zeros(sets))
        self.register_buffer('running_std', torch.ones(sets))
        self.register_buffer('num_batches_tracked', torch.tensor(0, dtype=torch.long))
        # Per set: statistics updates it took part in, and batch statistics (one per call)
        # that were not finite and were left out (see _update_statistics).
        self.register_buffer('channel_batches_tracked', torch.zeros(sets, dtype=torch.long))
        self.register_buffer('channel_batches_skipped', torch.zeros(sets, dtype=torch.long))
        self.register_buffer('phase', torch.tensor(_PHASE_I, dtype=torch.long))
        # Python mirror of ``phase``: reading the buffer in every forward would synchronise the
        # GPU. It is refreshed by realign(), reset_parameters() and _load_from_state_dict().
        self._realigned = False
        self._table_cache = None
        # (mean, var) of every call of the open statistics step; None when no step is open.
        self._step_moments: Optional[List[Tuple[torch.Tensor, torch.Tensor]]] = None
        self._step_depth = 0  # open begin_statistics_step() calls: steps nest
        self.reset_parameters()

    # ------------------------------------------------------------------ phase and parameters
    @property
    def num_sets(self) -> int:
        """Number of parameter sets: ``C`` channel-wise, 1 layer-wise."""
        return self.points.shape[0]

    @property
    def realigned(self) -> bool:
        """Whether :meth:`realign` has run (phase II)."""
        return self._realigned

    def reset_parameters(self) -> None:
        """Initialise as ReLU on ``[-init_bound, init_bound]``, clear statistics, enter phase I."""
        with torch.no_grad():
            self.set_relu_range(
                torch.full_like(self.left_bound, -self.init_bound),
                torch.full_like(self.right_bound, self.init_bound))
            self.running_mean.zero_()
            self.running_std.fill_(1.0)
            self.num_batches_tracked.zero_()
            self.channel_batches_tracked.zero_()
            self.channel_batches_skipped.zero_()
            self.phase.fill_(_PHASE_I)
        self._step_moments = None
        self._step_depth = 0
        self._set_phase(False)

    def _set_phase(self, realigned: bool) -> None:
        self._realigned = bool(realigned)
        # Phase I: frozen for real (see the class docstring). Phase II: trained.
        for p in self._pwlu_parameters():
            p.requires_grad_(self._realigned)

    def _pwlu_parameters(self):
        return [getattr(self, name) for name in _PARAM_NAMES]

    @torch.no_grad()
    def set_relu_range(self, left_bound: torch.Tensor, right_bound: torch.Tensor) -> None:
        """Make the function ReLU on the range ``[left_bound, right_bound]``, in place.

        Writes ``Y_i = ReLU(B_i)`` at the demarcation points ``B_i = B_L + i * (B_R - B_L) / N``
        (placed exactly as the op places them) and each outer slope as ReLU's just outside its
        bound: ``K_L = 1`` if ``B_L > 0`` else 0, ``K_R = 0`` if ``B_R < 0`` else 1 (the
        paper's ``K_L = 0``, ``K_R = 1`` where ``B_L <= 0 <= B_R``). The curve then equals ReLU
        from each bound towards 0, where the inputs that leave a range that excludes 0 fall.
        What the initialisation and the realignment (Eq. 6) write. The phase and the statistics stay as
        they are, and the parameter tensors are written in place, so that an optimizer built
        before keeps training them.

        Args:
            left_bound (Tensor): ``B_L`` per parameter set, shape ``(sets,)``.
            right_bound (Tensor): ``B_R``, same shape. Both are converted to the parameters'
                dtype.
        """
        n = self.num_intervals
        left_bound = left_bound.to(self.left_bound.dtype)
        right_bound = right_bound.to(self.right_bound.dtype)
        # Demarcation points exactly as the op places them: B_i = B_L + i * ((B_R - B_L) / N).
        step = (right_bound - left_bound) / n
        i = torch.arange(n + 1, device=step.device, dtype=step.dtype)
        demarcation = left_bound.unsqueeze(1) + i * step.unsqueeze(1)
        self.points.copy_(torch.relu(demarcation))
        self.left_bound.copy_(left_bound)
        self.right_bound.copy_(right_bound)
        self.left_slope.copy_((left_bound > 0).to(self.left_slope.dtype))
        self.right_slope.copy_((right_bound >= 0).to(self.right_slope.dtype))

    def valid_range(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(B_L, B_R)`` as the forward uses them, with ``B_R >= B_L + range_eps * scale``.

        Where the range is valid ``B_R`` is returned bit-exact, so the guard never perturbs a
        healthy layer. Where it is not, ``B_L + min_width`` is used: the gradient then reaches
        ``B_L`` (shifting the range) but not ``B_R``, and the range recovers once ``B_L`` moves
        away (:func:`pwlu_mmdet.ops.guard_range`; the compiled op applies it in its kernels).
        """
        return ops.guard_range(self.left_bound, self.right_bound, self.range_eps)

    # ------------------------------------------------------------------------- statistics
    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f'PWLU expects (N, C) or (N, C, *spatial) input, got shape '
                             f'{tuple(x.shape)}')
        if torch.jit.is_tracing():
            return  # shapes are fixed while tracing; the comparison would only warn
        if self.num_channels is not None and x.shape[1] != self.num_channels:
            raise ValueError(f'PWLU was built for {self.num_channels} channels but the input '
                             f'has {x.shape[1]} (shape {tuple(x.shape)})')

    def _phase_one_train(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(x)``, updating (or, in a statistics step, pooling) the statistics of ``x``."""
        # One pass over x for the output and the moments (the compiled op; without it, the
        # pure-PyTorch relu_with_moments_reference that ops exports under the same name).
        y, mean, var = ops.relu_with_moments(x, self.mode == 'channel')
        if self._step_moments is None:
            self._update_statistics([(mean, var)])  # no step open: this call is one
        else:
            self._step_moments.append((mean, var))
        return y

    @property
    def in_statistics_step(self) -> bool:
        """Whether a statistics step is open (:meth:`begin_statistics_step`)."""
        return self._step_moments is not None

    def begin_statistics_step(self) -> None:
        """Pool the statistics of the following phase-I training forwards into one update.

        Eq. 5 is one EMA update per training step. A layer called several times in a step (a
        head shared by the FPN levels) sees as many input distributions; between this call and
        :meth:`end_statistics_step` every call's mean and variance are kept, and the step then
        updates the running statistics once, from the mixture of the calls' distributions (see
        :func:`pool_moments`). :class:`pwlu_mmdet.engine.PWLUHook` opens a step before each
        training iteration and ends it after; :func:`statistics_step` does the same around any
        block of code. Without an open step every call is a step of its own. Steps nest: a
        step opened inside an open one (``statistics_step()`` inside the hook's) is part of it,
        and only the outermost :meth:`end_statistics_step` updates.
        """
        self._step_depth += 1
        if self._step_moments is None:
            self._step_moments = []

    def end_statistics_step(self) -> None:
        """Close the open statistics step: one update from the calls it pooled, if any.

        Does nothing when no step is open, and only leaves a nested one.
        :meth:`realign` ends an open step first, however deeply nested.
        """
        if self._step_depth > 1:
            self._step_depth -= 1
            return
        self._step_depth = 0
        moments, self._step_moments = self._step_moments, None
        if moments:
            self._update_statistics(moments)

    @torch.no_grad()
    def _update_statistics(self, moments: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> None:
        """One EMA update (Eq. 5) from the ``(mean, var)`` of the calls of one step.

        Per set, calls whose statistics are not finite (an ``inf``/``NaN`` input, a float16
        input that overflowed) are left out and counted in ``channel_batches_skipped``; a set
        without any finite call keeps its running statistics. Population variance
        (correction=0): defined for a single element per channel, and the paper's std(x).
        """
        mean, var, finite, skipped = pool_moments(moments)
        m = self.momentum
        new_mean = (self.running_mean * (1 - m)).add_(mean.to(self.running_mean.dtype), alpha=m)
        new_std = (self.running_std * (1 - m)).add_(var.sqrt().to(self.running_std.dtype),
                                                    alpha=m)
        self.running_mean.copy_(torch.where(finite, new_mean, self.running_mean))
        self.running_std.copy_(torch.where(finite, new_std, self.running_std))
        self.num_batches_tracked.add_(1)
        self.channel_batches_tracked.add_(finite)
        self.channel_batches_skipped.add_(skipped)

    @torch.no_grad()
    def _combined_statistics(self, distributed: Optional[bool]) -> '_Combined':
        """The statistics of all ranks, per set over the ranks that have finite ones.

        Every rank whose set took part in at least one update is one equally weighted component
        of a mixture (ranks see equal batch counts in DDP): ``mean = E_r[mu_r]`` and ``var =
        E_r[sigma_r^2 + mu_r^2] - mean^2``, reduced in float64 to keep the difference accurate.
        Sets that no rank has statistics for get the initial ``(0, 1)``.
        """
        if distributed is None:
            distributed = (dist.is_available() and dist.is_initialized()
                           and dist.get_world_size() > 1)
        has = self.channel_batches_tracked > 0
        layer_ranks = (self.num_batches_tracked > 0).double().reshape(1)
        if not distributed:
            return _Combined(torch.where(has, self.running_mean, 0.0),
                             torch.where(has, self.running_std, 1.0), has.long(),
                             int(layer_ranks.item()), self.channel_batches_tracked.clone(),
                             self.channel_batches_skipped.clone())
        mean = torch.where(has, self.running_mean.double(), 0.0)
        std = torch.where(has, self.running_std.double(), 0.0)
        buf = torch.cat([has.double(), mean, std * std + mean * mean,
                         self.channel_batches_tracked.double(),
                         self.channel_batches_skipped.double(), layer_ranks])
        dist.all_reduce(buf)
        ranks, sum_mean, sum_sq, tracked, skipped, _ = buf.split([self.num_sets] * 5 + [1])
        g_mean = sum_mean / ranks.clamp_min(1)
        g_var = (sum_sq / ranks.clamp_min(1) - g_mean * g_mean).clamp_min(0)
        has = ranks > 0
        return _Combined(torch.where(has, g_mean, 0.0).float(),
                         torch.where(has, g_var.sqrt(), 1.0).float(), ranks.round().long(),
                         int(round(buf[-1].item())), tracked.round().long(),
                         skipped.round().long())

    def global_statistics(self, distributed: Optional[bool] = None
                          ) -> Tuple[torch.Tensor, torch.Tensor, int]:
        """Running statistics combined over all ranks.

        Under ``torch.distributed`` each rank tracks its own statistics (mmengine wraps models
        with ``broadcast_buffers=False``). Per set, every rank with finite statistics for it
        counts as one equally weighted component of a mixture (ranks see equal batch counts in
        DDP), and the mixture's mean and variance are ``mean = E_r[mu_r]`` and
        ``var = E_r[sigma_r^2 + mu_r^2] - mean^2`` -- combining means and variances, not
        averaging standard deviations. Reduced in float64 to keep the difference accurate.
        This is a collective: every rank must call it, in the same order for every layer.

        Args:
            distributed (bool, optional): Whether to all-reduce. ``None``: when
                ``torch.distributed`` is initialised with more than one rank.

        Returns:
            tuple[Tensor, Tensor, int]: mean and std (float32, per set; the initial 0 and 1
            for a set that no rank has finite statistics for), and the number of ranks (1
            without distribution) that tracked at least one batch; 0 means no rank saw any
            training batch.
        """
        combined = self._combined_statistics(distributed)
        return combined.mean, combined.std, combined.layer_ranks

    @torch.no_grad()
    def realign(self, distributed: Optional[bool] = None, name: Optional[str] = None) -> None:
        """Eq. 6 reset from the running statistics, then phase II.

        ``B_L = mu - sigma * std``, ``B_R = mu + sigma * std``, ReLU on that range
        (:meth:`set_relu_range`), written in place so that an optimizer built before keeps training the same
        tensors. An open statistics step is ended first. Under ``torch.distributed`` the
        statistics of all ranks are combined first (:meth:`global_statistics`) and written back
        to the buffers (``channel_batches_tracked`` and ``channel_batches_skipped`` become the
        sums over the ranks), so every rank resets to identical parameters; it is then a
        collective that every rank must call. A set that never had finite statistics (on any
        rank) keeps the initial range ``[-init_bound, init_bound]``, with a warning.

        Args:
            distributed (bool, optional): See :meth:`global_statistics`.
            name (str, optional): The layer's name in the model, for the warnings.
                Defaults to None.
        """
        self._step_depth = min(self._step_depth, 1)
        self.end_statistics_step()
        combined = self._combined_statistics(distributed)
        self._warn_missing_statistics(combined, name)
        self.running_mean.copy_(combined.mean)
        self.running_std.copy_(combined.std)
        self.channel_batches_tracked.copy_(combined.tracked)
        self.channel_batches_skipped.copy_(combined.skipped)
        mean = combined.mean.to(self.left_bound.dtype)
        half = (self.sigma * combined.std).to(self.left_bound.dtype)
        has = combined.ranks > 0
        left = torch.where(has, mean - half, -self.init_bound)
        right = torch.where(has, mean + half, self.init_bound)
        # A constant channel (std 0) would give an empty range: widen it to the minimum the
        # forward allows, so that the reset is exactly what the forward computes.
        left, right = ops.guard_range(left, right, self.range_eps)
        self.set_relu_range(left, right)
        self.phase.fill_(_PHASE_II)
        self._set_phase(True)

    def _warn_missing_statistics(self, combined: '_Combined', name: Optional[str]) -> None:
        layer = f'PWLU {name!r}' if name else 'PWLU'
        if combined.layer_ranks == 0:
            warnings.warn(f'{layer}.realign(): no training batch was seen (num_batches_tracked '
                          '== 0 on every rank); keeping the initial range [-init_bound, '
                          f'init_bound] = [{-self.init_bound}, {self.init_bound}].',
                          RuntimeWarning, stacklevel=3)
            return
        missing = (combined.ranks == 0).nonzero().flatten().tolist()
        if missing:
            skipped = int(combined.skipped[missing].sum().item())
            shown = ', '.join(map(str, missing[:8])) + (', ...' if len(missing) > 8 else '')
            warnings.warn(f'{layer}.realign(): {len(missing)} of {self.num_sets} channels '
                          f'({shown}) never had finite input statistics ({skipped} non-finite '
                          'batches skipped); they keep the initial range [-init_bound, '
                          f'init_bound] = [{-self.init_bound}, {self.init_bound}].',
                          RuntimeWarning, stacklevel=3)

    # ----------------------------------------------------------------------------- forward
    def channels_first(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with its channels at dim 1, as the op and the statistics read it.

        Channels-last tokens ``(*, C)`` become rows ``(M, C)``: a view where ``x`` is
        contiguous, and the op's row kernels take them as they take an fc layer's output.
        """
        if self.channel_axis == 1 or x.dim() <= 2:
            return x
        return x.reshape(-1, x.shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the activation. See the class docstring for the phases."""
        rows = self.channels_first(x)
        if rows is x:
            return self._forward(x)
        return self._forward(rows).reshape(x.shape)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if not self._realigned:
            # Exactly ReLU (the table form is not bit-exact ReLU for every initialisation).
            if self.training and x.numel() > 0:
                return self._phase_one_train(x)
            return torch.relu(x)
        if not self.training:
            if _exporting():
                return self._table_forward(x, self._build_tables())
            wants_param_grads = torch.is_grad_enabled() and any(
                p.requires_grad for p in self._pwlu_parameters())
            if not wants_param_grads:
                if self.eval_impl == 'table' or not compiled_available():
                    return self._table_forward(x, self.piece_table())
                # In place only where no autograd graph can need x (as relu_ in ConvModule).
                forward = ops.pwlu_ if self.inplace and not torch.is_grad_enabled() else pwlu
                return forward(x, *self._pwlu_parameters(), self.range_eps)
        # The op applies the range guard (valid_range) itself: as separate small ops, each with
        # its autograd node, the guard would cost about as much as the op on the RoI heads'
        # small inputs.
        return pwlu(x, *self._pwlu_parameters(), self.range_eps)

    # --------------------------------------------------------------------- Sec. 4.3 tables
    def _build_tables(self) -> Tuple[torch.Tensor, ...]:
        """``(B_L, N / (B_R - B_L), S, O)`` with ``S, O`` of shape ``(sets, N + 2)``.

        Built from the valid range exactly as the compiled kernels build theirs
        (``csrc/ops/pwlu_element.h``), in float32 (float64 for float64 parameters).
        """
        n = self.num_intervals
        dtype = torch.float64 if self.points.dtype == torch.float64 else torch.float32
        lb, rb = (t.to(dtype) for t in self.valid_range())
        pts = self.points.to(dtype)
        ls, rs = self.left_slope.to(dtype), self.right_slope.to(dtype)
        inv_width = n / (rb - lb)
        step = (rb - lb) / n
        i = torch.arange(n, device=pts.device, dtype=dtype)
        inner_slope = (pts[:, 1:] - pts[:, :-1]) * inv_width.unsqueeze(1)
        demarcation = lb.unsqueeze(1) + i * step.unsqueeze(1)
        inner_intercept = pts[:, :-1] - demarcation * inner_slope
        slopes = torch.cat([ls.unsqueeze(1), inner_slope, rs.unsqueeze(1)], dim=1)
        intercepts = torch.cat([(pts[:, 0] - lb * ls).unsqueeze(1), inner_intercept,
                                (pts[:, n] - rb * rs).unsqueeze(1)], dim=1)
        return lb, inv_width, slopes, intercepts

    def _cache_key(self) -> tuple:
        # _version changes with every in-place write (optimizer step, load_state_dict's copy_,
        # realign); data_ptr/device/dtype change with .to()/.half()/parameter replacement.
        return tuple((p._version, p.data_ptr(), p.device, p.dtype)
                     for p in self._pwlu_parameters())

    @torch.no_grad()
    def piece_table(self) -> Tuple[torch.Tensor, ...]:
        """The (slope, intercept) form of the current parameters, as the eval path uses it.

        Returns:
            tuple[Tensor, Tensor, Tensor, Tensor]: ``(B_L, N / (B_R - B_L), S, O)``: the valid
            left bound and inverse interval width per set, and slopes ``S`` and intercepts
            ``O`` of shape ``(sets, N + 2)`` (the left piece, the N intervals, the right
            piece), in float32 (float64 for float64 parameters), without gradients. Cached:
            the same tensors until a parameter changes (an optimizer step, a state-dict load,
            any in-place edit, a dtype or device move, a replaced parameter).
        """
        key = self._cache_key()
        if self._table_cache is None or self._table_cache[0] != key:
            self._table_cache = (key, self._build_tables())
        return self._table_cache[1]

    def _table_forward(self, x: torch.Tensor, tables: Tuple[torch.Tensor, ...]) -> torch.Tensor:
        """``y = x * S_j + O_j`` with standard ops only (exports to plain ONNX)."""
        lb, inv_width, slopes, intercepts = tables
        n = self.num_intervals
        sets = slopes.shape[0]
        view = (1, sets) + (1, ) * (x.dim() - 2)
        xc = x.to(slopes.dtype)
        t = (xc - lb.reshape(view)) * inv_width.reshape(view)
        t = torch.where(torch.isnan(t), torch.zeros_like(t), t)  # NaN x: entry 0, y stays NaN
        entry = torch.clamp(torch.floor(t), -1, n) + 1  # in [0, N + 1] as in the kernels
        offset = torch.arange(sets, device=x.device, dtype=entry.dtype) * (n + 2)
        index = (entry + offset.reshape(view)).long()
        slope = slopes.reshape(-1)[index]
        intercept = intercepts.reshape(-1)[index]
        y = xc * slope + intercept
        # At x = +-inf with a zero slope the limit is the intercept, not 0 * inf = NaN.
        y = torch.where(torch.isinf(xc) & (slope == 0), intercept, y)
        return y.to(x.dtype)

    # ------------------------------------------------------------------- state and display
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        _add_per_set_counters(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        # The loaded phase decides the behaviour and which parameters are trainable.
        self._set_phase(int(self.phase.item()) == _PHASE_II)
        self._table_cache = None
        self._step_moments = None
        self._step_depth = 0

    def _apply(self, fn, *args, **kwargs):
        self._table_cache = None
        return super()._apply(fn, *args, **kwargs)

    def extra_repr(self) -> str:
        channels = self.num_channels if self.num_channels is not None else 'any'
        axis = '' if self.channel_axis == 1 else f', channel_axis={self.channel_axis}'
        return (f'num_channels={channels}{axis}, num_intervals={self.num_intervals}, '
                f'mode={self.mode}, phase={"II" if self._realigned else "I"}, '
                f'momentum={self.momentum}, sigma={self.sigma}')


def _add_per_set_counters(state_dict: dict, prefix: str) -> None:
    """Give a state dict without the per-set counters (an older layer's) their values, in place.

    Those layers updated every set in every tracked batch, so ``channel_batches_tracked`` is
    ``num_batches_tracked`` -- except where the running statistics are not finite: a batch
    with an ``inf``/``NaN`` input poisoned them for good. Such a set restarts from the initial
    statistics ``(0, 1)`` with no update counted, as one that never had finite statistics
    (phase I goes on collecting; :meth:`PWLU.realign` keeps its initial range if none comes).
    Nothing was skipped then. A state dict without ``running_mean`` is left alone.
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


def _exporting() -> bool:
    """Whether the forward is being traced/exported, where only standard ops may be used."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    if torch.onnx.is_in_onnx_export():
        return True
    is_exporting = getattr(torch.compiler, 'is_exporting', None)
    return bool(is_exporting is not None and is_exporting())
