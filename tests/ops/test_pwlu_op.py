"""The compiled PWLU op against the float64 pure-PyTorch reference, grouped as torchvision's
test_ops.py groups its ops: forward, backward, gradcheck, opcheck, range guard, in place, bad
calls, per-path coverage of the kernels and the build."""
import os
import subprocess
import sys

import pytest
import torch
from helpers import DEVICES, ROOT, normal_input

from pwlu_mmdet.ops import compiled_available, pwlu, pwlu_, pwlu_reference

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# (atol, rtol) of the output and grad_x, in x's dtype, against a float64 computation.
TOL = {
    torch.float64: (1e-12, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}
PARAM_NAMES = ('points', 'left_bound', 'right_bound', 'left_slope', 'right_slope')


def make_params(channels, num_intervals, layer_wise=False, dtype=torch.float64, device='cpu',
                seed=0):
    """Random, non-degenerate parameters (not ReLU, so that every gradient is exercised)."""
    g = torch.Generator().manual_seed(seed)
    sets = 1 if layer_wise else channels
    lb = -0.5 - torch.rand(sets, generator=g, dtype=torch.float64)
    rb = 0.5 + torch.rand(sets, generator=g, dtype=torch.float64)
    points = torch.randn(sets, num_intervals + 1, generator=g, dtype=torch.float64)
    ls = torch.randn(sets, generator=g, dtype=torch.float64)
    rs = torch.randn(sets, generator=g, dtype=torch.float64)
    return [t.to(device=device, dtype=dtype) for t in (points, lb, rb, ls, rs)]


def make_input(shape, dtype, device, layout='contiguous', seed=1):
    """x spanning both outer pieces and the range, in the requested memory layout."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 1.5).to(dtype)
    if layout == 'channels_last':
        x = x.to(memory_format=torch.channels_last)
    elif layout == 'noncontiguous':
        # a strided view: every other element of a wider last dim
        wide = torch.repeat_interleave(x, 2, dim=-1)
        x = wide[..., ::2]
        assert not x.is_contiguous()
    return x.to(device)


def reference_float64(x, params, range_eps=0.0):
    """Output and gradients of the reference, computed in float64 on the CPU."""
    x64 = x.detach().double().cpu().requires_grad_()
    p64 = [p.detach().double().cpu().requires_grad_() for p in params]
    y = pwlu_reference(x64, *p64, range_eps)
    return x64, p64, y


def check_op_against_reference(x, params, atol, rtol, param_rtol=1e-5, range_eps=0.0):
    x = x.detach().requires_grad_()
    params = [p.detach().requires_grad_() for p in params]
    y = pwlu(x, *params, range_eps)
    assert y.dtype == x.dtype and y.shape == x.shape and y.device == x.device

    x64, p64, y64 = reference_float64(x, params, range_eps)
    torch.testing.assert_close(y.double().cpu(), y64.detach(), atol=atol, rtol=rtol)

    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    y.backward(g.to(x.dtype).to(x.device))
    y64.backward(g.to(x.dtype).double())
    torch.testing.assert_close(x.grad.double().cpu(), x64.grad, atol=atol, rtol=rtol)
    for name, p, ref in zip(PARAM_NAMES, params, p64):
        assert p.grad.dtype == p.dtype, name
        # Parameter gradients are sums over many elements: compare relative to their scale.
        scale = ref.grad.abs().max().item() + 1.0
        torch.testing.assert_close(p.grad.double().cpu(), ref.grad, atol=param_rtol * scale,
                                   rtol=0, msg=lambda m: f'grad of {name}: {m}')
    return y


def check_input_grad_against_reference(x, params, atol, rtol):
    """grad_x alone (frozen parameters: the input-gradient-only kernels) against the float64
    reference, from a fixed random upstream gradient in x's dtype."""
    x = x.detach().requires_grad_()
    x64 = x.detach().double().cpu().requires_grad_()
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    g = g.to(x.dtype)
    pwlu(x, *params).backward(g.to(x.device))
    pwlu_reference(x64, *[p.double().cpu() for p in params]).backward(g.double())
    torch.testing.assert_close(x.grad.double().cpu(), x64.grad, atol=atol, rtol=rtol)


def relu_params(channels, num_intervals=16, bound=2.0, device='cpu', dtype=torch.float32):
    """ReLU initialisation (docs/method.md): B_L = -B_R, K_L = 0, K_R = 1, Y_i = ReLU(B_i)."""
    lb = torch.full((channels, ), -bound, device=device, dtype=dtype)
    rb = torch.full((channels, ), bound, device=device, dtype=dtype)
    points = torch.relu(torch.linspace(-bound, bound, num_intervals + 1, device=device,
                                       dtype=dtype)).expand(channels, -1).contiguous()
    return [points, lb, rb, torch.zeros_like(lb), torch.ones_like(lb)]


def guarded_params(sets, device, dtype=torch.float32):
    """Parameters whose ranges are, in turn, healthy, collapsed (B_R = B_L), flipped and just
    below the minimum width (1e-3 * max(1, |B_L|, |B_R|) with range_eps=1e-3); a single
    (layer-wise) set is collapsed."""
    params = make_params(sets, 16, layer_wise=sets == 1, dtype=torch.float64)
    lb, rb = params[1], params[2]
    kinds = torch.arange(sets) % 4 if sets > 1 else torch.ones(1, dtype=torch.long)
    rb[kinds == 1] = lb[kinds == 1]
    rb[kinds == 2] = lb[kinds == 2] - 0.3
    rb[kinds == 3] = lb[kinds == 3] + 0.5e-3
    return [p.to(device=device, dtype=dtype) for p in params], kinds


BAD_CALLS = {
    'x_1d': (lambda x, p: (x[0, 0, 0], *p), ValueError, 'x must have shape'),
    'points_1d': (lambda x, p: (x, p[0][0], *p[1:]), ValueError, 'points must have shape'),
    'one_column': (lambda x, p: (x, p[0][:, :1], *p[1:]), ValueError, 'at least 2 columns'),
    'rows_vs_channels': (lambda x, p: (x, p[0][:2], *p[1:]), ValueError, 'points has 2 rows'),
    'left_bound_shape': (lambda x, p: (x, p[0], p[1][:2], *p[2:]), ValueError, 'left_bound'),
    'right_slope_2d': (lambda x, p: (x, *p[:4], p[4].view(1, -1)), ValueError, 'right_slope'),
    'int_x': (lambda x, p: (x.long(), *p), TypeError, 'x must be a floating'),
    'int_points': (lambda x, p: (x, p[0].int(), *p[1:]), TypeError, 'points must be a floating'),
    'mixed_param_dtype': (lambda x, p: (x, p[0], p[1].double(), *p[2:]), TypeError,
                          'left_bound has dtype'),
    'other_device': (lambda x, p: (x, p[0], p[1].to('meta'), *p[2:]), ValueError,
                     'left_bound is on meta'),
}


def _enough_cuda_memory(gib):
    return torch.cuda.is_available() and torch.cuda.mem_get_info()[0] >= gib * 2**30


def _built_with_cuda():
    from pwlu_mmdet import _C
    return bool(_C.with_cuda)


def non_finite_case_params(channels=3, n=8, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(channels, n + 1, generator=g, dtype=dtype),
            torch.tensor([-2.0, -1.0, -3.0], dtype=dtype), torch.tensor([2.0, 3.0, 1.0],
                                                                      dtype=dtype),
            torch.tensor([0.3, 0.0, -0.2], dtype=dtype), torch.tensor([0.7, 1.0, 0.0],
                                                                     dtype=dtype)]


def param_grads(fn, x, g):
    params = [p.clone().requires_grad_() for p in non_finite_case_params(dtype=torch.float64)]
    fn(x, *[p.to(device=x.device, dtype=torch.float64 if x.dtype == torch.float64
                 else torch.float32) for p in params]).backward(g)
    return [p.grad for p in params]


class TestForwardAgainstReference:
    """Output and all gradients against the float64 reference: devices, dtypes, layouts, ranks,
    AMP, empty and non-finite inputs."""

    @pytest.mark.parametrize('device', DEVICES)
    @pytest.mark.parametrize('dtype', DTYPES)
    @pytest.mark.parametrize('layout', ['contiguous', 'channels_last', 'noncontiguous'])
    @pytest.mark.parametrize('layer_wise', [False, True], ids=['channel', 'layer'])
    @pytest.mark.parametrize('num_intervals', [1, 2, 16])
    def test_forward_backward(self, device, dtype, layout, layer_wise, num_intervals):
        x = make_input((3, 5, 6, 7), dtype, device, layout)
        params = make_params(5, num_intervals, layer_wise, dtype=dtype, device=device)
        atol, rtol = TOL[dtype]
        # float32 accumulation, then rounded to the parameters' dtype.
        param_rtol = {torch.float64: 1e-10, torch.float32: 1e-5}.get(dtype, rtol)
        y = check_op_against_reference(x, params, atol, rtol, param_rtol=param_rtol)
        if layout == 'channels_last':
            assert y.is_contiguous(memory_format=torch.channels_last)
        else:
            assert y.is_contiguous()

    @pytest.mark.parametrize('device', DEVICES)
    @pytest.mark.parametrize('shape', [(7, 5), (2, 5, 9), (2, 5, 3, 4), (2, 5, 2, 3, 4),
                                       (1, 5, 2, 2, 2, 3)])
    def test_any_spatial_rank(self, device, shape):
        x = make_input(shape, torch.float64, device)
        params = make_params(5, 4, dtype=torch.float64, device=device)
        check_op_against_reference(x, params, 1e-12, 1e-10, param_rtol=1e-10)

    @pytest.mark.parametrize('device', DEVICES)
    def test_channels_last_3d(self, device):
        x = make_input((2, 5, 3, 4, 5), torch.float32, device).to(
            memory_format=torch.channels_last_3d)
        y = check_op_against_reference(x, make_params(5, 16, dtype=torch.float32, device=device),
                                       *TOL[torch.float32])
        assert y.is_contiguous(memory_format=torch.channels_last_3d)

    @pytest.mark.parametrize('device', DEVICES)
    @pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
    @pytest.mark.parametrize('layout', ['contiguous', 'channels_last'])
    def test_amp_half_input_float32_params(self, device, dtype, layout):
        """AMP: half x, float32 parameters: output in x's dtype, parameter grads in float32 and
        accumulated in float32 (a float16 accumulation of 20k terms would miss this tolerance)."""
        x = make_input((4, 3, 64, 80), dtype, device, layout)
        params = make_params(3, 16, dtype=torch.float32, device=device)
        y = check_op_against_reference(x, params, *TOL[dtype], param_rtol=2e-5)
        assert y.dtype == dtype

    @pytest.mark.parametrize('device', DEVICES)
    def test_autocast_region(self, device):
        """Inside torch.autocast a half input with float32 parameters just works."""
        x = make_input((2, 4, 5, 5), torch.float32, device)
        params = [p.requires_grad_() for p in make_params(4, 8, dtype=torch.float32, device=device)]
        amp_dtype = torch.bfloat16
        with torch.autocast(device_type=device, dtype=amp_dtype):
            y = pwlu(x.to(amp_dtype), *params)
        assert y.dtype == amp_dtype
        y.float().sum().backward()
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)

    @pytest.mark.parametrize('device', DEVICES)
    @pytest.mark.parametrize('shape', [(0, 5, 4, 4), (0, 5), (2, 5, 0, 3)])
    @pytest.mark.parametrize('impl', [pwlu, pwlu_reference], ids=['op', 'reference'])
    def test_empty_input(self, device, shape, impl):
        x = torch.zeros(shape, device=device, requires_grad=True)
        params = [p.requires_grad_() for p in make_params(5, 4, dtype=torch.float32, device=device)]
        y = impl(x, *params)
        assert y.shape == x.shape
        y.sum().backward()
        assert x.grad.shape == x.shape
        for name, p in zip(PARAM_NAMES, params):
            assert p.grad is not None, name
            assert torch.equal(p.grad, torch.zeros_like(p)), name

    @pytest.mark.parametrize('device', DEVICES)
    @pytest.mark.parametrize('impl', [pwlu, pwlu_reference], ids=['op', 'reference'])
    def test_nan_propagates_and_inf_gives_the_limit(self, device, impl):
        nan, inf = float('nan'), float('inf')
        x = torch.tensor([[nan, -inf, inf, -1.0, 0.5, 5.0]], device=device).view(1, 1, 6)
        y = impl(x, *relu_params(1, device=device))
        assert torch.isnan(y[0, 0, 0])
        assert y[0, 0, 1].item() == 0.0  # ReLU's limit at -inf, not 0 * inf = NaN
        assert y[0, 0, 2].item() == inf
        torch.testing.assert_close(y[0, 0, 3:], torch.tensor([0.0, 0.5, 5.0], device=device))
        # A negative left slope sends -inf to +inf; a zero right slope sends +inf to Y_N.
        points, lb, rb, _, _ = relu_params(1, device=device)
        y = impl(x, points, lb, rb, torch.full_like(lb, -0.5), torch.zeros_like(rb))
        assert y[0, 0, 1].item() == inf
        assert y[0, 0, 2].item() == points[0, -1].item()
        # grad_x stays finite away from NaN inputs
        xg = x.clone().requires_grad_()
        impl(xg, *relu_params(1, device=device)).sum().backward()
        torch.testing.assert_close(xg.grad[0, 0, 1:], torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0],
                                                                  device=device))

    @pytest.mark.parametrize('device', DEVICES)
    def test_relu_initialisation_equals_relu(self, device):
        x = make_input((4, 3, 16, 16), torch.float32, device) * 2
        y = pwlu(x, *relu_params(3, device=device))
        torch.testing.assert_close(y, torch.relu(x), atol=1e-6, rtol=1e-6)


class TestBackward:
    """The backward on its own: skipped parameter gradients, determinism, non-finite inputs."""

    @pytest.mark.parametrize('device', DEVICES)
    def test_frozen_parameters_skip_their_gradients(self, device):
        """With parameters that do not require grad only grad_x is computed, and it is right."""
        x = make_input((2, 3, 4, 5), torch.float64, device).requires_grad_()
        params = make_params(3, 4, device=device)
        pwlu(x, *params).sum().backward()
        x_ref = x.detach().clone().requires_grad_()
        pwlu_reference(x_ref, *params).sum().backward()
        torch.testing.assert_close(x.grad, x_ref.grad)
        grads = torch.ops.pwlu_mmdet.pwlu_backward(torch.ones_like(x), x.detach(), *params, 0.0,
                                                   True, False)
        assert all(g.numel() == 0 for g in grads[1:])

    @pytest.mark.parametrize('layout', ['contiguous', 'channels_last'])
    @pytest.mark.parametrize('layer_wise', [False, True], ids=['channel', 'layer'])
    def test_backward_is_deterministic_cpu(self, layout, layer_wise):
        torch.set_num_threads(2)
        x = make_input((4, 16, 32, 32), torch.float32, 'cpu', layout).requires_grad_()
        params = [p.requires_grad_() for p in make_params(16, 16, layer_wise, dtype=torch.float32)]
        grads = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            grads.append(torch.autograd.grad(pwlu(x, *params).sum(), [x, *params]))
        for a, b in zip(*grads):
            assert torch.equal(a, b)

    @pytest.mark.needs_cuda
    @pytest.mark.parametrize('layout', ['contiguous', 'channels_last'])
    @pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
    def test_backward_is_deterministic_cuda(self, layout, dtype):
        x = make_input((8, 64, 56, 56), dtype, 'cuda', layout).requires_grad_()
        params = [p.requires_grad_() for p in make_params(64, 16, dtype=torch.float32,
                                                           device='cuda')]
        g = torch.randn_like(x)
        first = torch.autograd.grad(pwlu(x, *params), [x, *params], g)
        second = torch.autograd.grad(pwlu(x, *params), [x, *params], g)
        for a, b in zip(first, second):
            assert torch.equal(a, b)

    @pytest.mark.parametrize('device', DEVICES)
    @pytest.mark.parametrize('layout', ['planes', 'channels_last', 'rows', 'short_planes'])
    @pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
    def test_op_parameter_gradients_exact_next_to_non_finite_inputs(self, device, layout, dtype):
        """NaN inputs take no part in the parameter gradients, and +-inf inputs with a zero
        upstream gradient add nothing (not 0 * inf): the gradients equal the reference's over the
        finite elements."""
        shape = {'planes': (2, 3, 40, 40), 'channels_last': (2, 3, 9, 9), 'rows': (64, 3),
                 'short_planes': (16, 3, 7, 7)}[layout]
        x = normal_input(0, shape, std=2.0).to(dtype)
        g = normal_input(1, shape).to(dtype)
        flat_x, flat_g = x.view(-1), g.view(-1)
        nan_at, inf_at = [5, 33, 70, 101], [17, 48, 90]
        flat_x[nan_at] = float('nan')
        flat_x[inf_at] = torch.tensor([float('inf'), -float('inf'), float('inf')], dtype=dtype)
        flat_g[inf_at] = 0
        if layout == 'channels_last':
            x = x.contiguous(memory_format=torch.channels_last)
            g = g.contiguous(memory_format=torch.channels_last)
        got = param_grads(pwlu, x.to(device), g.to(device))
        bad = ~torch.isfinite(x)
        expected = param_grads(pwlu_reference, x.masked_fill(bad, 0).double(),
                          g.masked_fill(bad, 0).double())
        for name, a, b in zip(PARAM_NAMES, got, expected):
            assert torch.isfinite(a).all(), name
            torch.testing.assert_close(a.double().cpu(), b, atol=1e-4, rtol=1e-5,
                                       msg=lambda m: f'{name}: {m}')

    def test_op_infinite_input_with_gradient_gives_infinite_outer_slope_gradient(self):
        """Where the math has it: dy/dK_R = x - B_R is +inf at x = +inf."""
        x = normal_input(0, (2, 3, 5, 5)).double()
        x[0, 0, 0, 0] = float('inf')
        g = torch.ones_like(x)
        points, lb, rb, ls, rs = param_grads(pwlu, x, g)
        assert rs[0].item() == float('inf')
        assert torch.isfinite(rs[1:]).all() and torch.isfinite(points).all()
        assert torch.isfinite(lb).all() and torch.isfinite(rb).all() and torch.isfinite(ls).all()


class TestGradcheck:
    """``torch.autograd.gradcheck`` in float64."""

    @pytest.mark.parametrize('device', DEVICES)
    @pytest.mark.parametrize('layer_wise', [False, True], ids=['channel', 'layer'])
    def test_gradcheck_float64(self, device, layer_wise):
        x = make_input((2, 3, 4, 5), torch.float64, device).requires_grad_()
        params = [p.requires_grad_() for p in make_params(3, 6, layer_wise, device=device)]
        assert torch.autograd.gradcheck(pwlu, (x, *params))


class TestOpcheckAndCompile:
    """``torch.library.opcheck`` (schema, fake kernel, autograd registration) and
    ``torch.compile(fullgraph=True)``."""

    @pytest.mark.parametrize('device', DEVICES)
    @pytest.mark.parametrize('layer_wise', [False, True], ids=['channel', 'layer'])
    def test_opcheck(self, device, layer_wise):
        x = make_input((2, 3, 4, 5), torch.float32, device).requires_grad_()
        params = [p.requires_grad_() for p in make_params(3, 4, layer_wise, dtype=torch.float32,
                                                           device=device)]
        torch.library.opcheck(torch.ops.pwlu_mmdet.pwlu.default, (x, *params))
        x_cl = x.detach().to(memory_format=torch.channels_last).requires_grad_()
        torch.library.opcheck(torch.ops.pwlu_mmdet.pwlu.default, (x_cl, *params))

    @pytest.mark.parametrize('device', DEVICES)
    def test_torch_compile_fullgraph(self, device):
        def block(x, params):
            return pwlu(x * 2.0, *params).sum(dim=1)

        torch._dynamo.reset()
        compiled = torch.compile(block, fullgraph=True)
        x = make_input((2, 3, 4, 5), torch.float32, device)
        params = make_params(3, 8, dtype=torch.float32, device=device)
        x1, p1 = x.clone().requires_grad_(), [p.clone().requires_grad_() for p in params]
        x2, p2 = x.clone().requires_grad_(), [p.clone().requires_grad_() for p in params]
        y1, y2 = compiled(x1, p1), block(x2, p2)
        torch.testing.assert_close(y1, y2)
        y1.sum().backward()
        y2.sum().backward()
        for a, b in zip([x1, *p1], [x2, *p2]):
            torch.testing.assert_close(a.grad, b.grad)


class TestRangeGuard:
    """``range_eps``: the guard of a collapsed or flipped range, as ``guard_range`` defines it."""

    @pytest.mark.parametrize('device', DEVICES)
    @pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
    @pytest.mark.parametrize('case', ['map', 'channels_last', 'rows', 'row_tiles', 'layer'])
    def test_range_guard_matches_reference(self, device, dtype, case):
        """range_eps: the op widens collapsed, flipped and too narrow ranges as the reference's
        guard_range does, on every path (planes, interleaved rows, 16 x 16 row tiles,
        layer-wise), and a clamped B_R passes its gradient on to B_L."""
        shape = {'map': (2, 6, 5, 7), 'channels_last': (2, 37, 3, 5), 'rows': (9, 37),
                 'row_tiles': (48, 70), 'layer': (2, 6, 5, 7)}[case]
        params, kinds = guarded_params(1 if case == 'layer' else shape[1], device, dtype)
        x = make_input(shape, dtype, device,
                       'channels_last' if case == 'channels_last' else 'contiguous')
        lb = params[1].reshape((1, -1) + (1, ) * (x.dim() - 2))
        if dtype == torch.float64:
            # Half of x inside the widened ranges (about 1e-3 wide), the rest across all pieces.
            inside = torch.rand(x.shape, generator=torch.Generator().manual_seed(2)) < 0.5
            x = torch.where(inside.to(device), x * 1e-3 + lb, x)
        else:
            # float32 keeps x out of the 1e-3-wide inner intervals, whose slopes of about 1e4 the
            # table form (x * S + O) cannot resolve in float32; the outer pieces still depend on
            # the widened B_R (and pass its gradient to B_L).
            x = torch.where((x - lb).abs() < 0.01, lb - 0.01, x)
        # float64: the table form's x * S + O with S about 1e4 loses about 4 more digits.
        atol, rtol = (1e-9, 1e-7) if dtype == torch.float64 else TOL[dtype]
        check_op_against_reference(x, params, atol, rtol, param_rtol=1e-5, range_eps=1e-3)
        params = [p.detach().requires_grad_() for p in params]
        pwlu(x, *params, 1e-3).sum().backward()
        clamped = kinds != 0
        assert (params[2].grad.cpu()[clamped] == 0).all()
        assert (params[2].grad.cpu()[~clamped] != 0).all()
        # Without the guard the same parameters give another (or no finite) function: the test can
        # fail.
        with torch.no_grad():
            assert not torch.allclose(pwlu(x, *params), pwlu(x, *params, 1e-3), equal_nan=True)

    @pytest.mark.parametrize('device', DEVICES)
    def test_range_guard_keeps_healthy_ranges_bit_exact(self, device):
        x = make_input((2, 6, 5, 7), torch.float32, device)
        params = make_params(6, 16, dtype=torch.float32, device=device)
        torch.testing.assert_close(pwlu(x, *params, 1e-3), pwlu(x, *params), atol=0, rtol=0)
        with torch.no_grad():
            y = x.clone()
            pwlu_(y, *params, 1e-3)
        torch.testing.assert_close(y, pwlu(x, *params), atol=0, rtol=0)

    @pytest.mark.parametrize('device', DEVICES)
    def test_range_guard_gradcheck_and_opcheck(self, device):
        params = make_params(4, 6, device=device)
        # Healthy, collapsed, flipped and narrow ranges, all bounds inside [-1, 1] so that the
        # guard's scale max(1, |B_L|, |B_R|) is 1: the op treats the scale as a constant, which
        # finite differences would not where it depends on a bound.
        params[1] = torch.tensor([-0.8, -0.5, -0.6, -0.7], dtype=torch.float64, device=device)
        params[2] = torch.tensor([0.9, -0.5, -0.75, -0.69], dtype=torch.float64, device=device)
        params = [p.requires_grad_() for p in params]
        # range_eps 0.2: intervals wide enough for gradcheck's finite differences.
        x = (make_input((2, 4, 3, 5), torch.float64, device) * 0.2
             + params[1].detach().reshape(1, -1, 1, 1)).requires_grad_()
        assert torch.autograd.gradcheck(lambda *a: pwlu(*a, 0.2), (x, *params))
        torch.library.opcheck(torch.ops.pwlu_mmdet.pwlu.default, (x.float(), *[
            p.detach().float().requires_grad_() for p in params], 1e-3))


class TestInplace:
    """``pwlu_``: the in-place inference op."""

    @pytest.mark.parametrize('device', DEVICES)
    @pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float64])
    @pytest.mark.parametrize('layout', ['contiguous', 'channels_last', 'noncontiguous'])
    @pytest.mark.parametrize('shape', [(2, 37, 5, 7), (40, 37, 1, 1)], ids=['map', 'rows'])
    def test_inplace_matches_pwlu(self, device, dtype, layout, shape):
        """pwlu_ writes pwlu(x) into x (infinities included, on every path: planes, rows, row tiles,
        and the copy for strided x) and bumps x's version."""
        x = make_input(shape, dtype, device, layout)
        x[::2, ::3] = float('-inf')
        x[1::2, 1::5] = float('inf')
        params = make_params(shape[1], 16, dtype=torch.float32, device=device)
        params[3].view(-1)[::2] = 0.0
        expected = pwlu(x, *params)
        version = x._version
        with torch.no_grad():
            out = pwlu_(x, *params)
        assert out is x and x._version > version
        torch.testing.assert_close(x, expected, atol=0, rtol=0)

    def test_inplace_refuses_autograd_and_compiles(self):
        params = make_params(3, 4, dtype=torch.float32)
        x = make_input((2, 3, 4, 5), torch.float32, 'cpu').requires_grad_()
        with pytest.raises(RuntimeError, match='no backward'):
            pwlu_(x.clone(), *params)
        with torch.no_grad():
            expected = pwlu(x, *params)
            y = x.detach().clone()
            torch.compile(lambda t: pwlu_(t, *params), fullgraph=True)(y)
        torch.testing.assert_close(y, expected, atol=0, rtol=0)
        torch.library.opcheck(torch.ops.pwlu_mmdet.pwlu_.default, (x.detach().clone(), *params))

    @pytest.mark.needs_cuda
    @pytest.mark.parametrize('layout', ['contiguous', 'channels_last'])
    def test_inplace_cuda_allocates_no_output(self, layout):
        """pwlu_ on a dense CUDA x writes into x itself: nothing of x's size is allocated."""
        x = make_input((4, 32, 64, 64), torch.float32, 'cuda', layout)
        params = make_params(32, 16, dtype=torch.float32, device='cuda')
        expected = pwlu(x, *params)
        pointer = x.data_ptr()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        with torch.no_grad():
            pwlu_(x, *params)
        torch.cuda.synchronize()
        assert torch.cuda.max_memory_allocated() - before < x.numel() * x.element_size() // 4
        assert x.data_ptr() == pointer
        torch.testing.assert_close(x, expected, atol=0, rtol=0)


class TestBadCalls:
    """Bad arguments fail alike in the op and the reference, naming the argument."""

    @pytest.mark.parametrize('impl', [pwlu, pwlu_reference], ids=['op', 'reference'])
    @pytest.mark.parametrize('range_eps', [-1e-3, float('nan'), float('inf')])
    def test_bad_range_eps(self, impl, range_eps):
        x = make_input((2, 3, 4, 5), torch.float32, 'cpu')
        with pytest.raises(ValueError, match='range_eps must be a finite number >= 0'):
            impl(x, *make_params(3, 4, dtype=torch.float32), range_eps)

    @pytest.mark.parametrize('impl', [pwlu, pwlu_reference], ids=['op', 'reference'])
    @pytest.mark.parametrize('case', sorted(BAD_CALLS))
    def test_bad_calls_name_the_argument(self, impl, case):
        make_args, error, message = BAD_CALLS[case]
        x = make_input((2, 3, 4, 5), torch.float32, 'cpu')
        params = make_params(3, 4, dtype=torch.float32)
        with pytest.raises(error, match=message):
            impl(*make_args(x, params))

    @pytest.mark.needs_cuda
    def test_cpu_and_cuda_tensors_mixed(self):
        x = make_input((2, 3, 4, 5), torch.float32, 'cuda')
        params = make_params(3, 4, dtype=torch.float32)
        with pytest.raises(ValueError, match='points is on cpu'):
            pwlu(x, *params)

    @pytest.mark.needs_cuda
    def test_cpu_input_with_cuda_parameters(self):
        """The CUDA kernel is chosen by the parameters' device; the op's own check names the
        mismatch before any CUDA device guard sees the CPU x."""
        x = make_input((2, 3, 4, 5), torch.float32, 'cpu')
        params = make_params(3, 4, dtype=torch.float32, device='cuda')
        with pytest.raises(ValueError, match='is on cuda'):
            pwlu(x, *params)
        with pytest.raises(ValueError, match='is on cuda'), torch.no_grad():
            pwlu_(x, *params)


class TestKernelPaths:
    """Per-path coverage of the kernels: every piece, short planes, interleaved channels (rows),
    misaligned buffers, 64-bit indexing."""

    @pytest.mark.parametrize('device', DEVICES)
    @pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float64])
    @pytest.mark.parametrize('num_intervals', [1, 2, 16, 30, 31, 40])
    @pytest.mark.parametrize('layer_wise', [False, True], ids=['channel', 'layer'])
    def test_dense_sweep_every_piece(self, device, dtype, num_intervals, layer_wise):
        """A sweep through both outer pieces and every interval, long enough for the vectorised
        paths (including the AVX-512 one for K + 2 <= 32) and their scalar tails."""
        params = make_params(3, num_intervals, layer_wise, dtype=torch.float32, device=device)
        # Interval coordinates t from well left of B_L to well right of B_R, kept 1% of an interval
        # away from the demarcation points, where the gradient (not the output) jumps and float32
        # and float64 may legitimately pick different sides.
        t = torch.linspace(-5, num_intervals + 5, 4099, dtype=torch.float64)
        t = t[(t - t.round()).abs() > 0.01]
        lb, rb = (p.double().cpu().expand(3).unsqueeze(1) for p in params[1:3])
        x = (lb + t * (rb - lb) / num_intervals).repeat(2, 1, 1).to(dtype=dtype, device=device)
        check_op_against_reference(x, params, *TOL[dtype],
                                   param_rtol=1e-5 if dtype != torch.bfloat16 else 1e-4)

    @pytest.mark.parametrize('device', DEVICES)
    @pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float64])
    @pytest.mark.parametrize('shape', [(48, 3, 7, 7), (5, 3, 1, 17), (300, 2, 1, 5)],
                             ids=['7x7', 'tail_1', 'tail_5'])
    def test_short_planes_all_gradients(self, device, dtype, shape):
        """Planes shorter than 16 elements or with a tail (RoI maps): masked vector tails, and
        per-channel planes packed into shared histogram chunks (48 x 49 and 300 x 5 elements per
        channel fill more than one 1024-element chunk)."""
        x = make_input(shape, dtype, device)
        params = make_params(shape[1], 16, dtype=torch.float32, device=device)
        check_op_against_reference(x, params, *TOL[dtype],
                                   param_rtol=1e-5 if dtype != torch.bfloat16 else 1e-4)

    @pytest.mark.parametrize('device', DEVICES)
    @pytest.mark.parametrize('shape', [(70, 150), (7100, 150)], ids=['one_block', 'two_row_blocks'])
    def test_interleaved_channels_all_gradients(self, device, shape):
        """Interleaved rows of several channel groups (64 each, the last one partial, with a
        16-channel tail) and, for the larger input (over 2**20 elements), several blocks of rows
        whose histograms are added: every gradient against the reference."""
        x = make_input(shape, torch.float32, device)
        params = make_params(shape[1], 16, dtype=torch.float32, device=device)
        check_op_against_reference(x, params, *TOL[torch.float32], param_rtol=1e-5)
        check_input_grad_against_reference(x, params, *TOL[torch.float32])

    @pytest.mark.parametrize('device', DEVICES)
    @pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
    @pytest.mark.parametrize('shape', [(9, 37), (3, 37, 2, 5)], ids=['2d', 'channels_last'])
    def test_interleaved_channels_wide_rows(self, device, dtype, shape):
        """Rows of more than 16 interleaved channels (the vectorised row path and its tail),
        including infinite inputs that need the limit."""
        x = make_input(shape, dtype, device)
        x.view(-1)[::7] = float('-inf')
        if x.dim() == 4:
            x = x.to(memory_format=torch.channels_last)
        params = make_params(37, 16, dtype=torch.float32, device=device)
        params[3].view(-1)[::2] = 0.0  # zero left slopes: -inf maps to Y_0, not NaN
        y = pwlu(x, *params)
        expected = pwlu_reference(x.double(), *[p.double() for p in params])
        assert not torch.isnan(y).any()
        torch.testing.assert_close(y.double(), expected, atol=TOL[dtype][0], rtol=TOL[dtype][1])

    @pytest.mark.parametrize('device', DEVICES)
    @pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
    @pytest.mark.parametrize('layer_wise', [False, True], ids=['channel', 'layer'])
    def test_misaligned_buffers(self, device, dtype, layer_wise):
        """A dense x that starts one element into its storage cannot use 16-byte vector accesses:
        the element-wise paths (forward, grad_x only, parameter gradients) agree with the reference
        anyway, and the output keeps x's shape."""
        shape = (2, 5, 8, 16)
        base = make_input((2 * 5 * 8 * 16 + 1, 1), dtype, device).view(-1)
        x = base[1:].view(shape)
        assert x.is_contiguous() and x.storage_offset() == 1
        params = make_params(5, 16, layer_wise, dtype=torch.float32, device=device)
        check_op_against_reference(x, params, *TOL[dtype],
                                   param_rtol=1e-5 if dtype != torch.bfloat16 else 1e-4)
        # grad_x alone (frozen parameters)
        x = x.detach().requires_grad_()
        x64 = x.detach().double().cpu().requires_grad_()
        pwlu(x, *params).sum().backward()
        pwlu_reference(x64, *[p.double().cpu() for p in params]).sum().backward()
        torch.testing.assert_close(x.grad.double().cpu(), x64.grad, atol=TOL[dtype][0],
                                   rtol=TOL[dtype][1])

    @pytest.mark.needs_cuda
    @pytest.mark.skipif(not _enough_cuda_memory(24), reason='needs 24 GiB of free GPU memory')
    def test_cuda_indices_past_int32(self):
        """Tensors of 2**31 elements or more take the 64-bit index path: the last sample (whose
        indices do not fit in 32 bits) gets its output, grad_x and its share of the parameter
        gradients right."""
        shape = (2**31 // (64 * 128 * 128) + 1, 64, 128, 128)
        gen = torch.Generator('cuda').manual_seed(0)
        x = torch.randn(shape, device='cuda', dtype=torch.bfloat16, generator=gen).mul_(1.5)
        assert x.numel() > 2**31
        params = make_params(64, 16, dtype=torch.float32, device='cuda')
        y = pwlu(x, *params)
        ref = pwlu_reference(x[-1:].double().cpu(), *[p.double().cpu() for p in params])
        torch.testing.assert_close(y[-1:].double().cpu(), ref, atol=TOL[torch.bfloat16][0],
                                   rtol=TOL[torch.bfloat16][1])
        del y
        # Gradients from the last sample only: the other samples add exact zeros.
        g = torch.zeros_like(x)
        g[-1] = torch.randn(shape[1:], device='cuda', generator=gen).to(torch.bfloat16)
        grads = torch.ops.pwlu_mmdet.pwlu_backward(g, x, *params, 0.0, True, True)
        x64 = x[-1:].double().cpu().requires_grad_()
        p64 = [p.double().cpu().requires_grad_() for p in params]
        pwlu_reference(x64, *p64).backward(g[-1:].double().cpu())
        torch.testing.assert_close(grads[0][-1:].double().cpu(), x64.grad,
                                   atol=TOL[torch.bfloat16][0], rtol=TOL[torch.bfloat16][1])
        for name, got, ref in zip(PARAM_NAMES, grads[1:], p64):
            scale = ref.grad.abs().max().item() + 1.0
            torch.testing.assert_close(got.double().cpu(), ref.grad, atol=1e-4 * scale, rtol=0,
                                       msg=lambda m: f'grad of {name}: {m}')


# (dtype, K): K = 16 stages the tables (and the backward's slopes) in shared memory; K = 100
# is past what a 16-bit tile of 64 channels or the backward's staged slopes take, K = 60 past
# the staged slopes in float64.
TILE_CASES = [(torch.float32, 16), (torch.bfloat16, 16), (torch.float16, 16), (torch.float64, 16),
              (torch.float32, 100), (torch.bfloat16, 100), (torch.float64, 60)]
# 70 channels: one full tile of 64 (or two of 32) and a partial one; 37: odd, so 16-bit values
# go one channel at a time; 4 x 9 x 11 = 396 rows: several row blocks and a partial pass.
TILE_SHAPES = {'channels_last_even': (4, 70, 9, 11), 'channels_last_odd': (4, 37, 9, 11),
               '2d_even': (33, 70), '2d_odd': (396, 37)}


class TestChannelTiles:
    """Channels-last and 2-D inputs on every path their kernels choose by dtype, channel count
    and number of intervals: tables staged per channel tile (16-bit values two channels at a
    time where the channel count is even), the per-element fallback where a tile's table does
    not fit in shared memory, partial channel tiles and several blocks of rows."""

    @pytest.mark.parametrize('device', DEVICES)
    @pytest.mark.parametrize('dtype,num_intervals', TILE_CASES,
                             ids=[f'{str(d)[6:]}-K{k}' for d, k in TILE_CASES])
    @pytest.mark.parametrize('shape', sorted(TILE_SHAPES))
    def test_all_gradients(self, device, dtype, num_intervals, shape):
        shape = TILE_SHAPES[shape]
        x = make_input(shape, dtype, device, 'channels_last' if len(shape) == 4 else 'contiguous')
        # float32 parameters with 16-bit inputs, as under autocast
        param_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        params = make_params(shape[1], num_intervals, dtype=param_dtype, device=device)
        # Random points with the slopes of K = 16 (steeper ones only scale the rounding error).
        params[0] = params[0] * (16 / num_intervals)
        atol, rtol = TOL[dtype]
        param_rtol = {torch.float64: 1e-10, torch.float32: 1e-5}.get(dtype, 1e-4)
        y = check_op_against_reference(x, params, atol, rtol, param_rtol=param_rtol)
        if len(shape) == 4:
            assert y.is_contiguous(memory_format=torch.channels_last)
        check_input_grad_against_reference(x, params, atol, rtol)

    @pytest.mark.parametrize('device', DEVICES)
    @pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
    def test_in_place(self, device, dtype):
        """pwlu_ over staged tables (x is read and written by the same thread) equals pwlu."""
        x = make_input((4, 70, 9, 11), dtype, device, 'channels_last')
        params = make_params(70, 16, dtype=torch.float32, device=device)
        expected = pwlu(x, *params)
        with torch.no_grad():
            pwlu_(x, *params)
        torch.testing.assert_close(x, expected, atol=0, rtol=0)


class TestBuild:
    """Loading the extension, the fallback without it, and the CUDA build."""

    def test_compiled_op_is_loaded(self):
        assert compiled_available(), 'pwlu_mmdet._C failed to load: the reference is in use'
        assert pwlu is not pwlu_reference

    def test_fallback_to_reference_with_one_warning(self):
        """Without the extension pwlu_mmdet still imports and warns once."""
        code = ('import sys, warnings; sys.modules["pwlu_mmdet._C"] = None\n'
                'with warnings.catch_warnings(record=True) as w:\n'
                '    warnings.simplefilter("always")\n'
                '    import pwlu_mmdet.ops as ops\n'
                'msgs = [str(x.message) for x in w if "compiled PWLU operator" in str(x.message)]\n'
                'assert len(msgs) == 1, msgs\n'
                'assert not ops.compiled_available() and ops.pwlu is ops.pwlu_reference\n'
                'print("fallback ok")\n')
        out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        assert 'fallback ok' in out.stdout

    @pytest.mark.skipif(not __import__('shutil').which('nvcc'), reason='nvcc not installed')
    def test_cuda_sources_compile_with_nvcc(self):
        """The CUDA kernels compile for sm_80 and sm_90, even on a machine without a GPU."""
        out = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'check_cuda_compile.py'),
                              '--arch', '80', '90'], capture_output=True, text=True, cwd=ROOT)
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.count('ok ') == 2 * len(
            [f for f in os.listdir(os.path.join(ROOT, 'csrc', 'ops', 'cuda')) if f.endswith('.cu')])

    @pytest.mark.skipif(not compiled_available() or _built_with_cuda(),
                        reason='needs a build without the CUDA kernels')
    @pytest.mark.parametrize('op', ['pwlu', 'pwlu_backward', 'relu_with_moments'])
    def test_build_without_cuda_explains_the_rebuild(self, op):
        """A CPU-only build called on CUDA tensors says how to rebuild (FORCE_CUDA=1) instead of
        the dispatcher's generic "Could not run ... 'CUDA' backend" (called here through the CUDA
        dispatch key, as a CUDA tensor would)."""
        x = make_input((2, 3, 4, 5), torch.float32, 'cpu')
        params = make_params(3, 4, dtype=torch.float32)
        args = {'pwlu': (x, *params, 0.0),
                'pwlu_backward': (x, x, *params, 0.0, True, True),
                'relu_with_moments': (x, True)}[op]
        overload = getattr(torch.ops.pwlu_mmdet, op).default
        keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
        with pytest.raises(RuntimeError, match=f'pwlu_mmdet::{op}: .*FORCE_CUDA=1'):
            overload.redispatch(keys, *args)
