"""MMEngine hook that runs the two training phases of PWLU (EQUATIONS.md, Sec. 3.3)."""
from typing import Dict, List, Optional, Tuple

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from torch import nn

from ..analysis.stats import InputStatistics, find_pwlu_layers, summarize_stages
from ..layers import PWLU, alignment_iou
from .grad_sync import install_pwlu_grad_sync

__all__ = ['PWLUHook', 'pwlu_layers', 'realign_model']

DATA_BATCH = Optional[dict]


pwlu_layers = find_pwlu_layers  # ``(name, layer)`` of every PWLU, unwrapped, in module order


@torch.no_grad()
def realign_model(model: nn.Module, distributed: Optional[bool] = None
                  ) -> Dict[str, Tuple[float, float]]:
    """Realign every PWLU of ``model`` that is still in phase I (Eq. 6).

    Layers are visited in module order, which is the same on every rank, so the per-layer
    collectives of :meth:`PWLU.realign` match up under ``torch.distributed``.

    Args:
        model (nn.Module): The model or its wrapper.
        distributed (bool, optional): Passed to :meth:`PWLU.realign`.

    Returns:
        dict[str, tuple[float, float]]: Per realigned layer, the mean alignment IoU (Eq. 7)
        of its learnable range with its input range ``mu +- sigma * std`` before and after the
        reset (after is 1 up to the minimum range width).
    """
    summary = {}
    for name, layer in pwlu_layers(model):
        if layer.realigned:
            continue
        left, right = layer.valid_range()
        left, right = left.detach().clone(), right.detach().clone()
        layer.realign(distributed=distributed)
        # realign() wrote the (rank-combined) statistics back into the buffers.
        mean, std = layer.running_mean, layer.running_std
        before = alignment_iou(left, right, mean, std, layer.sigma).mean().item()
        left, right = layer.valid_range()
        after = alignment_iou(left, right, mean, std, layer.sigma).mean().item()
        summary[name] = (before, after)
    return summary


@HOOKS.register_module()
class PWLUHook(Hook):
    """Switches every PWLU of the model from phase I to phase II (statistic-based realignment).

    At the first training iteration with ``runner.iter >= realign_iter`` (or, with
    ``realign_epoch``, the first iteration of an epoch ``>= realign_epoch``) it calls
    :meth:`PWLU.realign` on every PWLU of the unwrapped model that is still in phase I, i.e.
    iterations ``[0, T)`` are phase I. The phase lives in each layer's ``phase`` buffer, so the
    state follows checkpoints: resuming from a checkpoint taken before ``T`` realigns at ``T``,
    one taken after never resets again. The switch and a per-layer alignment summary (mean IoU
    of Eq. 7, before/after the reset) are logged with ``runner.logger`` and
    ``runner.visualizer`` (scalars ``pwlu/iou_before``, ``pwlu/iou_after`` and per layer).

    It also makes phase II correct and cheap under DDP: PWLU parameters are not in DDP's reducer
    (they had ``requires_grad=False`` when mmengine wrapped the model), so the hook installs
    :func:`pwlu_mmdet.engine.install_pwlu_grad_sync` on the wrapped model in ``before_run``.
    In ``before_train`` it checks that the optimizer holds every PWLU parameter (use
    ``optim_wrapper=dict(constructor='PWLUOptimWrapperConstructor', ...)``).

    Every ``log_interval`` training iterations (the iterations on which mmengine's
    ``LoggerHook`` with the same interval logs) it measures how well each layer's learnable range
    fits its current input and writes, through ``runner.visualizer`` at the ``LoggerHook``'s step
    (``runner.iter + 1``, so TensorBoard / the local backend show them beside the losses):

    * ``pwlu/iou`` and ``pwlu/iou/<stage>``: mean Eq. 7 IoU over the channels of all layers /
      of a stage, between ``[B_L, B_R]`` and ``[mu - sigma * std, mu + sigma * std]`` of that
      iteration's input (per-channel statistics of the batch, pooled over every call of the
      layer in the iteration);
    * ``pwlu/outside`` and ``pwlu/outside/<stage>``: the fraction of input elements below
      ``B_L`` or above ``B_R``.

    A stage is the first ``stage_depth`` components of the layer's parent module
    (:func:`pwlu_mmdet.analysis.stage_name`: ``backbone.layer1``, ``rpn_head``,
    ``roi_head.bbox_head`` ...). The measurement is a forward pre-hook on every PWLU that is
    registered only for the logging iterations (no cost on the others); it reads the input and
    never writes the layers' parameters or buffers. Before the switch the values describe the
    initial range (phase I computes ReLU). Under DDP each rank measures its own batch and the
    visualizer writes rank 0's.

    Config::

        custom_imports = dict(imports=['pwlu_mmdet'], allow_failed_imports=False)
        custom_hooks = [dict(type='PWLUHook', realign_iter=5000)]
        # or dict(type='PWLUHook', realign_epoch=5, log_interval=100)

    Args:
        realign_iter (int, optional): ``T`` in iterations.
        realign_epoch (int, optional): ``T`` in epochs. Exactly one of the two must be given.
        log_per_layer (bool): Also log one line (and one scalar) per layer at the switch.
            Defaults to True.
        log_interval (int): Interval in iterations of the alignment logging; 0 disables it.
            Defaults to 50.
        stage_depth (int): Name components that make a stage for the logging (0: one stage,
            ``'all'``). Defaults to 2.
    """

    priority = 'NORMAL'

    def __init__(self,
                 realign_iter: Optional[int] = None,
                 realign_epoch: Optional[int] = None,
                 log_per_layer: bool = True,
                 log_interval: int = 50,
                 stage_depth: int = 2) -> None:
        if (realign_iter is None) == (realign_epoch is None):
            raise ValueError('PWLUHook: give exactly one of realign_iter and realign_epoch')
        for name, value in (('realign_iter', realign_iter), ('realign_epoch', realign_epoch),
                            ('log_interval', log_interval), ('stage_depth', stage_depth)):
            if value is not None and (int(value) != value or value < 0):
                raise ValueError(f'PWLUHook: {name} must be a non-negative integer, got {value}')
        self.realign_iter = realign_iter
        self.realign_epoch = realign_epoch
        self.log_per_layer = log_per_layer
        self.log_interval = int(log_interval)
        self.stage_depth = int(stage_depth)
        self._layers: Optional[List[PWLU]] = None  # cached: no module walk every iteration
        self._stats: Optional[InputStatistics] = None  # attached on logging iterations only

    def before_run(self, runner) -> None:
        """Install the phase-II gradient sync on a DDP-wrapped model."""
        layers = pwlu_layers(runner.model)
        self._layers = [layer for _, layer in layers]
        if not layers:
            runner.logger.warning('PWLUHook: the model has no PWLU layer; the hook does nothing')
            return
        if is_model_wrapper(runner.model):
            if isinstance(runner.model, nn.parallel.DistributedDataParallel):
                install_pwlu_grad_sync(runner.model)
            else:
                runner.logger.warning(
                    f'PWLUHook: {type(runner.model).__name__} is not a DistributedDataParallel; '
                    'PWLU gradients are not synchronised across ranks by the hook')

    def before_train(self, runner) -> None:
        """Check that the optimizer will train the PWLU parameters in phase II."""
        layers = pwlu_layers(runner.model)
        if not layers:
            return
        wrappers = (runner.optim_wrapper.values() if hasattr(runner.optim_wrapper, 'values')
                    else [runner.optim_wrapper])
        groups = {}
        for wrapper in wrappers:
            for group in wrapper.optimizer.param_groups:
                for p in group['params']:
                    groups[id(p)] = group
        missing, decayed = [], []
        for name, layer in layers:
            for pname, p in layer.named_parameters(recurse=False):
                group = groups.get(id(p))
                if group is None:
                    missing.append(f'{name}.{pname}')
                elif group.get('weight_decay', 0) and not any(
                        getattr(w, 'pwlu_param_groups', False) for w in wrappers):
                    decayed.append(f'{name}.{pname}')
        if missing:
            raise RuntimeError(
                f'PWLUHook: {len(missing)} PWLU parameters are not in the optimizer (e.g. '
                f'{missing[0]}): they have requires_grad=False in phase I and the optimizer '
                "constructor skipped them. Set optim_wrapper=dict(constructor="
                "'PWLUOptimWrapperConstructor', ...).")
        if decayed:
            runner.logger.warning(
                f'PWLUHook: {len(decayed)} PWLU parameters get weight decay from the default '
                "optimizer constructor; use constructor='PWLUOptimWrapperConstructor' (no decay "
                'by default, paramwise_cfg.pwlu_decay_mult to choose)')
        phase = 'II' if all(layer.realigned for _, layer in layers) else 'I'
        runner.logger.info(f'PWLUHook: {len(layers)} PWLU layers, phase {phase} at iter '
                           f'{runner.iter}; realignment at {self._describe()}')

    def _describe(self) -> str:
        if self.realign_iter is not None:
            return f'iter {self.realign_iter}'
        return f'epoch {self.realign_epoch}'

    def _due(self, runner) -> bool:
        if self.realign_iter is not None:
            return runner.iter >= self.realign_iter
        return runner.epoch >= self.realign_epoch

    def before_train_iter(self, runner, batch_idx: int, data_batch: DATA_BATCH = None) -> None:
        """Realign at the first iteration that is due and still has phase-I layers; on a
        logging iteration, attach the input-statistics pre-hooks."""
        self._maybe_realign(runner)
        if self.log_interval and self.every_n_train_iters(runner, self.log_interval):
            if self._stats is None:
                self._stats = InputStatistics(pwlu_layers(runner.model))
            if self._stats.layers:
                self._stats.reset()
                self._stats.attach()

    def _maybe_realign(self, runner) -> None:
        if not self._due(runner):
            return
        if self._layers is None:
            self._layers = [layer for _, layer in pwlu_layers(runner.model)]
        # Python flags mirror the phase buffers: no device sync on the every-iteration path.
        if all(layer.realigned for layer in self._layers):
            return
        summary = realign_model(runner.model)
        self._log(runner, summary)

    def after_train_iter(self, runner, batch_idx: int, data_batch: DATA_BATCH = None,
                         outputs: Optional[dict] = None) -> None:
        """On a logging iteration, detach the pre-hooks and log IoU and fraction outside."""
        if self._stats is None or not self._stats.attached:
            return
        self._stats.detach()
        stages = summarize_stages(self._stats.results().values(), self.stage_depth)
        self._stats.reset()  # free the accumulators until the next logging iteration
        if not stages:
            return
        iou, outside = stages.pop('all')
        scalars = {'pwlu/iou': iou, 'pwlu/outside': outside}
        for stage, (stage_iou, stage_outside) in stages.items():
            scalars[f'pwlu/iou/{stage}'] = stage_iou
            scalars[f'pwlu/outside/{stage}'] = stage_outside
        runner.visualizer.add_scalars(scalars, step=runner.iter + 1)
        runner.logger.info(f'PWLUHook: iter {runner.iter + 1}: mean alignment IoU {iou:.4f}, '
                           f'{outside:.2%} of the PWLU inputs outside [B_L, B_R]')

    def after_train(self, runner) -> None:
        """Remove the pre-hooks if an iteration ended without ``after_train_iter``."""
        if self._stats is not None:
            self._stats.detach()

    def _log(self, runner, summary: Dict[str, Tuple[float, float]]) -> None:
        before = sum(b for b, _ in summary.values()) / max(len(summary), 1)
        after = sum(a for _, a in summary.values()) / max(len(summary), 1)
        runner.logger.info(
            f'PWLUHook: realigned {len(summary)} PWLU layers at iter {runner.iter} (epoch '
            f'{runner.epoch}): phase II. Mean alignment IoU (Eq. 7) of the learnable range '
            f'with the input range: {before:.4f} before the reset, {after:.4f} after')
        scalars = {'pwlu/iou_before': before, 'pwlu/iou_after': after}
        if self.log_per_layer:
            for name, (b, a) in summary.items():
                runner.logger.info(f'PWLUHook:   {name}: IoU {b:.4f} -> {a:.4f}')
                scalars[f'pwlu/iou_before/{name}'] = b
        runner.visualizer.add_scalars(scalars, step=runner.iter)
        # Also keep the summary where other hooks and the log processor can read it.
        runner.message_hub.update_info('pwlu_realigned_iter', runner.iter)
