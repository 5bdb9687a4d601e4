"""Phase-I statistics that survive real runs: calls pooled per step (a head shared by FPN
levels), non-finite batches skipped per channel, old state dicts, and a phase-II layer next to
non-finite inputs (the op's own gradients there: ops/test_pwlu_op.py)."""
import warnings

import pytest
import torch
from helpers import normal_input

from pwlu_mmdet import PWLU, statistics_step
from pwlu_mmdet.layers import pool_moments

PARAMS = ('points', 'left_bound', 'right_bound', 'left_slope', 'right_slope')


def _old_ema(layer, batches):
    """The running statistics as the layer computed them before steps existed (Eq. 5 per
    call, the same torch ops in the same order)."""
    mean, std = torch.zeros(layer.num_sets), torch.ones(layer.num_sets)
    dims = lambda x: [d for d in range(x.dim()) if layer.mode == 'layer' or d != 1]  # noqa
    for x in batches:
        var, mu = torch.var_mean(x.float(), dim=dims(x), correction=0)
        m = layer.momentum
        mean.mul_(1 - m).add_(mu.reshape(-1), alpha=m)
        std.mul_(1 - m).add_(var.reshape(-1).sqrt(), alpha=m)
    return mean, std


@pytest.mark.parametrize('mode', ['channel', 'layer'])
@pytest.mark.parametrize('in_step', [False, True])
def test_one_call_per_step_is_bit_identical_to_eq5(mode, in_step, monkeypatch):
    from pwlu_mmdet import ops
    # The pure-PyTorch moments, so that Eq. 5 as written can be replayed op for op.
    monkeypatch.setattr(ops, 'relu_with_moments', ops.relu_with_moments_reference)
    layer = PWLU(3, mode=mode, momentum=0.13)
    batches = [normal_input(i, mean=i - 2.0, std=1 + i / 3) for i in range(12)]
    for x in batches:
        if in_step:
            with statistics_step(layer):
                layer(x)
        else:
            layer(x)
    mean, std = _old_ema(layer, batches)
    assert torch.equal(layer.running_mean, mean) and torch.equal(layer.running_std, std)
    assert layer.num_batches_tracked.item() == 12
    assert layer.channel_batches_tracked.tolist() == [12] * layer.num_sets
    assert layer.channel_batches_skipped.tolist() == [0] * layer.num_sets


def _shared_layer_run(pooled, steps=60, means=(-4.0, 0.0, 4.0)):
    layer = PWLU(4)
    for step in range(steps):
        layer.begin_statistics_step() if pooled else None
        for level, mean in enumerate(means):
            # Levels of different sizes, as FPN levels: the finest has the most elements.
            size = 32 >> level
            layer(normal_input(step * 10 + level, (2, 4, size, size), mean=mean))
        layer.end_statistics_step()
    layer.realign()
    return layer


def test_shared_layer_range_covers_every_level():
    """A layer called on three levels per step (means -4, 0, 4, std 1) must reset to a range
    that covers all of them; per-call EMA updates gave about [-2.7, 3.3]."""
    per_call = _shared_layer_run(pooled=False)
    assert (per_call.left_bound > -4).all()  # the problem is real: most of level 0 is outside
    layer = _shared_layer_run(pooled=True)
    # The mixture of N(-4, 1), N(0, 1), N(4, 1) has mean 0 and std sqrt(1 + 32 / 3).
    std = (1 + 32 / 3)**0.5
    torch.testing.assert_close(layer.running_mean, torch.zeros(4), atol=0.05, rtol=0)
    torch.testing.assert_close(layer.running_std, torch.full((4, ), std), atol=0.05, rtol=0)
    assert (layer.left_bound < -7).all() and (layer.right_bound > 7).all()
    assert layer.num_batches_tracked.item() == 60  # one update per step, not per call


def test_pool_moments_is_the_mixture_with_equal_call_weights():
    calls = [normal_input(i, (50, 2, 7), mean=3.0 * i, std=1 + i) for i in range(3)]
    moments = [tuple(t.reshape(-1) for t in reversed(torch.var_mean(
        x, dim=[0, 2], correction=0))) for x in calls]
    mean, var, finite, skipped = pool_moments(moments)
    # Equal weights: the same as pooling equally many elements of every call.
    pooled = torch.cat(calls, dim=0)
    ref_var, ref_mean = torch.var_mean(pooled, dim=[0, 2], correction=0)
    torch.testing.assert_close(mean, ref_mean)
    torch.testing.assert_close(var, ref_var)
    assert finite.all() and skipped.tolist() == [0, 0]
    one = pool_moments(moments[:1])
    assert one[0] is moments[0][0] and one[1] is moments[0][1]


def test_pool_moments_weighted_and_non_finite_components():
    calls = [normal_input(i, (10 * (i + 1), 2, 3), mean=5.0 * i, std=1 + i) for i in range(3)]
    moments = [tuple(t.reshape(-1).double() for t in reversed(torch.var_mean(
        x.double(), dim=[0, 2], correction=0))) for x in calls]
    # Weighted by elements: the moments of all the elements pooled.
    mean, var, finite, skipped = pool_moments(moments, [x.numel() for x in calls])
    ref_var, ref_mean = torch.var_mean(torch.cat(calls).double(), dim=[0, 2], correction=0)
    torch.testing.assert_close(mean, ref_mean)
    torch.testing.assert_close(var, ref_var)
    # A non-finite component is left out of its set and counted; the weights renormalise.
    bad = [(m.clone(), v.clone()) for m, v in moments]
    bad[1][0][0] = float('nan')
    mean, var, finite, skipped = pool_moments(bad, [1.0, 2.0, 3.0])
    assert finite.all() and skipped.tolist() == [1, 0]
    expected = (moments[0][0][0] + 3 * moments[2][0][0]) / 4
    torch.testing.assert_close(mean[0], expected)


def test_ranks_combined_as_an_equal_weight_mixture(monkeypatch):
    """combine_ranks on two (simulated) ranks: the deviations-form mixture of their running
    statistics, far from zero too; a rank without statistics for a set is left out."""
    from pwlu_mmdet.layers import running_stats
    layers = [PWLU(3), PWLU(3)]
    for r, layer in enumerate(layers):
        layer.running_mean.copy_(torch.tensor([1e4 + r, -2.0 * r, 0.5]))
        layer.running_std.copy_(torch.tensor([1e-2 * (1 + r), 1.0 + r, 2.0]))
        layer.num_batches_tracked.fill_(5)
        layer.channel_batches_tracked.copy_(torch.tensor([5, 5, 5 if r == 0 else 0]))
        layer.channel_batches_skipped.copy_(torch.tensor([0, 0, 0 if r == 0 else 5]))
    locals_ = []
    monkeypatch.setattr(running_stats.dist, 'get_world_size', lambda *a: 2)
    for layer in layers:  # what each rank contributes
        captured = []
        monkeypatch.setattr(running_stats.dist, 'all_gather',
                            lambda out, t, c=captured: c.append(t.clone()))
        running_stats.combine_ranks(layer, distributed=True)
        locals_.append(captured[0])
    monkeypatch.setattr(running_stats.dist, 'all_gather',
                        lambda out, t: [o.copy_(x) for o, x in zip(out, locals_)])
    combined = running_stats.combine_ranks(layers[0], distributed=True)
    means = torch.stack([m.running_mean.double() for m in layers])
    stds = torch.stack([m.running_std.double() for m in layers])
    mean = means.mean(0)
    var = (stds.square() + (means - mean).square()).mean(0)
    torch.testing.assert_close(combined.mean[:2].double(), mean[:2].float().double())
    torch.testing.assert_close(combined.std[:2].double(), var[:2].sqrt(), rtol=1e-6, atol=0)
    assert combined.mean[2].item() == 0.5 and combined.std[2].item() == 2.0  # rank 0 alone
    assert combined.ranks.tolist() == [2, 2, 1] and combined.layer_ranks == 2
    assert combined.tracked.tolist() == [10, 10, 5] and combined.skipped.tolist() == [0, 0, 5]


@pytest.mark.parametrize('bad', ['inf', 'nan', 'fp16_overflow'])
def test_non_finite_batch_is_skipped_per_channel(bad, monkeypatch):
    from pwlu_mmdet import ops
    monkeypatch.setattr(ops, 'relu_with_moments', ops.relu_with_moments_reference)
    batches = [normal_input(i, mean=0.5, std=2.0) for i in range(50)]
    reference = PWLU(3)
    for i, x in enumerate(batches):
        if i != 17:
            reference(x)
    layer = PWLU(3)
    for i, x in enumerate(batches):
        if i == 17:
            x = x.clone()
            if bad == 'fp16_overflow':  # channel 1 overflows float16, as under AMP
                x[:, 1] *= 40000
                x = x.half()
                assert torch.isinf(x[:, 1]).any() and torch.isfinite(x[:, 0]).all()
            else:
                x[0, 1, 0, 0] = float(bad)
        layer(x.float() if bad != 'fp16_overflow' else x)
    assert torch.isfinite(layer.running_mean).all() and torch.isfinite(layer.running_std).all()
    assert layer.channel_batches_skipped.tolist() == [0, 1, 0]
    assert layer.channel_batches_tracked.tolist() == [50, 49, 50]
    # The skipped channel equals a run without that batch; the others saw every batch.
    assert torch.equal(layer.running_mean[1], reference.running_mean[1])
    assert torch.equal(layer.running_std[1], reference.running_std[1])
    assert not torch.equal(layer.running_mean[0], reference.running_mean[0])
    layer.realign()
    for name in PARAMS:
        assert torch.isfinite(getattr(layer, name)).all(), name
    x = normal_input(99)
    assert torch.isfinite(layer(x)).all()


def test_channel_never_finite_keeps_initial_range_with_warning():
    layer = PWLU(3, init_bound=2.5)
    for i in range(5):
        x = normal_input(i, mean=1.0)
        x[:, 2] = float('nan')
        with statistics_step(layer):
            layer(x)
            layer(normal_input(i + 100, mean=-1.0).index_fill_(1, torch.tensor([2]), float('inf')))
    with pytest.warns(RuntimeWarning, match=r"PWLU 'neck\.act'.*1 of 3 channels \(2\).*10 "):
        layer.realign(name='neck.act')
    assert layer.left_bound[2].item() == -2.5 and layer.right_bound[2].item() == 2.5
    assert layer.running_mean[2].item() == 0 and layer.running_std[2].item() == 1
    # Channels 0 and 1 pooled both calls of each step (means +1 and -1): mean 0, std > 1.
    assert layer.channel_batches_tracked.tolist() == [5, 5, 0]
    assert (layer.running_mean[:2].abs() < 0.1).all() and (layer.running_std[:2] > 1.1).all()
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # healthy layers do not warn
        healthy = PWLU(3)
        healthy(normal_input(0))
        healthy.realign()


def test_pending_step_is_flushed_by_realign_and_dropped_by_load():
    layer = PWLU(3)
    layer.begin_statistics_step()
    layer(normal_input(0, mean=5.0))
    layer(normal_input(1, mean=-5.0))
    assert layer.num_batches_tracked.item() == 0 and layer.in_statistics_step
    layer.realign()  # the open step counts
    assert not layer.in_statistics_step and layer.num_batches_tracked.item() == 1
    assert (layer.running_std > 0.5).all()
    other = PWLU(3)
    other.begin_statistics_step()
    other(normal_input(2))
    other.load_state_dict(PWLU(3).state_dict())
    assert not other.in_statistics_step


def test_nested_statistics_steps_update_once():
    """A statistics_step() inside an open step (the one PWLUHook opens around the iteration)
    is part of it: the inner exit must not close the outer step, so the calls after it still
    pool into the one update of the outer step."""
    layer = PWLU(3)
    with statistics_step(layer):
        layer(normal_input(0, mean=-4.0))
        with statistics_step(layer):
            layer(normal_input(1, mean=0.0))
        assert layer.in_statistics_step and layer.num_batches_tracked.item() == 0
        layer(normal_input(2, mean=4.0))
        assert layer.num_batches_tracked.item() == 0
    assert not layer.in_statistics_step and layer.num_batches_tracked.item() == 1
    flat = PWLU(3)
    with statistics_step(flat):
        for i, mean in enumerate((-4.0, 0.0, 4.0)):
            flat(normal_input(i, mean=mean))
    assert torch.equal(layer.running_mean, flat.running_mean)
    assert torch.equal(layer.running_std, flat.running_std)
    # realign() closes a nested step whatever its depth; its calls count.
    layer.begin_statistics_step()
    layer.begin_statistics_step()
    layer(normal_input(3))
    layer.realign()
    assert not layer.in_statistics_step and layer.num_batches_tracked.item() == 2
    layer.end_statistics_step()  # the hook's end after the switch: nothing left to close
    assert layer.num_batches_tracked.item() == 2


def test_state_dict_without_the_new_counters_loads():
    """A phase-I state dict without the per-channel counters (as an older layer wrote it), with
    one channel's statistics poisoned by an inf batch (which such a layer kept), loads
    strictly."""
    layer = PWLU(3)
    for i in range(4):
        layer(normal_input(i))
    old = {k: v.clone() for k, v in layer.state_dict().items()
           if k not in ('channel_batches_tracked', 'channel_batches_skipped')}
    old['running_mean'][1] = float('nan')
    old['running_std'][1] = float('inf')
    loaded = PWLU(3)
    loaded.load_state_dict(old)  # strict: no missing keys
    assert loaded.channel_batches_tracked.tolist() == [4, 0, 4]
    assert loaded.channel_batches_skipped.tolist() == [0, 0, 0]
    assert loaded.running_mean[1].item() == 0 and loaded.running_std[1].item() == 1
    assert torch.equal(loaded.running_mean[0], layer.running_mean[0])
    loaded(normal_input(7))  # phase I goes on; the poisoned channel restarts from (0, 1)
    loaded.realign()
    for name in PARAMS:
        assert torch.isfinite(getattr(loaded, name)).all(), name


def test_statistics_step_under_torch_compile():
    layer = PWLU(3)
    compiled = torch.compile(layer, backend='eager')
    with statistics_step(layer):
        compiled(normal_input(0, mean=-3.0))
        compiled(normal_input(1, mean=3.0))
    eager = PWLU(3)
    with statistics_step(eager):
        eager(normal_input(0, mean=-3.0))
        eager(normal_input(1, mean=3.0))
    assert layer.num_batches_tracked.item() == 1
    torch.testing.assert_close(layer.running_std, eager.running_std)


def test_layer_phase_two_non_finite_input():
    layer = PWLU(3)
    layer(normal_input(0))
    layer.realign()
    x = normal_input(1).requires_grad_()
    y = layer(x.detach().clone().index_put_((torch.tensor([0]), torch.tensor([1])),
                                           torch.tensor(float('nan'))))
    assert torch.isnan(y[0, 1]).all() and torch.isfinite(y[1]).all()
    y[1].sum().backward()  # the NaN elements get zero upstream gradient
    for name in PARAMS:
        assert torch.isfinite(getattr(layer, name).grad).all(), name
