"""Block-size sweep of the parameter-gradient kernels (PWLU_PLANE_BLOCK, PWLU_ROWS_PER_BLOCK)."""
import os
import sys

sys.path.insert(0, 'benchmarks')
import bench_op as b  # noqa: E402

common = ['--device', 'cuda', '--repeat', '50', '--warmup', '10', '--no-compile', '--no-reference']
sweeps = [
    ('PWLU_PLANE_BLOCK', [1024, 4096, 16384, 65536],
     [['--shape', '8', '256', '64', '64'], ['--shape', '2', '64', '200', '304'],
      ['--shape', '8', '256', '64', '64', '--layer-wise'],
      ['--shape', '512', '256', '14', '14']]),
    ('PWLU_NO_PAD', [1],
     [['--shape', '8', '256', '64', '64'], ['--shape', '8', '256', '64', '64', '--channels-last']]),
    ('PWLU_INT64', [1],
     [['--shape', '8', '256', '64', '64'], ['--shape', '8', '256', '64', '64', '--dtype', 'bfloat16'],
      ['--shape', '8', '256', '64', '64', '--channels-last']]),
    ('PWLU_ROWS_PER_BLOCK', [64, 256, 1024],
     [['--shape', '8', '256', '64', '64', '--channels-last'],
      ['--shape', '8', '256', '64', '64', '--channels-last', '--dtype', 'bfloat16'],
      ['--shape', '1024', '1024']]),
]
for knob, values, cases in sweeps:
    for value in values:
        os.environ[knob] = str(value)
        for case in cases:
            args = b.parse_args(case + common)
            rows = b.run(args)
            copy = next(r['gbps'] for r in rows if r['mode'] == 'read+write')
            for mode in ('forward', 'forward+backward'):
                r = next(r for r in rows if r['impl'] == 'PWLU op' and r['mode'] == mode)
                print(f"{knob}={value:6d} {' '.join(case):45s} {mode:17s} {r['ms']:.4f} ms "
                      f"{r['ratio']:.2f}x ReLU {100 * r['gbps'] / copy:.0f}% copy", flush=True)
    os.environ.pop(knob)
