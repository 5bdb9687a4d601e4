"""What the trace forward of :func:`convert_activations` runs, and the state it leaves alone."""
import contextlib
from typing import Callable, List, Tuple

import torch
from torch import nn

__all__ = ['detector_runs', 'input_runs', 'untouched']

Run = Tuple[str, Callable[[], object]]
# The RoI heads' sites do not depend on how many proposals they see; a few keep the trace of a
# cascade's mask heads (1000 RoIs per stage by default) from taking seconds.
_TRACE_PROPOSALS = 8
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
             _few_proposals(model, lambda i=images, s=samples: model._forward(i, s))),
            (f'predict at {side} px',
             _few_proposals(model, lambda i=images, s=samples: model.predict(i, s))),
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


def _few_proposals(model: nn.Module, run: Callable[[], object]) -> Callable[[], object]:
    rpn_cfg = getattr(getattr(model, 'rpn_head', None), 'test_cfg', None)
    if not isinstance(rpn_cfg, dict) or 'max_per_img' not in rpn_cfg:
        return run

    def limited():
        saved = rpn_cfg['max_per_img']
        rpn_cfg['max_per_img'] = _TRACE_PROPOSALS
        try:
            return run()
        finally:
            rpn_cfg['max_per_img'] = saved

    return limited


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
