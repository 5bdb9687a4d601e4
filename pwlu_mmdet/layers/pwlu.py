"""The PWLU activation layer with statistic-based realignment (Sec. 3.3; docs/method.md).

Only torch is needed. ``import pwlu_mmdet.engine`` registers the class in mmengine's root
``MODELS``, so that ``dict(type='PWLU', num_channels=64)`` builds in every OpenMMLab scope.
"""
import warnings
from typing import Optional, Tuple

import torch
from torch import nn

from .. import ops
from ..ops import compiled_available, pwlu
from .running_stats import (Combined, StatisticsStep, add_per_set_counters, combine_ranks,
                            update_running)

__all__ = ['PWLU']

_PARAM_NAMES = ('points', 'left_bound', 'right_bound', 'left_slope', 'right_slope')


class PWLU(nn.Module):
    """Piecewise Linear Unit (Eq. 1-4) with statistic-based realignment (Eq. 5-6).

    Phase I, until :meth:`realign`: the output is exactly ``relu(x)``, the parameters are frozen
    (``requires_grad=False``) and every non-empty training forward updates per-set running
    statistics of the input. Phase II: :meth:`realign` resets the parameters to ReLU on
    ``mu +- sigma * std`` and all of them train; the forward is the compiled op.

    Args:
        num_channels (int, optional): Number of channels ``C`` (the ``channel_axis`` of the
            input). Required when ``mode='channel'``; checked against the input when given.
        num_intervals (int): ``N``, even, so that zero is a demarcation point of the ReLU
            initialisation. Defaults to 16 (the paper's).
        mode (str): ``'channel'`` (a parameter set and statistics per channel) or ``'layer'``
            (one set for all channels). Defaults to ``'channel'``.
        init_bound (float): Initial range ``[-init_bound, init_bound]``, kept by a layer never
            realigned and by sets that never had finite statistics. Defaults to 3.0.
        momentum (float): EMA momentum of the running statistics. Defaults to 0.1.
        sigma (float): Half-width of the reset range in standard deviations. Defaults to 3.0.
        inplace (bool): Write the output into the input in phase-II inference (no autograd
            graph), as ``ReLU(inplace=True)``; ``ConvModule`` passes True. Defaults to False.
        range_eps (float): Smallest range, relative to ``max(1, |B_L|, |B_R|)``; the forward
            uses ``B_L`` plus that width where ``B_R`` comes closer (:meth:`valid_range`).
            Defaults to 1e-3.
        eval_impl (str): Phase-II eval: ``'auto'`` (the compiled op where built, else
            ``'table'``) or ``'table'`` (torch ops on cached Sec. 4.3 tables). Tracing and ONNX
            export always use the tables. Defaults to ``'auto'``.
        channel_axis (int): ``1`` for ``(N, C, *spatial)``, ``-1`` for channels-last tokens
            ``(*, C)``. Defaults to 1.

    Note:
        Phase-I parameters take no part in the forward: no optimizer moves them and a DDP
        wrapper built then leaves them out (``PWLUOptimWrapperConstructor`` and ``PWLUHook``
        handle both). Calls inside a statistics step (:meth:`begin_statistics_step`) make one
        update. The phase is the persistent ``phase`` buffer (1 or 2), so it follows
        checkpoints. docs/training.md and docs/realignment.md describe the rules in full.

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
        self.inplace = inplace
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
        # float32 whatever the input dtype (AMP), like BatchNorm's.
        self.register_buffer('running_mean', torch.zeros(sets))
        self.register_buffer('running_std', torch.ones(sets))
        self.register_buffer('num_batches_tracked', torch.tensor(0, dtype=torch.long))
        self.register_buffer('channel_batches_tracked', torch.zeros(sets, dtype=torch.long))
        self.register_buffer('channel_batches_skipped', torch.zeros(sets, dtype=torch.long))
        self.register_buffer('phase', torch.tensor(1, dtype=torch.long))
        self._realigned = False  # the phase for the forward; see _set_phase
        self._table_cache = None
        self._step = StatisticsStep()
        self.reset_parameters()

    # ------------------------------------------------------------------ phase and parameters
    @property
    def num_sets(self) -> int:
        """Number of parameter sets: ``C`` channel-wise, 1 layer-wise."""
        return self.points.shape[0]

    @property
    def realigned(self) -> bool:
        """Whether the layer is in phase II."""
        return self._realigned

    def _set_phase(self, realigned: bool) -> None:
        """Write the phase: the buffer (for checkpoints), the flag the forward reads (reading
        the buffer would synchronise the GPU) and ``requires_grad`` (frozen in phase I)."""
        self._realigned = bool(realigned)
        with torch.no_grad():
            self.phase.fill_(2 if realigned else 1)
        for p in self._pwlu_parameters():
            p.requires_grad_(self._realigned)

    def _pwlu_parameters(self):
        return [getattr(self, name) for name in _PARAM_NAMES]

    def reset_parameters(self) -> None:
        """ReLU on ``[-init_bound, init_bound]``, statistics cleared, phase I."""
        with torch.no_grad():
            self.set_relu_range(torch.full_like(self.left_bound, -self.init_bound),
                                torch.full_like(self.right_bound, self.init_bound))
            self.running_mean.zero_()
            self.running_std.fill_(1.0)
            self.num_batches_tracked.zero_()
            self.channel_batches_tracked.zero_()
            self.channel_batches_skipped.zero_()
        self._step.drop()
        self._set_phase(False)

    @torch.no_grad()
    def set_relu_range(self, left_bound: torch.Tensor, right_bound: torch.Tensor) -> None:
        """Make the function ReLU on ``[left_bound, right_bound]``, in place.

        ``Y_i = ReLU(B_i)`` at the demarcation points, placed as the op places them, and each
        outer slope ReLU's just outside its bound: ``K_L = 1`` if ``B_L > 0`` else 0, ``K_R = 0``
        if ``B_R < 0`` else 1. The tensors are written in place, so an optimizer built before
        keeps training them; the phase and the statistics stay as they are.

        Args:
            left_bound (Tensor): ``B_L`` per set, shape ``(sets,)``.
            right_bound (Tensor): ``B_R``, same shape.

        Note:
            With the paper's ``K_L = 0``, ``K_R = 1`` a range that excludes 0 would not be ReLU
            between its bound and 0, where the inputs that leave it fall.
        """
        left_bound = left_bound.to(self.left_bound.dtype)
        right_bound = right_bound.to(self.right_bound.dtype)
        step = (right_bound - left_bound) / self.num_intervals
        i = torch.arange(self.num_intervals + 1, device=step.device, dtype=step.dtype)
        self.points.copy_(torch.relu(left_bound.unsqueeze(1) + i * step.unsqueeze(1)))
        self.left_bound.copy_(left_bound)
        self.right_bound.copy_(right_bound)
        self.left_slope.copy_((left_bound > 0).to(self.left_slope.dtype))
        self.right_slope.copy_((right_bound >= 0).to(self.right_slope.dtype))

    def valid_range(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(B_L, B_R)`` as the forward uses them (:func:`pwlu_mmdet.ops.guard_range`): a
        healthy ``B_R`` bit-exact, else ``B_L + range_eps * max(1, |B_L|, |B_R|)``."""
        return ops.guard_range(self.left_bound, self.right_bound, self.range_eps)

    # ------------------------------------------------------------------------- statistics
    @property
    def in_statistics_step(self) -> bool:
        """Whether a statistics step is open."""
        return self._step.depth > 0

    def begin_statistics_step(self) -> None:
        """Pool the following phase-I training calls into one statistics update.

        Until the matching :meth:`end_statistics_step`, each call's moments are kept; the step
        then makes one update from their mixture, each call weighted the same. Steps nest.
        ``PWLUHook`` opens one per training iteration; without a step every call is one.
        """
        self._step.begin()

    def end_statistics_step(self) -> None:
        """Leave the step; the outermost end makes the update. Nothing when none is open."""
        moments = self._step.end()
        if moments:
            update_running(self, moments)

    def _phase_one_train(self, x: torch.Tensor) -> torch.Tensor:
        # One pass over x for the output and the moments (the compiled op where built).
        y, mean, var = ops.relu_with_moments(x, self.mode == 'channel')
        if self._step.depth:
            self._step.moments.append((mean, var))
        else:
            update_running(self, [(mean, var)])
        return y

    @torch.no_grad()
    def realign(self, distributed: Optional[bool] = None, name: Optional[str] = None) -> None:
        """Reset to ReLU on ``mu +- sigma * std`` (Eq. 6), in place, and enter phase II.

        An open statistics step is ended first (its calls count). Under ``torch.distributed``
        the ranks' statistics are combined first and written back to the buffers (counters
        summed), so every rank resets identically; it is then a collective. A set without
        finite statistics keeps ``[-init_bound, init_bound]``, with a warning.

        Args:
            distributed (bool, optional): Whether to combine over the ranks. None: when
                ``torch.distributed`` runs more than one rank.
            name (str, optional): The layer's name in the model, for the warnings.
        """
        moments = self._step.end(force=True)
        if moments:
            update_running(self, moments)
        combined = combine_ranks(self, distributed)
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
        # A constant channel (std 0) gets the smallest range the forward allows, so that the
        # reset is what the forward computes.
        self.set_relu_range(*ops.guard_range(left, right, self.range_eps))
        self._set_phase(True)

    def _warn_missing_statistics(self, combined: Combined, name: Optional[str]) -> None:
        layer = f'PWLU {name!r}' if name else 'PWLU'
        initial = (f'the initial range [-init_bound, init_bound] = [{-self.init_bound}, '
                   f'{self.init_bound}]')
        if combined.layer_ranks == 0:
            warnings.warn(f'{layer}.realign(): no training batch was seen (num_batches_tracked '
                          f'== 0 on every rank); keeping {initial}.', RuntimeWarning,
                          stacklevel=3)
            return
        missing = (combined.ranks == 0).nonzero().flatten().tolist()
        if missing:
            skipped = int(combined.skipped[missing].sum().item())
            shown = ', '.join(map(str, missing[:8])) + (', ...' if len(missing) > 8 else '')
            warnings.warn(f'{layer}.realign(): {len(missing)} of {self.num_sets} channels '
                          f'({shown}) never had finite input statistics ({skipped} non-finite '
                          f'batches skipped); they keep {initial}.', RuntimeWarning,
                          stacklevel=3)

    # ----------------------------------------------------------------------------- forward
    def channels_first(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with its channels at dim 1, as the op and the statistics read it: channels-last
        tokens ``(*, C)`` become rows ``(M, C)`` (a view where ``x`` is contiguous)."""
        if self.channel_axis == 1 or x.dim() <= 2:
            return x
        return x.reshape(-1, x.shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.channels_first(x)
        if rows is x:
            return self._forward(x)
        return self._forward(rows).reshape(x.shape)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f'PWLU expects (N, C) or (N, C, *spatial) input, got shape '
                             f'{tuple(x.shape)}')
        if torch.jit.is_tracing():
            return  # shapes are fixed while tracing; the comparison would only warn
        if self.num_channels is not None and x.shape[1] != self.num_channels:
            raise ValueError(f'PWLU was built for {self.num_channels} channels but the input '
                             f'has {x.shape[1]} (shape {tuple(x.shape)})')

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if not self._realigned:
            # Exactly ReLU (the table form is not bit-exact ReLU for every initialisation).
            if self.training and x.numel() > 0:
                return self._phase_one_train(x)
            return torch.relu(x)
        if not self.training:
            if _exporting():
                return ops.pwlu_from_table(x, self._table())
            wants_param_grads = torch.is_grad_enabled() and any(
                p.requires_grad for p in self._pwlu_parameters())
            if not wants_param_grads:
                if self.eval_impl == 'table' or not compiled_available():
                    return ops.pwlu_from_table(x, self.piece_table())
                # In place only where no autograd graph can need x (as relu_ in ConvModule).
                forward = ops.pwlu_ if self.inplace and not torch.is_grad_enabled() else pwlu
                return forward(x, *self._pwlu_parameters(), self.range_eps)
        # The op applies the range guard itself: as separate small ops, each with its autograd
        # node, the guard would cost about as much as the op on the RoI heads' small inputs.
        return pwlu(x, *self._pwlu_parameters(), self.range_eps)

    # --------------------------------------------------------------------- Sec. 4.3 tables
    def _table(self) -> Tuple[torch.Tensor, ...]:
        return ops.piece_table(*self._pwlu_parameters(), self.range_eps)

    @torch.no_grad()
    def piece_table(self) -> Tuple[torch.Tensor, ...]:
        """The Sec. 4.3 (slope, intercept) form of the parameters, as the eval path uses it.

        Returns:
            tuple[Tensor, Tensor, Tensor, Tensor]: ``(B_L, N / (B_R - B_L), S, O)`` of
            :func:`pwlu_mmdet.ops.piece_table`, without gradients. Cached: the same tensors
            until a parameter changes (a step, a load, any in-place edit, a move, a
            replacement).
        """
        # _version changes with every in-place write; data_ptr, device and dtype with a move
        # or a replaced parameter.
        key = tuple((p._version, p.data_ptr(), p.device, p.dtype)
                    for p in self._pwlu_parameters())
        if self._table_cache is None or self._table_cache[0] != key:
            self._table_cache = (key, self._table())
        return self._table_cache[1]

    # ------------------------------------------------------------------- state and display
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        add_per_set_counters(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        self._set_phase(int(self.phase.item()) == 2)
        self._table_cache = None
        self._step.drop()

    def _apply(self, fn, *args, **kwargs):
        self._table_cache = None
        return super()._apply(fn, *args, **kwargs)

    def extra_repr(self) -> str:
        channels = self.num_channels if self.num_channels is not None else 'any'
        axis = '' if self.channel_axis == 1 else f', channel_axis={self.channel_axis}'
        return (f'num_channels={channels}{axis}, num_intervals={self.num_intervals}, '
                f'mode={self.mode}, phase={"II" if self._realigned else "I"}, '
                f'momentum={self.momentum}, sigma={self.sigma}')


def _exporting() -> bool:
    """Whether the forward is traced or exported, where only standard ops may be used."""
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export():
        return True
    is_exporting = getattr(torch.compiler, 'is_exporting', None)
    return bool(is_exporting is not None and is_exporting())
