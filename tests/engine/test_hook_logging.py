"""PWLUHook's training-time logging: per-stage mean IoU and fraction outside [B_L, B_R]."""
import glob
import json
import math
import os
from types import SimpleNamespace

import pytest
import torch
from helpers import known_layer
from torch import nn

pytest.importorskip('mmengine')

from mmengine.runner import Runner  # noqa: E402

from pwlu_mmdet.engine import PWLUHook  # noqa: E402
from pwlu_mmdet.utils.testing import tiny_runner_cfg  # noqa: E402


class Recorder:
    """Stands in for runner.visualizer / runner.logger."""

    def __init__(self):
        self.scalars = []

    def add_scalars(self, scalars, step):
        self.scalars.append((step, dict(scalars)))

    def info(self, msg):
        pass

    warning = info


def test_validates_arguments():
    for bad in (dict(log_interval=-1), dict(log_interval=1.5), dict(stage_depth=-2)):
        with pytest.raises(ValueError):
            PWLUHook(realign_iter=1, **bad)


def test_logged_values_hand_computed():
    model = nn.Module()
    model.backbone = nn.Module()
    # backbone.a: channel 0 x = -1, 1, -1, 1 (mean 0, std 1, range [-3, 3]) with [B_L, B_R] =
    # [-0.5, 2] -> IoU 2.5 / 6, outside 2 of 4; channel 1 x = 1, 3, 1, 3 ([-1, 5]) with
    # [6, 8] -> IoU 0, outside 4 of 4.
    model.backbone.a = known_layer([-0.5, 6.0], [2.0, 8.0], num_channels=2)
    # head.b (layer-wise), called twice: x = 0, 2 then 4, 6 -> mean 3, std sqrt 5, with [0, 3]
    # -> IoU 3 / (6 sqrt 5), outside 2 of 4.
    model.head = nn.Module()
    model.head.b = known_layer([0.0], [3.0], mode='layer')
    rec = Recorder()
    runner = SimpleNamespace(model=model, iter=0, epoch=0, visualizer=rec, logger=rec)
    hook = PWLUHook(realign_iter=100, log_interval=2)
    hook.before_run(runner)

    def iteration():
        hook.before_train_iter(runner, runner.iter)
        model.backbone.a(torch.tensor([[[-1.0, 1, -1, 1], [1, 3, 1, 3]]]))
        model.head.b(torch.tensor([[0.0, 2.0]]))
        model.head.b(torch.tensor([[4.0], [6.0]]))
        hook.after_train_iter(runner, runner.iter)
        runner.iter += 1

    iteration()  # iter 0: not a logging iteration (mmengine logs after iterations 2, 4, ...)
    assert rec.scalars == [] and not model.backbone.a._forward_pre_hooks
    iteration()  # iter 1: logged at step 2
    assert len(rec.scalars) == 1
    step, scalars = rec.scalars[0]
    assert step == 2
    iou_a = [2.5 / 6, 0.0]
    iou_b = 3 / (6 * math.sqrt(5))
    expected = {
        'pwlu/iou': (sum(iou_a) + iou_b) / 3,
        'pwlu/outside': (2 + 4 + 2) / 12,
        'pwlu/iou/backbone': sum(iou_a) / 2,
        'pwlu/outside/backbone': 6 / 8,
        'pwlu/iou/head': iou_b,
        'pwlu/outside/head': 2 / 4,
    }
    assert set(scalars) == set(expected)
    for key, value in expected.items():
        assert scalars[key] == pytest.approx(value, rel=1e-6), key
    # The pre-hooks are only there on logging iterations.
    assert not model.backbone.a._forward_pre_hooks and not model.head.b._forward_pre_hooks
    iteration()
    assert len(rec.scalars) == 1
    iteration()
    assert [s for s, _ in rec.scalars] == [2, 4]
    assert rec.scalars[1][1] == pytest.approx(scalars)  # same inputs, same values

    rec.scalars.clear()
    hook = PWLUHook(realign_iter=100, log_interval=0)
    hook.before_run(runner)
    for _ in range(4):
        iteration()
    assert rec.scalars == []


def test_alignment_hook_alone_logs_what_pwlu_hook_logs():
    """The logging is its own hook: configured alone (PWLUHook's log_interval=0) it writes the
    same scalars at the same steps."""
    from mmengine.registry import HOOKS

    from pwlu_mmdet.engine import PWLUAlignmentHook
    assert HOOKS.get('PWLUAlignmentHook') is PWLUAlignmentHook
    results = []
    for hooks in ([PWLUHook(realign_iter=100, log_interval=2)],
                  [PWLUHook(realign_iter=100, log_interval=0), PWLUAlignmentHook(interval=2)]):
        model = nn.Module()
        model.a = known_layer([-0.5, 6.0], [2.0, 8.0], num_channels=2)
        rec = Recorder()
        runner = SimpleNamespace(model=model, iter=0, epoch=0, visualizer=rec, logger=rec)
        hooks[0].before_run(runner)
        for it in range(4):
            runner.iter = it
            for hook in hooks:
                hook.before_train_iter(runner, it)
            model.a(torch.tensor([[[-1.0, 1, -1, 1], [1, 3, 1, 3]]]) * (1 + it))
            for hook in hooks:
                hook.after_train_iter(runner, it)
        results.append(rec.scalars)
    assert [s for s, _ in results[0]] == [2, 4] and results[0] == results[1]


def _train(tmp_path, name, log_interval):
    torch.manual_seed(0)  # the model is built here, before the runner seeds
    cfg = tiny_runner_cfg(str(tmp_path / name), 6, 2, log_level='INFO',
                          experiment_name=f'{name}_{id(tmp_path)}')
    cfg['custom_hooks'] = [dict(type='PWLUHook', realign_iter=2, log_interval=log_interval)]
    runner = Runner(**cfg)
    runner.train()
    return runner


def test_logged_through_the_visualizer_without_changing_training(tmp_path, monkeypatch):
    from pwlu_mmdet.analysis import InputStatistics
    calls = []
    monkeypatch.setattr(InputStatistics, 'attach',
                        lambda self, _a=InputStatistics.attach: calls.append('attach') or _a(self))
    logged = _train(tmp_path, 'logged', 3)
    assert calls == ['attach', 'attach']  # iterations 2 and 5 (steps 3 and 6) only
    plain = _train(tmp_path, 'plain', 0)
    # The measurement only reads: training is bit-identical with and without it.
    for (k, v), (k2, v2) in zip(logged.model.state_dict().items(),
                                plain.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    for layer in (logged.model.act1, logged.model.act2):
        assert not layer._forward_pre_hooks

    rows = [json.loads(line) for line in open(glob.glob(
        os.path.join(str(tmp_path / 'logged'), '*', 'vis_data', 'scalars.json'))[0])]
    pwlu_rows = [r for r in rows if 'pwlu/iou' in r]
    assert [r['step'] for r in pwlu_rows] == [3, 6]
    for row in pwlu_rows:
        assert {'pwlu/outside', 'pwlu/iou/act1', 'pwlu/iou/act2', 'pwlu/outside/act1',
                'pwlu/outside/act2'} <= set(row)
        assert all(0 <= row[k] <= 1 for k in row if k.startswith('pwlu/'))
    # The losses are logged at the same steps (LoggerHook interval 1).
    loss_steps = {r['step'] for r in rows if 'loss' in r}
    assert {3, 6} <= loss_steps
    log = open(glob.glob(os.path.join(str(tmp_path / 'logged'), '*', '*.log'))[0]).read()
    assert 'PWLUHook: iter 3: mean alignment IoU' in log
