"""Resume before/after the switch through a real Runner; mmengine checkpoint loading on torch>=2.6."""
import collections
import os
import pickle

import pytest
import torch

pytest.importorskip('mmengine')

from mmengine.logging import HistoryBuffer  # noqa: E402
from mmengine.runner import Runner  # noqa: E402
from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint  # noqa: E402

import pwlu_mmdet.engine  # noqa: E402,F401
from pwlu_mmdet import PWLU  # noqa: E402
from pwlu_mmdet.utils.testing import TinyPWLUNet, tiny_runner_cfg  # noqa: E402

T = 4
ITERS = 8


def _cfg(work_dir, **kwargs):
    cfg = tiny_runner_cfg(str(work_dir), ITERS, T, **kwargs)
    cfg['default_hooks']['checkpoint'] = dict(type='CheckpointHook', interval=2, by_epoch=False)
    # A scheduler too, so that the checkpoint holds what real mmdet ones hold (Counter).
    cfg['param_scheduler'] = [dict(type='MultiStepLR', milestones=[5], by_epoch=False)]
    return cfg


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
    work = tmp_path_factory.mktemp('full')
    runner = Runner(**_cfg(work))
    runner.train()
    return work, {k: v.clone() for k, v in runner.model.state_dict().items()}


def _count_realigns(monkeypatch):
    calls = []
    original = PWLU.realign

    def spy(self, *args, **kwargs):
        calls.append(id(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PWLU, 'realign', spy)
    return calls


@pytest.mark.parametrize('resume_iter', [2, 6])  # a checkpoint before T and one after T
def test_resume_matches_uninterrupted_run(tmp_path, uninterrupted, monkeypatch, resume_iter):
    work, expected = uninterrupted
    ckpt = os.path.join(str(work), f'iter_{resume_iter}.pth')
    calls = _count_realigns(monkeypatch)
    runner = Runner(**_cfg(tmp_path, resume=True, load_from=ckpt))
    runner.train()
    assert runner.iter == ITERS
    state = runner.model.state_dict()
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key
    # Before T the resumed run realigns (once per layer) at T; after T it never resets again.
    assert len(calls) == (2 if resume_iter < T else 0)
    assert runner.model.act1.realigned and runner.model.act1.points.requires_grad


def test_resume_from_phase_one_checkpoint_keeps_phase_one(uninterrupted):
    work, _ = uninterrupted
    model = TinyPWLUNet()
    ckpt = _load_checkpoint(os.path.join(str(work), f'iter_{T - 2}.pth'))
    model.load_state_dict(ckpt['state_dict'])
    assert not model.act1.realigned and not model.act1.points.requires_grad
    assert model.act1.num_batches_tracked.item() == T - 2


def test_test_time_checkpoint_loading(uninterrupted):
    """What ``tools/test.py CHECKPOINT`` does: Runner.load_checkpoint, then eval."""
    work, expected = uninterrupted
    cfg = tiny_runner_cfg(str(work / 'test'), ITERS, None)
    runner = Runner(**cfg)
    runner.load_checkpoint(os.path.join(str(work), f'iter_{ITERS}.pth'))
    model = runner.model
    assert model.act1.realigned and model.act2.realigned
    for key, value in expected.items():
        assert torch.equal(model.state_dict()[key], value), key
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 6, 6))
    assert torch.isfinite(out).all()


def test_plain_mmengine_loading_fails_without_the_fix(uninterrupted):
    """The problem is real (torch >= 2.6), and the fix does not weaken torch.load globally."""
    work, _ = uninterrupted
    path = os.path.join(str(work), f'iter_{ITERS}.pth')
    original = CheckpointLoader.__dict__['load_checkpoint'].__func__.__wrapped__
    with pytest.raises(pickle.UnpicklingError):
        original(CheckpointLoader, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)  # weights_only=True default, outside mmengine's loader
    ckpt = _load_checkpoint(path)
    assert isinstance(ckpt['message_hub']['log_scalars']['train/loss'], HistoryBuffer)
    assert isinstance(ckpt['param_schedulers'][0]['milestones'], collections.Counter)


class _Gadget:
    """Pickles as ``getattr(HistoryBuffer, '__init__')``: not a statistics method."""

    def __reduce__(self):
        return getattr, (HistoryBuffer, '__init__')


class _OtherGetattr:

    def __reduce__(self):
        return getattr, (collections.Counter, 'fromkeys')


@pytest.mark.parametrize('gadget', [_Gadget, _OtherGetattr])
def test_restricted_getattr_refuses_other_attributes(tmp_path, gadget):
    path = str(tmp_path / 'evil.pth')
    torch.save({'meta': {'x': gadget()}}, path)
    with pytest.raises(pickle.UnpicklingError, match='refusing getattr'):
        _load_checkpoint(path)


def _stock_cfg(work_dir, **kwargs):
    """mmdet's stock optim_wrapper: no constructor, a paramwise_cfg (PWLUHook adds the groups)."""
    cfg = _cfg(work_dir, **kwargs)
    cfg['optim_wrapper'] = dict(type='OptimWrapper', optimizer=cfg['optim_wrapper']['optimizer'],
                                paramwise_cfg=dict(norm_decay_mult=0.))
    return cfg


def test_stock_optim_wrapper_resumes_with_pwlu_groups(tmp_path):
    """The hook's PWLU param groups exist before mmengine resumes: the optimizer state (the
    PWLU momentum buffers included) and the scheduler restore, and the run continues exactly."""
    full = tmp_path / 'full'
    runner = Runner(**_stock_cfg(full))
    runner.train()
    expected = {k: v.clone() for k, v in runner.model.state_dict().items()}
    ckpt = os.path.join(str(full), 'iter_6.pth')  # after T: PWLU momentum in the state
    resumed = Runner(**_stock_cfg(tmp_path / 'resumed', resume=True, load_from=ckpt))
    resumed.train()
    for key, value in expected.items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


def _strip_new_counters(src, dst):
    """A checkpoint without the per-channel counters (as an older layer wrote it)."""
    ckpt = _load_checkpoint(src)
    for key in [k for k in ckpt['state_dict'] if 'channel_batches' in k]:
        del ckpt['state_dict'][key]
    torch.save(ckpt, dst)


@pytest.mark.parametrize('resume_iter', [2, 6])
def test_checkpoint_from_before_the_counters_resumes(tmp_path, uninterrupted, resume_iter):
    work, expected = uninterrupted
    old = str(tmp_path / f'old_iter_{resume_iter}.pth')
    _strip_new_counters(os.path.join(str(work), f'iter_{resume_iter}.pth'), old)
    runner = Runner(**_cfg(tmp_path / 'run', resume=True, load_from=old))
    runner.train()
    state = runner.model.state_dict()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key
