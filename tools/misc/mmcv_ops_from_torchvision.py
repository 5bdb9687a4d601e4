"""Run a tool with mmcv's compiled detection ops taken from torchvision.

For a machine that has a CUDA torch and torchvision but an mmcv installed without its compiled
ops (``mmcv-lite``, or ``MMCV_WITH_OPS=0``), where building mmcv's CUDA ops is not an option:
mmdet imports ``mmcv.ops`` everywhere, and two-stage detectors call RoIAlign and NMS. This
stands in an ``mmcv._ext`` module whose ``roi_align_forward`` / ``roi_align_backward`` (average
pooling, mmdet's setting) and ``nms`` (offset 0) call torchvision's kernels; every other op of
``mmcv._ext`` raises when called. Meant for benchmarks such as ``benchmarks/bench_model.py``, whose
ratios compare activations on the same model; absolute times include torchvision's RoIAlign and
NMS instead of mmcv's.

Example:
    python tools/misc/mmcv_ops_from_torchvision.py benchmarks/bench_model.py CONFIG --device cuda
"""
import importlib.machinery
import runpy
import sys
import types


def _roi_align_forward(input, rois, output, argmax_y, argmax_x, *, aligned_height,
                       aligned_width, spatial_scale, sampling_ratio, pool_mode, aligned):
    from torchvision.ops import roi_align
    if pool_mode != 1:
        raise NotImplementedError('only average RoIAlign is taken from torchvision')
    output.copy_(roi_align(input, rois, (aligned_height, aligned_width), spatial_scale,
                           sampling_ratio, aligned))


def _roi_align_backward(grad_output, rois, argmax_y, argmax_x, grad_input, *, aligned_height,
                        aligned_width, spatial_scale, sampling_ratio, pool_mode, aligned):
    import torch
    import torchvision  # noqa: F401  (registers torch.ops.torchvision)
    if pool_mode != 1:
        raise NotImplementedError('only average RoIAlign is taken from torchvision')
    n, c, h, w = grad_input.shape
    grad_input.copy_(torch.ops.torchvision._roi_align_backward(
        grad_output, rois, spatial_scale, aligned_height, aligned_width, n, c, h, w,
        sampling_ratio, aligned))


def _nms(bboxes, scores, *, iou_threshold, offset):
    from torchvision.ops import nms
    if offset != 0:
        raise NotImplementedError('torchvision NMS has no box offset')
    return nms(bboxes, scores, iou_threshold)


def _missing(name):
    if name.startswith('__'):  # module protocol look-ups (__path__, __file__, ...)
        raise AttributeError(name)

    def op(*args, **kwargs):
        raise NotImplementedError(f'mmcv._ext.{name} is not available: mmcv was installed '
                                  'without its compiled ops, and only RoIAlign and NMS are '
                                  'taken from torchvision')

    return op


def install() -> None:
    """Registers the stand-in ``mmcv._ext`` (before ``mmcv.ops`` is first imported)."""
    module = types.ModuleType('mmcv._ext')
    module.__spec__ = importlib.machinery.ModuleSpec('mmcv._ext', None)
    module.roi_align_forward = _roi_align_forward
    module.roi_align_backward = _roi_align_backward
    module.nms = _nms
    # load_ext only checks that each name exists; the others fail when called.
    module.__getattr__ = _missing
    sys.modules['mmcv._ext'] = module


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    install()
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    runpy.run_path(script, run_name='__main__')


if __name__ == '__main__':
    main()
