"""MMEngine hooks of PWLU: the phase switch (Sec. 3.3) and the alignment logging (Eq. 7)."""
from typing import Dict, List, Optional, Tuple

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from torch import nn

from ..layers import PWLU, InputStatistics, find_pwlu_layers, realign_model, summarize_stages
from .grad_sync import install_pwlu_grad_sync
from .optim import setup_pwlu_optimizer

__all__ = ['PWLUHook', 'PWLUAlignmentHook']

DATA_BATCH = Optional[dict]


@HOOKS.register_module()
class PWLUAlignmentHook(Hook):
    """Logs how well each PWLU's range ``[B_L, B_R]`` fits its input, every ``interval``
    training iterations.

    Writes ``pwlu/iou`` (mean Eq. 7 IoU of the channels) and ``pwlu/outside`` (fraction of the
    inputs outside the range), overall and per stage (``pwlu/iou/<stage>``), through
    ``runner.visualizer`` at the ``LoggerHook``'s step (``runner.iter + 1``).

    Args:
        interval (int): Logging interval in iterations. Defaults to 50.
        stage_depth (int): Name components that make a stage (:func:`stage_name`; 0: one
            stage). Defaults to 2.

    Note:
        The measurement is a forward pre-hook that exists on the logging iterations only and
        only reads the inputs. Under DDP each rank measures its own batch. ``PWLUHook`` runs
        one with its ``log_interval``; add this hook yourself only without that.
    """

    priority = 'NORMAL'

    def __init__(self, interval: int = 50, stage_depth: int = 2) -> None:
        self.interval = int(interval)
        self.stage_depth = int(stage_depth)
        self._stats: Optional[InputStatistics] = None

    def before_train_iter(self, runner, batch_idx: int, data_batch: DATA_BATCH = None) -> None:
        if not self.interval or not self.every_n_train_iters(runner, self.interval):
            return
        if self._stats is None:
            self._stats = InputStatistics(find_pwlu_layers(runner.model))
        if self._stats.layers:
            self._stats.reset()
            self._stats.attach()

    def after_train_iter(self, runner, batch_idx: int, data_batch: DATA_BATCH = None,
                         outputs: Optional[dict] = None) -> None:
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
        if self._stats is not None:
            self._stats.detach()


@HOOKS.register_module()
class PWLUHook(Hook):
    """Switches every PWLU from phase I to phase II at iteration (or epoch) ``T``.

    At the first training iteration with ``iter >= realign_iter`` (or of an epoch
    ``>= realign_epoch``) it realigns every PWLU still in phase I (:func:`realign_model`) and
    logs the switch. Before it, each training iteration is one statistics step of every
    phase-I layer. It also makes the rest of the run train the PWLU parameters: the
    optimizer's groups (:func:`setup_pwlu_optimizer`), the gradient sync under DDP
    (:func:`install_pwlu_grad_sync`), and the alignment logging (:class:`PWLUAlignmentHook`).

    Args:
        realign_iter (int, optional): ``T`` in iterations (micro-batches with gradient
            accumulation).
        realign_epoch (int, optional): ``T`` in epochs. Exactly one of the two must be given.
        log_per_layer (bool): Also log each layer's IoU at the switch. Defaults to True.
        log_interval (int): Interval of the alignment logging; 0 disables it. Defaults to 50.
        stage_depth (int): Name components that make a stage for that logging. Defaults to 2.
        add_param_groups (bool): Give the PWLU parameters their own param groups when the
            optimizer was built by another constructor than ``PWLUOptimWrapperConstructor``.
            False keeps it as built; a missing PWLU parameter is then an error.
            Defaults to True.
        decay_mult (float): Weight decay of those groups relative to the optimizer's.
            Defaults to 0.
        lr_mult (float): Their learning rate relative to the group they come from.
            Defaults to 1.

    Note:
        The phase lives in the layers' buffers, so resuming before ``T`` realigns at ``T`` and
        resuming after never resets again. docs/training.md describes the hook in full.
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
        self.alignment = PWLUAlignmentHook(self.log_interval, self.stage_depth)
        self._layers: Optional[List[PWLU]] = None  # cached: no module walk every iteration
        self._open: List[PWLU] = []  # the layers whose statistics step this hook opened

    def before_run(self, runner) -> None:
        """Install the phase-II gradient sync under DDP; set up the optimizer's PWLU groups."""
        self._layers = [layer for _, layer in find_pwlu_layers(runner.model)]
        if not self._layers:
            runner.logger.warning('PWLUHook: the model has no PWLU layer; the hook does nothing')
            return
        setup_pwlu_optimizer(runner, self.add_param_groups, self.decay_mult, self.lr_mult)
        if isinstance(runner.model, nn.parallel.DistributedDataParallel):
            install_pwlu_grad_sync(runner.model)
        elif is_model_wrapper(runner.model):
            runner.logger.warning(
                f'PWLUHook: {type(runner.model).__name__} is not a DistributedDataParallel; '
                'PWLU gradients are not synchronised across ranks by the hook')

    def before_train(self, runner) -> None:
        if self._layers:
            phase = 'II' if all(layer.realigned for layer in self._layers) else 'I'
            when = (f'iter {self.realign_iter}' if self.realign_iter is not None else
                    f'epoch {self.realign_epoch}')
            runner.logger.info(f'PWLUHook: {len(self._layers)} PWLU layers, phase {phase} at '
                               f'iter {runner.iter}; realignment at {when}')

    def before_train_iter(self, runner, batch_idx: int, data_batch: DATA_BATCH = None) -> None:
        """Realign when due; open the statistics step of the phase-I layers."""
        if self._layers is None:
            self._layers = [layer for _, layer in find_pwlu_layers(runner.model)]
        # The layers' Python phase flags: no device sync on this every-iteration path.
        waiting = [layer for layer in self._layers if not layer.realigned]
        due = (runner.iter >= self.realign_iter if self.realign_iter is not None else
               runner.epoch >= self.realign_epoch)
        if waiting and due:
            self._log_switch(runner, realign_model(runner.model))
            waiting = []
        self._end_statistics_steps()  # one an iteration without after_train_iter left open
        self._open = waiting
        for layer in self._open:
            layer.begin_statistics_step()
        self.alignment.before_train_iter(runner, batch_idx, data_batch)

    def after_train_iter(self, runner, batch_idx: int, data_batch: DATA_BATCH = None,
                         outputs: Optional[dict] = None) -> None:
        """End the statistics step (before ``CheckpointHook`` saves)."""
        self._end_statistics_steps()
        self.alignment.after_train_iter(runner, batch_idx, data_batch, outputs)

    def after_train(self, runner) -> None:
        self._end_statistics_steps()
        self.alignment.after_train(runner)

    def _end_statistics_steps(self) -> None:
        # Only the steps this hook opened: steps nest, and another one may be open.
        for layer in self._open:
            layer.end_statistics_step()
        self._open = []

    def _log_switch(self, runner, summary: Dict[str, Tuple[float, float]]) -> None:
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
        total, lines = 0, []
        for name, layer in find_pwlu_layers(runner.model):
            # realign() summed the skipped statistics over the ranks.
            count = int(layer.channel_batches_skipped.sum().item())
            if count:
                total += count
                never = int((layer.channel_batches_tracked == 0).sum().item())
                lines.append(f'PWLUHook:   {name}: {count} skipped in '
                             f'{int((layer.channel_batches_skipped > 0).sum())} of '
                             f'{layer.num_sets} channels; {never} channels without any finite '
                             'statistics keep the initial range')
        message = (f'PWLUHook: {total} non-finite batch statistics (one per channel and call) '
                   'were skipped in phase I')
        if total:
            runner.logger.warning('\n'.join([message] + lines))
        else:
            runner.logger.info(message)
        scalars['pwlu/skipped_nonfinite'] = float(total)
        runner.visualizer.add_scalars(scalars, step=runner.iter)
        runner.message_hub.update_info('pwlu_realigned_iter', runner.iter)
