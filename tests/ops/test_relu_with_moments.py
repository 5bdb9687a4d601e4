"""Tests of relu_with_moments, the fused phase-I op (ReLU output + input statistics)."""
import pytest
import torch
from helpers import DEVICES

from pwlu_mmdet.ops import relu_with_moments, relu_with_moments_reference


def make_x(shape, dtype, device, layout, seed=0, mean=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 1.7 + mean
    x = x.to(dtype)
    if layout == 'channels_last':
        x = x.to(memory_format=torch.channels_last)
    elif layout == 'noncontiguous':
        x = x.transpose(2, 3)
    return x.to(device)


def hand_moments(x, per_channel):
    """float64 mean and population variance, written out."""
    x64 = x.double().cpu()
    if per_channel:
        x64 = x64.transpose(0, 1).reshape(x.shape[1], -1)
    else:
        x64 = x64.reshape(1, -1)
    mean = x64.sum(1) / x64.shape[1]
    var = ((x64 - mean[:, None])**2).sum(1) / x64.shape[1]
    return mean, var


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('layout', ['contiguous', 'channels_last', 'noncontiguous'])
@pytest.mark.parametrize('per_channel', [True, False])
@pytest.mark.parametrize('shape', [(3, 5, 20, 30), (2, 5, 70, 90)])
def test_matches_relu_and_hand_statistics(device, dtype, layout, per_channel, shape):
    x = make_x(shape, dtype, device, layout)
    y, mean, var = relu_with_moments(x, per_channel)
    assert torch.equal(y, torch.relu(x))  # exactly ReLU
    assert y.dtype == dtype
    if layout == 'channels_last':
        assert y.is_contiguous(memory_format=torch.channels_last)
    stat_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert mean.dtype == var.dtype == stat_dtype
    assert mean.shape == var.shape == ((shape[1], ) if per_channel else (1, ))
    ref_mean, ref_var = hand_moments(x, per_channel)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(mean.double().cpu(), ref_mean, atol=tol, rtol=tol)
    torch.testing.assert_close(var.double().cpu(), ref_var, atol=tol, rtol=tol)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('shape', [(70, 150), (7100, 150)], ids=['one_block', 'four_blocks'])
def test_wide_rows(device, dtype, shape):
    """2-D input with several 64-channel groups (the last one partial) and, for the larger one
    (over 2**20 elements), several blocks of rows combined in order; mean 2 so that a lost
    combination term shows."""
    x = make_x(shape, dtype, device, 'contiguous', mean=2.0)
    y, mean, var = relu_with_moments(x, True)
    assert torch.equal(y, torch.relu(x))
    ref_mean, ref_var = hand_moments(x, True)
    torch.testing.assert_close(mean.double().cpu(), ref_mean, atol=2e-6, rtol=2e-6)
    torch.testing.assert_close(var.double().cpu(), ref_var, atol=2e-6, rtol=2e-6)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float64])
def test_short_planes(device, dtype):
    """7 x 7 planes (RoI maps), packed into chunks of whole planes: 200 planes per channel make
    three chunks, combined in order; mean 2 so that a lost chunk shows."""
    x = make_x((200, 3, 7, 7), dtype, device, 'contiguous', mean=2.0)
    y, mean, var = relu_with_moments(x, True)
    assert torch.equal(y, torch.relu(x))
    ref_mean, ref_var = hand_moments(x, True)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(mean.double().cpu(), ref_mean, atol=tol, rtol=tol)
    torch.testing.assert_close(var.double().cpu(), ref_var, atol=tol, rtol=tol)


@pytest.mark.parametrize('device', DEVICES)
def test_variance_accurate_with_large_mean(device):
    """|mean| >> std: a naive E[x^2] - E[x]^2 in float32 would lose the variance entirely."""
    x = make_x((4, 3, 64, 64), torch.float32, device, 'contiguous', mean=3000.0)
    _, mean, var = relu_with_moments(x, True)
    ref_mean, ref_var = hand_moments(x, True)
    torch.testing.assert_close(var.double().cpu(), ref_var, rtol=1e-4, atol=0)
    torch.testing.assert_close(mean.double().cpu(), ref_mean, rtol=1e-6, atol=0)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('impl', [relu_with_moments, relu_with_moments_reference],
                         ids=['op', 'reference'])
def test_nan_and_empty(device, impl):
    x = torch.tensor([[float('nan'), -1.0, 2.0]], device=device).view(1, 1, 3)
    y, _, _ = impl(x, True)
    assert torch.isnan(y[0, 0, 0]) and y[0, 0, 1] == 0 and y[0, 0, 2] == 2
    empty = torch.zeros(0, 4, 3, 3, device=device)
    y, mean, var = impl(empty, True)
    assert y.shape == empty.shape
    assert torch.equal(mean, torch.zeros(4, device=device))
    assert torch.equal(var, torch.zeros(4, device=device))


@pytest.mark.parametrize('device', DEVICES)
def test_gradient_is_relus(device):
    x = make_x((2, 3, 5, 5), torch.float64, device, 'contiguous').requires_grad_()
    y, mean, var = relu_with_moments(x, True)
    assert not mean.requires_grad and not var.requires_grad
    g = torch.randn_like(y)
    (gx, ) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(gx, g * (x > 0))
    torch.library.opcheck(torch.ops.pwlu_mmdet.relu_with_moments.default, (x, True))


def test_reference_agrees():
    x = make_x((3, 4, 9, 11), torch.float32, 'cpu', 'channels_last')
    for per_channel in (True, False):
        for a, b in zip(relu_with_moments(x, per_channel),
                        relu_with_moments_reference(x, per_channel)):
            torch.testing.assert_close(a, b, rtol=2e-6, atol=2e-6)


def test_deterministic_across_thread_counts():
    x = make_x((4, 16, 48, 48), torch.float32, 'cpu', 'channels_last')
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        results.append(relu_with_moments(x, True))
    torch.set_num_threads(2)
    for a, b in zip(*results):
        assert torch.equal(a, b)
