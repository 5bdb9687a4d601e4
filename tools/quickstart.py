"""CPU quick start: PWLU vs ReLU Mask R-CNN on a generated COCO-format data set.

1. generates the synthetic shapes data set (``tools/misc/gen_synthetic_coco.py``; reused when
   already there),
2. trains the small Mask R-CNN of ``configs/synthetic/`` with ReLU and with PWLU through
   ``tools/train.py`` (PWLU switches phase -- realigns -- during training),
3. evaluates both checkpoints on the val split through ``tools/test.py`` (COCO bbox/segm AP,
   pycocotools via mmdet's ``CocoMetric``) and prints the AP table,
4. draws what the PWLU model learned next to it: its activation functions
   (``pwlu_curves.png``, the paper's Fig. 7) and the alignment-IoU histogram of its ranges with
   its inputs (``alignment_iou.png`` + CSV, Fig. 6), in ``WORK_DIR/pwlu/``.

It exits non-zero when a step fails or the PWLU model's bbox mAP_50 is below ``--min-ap50``.
Full logs are in ``WORK_DIR/<act>/{train,test}.log``. Run from the repository root::

    python tools/quickstart.py            # (what `make demo` runs)
"""
import argparse
import json
import os
import os.path as osp
import re
import subprocess
import sys
import time

from pwlu_mmdet.datasets import generate_synthetic_coco

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, 'configs', 'synthetic', 'mask-rcnn_r18-tiny_fpn_gn-all-{}_synthetic.py')
ACTS = ('relu', 'pwlu')
# --acts names: the paper's comparison set (Table 2), each selected by model.act_cfg.type.
ACT_NAMES = dict(relu='ReLU', swish='Swish', prelu='ChannelPReLU', apl='APL', pau='PAU',
                 frelu='FReLU', pwlu='PWLU')
# Log lines shown while a tool runs (everything goes to the log file).
PROGRESS = re.compile(r'Iter\((train|val|test)\)|PWLUHook: (?!  )|bbox_mAP_copypaste|'
                      r'segm_mAP_copypaste|Error|error:|Traceback')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='PWLU / ReLU Mask R-CNN CPU quick start')
    parser.add_argument('--data-root', default='data/synthetic_coco',
                        help='where the synthetic data set is (or is generated)')
    parser.add_argument('--work-dir', default='work_dirs/quickstart',
                        help='checkpoints, logs and metrics of both runs')
    parser.add_argument('--acts', nargs='+', default=list(ACTS), choices=list(ACT_NAMES),
                        help='activations to train, one table row each (default: relu pwlu)')
    parser.add_argument('--min-ap50', type=float, default=0.3,
                        help='fail if the PWLU bbox mAP_50 on val is below this')
    parser.add_argument('--seed', type=int,
                        help='training seed (default: the configs\' randomness.seed, 0)')
    # Smaller runs (tests); the defaults are the documented quick start.
    parser.add_argument('--iters', type=int, help='override train_cfg.max_iters')
    parser.add_argument('--realign-iter', type=int, help='override the PWLU realign iteration')
    parser.add_argument('--num-train', type=int, default=400, help='training images')
    parser.add_argument('--num-val', type=int, default=100, help='validation images')
    parser.add_argument('--no-figures', action='store_true',
                        help='skip the activation plot and the alignment-IoU histogram')
    return parser.parse_args(argv)


def data_options(data_root: str):
    """``--cfg-options`` that point a synthetic config at ``data_root``."""
    root = data_root.rstrip('/') + '/'
    ann = root + 'annotations/instances_val.json'
    return [
        f'train_dataloader.dataset.data_root={root}', f'val_dataloader.dataset.data_root={root}',
        f'test_dataloader.dataset.data_root={root}', f'val_evaluator.ann_file={ann}',
        f'test_evaluator.ann_file={ann}'
    ]


def run_tool(cmd, log_file: str, prefix: str) -> None:
    """Run ``cmd``, streaming progress lines (prefixed) and writing everything to ``log_file``."""
    print(f'[{prefix}] $ {" ".join(cmd)}', flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED='1')  # progress as it happens, not in blocks
    with open(log_file, 'w') as log, subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
            bufsize=1, env=env) as proc:
        for line in proc.stdout:
            log.write(line)
            if PROGRESS.search(line):
                line = re.sub(r'^\d\d/\d\d \d\d:\d\d:\d\d - mmengine - \w+ - ', '', line)
                print(f'[{prefix}] {line.rstrip()[:160]}', flush=True)
    if proc.returncode != 0:
        with open(log_file) as f:
            tail = f.readlines()[-30:]
        print(''.join(tail), file=sys.stderr)
        raise SystemExit(f'[{prefix}] failed with exit code {proc.returncode}; log: {log_file}')


def train_and_test(act: str, args) -> dict:
    config = CONFIG.format(act)
    work_dir = osp.abspath(osp.join(args.work_dir, act))
    os.makedirs(work_dir, exist_ok=True)
    options = data_options(osp.abspath(args.data_root))
    if not osp.exists(config):  # e.g. Swish: the ReLU config with the one-key switch
        config = CONFIG.format('relu')
        options.append(f'model.act_cfg.type={ACT_NAMES[act]}')
    if args.seed is not None:
        options.append(f'randomness.seed={args.seed}')
    if args.iters is not None:
        options.append(f'train_cfg.max_iters={args.iters}')
    if args.realign_iter is not None:
        options.append(f'custom_hooks.0.realign_iter={args.realign_iter}')
    name = ACT_NAMES[act]

    start = time.time()
    run_tool([sys.executable, osp.join(ROOT, 'tools', 'train.py'), config, '--work-dir',
              work_dir, '--cfg-options', *options],
             osp.join(work_dir, 'train.log'), f'{name} train')
    train_time = time.time() - start
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        checkpoint = f.read().strip()

    metrics_file = osp.join(work_dir, 'metrics.json')
    start = time.time()
    run_tool([sys.executable, osp.join(ROOT, 'tools', 'test.py'), config, checkpoint,
              '--work-dir', work_dir, '--metrics-out', metrics_file, '--cfg-options', *options],
             osp.join(work_dir, 'test.log'), f'{name} test')
    test_time = time.time() - start
    with open(metrics_file) as f:
        metrics = json.load(f)['metrics']
    return dict(act=name, metrics=metrics, train_time=train_time, test_time=test_time,
                checkpoint=checkpoint, work_dir=work_dir, config=config)


def write_figures(res: dict) -> str:
    """The PWLU model's activation plot and alignment-IoU histogram; returns a summary line."""
    from pwlu_mmdet.analysis import write_report_figures

    # tools/train.py dumps the config it ran (with the data root of --cfg-options) into the
    # work dir: the analysis reads the training data through it.
    dumped = osp.join(res['work_dir'], osp.basename(res['config']))
    out = write_report_figures(dumped, res['checkpoint'], res['work_dir'], num_batches=4)
    return (f'{res["act"]}: mean alignment IoU {out["mean_iou"]:.3f}; figures: '
            f'{out["curves"]}, {out["histogram"]} (per-layer numbers: {out["csv"]})')


def format_table(results) -> str:
    """Markdown table of the quick-start results."""
    keys = ('bbox_mAP', 'bbox_mAP_50', 'segm_mAP', 'segm_mAP_50')
    lines = ['| activation | ' + ' | '.join(keys) + ' | train time | test time |',
             '|---|' + '---|' * (len(keys) + 2)]
    for res in results:
        # CocoMetric returns no metrics when the model predicts nothing above score_thr
        values = [f'{res["metrics"]["coco/" + k]:.3f}' if 'coco/' + k in res['metrics'] else 'n/a'
                  for k in keys]
        lines.append(f'| {res["act"]} | ' + ' | '.join(values) +
                     f' | {res["train_time"] / 60:.1f} min | {res["test_time"]:.0f} s |')
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    print(f'[data] synthetic COCO data set in {args.data_root}', flush=True)
    generate_synthetic_coco(args.data_root, num_train=args.num_train, num_val=args.num_val)
    results = [train_and_test(act, args) for act in args.acts]
    table = format_table(results)
    total = time.time() - start
    print(f'\nCOCO AP on the synthetic val split ({args.num_val} images), '
          f'total time {total / 60:.1f} min:\n{table}', flush=True)
    with open(osp.join(args.work_dir, 'results.md'), 'w') as f:
        f.write(table + '\n')
    if not args.no_figures:
        for res in results:
            if res['act'] == 'PWLU':
                print(write_figures(res), flush=True)
    for res in results:
        ap50 = res['metrics'].get('coco/bbox_mAP_50', 0.)
        if res['act'] == 'PWLU' and ap50 < args.min_ap50:
            raise SystemExit(f'PWLU bbox mAP_50 {ap50:.3f} < {args.min_ap50}: the model did not '
                             'learn enough')
    return results


if __name__ == '__main__':
    main()
