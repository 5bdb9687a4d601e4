"""The PWLU layer: phases, statistics, Eq. 6 reset, valid range, eval tables and their cache."""
import copy

import numpy as np
import pytest
import torch

from pwlu_mmdet import PWLU, pwlu
from pwlu_mmdet.ops import compiled_available, pwlu_reference

PARAMS = ('points', 'left_bound', 'right_bound', 'left_slope', 'right_slope')


def _input(shape=(4, 3, 5, 5), seed=0, scale=2.0, shift=0.5, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale + shift).to(dtype)


def _realigned(channels=3, seed=0, **kwargs):
    layer = PWLU(channels, **kwargs)
    for i in range(3):
        layer(_input((4, channels, 5, 5), seed=seed + i))
    layer.realign()
    return layer


# ----------------------------------------------------------------------------- construction
def test_constructor_validation_and_repr():
    with pytest.raises(ValueError, match='num_channels'):
        PWLU()
    with pytest.raises(ValueError, match='even'):
        PWLU(4, num_intervals=5)
    with pytest.raises(ValueError, match='mode'):
        PWLU(4, mode='pixel')
    layer = PWLU(4, num_intervals=8, inplace=True)  # ConvModule passes it
    assert layer.points.shape == (4, 9)
    assert all(getattr(layer, n).shape == (4, ) for n in PARAMS[1:])
    assert 'num_channels=4' in repr(layer) and 'num_intervals=8' in repr(layer)
    assert 'mode=channel' in repr(layer) and 'phase=I' in repr(layer)
    shared = PWLU(mode='layer')
    assert shared.points.shape == (1, 17) and shared.running_mean.shape == (1, )
    assert 'num_channels=any' in repr(shared) and 'mode=layer' in repr(shared)
    assert {'running_mean', 'running_std', 'phase', 'num_batches_tracked'} <= set(
        layer.state_dict())


def test_initialised_as_relu():
    layer = PWLU(3, num_intervals=16, init_bound=2.5)
    torch.testing.assert_close(layer.left_bound.detach(), torch.full((3, ), -2.5))
    torch.testing.assert_close(layer.right_bound.detach(), torch.full((3, ), 2.5))
    assert torch.equal(layer.left_slope.detach(), torch.zeros(3))
    assert torch.equal(layer.right_slope.detach(), torch.ones(3))
    demarcation = torch.linspace(-2.5, 2.5, 17)
    torch.testing.assert_close(layer.points.detach(), torch.relu(demarcation).expand(3, 17))
    # The parameters themselves compute ReLU (zero is a demarcation point).
    x = _input(scale=4)
    torch.testing.assert_close(
        pwlu(x, *(getattr(layer, n).detach() for n in PARAMS)), torch.relu(x))


# ------------------------------------------------------------------------------- phase I
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
def test_phase_one_is_exactly_relu(dtype, stats_path):
    layer = PWLU(3)
    x = _input(dtype=dtype)
    for mode in (True, False):
        layer.train(mode)
        y = layer(x)
        assert y.dtype == dtype and torch.equal(y, torch.relu(x))
    x_cl = _input((2, 3, 4, 4)).contiguous(memory_format=torch.channels_last)
    layer.train()
    assert torch.equal(layer(x_cl), torch.relu(x_cl))


def test_phase_one_parameters_get_no_gradient(stats_path):
    layer = PWLU(3)
    x = _input().requires_grad_()
    layer(x).sum().backward()
    assert torch.equal(x.grad, (x > 0).float())
    for n in PARAMS:
        assert not getattr(layer, n).requires_grad and getattr(layer, n).grad is None


def _hand_stats(batches, mode, momentum=0.1):
    mean, std = 0.0, 1.0
    for b in batches:
        a = b.double().numpy()
        if mode == 'channel':
            a = np.moveaxis(a, 1, 0).reshape(a.shape[1], -1)
            m, s = a.mean(axis=1), a.std(axis=1)  # population std, float64
        else:
            m, s = np.array([a.mean()]), np.array([a.std()])
        mean = (1 - momentum) * mean + momentum * m
        std = (1 - momentum) * std + momentum * s
    return mean, std


@pytest.fixture(params=['fused', 'torch'])
def stats_path(request, monkeypatch):
    """Phase I through the compiled relu_with_moments op, or through its pure-PyTorch
    reference (torch.var_mean), as without the extension."""
    from pwlu_mmdet import ops
    if request.param == 'fused':
        if not compiled_available():
            pytest.skip('compiled relu_with_moments not available')
    else:
        monkeypatch.setattr(ops, 'relu_with_moments', ops.relu_with_moments_reference)
    return request.param


@pytest.mark.parametrize('mode', ['channel', 'layer'])
def test_statistics_against_hand_computation(mode, stats_path):
    layer = PWLU(3, mode=mode, momentum=0.25)
    batches = [_input(seed=i, scale=1 + i, shift=i - 1.0) for i in range(4)]
    batches.append(_input((2, 3), seed=9))  # (N, C) input
    for b in batches:
        layer(b)
    mean, std = _hand_stats(batches, mode, momentum=0.25)
    np.testing.assert_allclose(layer.running_mean.numpy(), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.running_std.numpy(), std, rtol=1e-5, atol=1e-6)
    assert layer.num_batches_tracked.item() == len(batches)
    assert layer.running_mean.dtype == torch.float32


def test_statistics_skip_empty_and_eval_and_use_float32(stats_path):
    layer = PWLU(3)
    layer(torch.empty(0, 3, 4, 4))
    assert layer.num_batches_tracked.item() == 0
    assert torch.equal(layer.running_mean, torch.zeros(3))
    layer.eval()
    layer(_input())
    assert layer.num_batches_tracked.item() == 0 and torch.equal(layer.running_std,
                                                                 torch.ones(3))
    # float16 input: statistics computed in float32 from the float16 values.
    layer.train()
    x = _input(scale=300.0, dtype=torch.float16)  # sum of squares overflows float16
    layer(x)
    mean, std = _hand_stats([x.float()], 'channel')
    assert torch.isfinite(layer.running_std).all()
    np.testing.assert_allclose(layer.running_std.numpy(), std, rtol=1e-5)
    np.testing.assert_allclose(layer.running_mean.numpy(), mean, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- realignment
@pytest.mark.parametrize('mode', ['channel', 'layer'])
def test_reset_values_eq6(mode):
    layer = PWLU(3, num_intervals=8, mode=mode, sigma=2.5)
    for i in range(3):
        layer(_input(seed=i, shift=i))
    mean, std = layer.running_mean.clone(), layer.running_std.clone()
    assert not layer.realigned
    layer.realign()
    assert layer.realigned and layer.phase.item() == 2 and 'phase=II' in repr(layer)
    torch.testing.assert_close(layer.left_bound.detach(), mean - 2.5 * std)
    torch.testing.assert_close(layer.right_bound.detach(), mean + 2.5 * std)
    step = (layer.right_bound - layer.left_bound).detach() / 8
    demarcation = layer.left_bound.detach()[:, None] + torch.arange(9) * step[:, None]
    assert torch.equal(layer.points.detach(), torch.relu(demarcation))
    assert torch.equal(layer.left_slope.detach(), torch.zeros_like(mean))
    assert torch.equal(layer.right_slope.detach(), torch.ones_like(mean))
    assert all(getattr(layer, n).requires_grad for n in PARAMS)
    # The statistics are frozen in phase II.
    layer(_input(seed=7, shift=5.0))
    assert torch.equal(layer.running_mean, mean)


def test_reset_is_relu_outside_a_range_that_excludes_zero():
    """A channel at N(-2, 0.3) resets to B_R < 0, one at N(2, 0.3) to B_L > 0: outside its
    range each must follow ReLU from the bound towards 0 (the paper's K_L = 0, K_R = 1 gave
    0.55 at x = -0.55 and 1.11 at x = 0 for the first, B_L for every x below it for the
    second)."""
    layer = PWLU(2)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        x = torch.randn(8, 2, 16, generator=g) * 0.3
        x[:, 0] -= 2
        x[:, 1] += 2
        layer(x)
    layer.realign()
    (neg_right, pos_left) = layer.right_bound[0].item(), layer.left_bound[1].item()
    assert -1.2 < neg_right < -1.0 and 1.0 < pos_left < 1.2
    assert layer.left_slope.tolist() == [0.0, 1.0] and layer.right_slope.tolist() == [0.0, 1.0]
    x = torch.tensor([[-0.55, 0.5], [0.0, 0.0], [neg_right, pos_left]]).unsqueeze(-1)
    y = layer(x).detach().squeeze(-1)
    torch.testing.assert_close(y, torch.relu(x.squeeze(-1)), atol=1e-6, rtol=0)
    # The ordinary case keeps the paper's slopes.
    assert PWLU(2).left_slope.tolist() == [0.0, 0.0]
    assert PWLU(2).right_slope.tolist() == [1.0, 1.0]


def test_relu_before_and_almost_relu_after_reset():
    layer = PWLU(3, num_intervals=16)
    x = _input((8, 3, 6, 6), seed=3, scale=3.0)
    assert torch.equal(layer(x), torch.relu(x))
    layer.realign()
    y = layer(x).detach()
    lb, rb = (t.detach()[None, :, None, None] for t in layer.valid_range())
    step = (rb - lb) / 16
    # Inside the range the reset interpolates ReLU between demarcation points: exact on every
    # interval that does not contain 0, off by at most a quarter interval on the one that does.
    idx = torch.floor((x - lb) / step)
    straddles = (lb + idx * step < 0) & (lb + (idx + 1) * step > 0)
    inside = (x >= lb) & (x < rb)
    torch.testing.assert_close(y[inside & ~straddles], torch.relu(x)[inside & ~straddles],
                               atol=1e-5, rtol=1e-5)
    err = (y - torch.relu(x)).abs()
    assert (err[inside] <= (step / 4).expand_as(x)[inside] + 1e-6).all()
    above = (x >= rb) & (rb > 0)
    torch.testing.assert_close(y[above], x[above], atol=1e-5, rtol=1e-5)


def test_realign_in_place_keeps_optimizer_tensors():
    layer = PWLU(3)
    before = [id(getattr(layer, n)) for n in PARAMS]
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    layer(_input())
    layer.realign()
    assert [id(getattr(layer, n)) for n in PARAMS] == before
    reset = {n: getattr(layer, n).detach().clone() for n in PARAMS}
    layer(_input(seed=1, scale=4)).square().sum().backward()
    opt.step()
    assert not torch.equal(layer.points.detach(), reset['points'])
    assert not torch.equal(layer.right_bound.detach(), reset['right_bound'])


def test_realign_without_statistics_warns():
    layer = PWLU(2)
    with pytest.warns(RuntimeWarning, match='no training batch'):
        layer.realign()
    torch.testing.assert_close(layer.right_bound.detach(), torch.full((2, ), 3.0))


def test_state_dict_carries_phase_and_requires_grad():
    src = _realigned()
    dst = PWLU(3)
    dst.load_state_dict(src.state_dict())
    assert dst.realigned and all(getattr(dst, n).requires_grad for n in PARAMS)
    x = _input(seed=11)
    assert torch.equal(dst(x), src(x))
    dst.load_state_dict(PWLU(3).state_dict())  # back to phase I
    assert not dst.realigned and not dst.points.requires_grad
    assert torch.equal(dst(x), torch.relu(x))
    clone = copy.deepcopy(src)
    assert clone.realigned and torch.equal(clone(x), src(x))


# ------------------------------------------------------------------------ degenerate range
@pytest.mark.parametrize('gap', [0.0, -0.5, 1e-9])
@pytest.mark.parametrize('mode', ['channel', 'layer'])
def test_degenerate_bounds_stay_finite(gap, mode):
    layer = _realigned(mode=mode)
    with torch.no_grad():
        layer.right_bound.copy_(layer.left_bound + gap)
    x = _input(seed=5).requires_grad_()
    y = layer(x)
    assert torch.isfinite(y).all()
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all()
    for n in PARAMS:
        assert torch.isfinite(getattr(layer, n).grad).all(), n
    lb, rb = layer.valid_range()
    assert (rb - lb >= 1e-3 * 0.999).all()
    # The same parameters without the layer's clamp are not usable: the test can fail.
    raw = [getattr(layer, n).detach().clone().requires_grad_() for n in PARAMS]
    raw_y = pwlu(x.detach(), *raw)
    raw_y.square().sum().backward()
    if gap >= 0:  # zero / tiny width: infinite or NaN parameter gradients
        assert not all(torch.isfinite(p.grad).all() for p in raw)
    else:  # flipped range: finite but a different (meaningless) function
        assert not torch.allclose(raw_y, y)
    # Eval (table form) agrees with the op on the clamped range.
    layer.eval()
    layer.eval_impl = 'table'
    with torch.no_grad():
        torch.testing.assert_close(layer(x.detach()), y.detach(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('mode', ['channel', 'layer'])
def test_training_guard_in_op_matches_valid_range(mode):
    """The forward passes range_eps to the op, which guards the range in its kernels: output
    and every gradient equal the op on valid_range() (the guard as torch ops), degenerate
    ranges included."""
    layer = _realigned(mode=mode)
    with torch.no_grad():
        layer.right_bound[0] = layer.left_bound[0]  # collapsed
        if mode == 'channel':
            layer.right_bound[1] = layer.left_bound[1] - 0.5  # flipped
    x = _input(seed=6)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    layer(x1).backward(g)
    got = [x1.grad] + [getattr(layer, n).grad.clone() for n in PARAMS]
    layer.zero_grad()
    pwlu(x2, layer.points, *layer.valid_range(), layer.left_slope,
         layer.right_slope).backward(g)
    expected = [x2.grad] + [getattr(layer, n).grad for n in PARAMS]
    for name, a, b in zip(('x', ) + tuple(PARAMS), got, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m: f'{name}: {m}')
    assert layer.right_bound.grad[0] == 0


def test_constant_channel_realigns_to_valid_range():
    layer = PWLU(2)
    layer(torch.full((4, 2, 3, 3), 2.0))
    layer.realign()
    lb, rb = layer.left_bound.detach(), layer.right_bound.detach()
    assert (rb - lb >= 1e-3 * 2.0 * 0.999).all()
    y = layer(torch.linspace(-3, 5, 2 * 8).reshape(8, 2))
    assert torch.isfinite(y).all()


def test_valid_range_passes_healthy_bounds_bit_exact():
    layer = _realigned()
    lb, rb = layer.valid_range()
    assert torch.equal(lb, layer.left_bound) and torch.equal(rb, layer.right_bound)


# ------------------------------------------------------------------- eval and table cache
def _op_output(layer, x):
    with torch.no_grad():
        lb, rb = layer.valid_range()
        return pwlu(x, layer.points, lb, rb, layer.left_slope, layer.right_slope)


def _perturb(layer, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n in PARAMS:
            p = getattr(layer, n)
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize('mode', ['channel', 'layer'])
def test_eval_table_form_matches_op(mode):
    layer = _realigned(mode=mode)
    _perturb(layer)
    layer.eval()
    x = _input((3, 3, 7, 7), seed=4, scale=5.0)
    x[0, 0, 0, :3] = torch.tensor([float('inf'), -float('inf'), float('nan')])
    ref = _op_output(layer, x)
    with torch.no_grad():
        auto = layer(x)
        layer.eval_impl = 'table'
        table = layer(x)
    torch.testing.assert_close(table, ref, atol=1e-5, rtol=1e-5, equal_nan=True)
    torch.testing.assert_close(auto, ref, atol=1e-5, rtol=1e-5, equal_nan=True)


def test_eval_table_cache_is_reused_and_never_stale():
    layer = _realigned()
    layer.eval()
    layer.eval_impl = 'table'
    x = _input(seed=2, scale=4.0)

    def check():
        with torch.no_grad():
            torch.testing.assert_close(layer(x), _op_output(layer, x).to(x.dtype), atol=1e-5,
                                       rtol=1e-5)

    check()
    tables = layer.piece_table()
    check()
    assert layer.piece_table() is tables  # cached: not rebuilt when nothing changed

    # 1. an optimizer step (in-place parameter update)
    layer.train()
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer(_input(seed=3)).square().sum().backward()
    opt.step()
    layer.eval()
    check()
    # 2. load_state_dict
    other = _realigned(seed=20)
    _perturb(other, seed=1)
    layer.load_state_dict(other.state_dict())
    check()
    # 3. a direct in-place edit of a single parameter
    with torch.no_grad():
        layer.right_slope.mul_(3.0)
    check()
    # 4. a dtype change of the module (and of the input)
    layer.double()
    x = x.double()
    check()
    assert layer.piece_table()[2].dtype == torch.float64
    # 5. parameter replacement
    layer.points = torch.nn.Parameter(layer.points.detach() * 0.5)
    check()


def test_eval_with_parameter_gradients_uses_differentiable_path():
    layer = _realigned()
    layer.eval()
    layer.eval_impl = 'table'
    layer(_input()).sum().backward()
    assert layer.points.grad is not None


@pytest.mark.skipif(not compiled_available(), reason='compiled op not built')
def test_phase_two_train_uses_op_with_grads():
    layer = _realigned()
    x = _input(seed=8).requires_grad_()
    layer(x).sum().backward()
    assert all(getattr(layer, n).grad is not None for n in PARAMS)


def test_input_validation():
    layer = PWLU(3)
    with pytest.raises(ValueError, match='3 channels'):
        layer(torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r'\(N, C\)'):
        layer(torch.zeros(3))


def test_eval_follows_parameter_changes():
    """Inference guards the range in every call: an in-place parameter change is seen."""
    torch.manual_seed(0)
    layer = PWLU(4)
    layer.train()
    layer(torch.randn(8, 4, 5, 5))
    layer.realign()
    layer.eval()
    x = torch.randn(2, 4, 5, 5) * 3
    with torch.no_grad():
        first = layer(x)
        layer.right_bound.copy_(layer.left_bound)  # degenerate: the forward must widen it
        second = layer(x)
        left_bound, right_bound = layer.valid_range()
        expected = pwlu_reference(x, layer.points, left_bound, right_bound, layer.left_slope,
                                  layer.right_slope)
    assert torch.isfinite(second).all()
    torch.testing.assert_close(second, expected)
    assert not torch.allclose(first, second)


@pytest.mark.parametrize('inplace', [False, True])
def test_inplace_only_for_inference(inplace):
    """inplace=True writes into the input in phase-II inference only: training and phase I
    return new tensors, and the results are the same either way."""
    torch.manual_seed(0)
    layer = PWLU(6, inplace=inplace)
    layer.train()
    layer(torch.randn(4, 6, 5, 5))
    layer.realign()
    x = torch.randn(4, 6, 5, 5)
    expected = pwlu(x, layer.points, *layer.valid_range(), layer.left_slope,
                    layer.right_slope).detach()
    # Training: never in place.
    xt = x.clone()
    y = layer(xt)
    assert y.data_ptr() != xt.data_ptr() and torch.equal(xt, x)
    # Inference under no_grad: in place exactly when asked.
    layer.eval()
    xi = x.clone()
    with torch.no_grad():
        y = layer(xi)
    assert (y.data_ptr() == xi.data_ptr()) == inplace
    torch.testing.assert_close(y, expected)
    # Eval with autograd on (e.g. input gradients of a frozen model): a new tensor.
    xg = x.clone().requires_grad_()
    y = layer(xg)
    assert y.data_ptr() != xg.data_ptr()


def _token_twins(seed=0):
    """A channels-last PWLU and its channels-first twin with the same parameters."""
    tokens = PWLU(6, num_intervals=8, channel_axis=-1)
    rows = PWLU(6, num_intervals=8)
    x = torch.randn(3, 5, 6, generator=torch.Generator().manual_seed(seed)) * 2 + 0.5
    return tokens, rows, x


def test_channel_axis_last_is_the_rows_layer():
    tokens, rows, x = _token_twins()
    assert 'channel_axis=-1' in repr(tokens)
    tokens.train(), rows.train()
    assert torch.equal(tokens(x), torch.relu(x))  # phase I
    rows(x.reshape(-1, 6))
    for name in ('running_mean', 'running_std'):
        assert torch.equal(getattr(tokens, name), getattr(rows, name))
    tokens.realign(), rows.realign()
    with torch.no_grad():
        for layer in (tokens, rows):
            layer.points.add_(torch.linspace(-0.3, 0.3, 9))
    xt, xr = x.clone().requires_grad_(), x.reshape(-1, 6).clone().requires_grad_()
    yt, yr = tokens(xt), rows(xr)
    assert yt.shape == x.shape and torch.equal(yt.reshape(-1, 6), yr)
    yt.square().sum().backward()
    yr.square().sum().backward()
    assert torch.equal(xt.grad.reshape(-1, 6), xr.grad)
    assert torch.equal(tokens.points.grad, rows.points.grad)
    tokens.eval(), rows.eval()
    with torch.no_grad():
        assert torch.equal(tokens(x).reshape(-1, 6), rows(x.reshape(-1, 6)))


def test_channel_axis_validation_and_statistics():
    from pwlu_mmdet.layers import InputStatistics
    with pytest.raises(ValueError, match='channel_axis'):
        PWLU(4, channel_axis=2)
    with pytest.raises(ValueError, match='built for 6 channels'):
        PWLU(6, channel_axis=-1)(torch.randn(2, 6, 4))  # channels at dim 1, not last
    tokens, _, x = _token_twins()
    with InputStatistics({'t': tokens}) as stats:
        tokens(x)
    result = stats.results()['t']
    torch.testing.assert_close(result.mean, x.reshape(-1, 6).double().mean(0))
