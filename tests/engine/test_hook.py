"""PWLUHook: realigns exactly once at T (iteration or epoch), logs the switch."""
import glob
import json
import os

import pytest
import torch

pytest.importorskip('mmengine')

from mmengine.model import BaseModel  # noqa: E402
from mmengine.registry import HOOKS  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

import pwlu_mmdet.engine  # noqa: E402,F401
from pwlu_mmdet import PWLU  # noqa: E402
from pwlu_mmdet.engine import PWLUHook, realign_model  # noqa: E402
from pwlu_mmdet.utils.testing import tiny_runner_cfg  # noqa: E402


@pytest.fixture
def realign_calls(monkeypatch):
    """Every PWLU.realign call as (layer id, runner iteration at the time)."""
    calls = []
    original = PWLU.realign
    state = {}

    def spy(self, *args, **kwargs):
        calls.append((id(self), state['runner'].iter))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PWLU, 'realign', spy)
    return calls, state


def test_registered_and_validates_arguments():
    assert HOOKS.get('PWLUHook') is PWLUHook
    hook = HOOKS.build(dict(type='PWLUHook', realign_iter=7))
    assert hook.realign_iter == 7 and hook.realign_epoch is None
    for bad in (dict(), dict(realign_iter=1, realign_epoch=1), dict(realign_iter=-1),
                dict(realign_epoch=1.5)):
        with pytest.raises(ValueError):
            PWLUHook(**bad)


@pytest.mark.parametrize('realign_iter', [2, 5])
def test_switch_exactly_once_at_t(tmp_path, realign_calls, realign_iter):
    calls, state = realign_calls
    # A unique experiment name: mmengine shares the logger and visualizer instances of runners
    # created within the same second (the default name is a timestamp).
    runner = Runner(**tiny_runner_cfg(str(tmp_path), 8, realign_iter, log_level='INFO',
                                      experiment_name=f'hook_once_{realign_iter}_{id(tmp_path)}'))
    state['runner'] = runner
    layers = [runner.model.act1, runner.model.act2]
    runner.train()
    assert sorted(calls) == sorted((id(m), realign_iter) for m in layers)
    assert all(m.realigned for m in layers)
    # Phase I saw exactly the iterations [0, T): one statistics update per forward.
    assert all(m.num_batches_tracked.item() == realign_iter for m in layers)

    # The switch and the alignment summary went to the logger and the visualizer.
    log = open(glob.glob(os.path.join(str(tmp_path), '*', '*.log'))[0]).read()
    assert f'PWLUHook: realigned 2 PWLU layers at iter {realign_iter}' in log
    assert 'act1: IoU' in log and 'act2: IoU' in log
    scalars = [json.loads(line) for line in open(
        glob.glob(os.path.join(str(tmp_path), '*', 'vis_data', 'scalars.json'))[0])]
    pwlu_rows = [row for row in scalars if 'pwlu/iou_before' in row]
    assert len(pwlu_rows) == 1 and pwlu_rows[0]['step'] == realign_iter
    assert 0 <= pwlu_rows[0]['pwlu/iou_before'] < 1
    assert pwlu_rows[0]['pwlu/iou_after'] == pytest.approx(1.0)
    assert 'pwlu/iou_before/act1' in pwlu_rows[0]


def test_epoch_based_switch(tmp_path, realign_calls):
    calls, state = realign_calls
    cfg = tiny_runner_cfg(str(tmp_path), 0, None)
    cfg['train_cfg'] = dict(by_epoch=True, max_epochs=3, val_interval=100)
    cfg['custom_hooks'] = [dict(type='PWLUHook', realign_epoch=1)]
    runner = Runner(**cfg)
    state['runner'] = runner
    runner.train()
    iters_per_epoch = len(runner.train_dataloader)
    assert sorted(calls) == sorted((id(m), iters_per_epoch)
                                   for m in (runner.model.act1, runner.model.act2))


def test_realign_model_skips_realigned_layers():
    from pwlu_mmdet.utils.testing import TinyPWLUNet
    model = TinyPWLUNet()
    model.train()
    model(torch.randn(2, 3, 6, 6))
    model.act1.realign()
    reset = model.act1.points.detach().clone()
    summary = realign_model(model)
    assert list(summary) == ['act2'] and model.act2.realigned
    assert torch.equal(model.act1.points.detach(), reset)
    before, after = summary['act2']
    assert 0 <= before <= 1 and after == pytest.approx(1.0)


def test_model_without_pwlu_is_harmless(tmp_path):
    from mmengine.model import BaseModel

    class Plain(BaseModel):

        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3 * 6 * 6, 1)

        def forward(self, inputs, target=None, mode='tensor'):
            out = self.fc(inputs.flatten(1))
            return dict(loss=((out - target)**2).mean()) if mode == 'loss' else out

    runner = Runner(**tiny_runner_cfg(str(tmp_path), 3, 1, model=Plain()))
    runner.train()


class SharedHeadNet(BaseModel):
    """A head activation shared by three 'levels' (inputs shifted by -4, 0, +4), as an RPN
    head runs on every FPN level; training call ``poison_iter`` puts an inf in channel 1 of its
    first level."""

    def __init__(self, poison_iter=None):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1)
        self.act = PWLU(2, num_intervals=4)
        self.poison_iter = poison_iter
        self.calls = 0

    def forward(self, inputs, target=None, mode='tensor'):
        outs = []
        for level, shift in enumerate((-4.0, 0.0, 4.0)):
            x = self.conv(inputs[:, :, level:, level:]) + shift
            if self.training and self.calls == self.poison_iter and level == 0:
                x = x.index_put((torch.tensor([0]), torch.tensor([1])),
                                torch.tensor(float('inf')))
            # The loss reads channel 0 only: the inf batch does not end the run.
            outs.append(self.act(x)[:, :1].mean(dim=(2, 3)))
        self.calls += self.training
        out = sum(outs)
        return dict(loss=((out - target)**2).mean()) if mode == 'loss' else out


def test_hook_pools_shared_layer_calls_per_iteration(tmp_path):
    cfg = tiny_runner_cfg(str(tmp_path), 6, 5, model=SharedHeadNet(poison_iter=2),
                          log_level='INFO', experiment_name=f'shared_{id(tmp_path)}')
    runner = Runner(**cfg)
    act = runner.model.act
    # Calls of the layer inside each open statistics step, counted when the step ends.
    seen, calls = [], []
    act.register_forward_hook(
        lambda module, args, out: calls.append(1) if module.in_statistics_step else None)
    original = act.end_statistics_step

    def end_statistics_step():
        seen.append(len(calls))
        calls.clear()
        original()

    act.end_statistics_step = end_statistics_step
    runner.train()
    assert act.realigned
    # One statistics update per iteration, each pooling the three levels.
    assert act.num_batches_tracked.item() == 5 and seen[:5] == [3] * 5
    # The range covers the three levels (conv outputs near 0 shifted by -4 and +4).
    assert (act.left_bound < -4).all() and (act.right_bound > 4).all()
    # The inf batch was skipped in channel 1 only, and the switch logged it.
    assert act.channel_batches_skipped.tolist() == [0, 1]
    assert act.channel_batches_tracked.tolist() == [5, 5]
    assert all(torch.isfinite(getattr(act, n)).all() for n in (
        'points', 'left_bound', 'right_bound', 'left_slope', 'right_slope'))
    log = open(glob.glob(os.path.join(str(tmp_path), '*', '*.log'))[0]).read()
    assert '1 non-finite batch statistics (one per channel and call) were skipped' in log
    assert 'act: 1 skipped in 1 of 2 channels; 0 channels without any finite' in log
