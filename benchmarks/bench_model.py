"""Whole-detector benchmark: training-step and inference time, and peak memory, of one config
with ReLU, Swish and PWLU at every activation site, as ratios to ReLU.

Each activation runs in its own subprocess (a clean peak-memory reading); inside it, the model
is built from the config with ``model.act_cfg.type`` set, PWLU layers are realigned (phase II, the
expensive phase), and a fixed synthetic batch is timed: ``train`` = ``model.train_step`` with
the config's optimizer wrapper (forward, backward, optimizer step, zero_grad), ``inference`` =
``model.test_step``. The subprocesses run in ``--rounds`` rounds,
each starting with another activation, and each time is the median over rounds of the
per-process medians, so that a machine whose speed drifts (shared CPUs) shifts every activation
alike. ``--interleaved`` instead builds every model in this process and times their steps by the
rule of every benchmark here (benchmarks/timing.py: interleaved rounds, each starting with
another activation; x ReLU is the median of per-round ratios), the steadiest ratio on a noisy
machine, without memory figures.

Example:
    python benchmarks/bench_model.py \\
        configs/synthetic/mask-rcnn_r18-tiny_fpn_gn-all-pwlu_synthetic.py
    python benchmarks/bench_model.py CONFIG --device cuda --image-size 800 1216 --batch-size 2
    python benchmarks/bench_model.py CONFIG --interleaved --repeat 30
"""
import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import interleaved_times, median_ratios, wall_ms, wall_timer  # noqa: E402

ACTIVATIONS = ('ReLU', 'Swish', 'PWLU')


def build_steps(args, activation: str):
    """The model of one activation (PWLU realigned: phase II) and its timed steps.

    Returns:
        tuple: ``(model, train_step, infer_step)``.
    """
    import torch
    from mmdet.testing import demo_mm_inputs
    from mmdet.utils import register_all_modules
    from mmengine.config import DictAction
    from mmengine.logging import MMLogger
    from mmengine.registry import MODELS

    import pwlu_mmdet.models  # noqa: F401  (registers the components)
    from pwlu_mmdet.apis import read_config
    from pwlu_mmdet.layers import realign_model

    register_all_modules()
    torch.manual_seed(0)
    device = torch.device(args.device)
    cfg = read_config(args.config)  # a file, or mmdet::... (a stock detector, converted)
    if args.cfg_options:
        options = argparse.Namespace()
        DictAction([], 'cfg_options')(None, options, args.cfg_options)
        cfg.merge_from_dict(options.cfg_options)
    cfg.model.act_cfg = dict(type=activation)
    model = MODELS.build(cfg.model).to(device)
    num_classes = _num_classes(cfg.model)
    h, w = args.image_size
    packed = demo_mm_inputs(batch_size=args.batch_size, image_shapes=[(3, h, w)] * args.batch_size,
                            num_items=[args.num_boxes] * args.batch_size, num_classes=num_classes,
                            with_mask=args.with_mask, device=str(device))

    model.train()
    if activation == 'PWLU':
        # Phase I: gather statistics on one batch, then switch every layer to phase II.
        with torch.no_grad():
            model(**model.data_preprocessor(packed, True), mode='loss')
        realign_model(model)
    # The config's optimizer, as the runner builds it (PWLUOptimWrapperConstructor: its param
    # groups are part of the step's cost), with a learning rate too small to move the model.
    from mmengine.optim import build_optim_wrapper
    optim_cfg = copy.deepcopy(cfg.optim_wrapper)
    optim_cfg.optimizer.lr = 1e-6
    # Warnings only while the optimizer is built: its constructor logs a line per parameter,
    # which would bury the table in the output.
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel('WARNING')
    try:
        optim_wrapper = build_optim_wrapper(model, optim_cfg)
    finally:
        logger.setLevel(level)

    def train_step():
        model.train()
        model.train_step(packed, optim_wrapper)  # forward, backward, step, zero_grad

    def infer_step():
        model.eval()
        with torch.no_grad():
            model.test_step(packed)

    return model, train_step, infer_step


def _count_pwlu(model) -> int:
    return sum(type(m).__name__ == 'PWLU' for m in model.modules())


def measure(args) -> dict:
    """Runs in the child process: one activation, returns its timings and peak memory."""
    import torch
    device = torch.device(args.device)
    model, train_step, infer_step = build_steps(args, args.activation)
    results = {}
    for name, fn in (('train', train_step), ('inference', infer_step)):
        for _ in range(args.warmup):
            fn()
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        times = [wall_ms(fn, device) for _ in range(args.repeat)]
        results[f'{name}_ms'] = statistics.median(times)
        if device.type == 'cuda':
            results[f'{name}_peak_mb'] = torch.cuda.max_memory_allocated(device) / 2**20
    if device.type != 'cuda':
        # ru_maxrss is KiB on Linux: the process's peak resident memory over both phases.
        results['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results['num_pwlu'] = _count_pwlu(model)
    return results


def measure_interleaved(args, activations) -> dict:
    """All activations in this process, their steps interleaved (timing.interleaved_times);
    no memory figures. Ratios are medians of per-round ratios to ReLU's step of the same round."""
    import torch
    steps = {act: build_steps(args, act) for act in activations}
    results = {act: {} for act in activations}
    timer = wall_timer(torch.device(args.device))
    for name, index in (('train', 1), ('inference', 2)):
        times = interleaved_times({act: steps[act][index] for act in activations}, timer,
                                  args.repeat, args.warmup)
        for act, (ms, ratio) in median_ratios(times).items():
            results[act][f'{name}_ms'] = ms
            results[act][f'{name}_ratio'] = ratio
    for act in activations:
        results[act]['num_pwlu'] = _count_pwlu(steps[act][0])
    return results


def _num_classes(model_cfg) -> int:
    for key in ('roi_head', 'bbox_head'):
        head = model_cfg.get(key)
        if head is None:
            continue
        head = head.get('bbox_head', head)
        if isinstance(head, (list, tuple)):  # a cascade's stages
            head = head[0]
        return head['num_classes']
    return 80


def run_child(args, activation: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), args.config, '--child', activation,
           '--device', args.device, '--batch-size', str(args.batch_size), '--image-size',
           *map(str, args.image_size), '--num-boxes', str(args.num_boxes), '--repeat',
           str(args.repeat), '--warmup', str(args.warmup)]
    if not args.with_mask:
        cmd.append('--no-mask')
    if args.cfg_options:
        cmd += ['--cfg-options', *args.cfg_options]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f'{activation} failed:\n{out.stderr[-3000:]}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def format_table(args, results: dict) -> str:
    import torch
    relu = results['ReLU']
    mem_keys = [k for k in relu if k.endswith('_mb')]
    runs = ('1 process, interleaved (x ReLU: median of per-round ratios)' if args.interleaved
            else f'{args.rounds} rounds')
    head = (f'{os.path.basename(args.config)}, {args.device}, batch {args.batch_size} x '
            f'{args.image_size[0]}x{args.image_size[1]}, median of {args.repeat} steps x '
            f'{runs}, torch '
            f'{torch.__version__}, {torch.get_num_threads()} threads, '
            f'{platform.processor() or platform.machine()}')
    cols = ['train ms', 'x ReLU', 'inference ms', 'x ReLU'] + \
        [k.replace('_mb', ' MB').replace('_', ' ') for k in mem_keys] + ['PWLU layers']
    lines = [head, '', '| activation | ' + ' | '.join(cols) + ' |',
             '|---' * (len(cols) + 1) + '|']
    for act, r in results.items():
        cells = []
        for name in ('train', 'inference'):
            ratio = r.get(f'{name}_ratio', r[f'{name}_ms'] / relu[f'{name}_ms'])
            cells += [f"{r[f'{name}_ms']:.1f}", f'{ratio:.3f}']
        cells += [f'{r[k]:.0f}' for k in mem_keys] + [str(r['num_pwlu'])]
        lines.append(f'| {act} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--batch-size', type=int, default=2)
    parser.add_argument('--image-size', type=int, nargs=2, default=[128, 128])
    parser.add_argument('--num-boxes', type=int, default=4)
    parser.add_argument('--no-mask', dest='with_mask', action='store_false',
                        help='detectors without a mask head (RetinaNet)')
    parser.add_argument('--repeat', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--activations', nargs='+', default=list(ACTIVATIONS))
    parser.add_argument('--rounds', type=int, default=3,
                        help='subprocess rounds; times are medians over rounds')
    parser.add_argument('--interleaved', action='store_true',
                        help='all activations in one process, steps interleaved (no memory)')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='config overrides as in tools/train.py, e.g. '
                        'model.data_preprocessor.batch_augments=None')
    parser.add_argument('--child', help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        args.activation = args.child
        print(json.dumps(measure(args)))
        return
    order = ['ReLU'] + [a for a in args.activations if a != 'ReLU']
    if args.interleaved:
        print(format_table(args, measure_interleaved(args, order)))
        return
    rounds = []
    for i in range(args.rounds):
        # Each round starts with another activation, so that none always runs first.
        rotated = order[i % len(order):] + order[:i % len(order)]
        results = {act: run_child(args, act) for act in rotated}
        rounds.append({act: results[act] for act in order})
    print(format_table(args, combine_rounds(rounds)))


def combine_rounds(rounds: list) -> dict:
    """Per activation: times as the median over rounds, memory as the maximum."""
    out = {}
    for act in rounds[0]:
        runs = [r[act] for r in rounds]
        out[act] = {k: statistics.median(run[k] for run in runs) for k in runs[0]
                    if k.endswith('_ms')}
        out[act].update({k: max(run[k] for run in runs) for k in runs[0] if k.endswith('_mb')})
        out[act]['num_pwlu'] = runs[0]['num_pwlu']
    return out


if __name__ == '__main__':
    main()
