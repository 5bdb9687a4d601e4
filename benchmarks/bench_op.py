"""Benchmark of the PWLU op against ReLU and SiLU: forward, forward+backward and phase I.

Every implementation runs side by side in one process on the same input, interleaved
(benchmarks/timing.py); times are medians, and ratios are medians of the per-round ratios to
ReLU's time in the same mode.

Example:
    python benchmarks/bench_op.py --shape 8 256 64 64 --device cpu --dtype float32
    python benchmarks/bench_op.py --device cuda --dtype bfloat16
    python benchmarks/bench_op.py --device cuda --suite gpu --profile   # kernel by kernel
"""
import argparse
import os
import platform
import statistics
import sys
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import (cuda_event_timer, interleaved_times, median_ratio,  # noqa: E402
                    synchronize, wall_timer)

from pwlu_mmdet.ops import compiled_available, pwlu, pwlu_, pwlu_reference  # noqa: E402

DTYPES = {'float32': torch.float32, 'float16': torch.float16, 'bfloat16': torch.bfloat16,
          'float64': torch.float64}


def make_params(channels: int, num_intervals: int, device, dtype=torch.float32):
    """A realigned-looking PWLU: range [-2.5, 3] with a non-trivial shape."""
    g = torch.Generator().manual_seed(0)
    lb = torch.full((channels, ), -2.5)
    rb = torch.full((channels, ), 3.0)
    grid = torch.linspace(-2.5, 3.0, num_intervals + 1)
    points = torch.relu(grid).expand(channels, -1) + 0.05 * torch.randn(
        channels, num_intervals + 1, generator=g)
    ls = torch.full((channels, ), 0.01)
    rs = torch.ones(channels)
    return [t.to(device=device, dtype=dtype).contiguous() for t in (points, lb, rb, ls, rs)]


# Tensor-sized memory traffic of each mode at the bandwidth limit: the forward reads x and writes
# y; forward+backward adds reading grad_y and x (or y) and writing grad_x.
BYTES_MOVED = {'forward': 2, 'forward+backward': 5, 'phase I forward': 2,
               'phase I forward+backward': 5, 'read+write': 2}


def phase_one_stats(x: torch.Tensor) -> None:
    """Phase I as the PWLU layer runs it: ReLU output plus per-channel statistics."""
    from pwlu_mmdet.ops import relu_with_moments
    return relu_with_moments(x)


def build_cases(x: torch.Tensor, params: List[torch.Tensor], with_compile: bool,
                with_reference: bool) -> Dict[str, Dict[str, Optional[Callable]]]:
    """name -> {mode -> callable}; a mode's callable runs forward (and backward) once."""
    x_grad = x.detach().clone().requires_grad_()
    p_grad = [p.detach().clone().requires_grad_() for p in params]
    grad_out = torch.ones_like(x)

    def fwd(fn, *args):
        def run():
            with torch.no_grad():
                fn(*args)
        return run

    leaves = [x_grad, *p_grad]

    def fwd_bwd(fn, *args):
        # As in a training step: gradients start from None (optimizer.zero_grad), so the time is
        # the op's and not that of accumulating into .grad, which a network's activation (a
        # non-leaf) never does.
        def run():
            for t in leaves:
                t.grad = None
            fn(*args).backward(grad_out)
        return run

    cases = {
        'ReLU': {'forward': fwd(torch.relu, x), 'forward+backward': fwd_bwd(torch.relu, x_grad)},
        'SiLU': {'forward': fwd(F.silu, x), 'forward+backward': fwd_bwd(F.silu, x_grad)},
    }
    if with_reference:
        cases['reference (eager)'] = {
            'forward': fwd(pwlu_reference, x, *params),
            'forward+backward': fwd_bwd(pwlu_reference, x_grad, *p_grad)}
    if with_compile:
        compiled_ref = torch.compile(pwlu_reference, dynamic=False)
        cases['reference (torch.compile)'] = {
            'forward': fwd(compiled_ref, x, *params),
            'forward+backward': fwd_bwd(compiled_ref, x_grad, *p_grad)}
    if compiled_available():
        cases['PWLU op'] = {
            'forward': fwd(pwlu, x, *params),
            'forward+backward': fwd_bwd(pwlu, x_grad, *p_grad),
            # phase I: ReLU output with the fused statistics, frozen parameters (grad_x only)
            'phase I forward': fwd(phase_one_stats, x),
            'phase I forward+backward': fwd_bwd(lambda t: phase_one_stats(t)[0], x_grad),
        }
        # Inference as ConvModule(inplace=True) runs it; repeated calls keep x finite.
        cases['pwlu_ (in place)'] = {'forward': fwd(pwlu_, x.clone(), *params)}
    return cases


def make_cases(args):
    """The input of args and its cases (build_cases)."""
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    x = torch.randn(*args.shape, device=device, dtype=torch.float32).mul_(1.5).to(dtype)
    if args.channels_last:
        x = x.to(memory_format=torch.channels_last)
    param_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    sets = 1 if args.layer_wise else x.shape[1]
    params = make_params(sets, args.intervals, device, param_dtype)
    return x, build_cases(x, params, not args.no_compile, not args.no_reference)


def run(args) -> List[dict]:
    device = torch.device(args.device)
    x, cases = make_cases(args)
    fns = {(name, mode): fn for name, modes in cases.items() for mode, fn in modes.items()}
    fns[('copy (x.clone)', 'read+write')] = lambda: x.clone()
    timer = cuda_event_timer(device) if device.type == 'cuda' else wall_timer(device)
    times = interleaved_times(fns, timer, args.repeat, args.warmup)
    nbytes = x.numel() * x.element_size()
    rows = []
    for (name, mode), t in times.items():
        # phase I is compared with ReLU in the same mode, the copy with ReLU's forward
        base = mode.replace('phase I ', '').replace('read+write', 'forward')
        ms = statistics.median(t)
        rows.append(dict(impl=name, mode=mode, ms=ms, ratio=median_ratio(t, times[('ReLU', base)]),
                         gbps=BYTES_MOVED[mode] * nbytes / ms / 1e6))
    return rows


def profile_kernels(fn: Callable[[], None], device: torch.device, iters: int) -> List[dict]:
    """Where the time of ``fn`` goes: every kernel's device time (on a GPU) or every op's self
    CPU time (on a CPU) under torch.profiler, in ms per call of ``fn``, largest first."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    on_gpu = device.type == 'cuda'
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if on_gpu else [])]
    fn()
    synchronize(device)
    with profile(activities=activities) as prof:
        for _ in range(iters):
            fn()
        synchronize(device)
    rows = []
    for event in prof.key_averages():
        if on_gpu and event.device_type != DeviceType.CUDA:
            continue  # host-side ops; their kernels are listed on their own
        us = event.self_device_time_total if on_gpu else event.self_cpu_time_total
        if us > 0:
            rows.append(dict(kernel=event.key, calls=event.count / iters, ms=us / iters / 1e3))
    return sorted(rows, key=lambda r: -r['ms'])


def format_profile(args, iters: int = 10, top: int = 8) -> str:
    """The PWLU op's modes under profile_kernels, a table per mode."""
    device = torch.device(args.device)
    _, cases = make_cases(args)
    lines = [f'profile of {table_head(args)}, {iters} calls per mode', '']
    for name in ('PWLU op', 'pwlu_ (in place)'):
        for mode, fn in cases.get(name, {}).items():
            rows = profile_kernels(fn, device, iters)
            total = sum(r['ms'] for r in rows)
            lines += [f'{name}, {mode}: {total:.3f} ms per call in {len(rows)} kernels', '',
                      '| kernel | calls | ms | % |', '|---|---|---|---|']
            for r in rows[:top]:
                lines.append(f"| `{r['kernel'][:90]}` | {r['calls']:g} | {r['ms']:.4f} | "
                             f"{100 * r['ms'] / total:.0f} |")
            lines.append('')
    return '\n'.join(lines)


def table_head(args) -> str:
    return (f'shape {tuple(args.shape)}, {args.dtype}, {args.device}'
            f'{", channels_last" if args.channels_last else ""}'
            f'{", layer-wise" if args.layer_wise else ""}, K={args.intervals}')


def format_table(rows: List[dict], args) -> str:
    head = (f'{table_head(args)}, median of {args.repeat}, torch {torch.__version__}, '
            f'{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}')
    copy_gbps = next(r['gbps'] for r in rows if r['mode'] == 'read+write')
    lines = [head, '', 'phase I rows are compared with ReLU\'s forward / forward+backward.', '',
             '| implementation | mode | ms | x ReLU | GB/s | % of copy GB/s |',
             '|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f"| {r['impl']} | {r['mode']} | {r['ms']:.3f} | {r['ratio']:.2f} | "
                     f"{r['gbps']:.1f} | {100 * r['gbps'] / copy_gbps:.0f} |")
    return '\n'.join(lines)


# Cases run by --suite: the shapes of a detector's activations, planar and channels-last, in
# the training dtypes.
SUITES = {
    'gpu': [
        # planar maps over the GPU's L2 (60 MB on an H200): a ResNet stage-1 / FPN P2 map at
        # 800 x 1216 with 2 images (124 MB in float32), also in bfloat16 with 4 images
        ['--shape', '2', '256', '200', '304', '--dtype', 'float32'],
        ['--shape', '4', '256', '200', '304', '--dtype', 'bfloat16'],
        ['--shape', '2', '256', '200', '304', '--dtype', 'float32', '--channels-last'],
        ['--shape', '4', '256', '200', '304', '--dtype', 'bfloat16', '--channels-last'],
        ['--shape', '2', '256', '200', '304', '--dtype', 'float32', '--layer-wise'],
        # smaller maps that fit in L2, where per-call costs show
        ['--shape', '8', '256', '64', '64', '--dtype', 'float32'],
        ['--shape', '8', '256', '64', '64', '--dtype', 'float32', '--channels-last'],
        # the mask head's RoI maps and the box head's fc
        ['--shape', '512', '256', '14', '14', '--dtype', 'float32'],
        ['--shape', '1024', '1024', '--dtype', 'float32'],
        ['--shape', '64', '1024', '--dtype', 'float32'],
    ],
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--shape', type=int, nargs='+', default=[8, 256, 64, 64])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dtype', default='float32', choices=sorted(DTYPES))
    parser.add_argument('--intervals', type=int, default=16)
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--layer-wise', action='store_true',
                        help='one parameter set for all channels')
    parser.add_argument('--suite', choices=sorted(SUITES),
                        help='run a fixed list of cases in this process (each with the other '
                        'options given), instead of one case')
    parser.add_argument('--repeat', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--no-compile', action='store_true', help='skip torch.compile')
    parser.add_argument('--no-reference', action='store_true', help='skip the eager reference')
    parser.add_argument('--profile', action='store_true',
                        help='instead of timing, list the kernels of each PWLU mode with their '
                        'time (torch.profiler)')
    return parser.parse_args(argv)


def report(args) -> str:
    return format_profile(args) if args.profile else format_table(run(args), args)


def main(argv=None):
    args = parse_args(argv)
    if args.suite is None:
        print(report(args))
        return
    for case in SUITES[args.suite]:
        case_args = parse_args([*(argv if argv is not None else sys.argv[1:]), *case])
        print(report(case_args), end='\n\n', flush=True)


if __name__ == '__main__':
    main()
