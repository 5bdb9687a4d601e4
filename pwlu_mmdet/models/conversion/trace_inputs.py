"""What the trace forward of :func:`convert_activations` runs, and the state it leaves alone."""
import contextlib
from typing import Callable, List, Tuple

import torch
from torch import nn

__all__ = ['detector_runs', 'input_runs', 'untouched']

Run = Tuple[str, Callable[[], object]]
# Post-processing settings (``test_cfg``) during the trace. Without score thresholds it runs on
# candidates whatever the weights (mmdet's prior-probability init scores every box below 0.05),
# so that what it applies to them is traced (the dynamic mask kernels of CondInst, RTMDet-Ins,
# SOLOv2). The heads' sites do not depend on how many proposals or detections they see; a few
# keep the trace of a cascade's mask heads (1000 RoIs per stage by default) quick.
_TRACE_SETTINGS = {'score_thr': 0., 'filter_thr': 0., 'max_per_img': 8}
# Larger trace images, tried in turn where the first fails: query-based detectors pick their
# top-k queries among the encoder's tokens (DINO: 900, at 4x), SSD's last convs need 300 px.
_LARGER_TRACES = (4, 8)


def detector_runs(model: nn.Module, size: int) -> List[List[Run]]:
    """Ways to run an mmdet detector on a random ``size`` image: mmdet's tensor mode (backbone,
    neck and every head's forward) and ``predict`` (post-processing too, and detectors whose
    tensor mode needs ground truth); then both at a larger size, in case neither works."""
    try:
        from mmdet.models.detectors import BaseDetector
    except ImportError:
        BaseDetector = None
    if BaseDetector is None or not isinstance(model, BaseDetector):
        raise TypeError(
            f'convert_activations: {type(model).__name__} is not an mmdet detector; pass '
            'inputs=(...) (the positional arguments of one forward) to trace it')
    attempts = []
    for side in (size, ) + tuple(size * k for k in _LARGER_TRACES):
        images, samples = _detector_inputs(model, side)
        attempts.append([
            (f'_forward at {side} px',
             _trace_settings(model, lambda i=images, s=samples: model._forward(i, s))),
            (f'predict at {side} px',
             _trace_settings(model, lambda i=images, s=samples: model.predict(i, s))),
        ])
    return attempts


def _detector_inputs(model: nn.Module, size: int):
    from mmdet.structures import DetDataSample
    param = next(model.parameters())
    mean = getattr(getattr(model, 'data_preprocessor', None), 'mean', None)
    channels = len(mean) if mean is not None and mean.dim() > 0 else 3
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(1, channels, size, size, generator=generator).to(param.device)
    images.requires_grad_(True)  # every traced tensor gets an autograd node: see sites.py
    meta = dict(img_id=0, img_path='', ori_shape=(size, size), img_shape=(size, size),
                pad_shape=(size, size), batch_input_shape=(size, size), scale_factor=(1., 1.))
    return images, [DetDataSample(metainfo=meta)]


def _trace_settings(model: nn.Module, run: Callable[[], object]) -> Callable[[], object]:
    """``run`` with the post-processing settings of the trace, restored after."""
    overrides, seen = [], set()  # (config dict, key, value during the trace)
    for module in model.modules():
        _find_settings(getattr(module, 'test_cfg', None), overrides, seen)
    if not overrides:
        return run

    def with_overrides():
        saved = [(cfg, key, cfg[key]) for cfg, key, _ in overrides]
        for cfg, key, value in overrides:
            cfg[key] = value
        try:
            return run()
        finally:
            for cfg, key, value in reversed(saved):
                cfg[key] = value

    return with_overrides


def _find_settings(cfg, overrides: list, seen: set) -> None:
    if not isinstance(cfg, dict) or id(cfg) in seen:
        return
    seen.add(id(cfg))
    for key, value in cfg.items():
        if key in _TRACE_SETTINGS and isinstance(value, (int, float)):
            overrides.append((cfg, key, min(value, _TRACE_SETTINGS[key])))
        else:
            _find_settings(value, overrides, seen)


def input_runs(model: nn.Module, inputs) -> List[List[Run]]:
    """One run: ``model(*inputs)``, its floating-point tensors made to require grad."""
    inputs = inputs if isinstance(inputs, tuple) else (inputs, )

    def with_grad(x):
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            return x.detach().requires_grad_(True)
        if isinstance(x, (list, tuple)):
            return type(x)(with_grad(i) for i in x)
        return x

    inputs = with_grad(inputs)
    return [[('model(*inputs)', lambda: model(*inputs))]]


@contextlib.contextmanager
def untouched(model: nn.Module):
    """Eval mode and grad on inside; every module's mode and the global RNG restored after."""
    modes = [(m, m.training) for m in model.modules()]
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        model.eval()
        try:
            yield
        finally:
            for module, mode in modes:
                module.training = mode
