"""MMEngine hook that runs the two training phases of PWLU (Sec. 3.3; docs/method.md)."""
from typing import Dict, List, Optional, Tuple

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapper, OptimWrapperDict
from mmengine.registry import HOOKS
from torch import nn

from ..layers import PWLU, InputStatistics, find_pwlu_layers, realign_model, summarize_stages
from .grad_sync import install_pwlu_grad_sync
from .optim import add_pwlu_param_groups

__all__ = ['PWLUHook']

DATA_BATCH = Optional[dict]


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

    Phase I statistics are pooled per training iteration: the hook opens a statistics step on
    every phase-I layer before each iteration and ends it after
    (:meth:`PWLU.begin_statistics_step`), so a layer that runs several times per iteration (the
    RPN or RetinaNet head on every FPN level) makes one update of Eq. 5 from the mixture of its
    calls' inputs, and its reset range covers every level. Batch statistics that are not finite
    are skipped per channel; the switch logs how many were.

    It also makes phase II correct and cheap under DDP: PWLU parameters are not in DDP's reducer
    (they had ``requires_grad=False`` when mmengine wrapped the model), so the hook installs
    :func:`pwlu_mmdet.engine.install_pwlu_grad_sync` on the wrapped model in ``before_run``.
    There, too, it gives the PWLU parameters their own param groups when the optimizer was
    built by another constructor than ``PWLUOptimWrapperConstructor`` (mmdet's stock
    ``optim_wrapper``, with or without ``paramwise_cfg``; see
    :func:`pwlu_mmdet.engine.add_pwlu_param_groups`): mmengine calls ``before_run`` after it
    builds the optimizer and its schedulers and before it resumes, so a resumed optimizer state
    matches. In ``before_train`` it checks that the optimizer holds every PWLU parameter.

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
    (:func:`pwlu_mmdet.layers.stage_name`: ``backbone.layer1``, ``rpn_head``,
    ``roi_head.bbox_head`` ...). The measurement is a forward pre-hook on every PWLU that is
    registered only for the logging iterations (no cost on the others); it reads the input and
    never writes the layers' parameters or buffers. Before the switch the values describe the
    initial range (phase I computes ReLU). Under DDP each rank measures its own batch and the
    visualizer writes rank 0's.

    Config::

        custom_imports = dict(imports=['pwlu_mmdet.engine'], allow_failed_imports=False)
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
        add_param_groups (bool): Give PWLU parameters that the optimizer lacks, or holds in a
            group with other parameters, their own param groups in ``before_run``. False keeps
            the optimizer as built (e.g. to resume an optimizer state saved with PWLU
            parameters in the stock constructor's single group); a missing PWLU parameter is
            then an error. Defaults to True.
        decay_mult (float): Weight decay of those groups relative to the optimizer's.
            Defaults to 0 (activation parameters, like normalisation weights).
        lr_mult (float): Their learning rate relative to the group they take their settings
            from. Defaults to 1.
    """

    priority = 'NORMAL'

    def __init__(self,
                 realign_iter: Optional[int] = None,
                 realign_epoch: Optional[int] = None,
                 log_per_layer: bool = True,
                 log_interval: int = 50,
                 stage_depth: int = 2,
                 add_param_groups: bool = True,
                 decay_mult: float = 0.,
                 lr_mult: float = 1.) -> None:
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
        self.add_param_groups = add_param_groups
        self.decay_mult = float(decay_mult)
        self.lr_mult = float(lr_mult)
        self._layers: Optional[List[PWLU]] = None  # cached: no module walk every iteration
        self._stats: Optional[InputStatistics] = None  # attached on logging iterations only
        self._open: List[PWLU] = []  # the layers whose statistics step this hook opened

    def before_run(self, runner) -> None:
        """Install the phase-II gradient sync on a DDP-wrapped model; give the PWLU parameters
        their param groups where the optimizer constructor did not."""
        layers = find_pwlu_layers(runner.model)
        self._layers = [layer for _, layer in layers]
        if not layers:
            runner.logger.warning('PWLUHook: the model has no PWLU layer; the hook does nothing')
            return
        self._add_param_groups(runner)
        if is_model_wrapper(runner.model):
            if isinstance(runner.model, nn.parallel.DistributedDataParallel):
                install_pwlu_grad_sync(runner.model)
            else:
                runner.logger.warning(
                    f'PWLUHook: {type(runner.model).__name__} is not a DistributedDataParallel; '
                    'PWLU gradients are not synchronised across ranks by the hook')

    def _add_param_groups(self, runner) -> None:
        wrapper = getattr(runner, 'optim_wrapper', None)
        # Only a built single optimizer (before_run also runs for val/test-only runners).
        if (not self.add_param_groups or not isinstance(wrapper, OptimWrapper)
                or isinstance(wrapper, OptimWrapperDict)):
            return
        moved = add_pwlu_param_groups(wrapper, runner.model, runner.param_schedulers,
                                      self.decay_mult, self.lr_mult)
        if moved:
            runner.logger.info(
                f'PWLUHook: {moved} PWLU parameters given their own param groups (weight decay '
                f'x{self.decay_mult}, lr x{self.lr_mult}); the optimizer constructor had left '
                'them out or grouped them with other parameters')

    def before_train(self, runner) -> None:
        """Check that the optimizer will train the PWLU parameters in phase II."""
        layers = find_pwlu_layers(runner.model)
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
                elif group.get('weight_decay', 0) and not self.add_param_groups and not any(
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
        """Realign at the first iteration that is due and still has phase-I layers, open the
        statistics step of the others; on a logging iteration, attach the input-statistics
        pre-hooks."""
        self._maybe_realign(runner)
        self._end_statistics_steps()  # one left open by an iteration without after_train_iter
        self._open = self._phase_one_layers(runner)
        for layer in self._open:
            layer.begin_statistics_step()
        if self.log_interval and self.every_n_train_iters(runner, self.log_interval):
            if self._stats is None:
                self._stats = InputStatistics(find_pwlu_layers(runner.model))
            if self._stats.layers:
                self._stats.reset()
                self._stats.attach()

    def _phase_one_layers(self, runner) -> List[PWLU]:
        if self._layers is None:
            self._layers = [layer for _, layer in find_pwlu_layers(runner.model)]
        # Python flags mirror the phase buffers: no device sync on the every-iteration path.
        return [layer for layer in self._layers if not layer.realigned]

    def _maybe_realign(self, runner) -> None:
        if not self._due(runner) or not self._phase_one_layers(runner):
            return
        summary = realign_model(runner.model)
        self._log(runner, summary)

    def after_train_iter(self, runner, batch_idx: int, data_batch: DATA_BATCH = None,
                         outputs: Optional[dict] = None) -> None:
        """End the statistics step; on a logging iteration, detach the pre-hooks and log IoU
        and fraction outside."""
        self._end_statistics_steps()
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

    def _end_statistics_steps(self) -> None:
        # Only the steps this hook opened: steps nest, and another one may be open.
        for layer in self._open:
            layer.end_statistics_step()
        self._open = []

    def after_train(self, runner) -> None:
        """Remove the pre-hooks and end the statistics steps if an iteration ended without
        ``after_train_iter``."""
        self._end_statistics_steps()
        if self._stats is not None:
            self._stats.detach()

    def _log_skipped(self, runner) -> Dict[str, float]:
        """Log the non-finite batch statistics phase I skipped (summed over ranks by the
        realignment), and the channels that had no finite one."""
        total, lines = 0, []
        for name, layer in find_pwlu_layers(runner.model):
            skipped = layer.channel_batches_skipped
            count = int(skipped.sum().item())
            if not count:
                continue
            total += count
            never = int((layer.channel_batches_tracked == 0).sum().item())
            lines.append(f'PWLUHook:   {name}: {count} skipped in {int((skipped > 0).sum())} of '
                         f'{layer.num_sets} channels; {never} channels without any finite '
                         'statistics keep the initial range')
        message = (f'PWLUHook: {total} non-finite batch statistics (one per channel and call) '
                   'were skipped in phase I')
        if total:
            runner.logger.warning('\n'.join([message] + lines))
        else:
            runner.logger.info(message)
        return {'pwlu/skipped_nonfinite': float(total)}

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
        scalars.update(self._log_skipped(runner))
        runner.visualizer.add_scalars(scalars, step=runner.iter)
        # Also keep the summary where other hooks and the log processor can read it.
        runner.message_hub.update_info('pwlu_realigned_iter', runner.iter)
