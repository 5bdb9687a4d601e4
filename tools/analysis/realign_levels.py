"""How well the reset range of a PWLU called several times per step (a head shared by the FPN
levels) covers each of its calls, under three rules for the phase-I statistics.

Trains the config through phase I (iterations ``[0, T)``, ``T`` its ``PWLUHook``
``realign_iter``) and records, for every call of each ``--layers`` PWLU, the per-channel mean,
variance and element count of its input, and the inputs of the last phase-I iteration. Phase I
computes ReLU, so the inputs do not depend on the rule; the running statistics are then
replayed (Eq. 5, the layer's momentum) under each rule:

* ``per call``: one EMA update per call;
* ``per step, calls equal``: one update per step from the mixture of the step's calls, each
  call weighted the same (what ``PWLU`` does inside a statistics step);
* ``per step, elements``: the same mixture with each call weighted by its elements.

For each rule it prints the reset range ``mu +- sigma * std`` (means over channels) and the
fraction of each call's elements of iteration ``T - 1`` inside it. Nothing is saved.

Example::

    python tools/analysis/realign_levels.py \\
        configs/synthetic/mask-rcnn_r18-tiny_fpn_gn-all-pwlu_synthetic.py \\
        --layers rpn_head.rpn_act --work-dir /tmp/realign_levels
"""
import argparse
from typing import Dict, List

import torch
from mmengine.config import Config, DictAction
from mmengine.hooks import Hook
from mmengine.runner import Runner

# Registers the Act* components, the activation layers, PWLUHook and the optimizer constructor.
import pwlu_mmdet.models  # noqa: F401
from pwlu_mmdet.layers import pool_moments

RULES = ('per call', 'per step, calls equal', 'per step, elements')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='training config with a PWLUHook')
    parser.add_argument('--layers', nargs='+', default=['rpn_head.rpn_act'],
                        help='module names of the PWLU layers')
    parser.add_argument('--work-dir', default='work_dirs/realign_levels', help='logs')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value (as tools/train.py)')
    return parser.parse_args(argv)


class CallRecorder(Hook):
    """Records the moments of every call of some layers per iteration, and the last inputs."""

    priority = 'LOWEST'

    def __init__(self, layer_names: List[str], last_iter: int) -> None:
        self.layer_names = layer_names
        self.last_iter = last_iter
        self.steps: Dict[str, list] = {name: [] for name in layer_names}
        self.last_inputs: Dict[str, list] = {name: [] for name in layer_names}
        self.layers = {}
        self._keep = False

    def before_train(self, runner) -> None:
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        for name in self.layer_names:
            layer = model.get_submodule(name)
            self.layers[name] = layer
            layer.register_forward_pre_hook(self._make_hook(name))

    def _make_hook(self, name: str):

        def hook(layer, args):
            if not layer.training:
                return
            x = layer.channels_first(args[0].detach()).double()
            dims = [0] + list(range(2, x.dim()))
            var, mean = torch.var_mean(x, dim=dims, correction=0)
            self.steps[name][-1].append((mean, var, x.numel() // x.shape[1]))
            if self._keep:
                self.last_inputs[name].append(x.float())

        return hook

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        for calls in self.steps.values():
            calls.append([])
        self._keep = runner.iter == self.last_iter


def replay(steps: list, rule: str, momentum: float, channels: int):
    """The running ``(mean, std)`` after Eq. 5 over ``steps`` under ``rule``."""
    mean = torch.zeros(channels, dtype=torch.float64)
    std = torch.ones(channels, dtype=torch.float64)
    for calls in steps:
        if rule == 'per call':
            updates = [(mu, var) for mu, var, _ in calls]
        else:
            weights = None if rule == 'per step, calls equal' else [n for _, _, n in calls]
            pooled = pool_moments([(mu, var) for mu, var, _ in calls], weights)
            updates = [pooled[:2]]
        for mu, var in updates:
            mean = (1 - momentum) * mean + momentum * mu
            std = (1 - momentum) * std + momentum * var.sqrt()
    return mean, std


def report(name: str, layer, steps: list, inputs: List[torch.Tensor]) -> None:
    channels = layer.num_sets
    view = lambda t, x: t.reshape((1, -1) + (1, ) * (x.dim() - 2))  # noqa: E731
    shapes = ['x'.join(map(str, x.shape)) for x in inputs]
    print(f'\n{name}: {len(steps)} phase-I steps, {len(inputs)} calls per step, '
          f'{channels} channels; coverage of the calls of iteration {len(steps) - 1}')
    print('| rule | B_L | B_R | ' + ' | '.join(f'call {i} ({s})' for i, s in enumerate(shapes))
          + ' | all elements | worst call |')
    print('|---' * (len(inputs) + 5) + '|')
    cells = []
    for x in inputs:
        std, mean = torch.std_mean(x, dim=[0] + list(range(2, x.dim())), correction=0)
        cells.append(f'{mean.mean():.3f} / {std.mean():.3f}')
    print('| input mean / std | | | ' + ' | '.join(cells) + ' | | |')
    for rule in RULES:
        mean, std = replay(steps, rule, layer.momentum, channels)
        left, right = (mean - layer.sigma * std).float(), (mean + layer.sigma * std).float()
        inside = [((x >= view(left, x)) & (x <= view(right, x))).double().sum().item()
                  for x in inputs]
        counts = [x.numel() for x in inputs]
        fractions = [i / n for i, n in zip(inside, counts)]
        print(f'| {rule} | {left.mean():.3f} | {right.mean():.3f} | '
              + ' | '.join(f'{f:.1%}' for f in fractions)
              + f' | {sum(inside) / sum(counts):.1%} | {min(fractions):.1%} |')
    mean, std = replay(steps, 'per step, calls equal', layer.momentum, channels)
    print(f'(replay of "per step, calls equal" vs the layer\'s own running statistics: max '
          f'|diff| mean {(mean.float() - layer.running_mean).abs().max():.2e}, std '
          f'{(std.float() - layer.running_std).abs().max():.2e})')


def main(argv=None):
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    (hook_cfg, ) = [h for h in cfg.custom_hooks if h['type'] == 'PWLUHook']
    realign_iter = hook_cfg['realign_iter']
    cfg.work_dir = args.work_dir
    cfg.train_cfg.max_iters = realign_iter  # phase I only: the hook never resets
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=10**9, save_last=False)
    runner = Runner.from_cfg(cfg)
    recorder = CallRecorder(args.layers, realign_iter - 1)
    runner.register_hook(recorder)
    runner.train()
    for name in args.layers:
        report(name, recorder.layers[name], recorder.steps[name], recorder.last_inputs[name])


if __name__ == '__main__':
    main()
