"""Alignment IoU (Eq. 7) of every PWLU channel with its input (the paper's Figure 6).

Runs K batches of the config's training data through the model (training forward, no gradients,
the model's state restored), collects each channel's input mean and standard deviation and writes
the distribution of the IoU between ``[B_L, B_R]`` and ``[mu - 3 sigma, mu + 3 sigma]`` as a
histogram PNG, a per-layer CSV and a per-channel CSV; prints the mean IoU.

Example::

    python tools/analysis/alignment_iou.py CONFIG work_dirs/NAME/iter_600.pth --num-batches 8 \\
        --out-dir work_dirs/NAME/analysis
"""
import argparse
import os.path as osp

from mmengine.config import DictAction

from pwlu_mmdet.analysis import run_alignment_iou


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='PWLU alignment IoU (Eq. 7) histogram and CSV')
    parser.add_argument('config', help='model and data config')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--num-batches', type=int, default=8,
                        help='training batches K to collect statistics over (default: 8)')
    parser.add_argument('--out-dir', help='output folder (default: beside the checkpoint, '
                        'CHECKPOINT_DIR/alignment_iou)')
    parser.add_argument('--prefix', default='alignment_iou', help='output file name prefix')
    parser.add_argument('--mode', choices=['loss', 'predict'], default='loss',
                        help="forward used: 'loss' (training, default) or 'predict'")
    parser.add_argument('--seed', type=int, default=0, help='dataloader seed')
    parser.add_argument('--device', default='cpu', help='device (default: cpu)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value (as tools/train.py)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    out_dir = args.out_dir or osp.join(osp.dirname(osp.abspath(args.checkpoint)),
                                       'alignment_iou')
    report = run_alignment_iou(args.config, args.checkpoint, out_dir, args.num_batches,
                               cfg_options=args.cfg_options, mode=args.mode, seed=args.seed,
                               device=args.device, prefix=args.prefix)
    for stage, (iou, outside) in report['stages'].items():
        print(f'  {stage:<28s} mean IoU {iou:.4f}   outside [B_L, B_R]: {outside:.2%}')
    channels = sum(a.num_sets for a in report['alignment'].values())
    print(f'mean IoU {report["mean_iou"]:.4f} over {channels} channels of '
          f'{len(report["alignment"])} PWLU layers ({args.num_batches} batches)')
    for key in ('histogram', 'csv', 'channel_csv'):
        print(f'{key}: {report[key]}')
    return report


if __name__ == '__main__':
    main()
