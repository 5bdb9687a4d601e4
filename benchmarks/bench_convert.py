"""Time of ``convert_activations`` on stock mmdet detectors, with their site counts.

Each config is built from the mmdet package (``mmdet::`` names), then converted to PWLU; the
time is the conversion alone (its trace forward included), the best of ``--repeat`` fresh
builds.

Example:
    python benchmarks/bench_convert.py
    python benchmarks/bench_convert.py mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py
"""
import argparse
import platform
import time

CONFIGS = (
    'faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
    'cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py',
    'retinanet/retinanet_r50_fpn_1x_coco.py',
    'yolox/yolox_s_8xb8-300e_coco.py',
    'detr/detr_r50_8xb2-150e_coco.py',
    'mask2former/mask2former_r50_8xb2-lsj-50e_coco.py',
    'hrnet/faster-rcnn_hrnetv2p-w32-1x_coco.py',
    'swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py',
    'solov2/solov2_r50_fpn_1x_coco.py',
)


def measure(config: str, repeat: int):
    import torch
    from mmengine.hub import get_config
    from mmengine.registry import MODELS, DefaultScope

    from pwlu_mmdet.models import convert_activations
    best, report = float('inf'), None
    for _ in range(repeat):
        torch.manual_seed(0)
        with DefaultScope.overwrite_default_scope('mmdet'):
            model = MODELS.build(get_config(config).model)
        start = time.perf_counter()
        report = convert_activations(model, dict(type='PWLU'))
        best = min(best, time.perf_counter() - start)
    return best, report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('configs', nargs='*', default=[f'mmdet::{c}' for c in CONFIGS])
    parser.add_argument('--repeat', type=int, default=3)
    args = parser.parse_args(argv)
    import torch

    import pwlu_mmdet.models  # noqa: F401  (registers the layers)
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, '
          f'{platform.processor() or platform.machine()}; best of {args.repeat}\n')
    print('| config | sites | converted | convert s |')
    print('|---|---|---|---|')
    for config in args.configs:
        seconds, report = measure(config, args.repeat)
        print(f'| {config.split("::")[-1]} | {len(report)} | {len(report.converted)} | '
              f'{seconds:.2f} |', flush=True)


if __name__ == '__main__':
    main()
