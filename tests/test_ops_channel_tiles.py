"""Channels-last and 2-D inputs on every path their kernels choose by dtype, channel count and
number of intervals: tables staged per channel tile (16-bit values two channels at a time,
where the channel count is even), the per-element fallback where a tile's table does not fit
in shared memory, partial channel tiles and several blocks of rows."""
import pytest
import torch

from test_ops import DEVICES, TOL, check_op_against_reference, make_input, make_params

from pwlu_mmdet.ops import pwlu, pwlu_, pwlu_reference

# (dtype, K): K = 16 stages the tables (and the backward's slopes) in shared memory; K = 100
# is past what a 16-bit tile of 64 channels or the backward's staged slopes take, K = 60 past
# the staged slopes in float64.
CASES = [(torch.float32, 16), (torch.bfloat16, 16), (torch.float16, 16), (torch.float64, 16),
         (torch.float32, 100), (torch.bfloat16, 100), (torch.float64, 60)]
# 70 channels: one full tile of 64 (or two of 32) and a partial one; 37: odd, so 16-bit values
# go one channel at a time; 4 x 9 x 11 = 396 rows: several row blocks and a partial pass.
SHAPES = {'channels_last_even': (4, 70, 9, 11), 'channels_last_odd': (4, 37, 9, 11),
          '2d_even': (33, 70), '2d_odd': (396, 37)}


def param_rtol(dtype):
    return {torch.float64: 1e-10, torch.float32: 1e-5}.get(dtype, 1e-4)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype,num_intervals', CASES,
                         ids=[f'{str(d)[6:]}-K{k}' for d, k in CASES])
@pytest.mark.parametrize('shape', sorted(SHAPES))
def test_channel_tiles_all_gradients(device, dtype, num_intervals, shape):
    shape = SHAPES[shape]
    x = make_input(shape, dtype, device, 'channels_last' if len(shape) == 4 else 'contiguous')
    # float32 parameters with 16-bit inputs, as under autocast
    param_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    params = make_params(shape[1], num_intervals, dtype=param_dtype, device=device)
    # Random points with the slopes of K = 16 (steeper ones only scale the rounding error).
    params[0] = params[0] * (16 / num_intervals)
    atol, rtol = TOL[dtype]
    y = check_op_against_reference(x, params, atol, rtol, param_rtol=param_rtol(dtype))
    if len(shape) == 4:
        assert y.is_contiguous(memory_format=torch.channels_last)
    # Frozen parameters: the input-gradient-only kernels.
    x = x.detach().requires_grad_()
    x64 = x.detach().double().cpu().requires_grad_()
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    pwlu(x, *params).backward(g.to(dtype).to(device))
    pwlu_reference(x64, *[p.double().cpu() for p in params]).backward(g.to(dtype).double())
    torch.testing.assert_close(x.grad.double().cpu(), x64.grad, atol=atol, rtol=rtol)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_channel_tiles_in_place(device, dtype):
    """pwlu_ over staged tables (x is read and written by the same thread) equals pwlu."""
    x = make_input((4, 70, 9, 11), dtype, device, 'channels_last')
    params = make_params(70, 16, dtype=torch.float32, device=device)
    expected = pwlu(x, *params)
    with torch.no_grad():
        pwlu_(x, *params)
    torch.testing.assert_close(x, expected, atol=0, rtol=0)
