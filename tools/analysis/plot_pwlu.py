"""Draw the learned PWLU functions of a checkpoint, one panel per layer (the paper's Figure 7).

Channel-wise layers show a few channels and the per-layer median, ReLU is dashed for reference
and the learnable range ``[B_L, B_R]`` is marked. Works on a CPU without the compiled op and on
checkpoints of either phase (phase-I layers are ReLU).

Examples::

    python tools/analysis/plot_pwlu.py work_dirs/quickstart/pwlu/iter_600.pth --out curves.png
    python tools/analysis/plot_pwlu.py CKPT --config CONFIG --layers 'backbone\\.layer4' \\
        --out layer4.png
"""
import argparse
import sys

from pwlu_mmdet.analysis import load_pwlu_layers, plot_pwlu_curves


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Plot the learned PWLU functions')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--config', help='model config: build the model and load the checkpoint '
                        "into it (needs mmdet); default: rebuild the layers from the checkpoint")
    parser.add_argument('--layers', metavar='PATTERN',
                        help='regular expression searched in the layer names (default: all)')
    parser.add_argument('--out', required=True, help='output image (e.g. FILE.png)')
    parser.add_argument('--channels', type=int, default=4,
                        help='channels drawn per channel-wise layer (default: 4)')
    parser.add_argument('--ncols', type=int, help='panels per row')
    parser.add_argument('--num-points', type=int, default=401, help='samples per curve')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    layers = load_pwlu_layers(args.checkpoint, config=args.config, pattern=args.layers)
    if not layers:
        sys.exit(f'no PWLU layer in {args.checkpoint}'
                 + (f' matches {args.layers!r}' if args.layers else ''))
    plot_pwlu_curves(layers, args.out, num_channels=args.channels, num_points=args.num_points,
                     ncols=args.ncols, title=f'Learned PWLU functions: {args.checkpoint}')
    phase2 = sum(layer.realigned for layer in layers.values())
    print(f'{len(layers)} PWLU layers ({phase2} in phase II) -> {args.out}')
    return layers


if __name__ == '__main__':
    main()
