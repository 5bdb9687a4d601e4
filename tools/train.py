# Copyright (c) OpenMMLab. All rights reserved. Adapted for pwlu-mmdet.
"""Train a detector (MMDetection's ``tools/train.py`` with the pwlu-mmdet plugin registered).

Example::

    python tools/train.py configs/mask_rcnn/mask-rcnn_r50-scratch_fpn_gn-all-pwlu_3x_coco.py
    python tools/train.py CONFIG --cfg-options model.act_cfg.type=Swish
    # any mmdet detector, its PWLUHook added (docs/models.md)
    python tools/train.py mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py \
        --cfg-options model.act_cfg.type=PWLU
"""
import argparse

from mmdet.utils import setup_cache_size_limit_of_dynamo
from mmengine.config import Config

# Registers the Act* components, the activation layers, PWLUHook and the optimizer constructor,
# and lets mmengine load its checkpoints under torch >= 2.6 (resume, test): see pwlu_mmdet.engine.
import pwlu_mmdet.models  # noqa: F401
from pwlu_mmdet.apis import add_common_args, add_pwlu_hook, build_runner, load_config
from pwlu_mmdet.utils.dist import destroy_process_group


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a detector')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--amp', action='store_true', default=False,
        help='enable automatic-mixed-precision training')
    parser.add_argument(
        '--auto-scale-lr', action='store_true', help='enable automatically scaling LR.')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='If specify checkpoint path, resume from it, while if not specify, try to auto '
        'resume from the latest checkpoint in the work directory.')
    add_common_args(parser)
    return parser.parse_args(argv)


def build_cfg(args) -> Config:
    cfg = load_config(args)
    add_pwlu_hook(cfg)

    if args.amp is True:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'

    if args.auto_scale_lr:
        if 'auto_scale_lr' in cfg and 'enable' in cfg.auto_scale_lr and \
                'base_batch_size' in cfg.auto_scale_lr:
            cfg.auto_scale_lr.enable = True
        else:
            raise RuntimeError('Can not find "auto_scale_lr" or "auto_scale_lr.enable" or '
                               '"auto_scale_lr.base_batch_size" in your configuration file.')

    # resume is determined in this priority: resume from > auto_resume
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def main(argv=None):
    args = parse_args(argv)
    # Reduce the number of repeated compilations and improve training speed.
    setup_cache_size_limit_of_dynamo()
    build_runner(build_cfg(args)).train()
    destroy_process_group()  # the runner is gone: end torch.distributed before the exit


if __name__ == '__main__':
    main()
