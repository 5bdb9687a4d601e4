"""The PWLU paper's comparison activations (FReLU, ChannelPReLU, APL, PAU): each against a
direct formula in float64, gradcheck, shapes / dtypes / channels_last, the torch-only factory,
and clear errors for bad arguments (their mmengine registration: engine/test_registration.py)."""
import pytest
import torch
import torch.nn.functional as F

from pwlu_mmdet.layers import (APL, PAU, TORCH_ACTIVATIONS, ChannelPReLU, FReLU,
                               build_activation)


def _x(shape=(3, 4, 5, 6), seed=0, scale=2.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def _randomise(layer, seed=1):
    """Random parameters (seeded), so the tests do not pass by the initial values alone."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
    return layer


# ------------------------------------------------------------------ direct formulas, float64
def test_channel_prelu_formula():
    layer = _randomise(ChannelPReLU(4)).double()
    x = _x()
    a = layer.weight.detach()
    expected = torch.empty_like(x)
    for c in range(4):
        xc = x[:, c]
        expected[:, c] = torch.where(xc > 0, xc, a[c] * xc)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize('mode', ['channel', 'layer'])
def test_apl_formula(mode):
    layer = _randomise(APL(4, num_hinges=3, mode=mode)).double()
    x = _x()
    a, b = layer.slopes.detach(), layer.hinges.detach()
    expected = torch.empty_like(x)
    for c in range(4):
        k = c if mode == 'channel' else 0
        xc = x[:, c]
        y = torch.clamp(xc, min=0)
        for s in range(3):
            y = y + a[s, k] * torch.clamp(b[s, k] - xc, min=0)
        expected[:, c] = y
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize('mode', ['layer', 'channel'])
def test_pau_formula(mode):
    layer = _randomise(PAU(4, mode=mode)).double()  # random b: some negative (the safe |b_k|)
    x = _x(scale=3.0)
    a, b = layer.numerator.detach(), layer.denominator.detach()
    expected = torch.empty_like(x)
    for c in range(4):
        k = c if mode == 'channel' else 0
        xc = x[:, c]
        p = sum(a[k, j] * xc**j for j in range(6))
        q = 1 + sum(abs(b[k, i - 1]) * xc.abs()**i for i in range(1, 5))
        expected[:, c] = p / q
    torch.testing.assert_close(layer(x), expected)


def _group_norm(t, groups, weight, bias, eps=1e-5):
    n, c = t.shape[:2]
    g = t.reshape(n, groups, -1)
    mean = g.mean(-1, keepdim=True)
    var = ((g - mean)**2).mean(-1, keepdim=True)
    out = ((g - mean) / torch.sqrt(var + eps)).reshape(t.shape)
    return out * weight.reshape(1, c, 1, 1) + bias.reshape(1, c, 1, 1)


@pytest.mark.parametrize('channels,groups', [(4, 4), (6, 2)])  # gcd(32, 6) = 2 groups
def test_frelu_formula_with_group_norm(channels, groups):
    layer = _randomise(FReLU(channels)).double()
    assert layer.norm.num_groups == groups
    x = _x((2, channels, 5, 6))
    w = layer.conv.weight.detach()  # (C, 1, 3, 3)
    xp = F.pad(x, (1, 1, 1, 1))
    t = torch.zeros_like(x)
    for u in range(3):
        for v in range(3):
            t += w[:, 0, u, v].reshape(1, -1, 1, 1) * xp[:, :, u:u + 5, v:v + 6]
    t = _group_norm(t, groups, layer.norm.weight.detach(), layer.norm.bias.detach())
    torch.testing.assert_close(layer(x), torch.maximum(x, t))


def test_frelu_batch_norm_and_flat_inputs():
    bn = _randomise(FReLU(4, norm_cfg=dict(type='BN'), kernel_size=5)).double().eval()
    bn.norm.running_var.abs_()
    x = _x((2, 4, 7, 7))
    t = F.conv2d(x, bn.conv.weight, padding=2, groups=4)
    t = F.batch_norm(t, bn.norm.running_mean, bn.norm.running_var, bn.norm.weight, bn.norm.bias)
    torch.testing.assert_close(bn(x), torch.maximum(x, t))
    # (N, C): a 1 x 1 map, where the window is its centre tap (a per-channel scale), then GN's
    # affine without its statistics: a per-channel funnel, whatever the channels per group
    # (GN itself would give the constant beta with one channel per group, and mix channels
    # with several).
    for groups in (32, 2):
        layer = _randomise(FReLU(8, norm_cfg=dict(type='GN', num_groups=groups))).double()
        flat = _x((3, 8))
        centre = layer.conv.weight.detach()[:, 0, 1, 1]
        t = flat * centre * layer.norm.weight.detach() + layer.norm.bias.detach()
        torch.testing.assert_close(layer(flat), torch.maximum(flat, t))
        other = flat.clone()
        other[:, 1:] = _x((3, 7), seed=5)  # channel 0 alone keeps its input
        assert torch.equal(layer(other)[:, 0], layer(flat)[:, 0])
    # BatchNorm is per channel already: applied to the 1 x 1 map as it is.
    bn_flat = _randomise(FReLU(4, norm_cfg=dict(type='BN'))).double().eval()
    bn_flat.norm.running_var.abs_()
    t = F.batch_norm((flat[:, :4] * bn_flat.conv.weight.detach()[:, 0, 1, 1])[:, :, None, None],
                     bn_flat.norm.running_mean, bn_flat.norm.running_var, bn_flat.norm.weight,
                     bn_flat.norm.bias).flatten(1)
    torch.testing.assert_close(bn_flat(flat[:, :4]), torch.maximum(flat[:, :4], t))
    relu_flat = FReLU(8, flat_input='relu').double()
    assert torch.equal(relu_flat(flat), torch.relu(flat))
    no_norm = _randomise(FReLU(4, norm_cfg=None)).double()
    assert no_norm.conv.bias is not None and isinstance(no_norm.norm, torch.nn.Identity)
    t = F.conv2d(x, no_norm.conv.weight, no_norm.conv.bias, padding=1, groups=4)
    torch.testing.assert_close(no_norm(x), torch.maximum(x, t))


# ------------------------------------------------------------------------------ initial state
def test_initial_functions():
    x = _x(scale=3.0, dtype=torch.float32)
    assert torch.equal(APL(4, init='relu')(x), torch.relu(x))  # every a_s = 0
    # The APL reference code's initialisation: a ~ U(-0.5/S, 0.5/S), b ~ N(0, 0.5^2).
    torch.manual_seed(0)
    apl = APL(4096, num_hinges=2)
    a, b = apl.slopes.detach(), apl.hinges.detach()
    assert a.abs().max() <= 0.25 and a.abs().max() > 0.24 and abs(a.mean()) < 0.01
    assert abs(b.std() - 0.5) < 0.01 and abs(b.mean()) < 0.02
    assert 'init=reference' in repr(apl)
    assert torch.equal(ChannelPReLU(4)(x), F.prelu(x, torch.tensor([0.25])))
    # PAU starts as the paper's leaky ReLU fit: close on [-3, 3], off only near the kink.
    grid = torch.linspace(-3, 3, 2001, dtype=torch.float64).reshape(1, 1, -1)
    err = (PAU().double()(grid) - F.leaky_relu(grid, 0.01)).abs()
    assert err.max() < 0.035 and err[grid.abs() > 0.5].max() < 0.02


# ----------------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize('make', [
    lambda: ChannelPReLU(3), lambda: APL(3, num_hinges=2), lambda: APL(num_hinges=1, mode='layer'),
    lambda: PAU(), lambda: PAU(3, mode='channel'), lambda: FReLU(3, norm_cfg=dict(type='GN')),
    lambda: FReLU(3, norm_cfg=dict(type='BN')), lambda: FReLU(3, norm_cfg=None)
], ids=['prelu', 'apl', 'apl-layer', 'pau', 'pau-channel', 'frelu-gn', 'frelu-bn', 'frelu-none'])
def test_gradcheck(make):
    layer = _randomise(make()).double()
    # Away from the kinks (|x|, hinges, 0) where the function is not differentiable.
    x = _x((2, 3, 4, 4), seed=3).requires_grad_()
    params = list(layer.parameters())
    names = [n for n, _ in layer.named_parameters()]

    def fn(x, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (x, ))

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-5)


# --------------------------------------------------------------- shapes, dtypes, memory format
LAYERS = {
    'ChannelPReLU': lambda c: ChannelPReLU(c),
    'APL': lambda c: APL(c),
    'PAU': lambda c: PAU(c),
    'PAU-channel': lambda c: PAU(c, mode='channel'),
    'FReLU': lambda c: FReLU(c),
    'FReLU-BN': lambda c: FReLU(c, norm_cfg=dict(type='BN')),
}


@pytest.mark.parametrize('name', list(LAYERS))
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_shapes_dtypes_channels_last(name, dtype):
    layer = LAYERS[name](8)
    if name.startswith('FReLU'):
        layer = layer.to(dtype)  # a conv layer: its weights in the input's dtype (or AMP)
    for shape in ((2, 8, 5, 7), (3, 8)):
        x = _x(shape, dtype=dtype)
        y = layer(x)
        assert y.shape == x.shape and y.dtype == dtype
    x = _x((2, 8, 5, 7), dtype=dtype).contiguous(memory_format=torch.channels_last)
    y = layer(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, layer(x.contiguous()))
    if not name.startswith('FReLU'):  # scalar functions also take any spatial rank
        assert layer(_x((2, 8, 3, 4, 5), dtype=dtype)).shape == (2, 8, 3, 4, 5)
    assert layer(_x((0, 8, 5, 7), dtype=dtype)).shape == (0, 8, 5, 7)  # RoI heads with no RoIs


@pytest.mark.parametrize('name', list(LAYERS))
def test_backward_reaches_every_parameter(name):
    layer = LAYERS[name](8)
    _randomise(layer)
    layer(_x((2, 8, 5, 5), dtype=torch.float32)).square().sum().backward()
    for n, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n


# ------------------------------------------------------------------------------------- errors
def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match='num_channels is required'):
        APL()
    with pytest.raises(ValueError, match='num_channels is required'):
        ChannelPReLU()
    with pytest.raises(ValueError, match='num_channels must be a positive'):
        PAU(0, mode='channel')
    with pytest.raises(ValueError, match='num_channels must be a positive'):
        FReLU(None)
    with pytest.raises(ValueError, match="mode must be 'channel' or 'layer'"):
        APL(4, mode='pixel')
    with pytest.raises(ValueError, match='num_hinges'):
        APL(4, num_hinges=0)
    with pytest.raises(ValueError, match='degrees'):
        PAU(degrees=(5, 0))
    with pytest.raises(ValueError, match=r'degrees \(3, 2\) need numerator'):
        PAU(degrees=(3, 2))
    with pytest.raises(ValueError, match='both numerator and denominator'):
        PAU(numerator=[0., 1.])
    with pytest.raises(ValueError, match='need 2 numerator and 1 denominator'):
        PAU(degrees=(1, 1), numerator=[0., 1., 2.], denominator=[1.])
    assert PAU(degrees=(1, 1), numerator=[0., 1.], denominator=[0.5]).degrees == (1, 1)
    with pytest.raises(ValueError, match='kernel_size must be a positive odd'):
        FReLU(4, kernel_size=2)
    with pytest.raises(ValueError, match="norm_cfg type must be 'GN', 'BN' or 'SyncBN'"):
        FReLU(4, norm_cfg=dict(type='LN'))
    with pytest.raises(ValueError, match="flat_input must be 'funnel' or 'relu'"):
        FReLU(4, flat_input='skip')


@pytest.mark.parametrize('name', list(LAYERS))
def test_wrong_input_raises(name):
    layer = LAYERS[name](8)
    with pytest.raises(ValueError, match='built for 8 channels but the input has 4'):
        layer(torch.zeros(2, 4, 3, 3))
    with pytest.raises(ValueError, match=r'expects \(N, C\)'):
        layer(torch.zeros(8))
    if name.startswith('FReLU'):
        with pytest.raises(ValueError, match=r'expects \(N, C, H, W\) or \(N, C\)'):
            layer(torch.zeros(2, 8, 3))


# ----------------------------------------------------------------------- registry and factory
def test_torch_factory_fills_the_site_width():
    for name in ('FReLU', 'APL', 'ChannelPReLU', 'PWLU'):
        layer = build_activation(dict(type=name), num_channels=16)
        assert type(layer) is TORCH_ACTIVATIONS[name] and layer.num_channels == 16
    pau = build_activation(dict(type='PAU'), num_channels=16)
    assert pau.numerator.shape == (1, 6) and pau.num_channels == 16  # layer-wise, width checked
    assert build_activation(dict(type='PAU', mode='channel'), 16).numerator.shape == (16, 6)
    assert build_activation(dict(type='APL', num_channels=4), 16).num_channels == 4  # cfg wins
    assert build_activation(dict(type='ReLU'), 16, inplace=True).inplace  # ReLU: no width
    assert build_activation(dict(type=APL, num_hinges=1), 3).slopes.shape == (1, 3)
    with pytest.raises(KeyError, match="unknown activation 'Mish'"):
        build_activation(dict(type='Mish'), 4)
