# Copyright (c) OpenMMLab. All rights reserved. Adapted for pwlu-mmdet.
"""Test (and evaluate) a detector: MMDetection's ``tools/test.py`` with the pwlu-mmdet plugin
registered. With a COCO evaluator (``CocoMetric``) it prints COCO bbox (and segm) AP computed by
pycocotools; ``--metrics-out`` also writes the metrics as JSON (input of
``tools/analysis/table3.py``).

Example::

    python tools/test.py CONFIG work_dirs/NAME/iter_270000.pth --metrics-out results.json
"""
import argparse
import json
import os
import os.path as osp
import warnings
from copy import deepcopy

from mmdet.engine.hooks.utils import trigger_visualization_hook
from mmdet.evaluation import DumpDetResults
from mmdet.utils import setup_cache_size_limit_of_dynamo
from mmengine import ConfigDict
from mmengine.config import Config

# Registers the Act* components, the activation layers, PWLUHook and the optimizer constructor,
# and lets mmengine load its checkpoints under torch >= 2.6 (resume, test): see pwlu_mmdet.engine.
import pwlu_mmdet.models  # noqa: F401
from pwlu_mmdet.apis import add_common_args, build_runner, load_config
from pwlu_mmdet.utils.dist import destroy_process_group


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='MMDet test (and eval) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--work-dir', help='the directory to save the file containing evaluation metrics')
    parser.add_argument(
        '--out', type=str, help='dump predictions to a pickle file for offline evaluation')
    parser.add_argument(
        '--metrics-out', type=str, help='write the evaluation metrics to this JSON file')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument(
        '--show-dir',
        help='directory where painted images will be saved. If specified, it will be '
        'automatically saved to the work_dir/timestamp/show_dir')
    parser.add_argument(
        '--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument('--tta', action='store_true')
    add_common_args(parser)
    return parser.parse_args(argv)


def _enable_tta(cfg):
    if 'tta_model' not in cfg:
        warnings.warn('Cannot find ``tta_model`` in config, we will set it as default.')
        cfg.tta_model = dict(
            type='DetTTAModel',
            tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
    if 'tta_pipeline' not in cfg:
        warnings.warn('Cannot find ``tta_pipeline`` in config, we will set it as default.')
        test_data_cfg = cfg.test_dataloader.dataset
        while 'dataset' in test_data_cfg:
            test_data_cfg = test_data_cfg['dataset']
        cfg.tta_pipeline = deepcopy(test_data_cfg.pipeline)
        flip_tta = dict(
            type='TestTimeAug',
            transforms=[
                [dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)],
                [
                    dict(
                        type='PackDetInputs',
                        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                   'scale_factor', 'flip', 'flip_direction'))
                ],
            ])
        cfg.tta_pipeline[-1] = flip_tta
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline


def build_cfg(args) -> Config:
    cfg = load_config(args)
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        cfg = trigger_visualization_hook(cfg, args)
    if args.tta:
        _enable_tta(cfg)
    return cfg


def main(argv=None):
    args = parse_args(argv)
    # Reduce the number of repeated compilations and improve testing speed.
    setup_cache_size_limit_of_dynamo()
    runner = build_runner(build_cfg(args))

    if args.out is not None:
        assert args.out.endswith(('.pkl', '.pickle')), 'The dump file must be a pkl file.'
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))

    metrics = runner.test()
    if args.metrics_out and runner.rank == 0:
        os.makedirs(osp.dirname(osp.abspath(args.metrics_out)), exist_ok=True)
        with open(args.metrics_out, 'w') as f:
            json.dump(dict(config=args.config, checkpoint=args.checkpoint, metrics=metrics), f,
                      indent=2)
    del runner
    destroy_process_group()  # the runner is gone: end torch.distributed before the exit
    return metrics


if __name__ == '__main__':
    main()
