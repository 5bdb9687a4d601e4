"""The PWLU paper's Table 4 on this code: ResNet-18 inference (and training-step) time with
ReLU, Swish, PWLU, FReLU, APL and PAU at every activation site, as ratios to ReLU.

One process builds a 224 x 224 ImageNet ResNet-18 classifier per activation (this project's
``ActResNet`` with a global-pool + fc head; without MMDetection, the same network in torch only,
see ``benchmarks/resnet.py``) and times them interleaved (each round runs every model once,
starting with another one: benchmarks/timing.py, the rule of every benchmark here). ``x ReLU``
is the median of per-round ratios. PWLU is realigned first (phase II, the expensive phase). FReLU
uses BatchNorm here, the Funnel paper's classification form, as the rest of the network does.
``inference`` is a forward under ``torch.no_grad()`` in eval mode; ``train`` is forward,
cross-entropy, backward and an SGD step.

Needs only torch (no OpenMMLab package, no torchvision): runs on a bare GPU machine.

Example:
    python benchmarks/bench_table4.py                              # CPU, batch 8
    python benchmarks/bench_table4.py --device cuda --batch-size 64 --repeat 50
"""
import argparse
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from resnet import build_resnet_classifier, mmdet_available  # noqa: E402
from timing import interleaved_times, median_ratios, wall_timer  # noqa: E402

from pwlu_mmdet.layers import find_pwlu_layers, realign_model  # noqa: E402
from pwlu_mmdet.ops import compiled_available  # noqa: E402

# name: (act_cfg, the paper's Table 4 ResNet-18 inference ms on a V100, or None)
ACTIVATIONS = {
    'ReLU': (dict(type='ReLU'), 17.1),
    'Swish': (dict(type='Swish'), 18.8),
    'PWLU': (dict(type='PWLU'), 19.9),
    'FReLU': (dict(type='FReLU', norm_cfg=dict(type='BN')), 23.3),
    'APL': (dict(type='APL'), 40.7),
    'PAU': (dict(type='PAU'), 64.2),
    'PReLU': (dict(type='ChannelPReLU'), None),
}
DEFAULT_ACTS = ('ReLU', 'Swish', 'PWLU', 'FReLU', 'APL', 'PAU')


def build_model(name: str, args, batch: torch.Tensor) -> torch.nn.Module:
    """The classifier with activation ``name`` on ``args.device``, PWLU realigned."""
    torch.manual_seed(0)
    model = build_resnet_classifier(18, ACTIVATIONS[name][0], impl=args.impl).to(args.device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if find_pwlu_layers(model):
        # Phase I on one batch gives the statistics, then every layer switches to phase II.
        model.train()
        with torch.no_grad():
            model(batch)
        realign_model(model, distributed=False)
    return model


def make_steps(model: torch.nn.Module, batch: torch.Tensor, labels: torch.Tensor):
    """``(inference, train)`` step functions of one model."""
    # A learning rate too small to move the model: every round times the same function.
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9, weight_decay=1e-4)

    def inference():
        model.eval()
        with torch.no_grad():
            model(batch)

    def train():
        model.train()
        loss = torch.nn.functional.cross_entropy(model(batch), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return inference, train


def run(args) -> dict:
    """Times every activation; returns ``{mode: {name: (median ms, x ReLU)}}``."""
    device = torch.device(args.device)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest conv algorithms
    g = torch.Generator().manual_seed(0)
    batch = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=g)
    batch = batch.to(device)
    if args.channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (args.batch_size, ), generator=g).to(device)
    names = ['ReLU'] + [a for a in args.acts if a != 'ReLU']
    steps = {name: make_steps(build_model(name, args, batch), batch, labels) for name in names}
    results = {}
    for mode, index in (('inference', 0), ('train', 1)):
        if mode not in args.modes:
            continue
        times = interleaved_times({n: steps[n][index] for n in names}, wall_timer(device),
                                  args.repeat, args.warmup)
        results[mode] = median_ratios(times)
    return results


def describe(args) -> str:
    """One line: what ran where."""
    if torch.device(args.device).type == 'cuda':
        machine = torch.cuda.get_device_name(torch.device(args.device))
    else:
        machine = f'{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads'
    impl = args.impl if args.impl != 'auto' else ('mmdet' if mmdet_available() else 'torch')
    return (f'ResNet-18 ({impl} backbone), batch {args.batch_size} x 3 x {args.image_size} x '
            f'{args.image_size}, float32{", channels_last" if args.channels_last else ""}, '
            f'{args.device} ({machine}), torch {torch.__version__}, compiled PWLU op: '
            f'{compiled_available()}, median of {args.repeat} interleaved rounds, '
            f'{time.strftime("%Y-%m-%d")}')


def format_table(args, results: dict) -> str:
    """Markdown: per activation, each mode's ms and ratio, and the paper's inference column."""
    names = list(next(iter(results.values())))
    cols = []
    for mode in results:
        cols += [f'{mode} ms', 'x ReLU']
    cols += ['paper inference ms (V100)', 'paper x ReLU']
    lines = [describe(args), '', '| activation | ' + ' | '.join(cols) + ' |',
             '|---' * (len(cols) + 1) + '|']
    paper_relu = ACTIVATIONS['ReLU'][1]
    for name in names:
        cells = []
        for mode in results:
            ms, ratio = results[mode][name]
            cells += [f'{ms:.1f}', f'{ratio:.2f}']
        paper = ACTIVATIONS[name][1]
        cells += ['-', '-'] if paper is None else [f'{paper}', f'{paper / paper_relu:.2f}']
        lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--batch-size', type=int, default=None,
                        help='images per step (default: 64 on CUDA, 8 on CPU)')
    parser.add_argument('--image-size', type=int, default=224)
    parser.add_argument('--acts', nargs='+', default=list(DEFAULT_ACTS), choices=list(ACTIVATIONS))
    parser.add_argument('--modes', nargs='+', default=['inference', 'train'],
                        choices=['inference', 'train'])
    parser.add_argument('--repeat', type=int, default=20)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--impl', default='auto', choices=['auto', 'mmdet', 'torch'],
                        help='backbone: ActResNet (mmdet), TorchResNet (torch) or auto')
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--json', help='also write the results to this JSON file')
    args = parser.parse_args(argv)
    if args.batch_size is None:
        args.batch_size = 64 if torch.device(args.device).type == 'cuda' else 8
    return args


def main(argv=None):
    args = parse_args(argv)
    results = run(args)
    print(format_table(args, results), flush=True)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(setup=describe(args), results=results), f, indent=1)


if __name__ == '__main__':
    main()
