"""How well the phase-II range of one PWLU fits each of its calls (e.g. the FPN levels of a
shared head) right after the realignment.

Trains the config through phase I up to its ``PWLUHook`` realignment iteration ``T`` and runs
iteration ``T``, whose first act is the reset; during that iteration every call of ``--layer``
is recorded. Prints the reset range ``[B_L, B_R]`` (mean over channels) and, per call, the
input's mean and standard deviation (means over channels) and the fraction of its elements
inside ``[B_L, B_R]`` of their channel. Nothing is saved.

Example::

    python tools/analysis/realign_levels.py \\
        configs/synthetic/mask-rcnn_r18-tiny_fpn_gn-all-pwlu_synthetic.py \\
        --layer rpn_head.rpn_act --work-dir /tmp/realign_levels
"""
import argparse

import torch
from mmengine.config import Config, DictAction
from mmengine.hooks import Hook
from mmengine.runner import Runner

# Registers the Act* components, the activation layers, PWLUHook and the optimizer constructor,
# and lets mmengine load its checkpoints under torch >= 2.6 (resume, test): see pwlu_mmdet.engine.
import pwlu_mmdet.models  # noqa: F401


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='training config with a PWLUHook')
    parser.add_argument('--layer', default='rpn_head.rpn_act', help='module name of the PWLU')
    parser.add_argument('--work-dir', default='work_dirs/realign_levels', help='logs')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value (as tools/train.py)')
    return parser.parse_args(argv)


class CallRecorder(Hook):
    """Records, at iteration ``T`` (after PWLUHook's reset), every call's input statistics."""

    priority = 'LOWEST'

    def __init__(self, layer_name: str, realign_iter: int) -> None:
        self.layer_name = layer_name
        self.realign_iter = realign_iter
        self.calls = []
        self.range = None
        self._handle = None

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter != self.realign_iter:
            return
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        layer = model.get_submodule(self.layer_name)
        self.range = tuple(t.detach().clone() for t in layer.valid_range())
        self._handle = layer.register_forward_pre_hook(self._record)

    def _record(self, layer, args):
        x = layer.channels_first(args[0].detach()).float()
        dims = [0] + list(range(2, x.dim()))
        view = (1, -1) + (1, ) * (x.dim() - 2)
        left, right = (t.reshape(view) for t in self.range)
        inside = ((x >= left) & (x <= right)).float().mean().item()
        std, mean = torch.std_mean(x, dim=dims, correction=0)
        self.calls.append((tuple(x.shape), mean.mean().item(), std.mean().item(), inside))

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def main(argv=None):
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    (hook_cfg, ) = [h for h in cfg.custom_hooks if h['type'] == 'PWLUHook']
    realign_iter = hook_cfg['realign_iter']
    cfg.work_dir = args.work_dir
    cfg.train_cfg.max_iters = realign_iter + 1
    cfg.train_cfg.val_interval = 10**9
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=10**9)
    runner = Runner.from_cfg(cfg)
    recorder = CallRecorder(args.layer, realign_iter)
    runner.register_hook(recorder)
    runner.train()
    left, right = recorder.range
    print(f'{args.layer} reset at iteration {realign_iter}: B_L {left.mean():.3f} '
          f'(min {left.min():.3f}), B_R {right.mean():.3f} (max {right.max():.3f}), '
          f'mean over {left.numel()} channels')
    print('| call | input shape | mean | std | inside [B_L, B_R] |')
    print('|---|---|---|---|---|')
    for i, (shape, mean, std, inside) in enumerate(recorder.calls):
        print(f'| {i} | {"x".join(map(str, shape))} | {mean:.3f} | {std:.3f} | {inside:.1%} |')


if __name__ == '__main__':
    main()
