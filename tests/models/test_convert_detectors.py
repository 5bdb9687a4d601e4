"""convert_activations on stock mmdet 3.3 detectors, built from the configs in the mmdet package.

Per family: the site count; the stock activation converted into per-site modules keeps the
state_dict keys and the outputs bit-identical; PWLU loads the stock weights with only its own
keys missing and, in phase I, gives the stock ReLU model's outputs to the bit; after conversion
no activation runs outside the new layers but the kept ones; one training step on CPU with
small images in phase I and one in phase II. A few converted families under ``torch.compile``.
"""
import os.path as osp

import pytest
import torch

pytest.importorskip('mmdet')

import mmdet  # noqa: E402
from mmdet.models.detectors import CondInst  # noqa: E402
from mmdet.registry import MODELS  # noqa: E402
from mmdet.testing import demo_mm_inputs  # noqa: E402
from mmdet.utils import register_all_modules  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.registry import DefaultScope  # noqa: E402

import pwlu_mmdet.models  # noqa: E402,F401
from pwlu_mmdet.layers import PWLU, find_pwlu_layers, realign_model  # noqa: E402
from pwlu_mmdet.models import convert_activations  # noqa: E402
from pwlu_mmdet.models.conversion.sites import trace_activations  # noqa: E402

register_all_modules(init_default_scope=False)
MMDET_CONFIGS = osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs')

# config, sites, of which converted (the others: frozen stages; RetinaNet-style heads also have
# one module that is never called), and whether every site is a ReLU (phase I == stock).
FAMILIES = {
    'faster-rcnn_r50': ('faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', 52, 42, True),
    'cascade-mask-rcnn_r50': ('cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py', 71, 61, True),
    'retinanet_r50': ('retinanet/retinanet_r50_fpn_1x_coco.py', 57, 47, True),
    'fcos_r50': ('fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py', 58, 48, True),
    'atss_r50': ('atss/atss_r50_fpn_1x_coco.py', 57, 47, True),
    'gfl_r50': ('gfl/gfl_r50_fpn_1x_coco.py', 57, 47, True),
    'yolox-s': ('yolox/yolox_s_8xb8-300e_coco.py', 74, 74, False),
    'rtmdet-s': ('rtmdet/rtmdet_s_8xb32-300e_coco.py', 82, 82, False),
    'detr_r50': ('detr/detr_r50_8xb2-150e_coco.py', 63, 53, True),
    'deformable-detr_r50': ('deformable_detr/deformable-detr_r50_16xb2-50e_coco.py', 63, 53,
                            True),
    'mask2former_r50': ('mask2former/mask2former_r50_8xb2-lsj-50e_coco.py', 67, 67, True),
    'mask2former_swin-t': ('mask2former/mask2former_swin-t-p4-w7-224_8xb2-lsj-50e_coco.py', 30,
                           30, False),
    'faster-rcnn_x101-32x4d': ('faster_rcnn/faster-rcnn_x101-32x4d_fpn_1x_coco.py', 103, 93,
                               True),
    'faster-rcnn_regnetx-3.2gf': ('regnet/faster-rcnn_regnetx-3.2GF_fpn_1x_coco.py', 79, 72, True),
    'faster-rcnn_hrnetv2p-w32': ('hrnet/faster-rcnn_hrnetv2p-w32-1x_coco.py', 271, 271, True),
    'mask-rcnn_swin-t': ('swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py', 20, 20, False),
    # Its mask features' activation feeds only the dynamic convs of post-processing (predict).
    'solov2_r50': ('solov2/solov2_r50_fpn_1x_coco.py', 65, 55, True),
    # Kept: output clamps, the box distances (FSAF: 1, and 10 frozen; RTMDet-Ins: 3, one per
    # level), and the activations between the per-instance dynamic convs of the mask heads
    # (RTMDet-Ins: 2; CondInst: 2, and 10 frozen; its tensor mode needs ground truth).
    'fsaf_r50': ('fsaf/fsaf_r50_fpn_1x_coco.py', 58, 47, True),
    'rtmdet-ins-s': ('rtmdet/rtmdet-ins_s_8xb32-300e_coco.py', 91, 86, False),
    'condinst_r50': ('condinst/condinst_r50_fpn_ms-poly-90k_coco_instance.py', 67, 55, True),
    # Traced at 4x and 8x the 64 px image (DINO picks 900 queries among the tokens; SSD's last
    # convs need 300 px).
    'dino-4scale_r50': ('dino/dino-4scale_r50_8xb2-12e_coco.py', 76, 66, True),
    'ssd300': ('ssd/ssd300_coco.py', 23, 23, True),
}
# Image side of the tests' forwards, where 64 px is too small.
SIZES = {'dino-4scale_r50': 256, 'ssd300': 320}
INSTANCE_SEGMENTATION = ('mask', 'solo', 'rtmdet-ins', 'condinst')
SIZE = 64


def few_rois(cfg):
    """Caps proposal and sample counts: the tests check sites and steps, not accuracy."""
    if isinstance(cfg, list):
        for item in cfg:
            few_rois(item)
    elif isinstance(cfg, dict):
        for key, value in cfg.items():
            if key in ('max_per_img', 'nms_pre') and isinstance(value, int):
                cfg[key] = min(value, 64)
            elif key == 'sampler' and isinstance(value.get('num'), int):
                value['num'] = min(value['num'], 32)
            else:
                few_rois(value)


def build(config):
    model = Config.fromfile(osp.join(MMDET_CONFIGS, config)).model
    few_rois(model.get('train_cfg'))
    few_rois(model.get('test_cfg'))
    model.backbone.init_cfg = None  # no pre-trained weights to download
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(model)
        # Some parameters are torch.Tensor(n), uninitialised memory, until init_weights (DINO's
        # level embeddings, SSD's L2Norm): the same model twice must be the same weights.
        model.init_weights()
    return model


def eval_batch(model, size=SIZE):
    packed = demo_mm_inputs(1, [(3, size, size)], num_items=[1])
    torch.manual_seed(1)
    packed['inputs'] = [torch.randint(0, 256, (3, size, size), dtype=torch.uint8)]
    return model.data_preprocessor(packed, False)


def eval_forward(model, data):
    """Tensor mode, or ``predict`` for a detector whose tensor mode needs ground truth."""
    if isinstance(model, CondInst):
        return model.predict(data['inputs'], data['data_samples'])
    return model._forward(data['inputs'], data['data_samples'])


def tensor_outputs(model, size=SIZE):
    """Every tensor of one eval forward (:func:`eval_forward`) on a fixed image."""
    data = eval_batch(model, size)
    model.eval()
    with torch.no_grad():
        out = eval_forward(model, data)
    flat = []

    def collect(obj):
        if isinstance(obj, torch.Tensor):
            flat.append(obj)
        elif isinstance(obj, (list, tuple)):
            for item in obj:
                collect(item)
        elif isinstance(obj, dict):
            for item in obj.values():
                collect(item)

        elif hasattr(obj, 'all_items'):  # predict's DetDataSample and InstanceData
            for _, item in sorted(obj.all_items(), key=lambda kv: kv[0]):
                collect(item)

    collect(out)
    return flat


def train_step(model, with_mask, size=SIZE):
    packed = demo_mm_inputs(1, [(3, size, size)], num_items=[2], num_classes=80,
                            with_mask=with_mask)
    model.train()
    # training=False: no batch augments (YOLOX's would resize to hundreds of pixels).
    data = model.data_preprocessor(packed, False)
    losses = model(**data, mode='loss')
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    model.zero_grad()
    loss.backward()


def kept_sources(report):
    return {e.source for e in report if e.action != 'converted'}


@pytest.mark.slow
@pytest.mark.parametrize('family', list(FAMILIES))
def test_stock_detector(family):
    config, num_sites, num_converted, all_relu = FAMILIES[family]
    size = SIZES.get(family, SIZE)
    stock = build(config)
    expected = tensor_outputs(stock, size)

    same = build(config)
    report = convert_activations(same, None)
    assert (len(report), len(report.converted)) == (num_sites, num_converted), str(report)
    assert list(same.state_dict()) == list(stock.state_dict())
    got = tensor_outputs(same, size)
    assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected))

    model = build(config)
    report = convert_activations(model, dict(type='PWLU'))
    # A module that the model holds at several paths (DETR heads shared by the decoder layers)
    # is one site: its layer is shared the same way.
    layers = {n: m for n, m in model.named_modules(remove_duplicate=False) if isinstance(m, PWLU)}
    first_paths = {}
    for name, layer in layers.items():
        first_paths.setdefault(id(layer), name)
    assert sorted(first_paths.values()) == sorted(e.path for e in report.converted)
    assert len({id(layers[e.path]) for e in report.converted}) == len(report.converted)
    for entry in report.converted:
        layer = layers[entry.path]
        assert (layer.num_channels, layer.channel_axis) == (entry.channels, entry.channel_axis)
    missing, unexpected = model.load_state_dict(stock.state_dict(), strict=False)
    assert not unexpected
    assert {k.rsplit('.', 1)[0] for k in missing} == set(layers)
    if all_relu:
        got = tensor_outputs(model, size)
        assert all(torch.equal(a, b) for a, b in zip(got, expected))
    # Only the kept sites (frozen stages, output clamps) still run a stock activation.
    model.eval()
    data = eval_batch(model, size)
    calls, _ = trace_activations(model, lambda: eval_forward(model, data))
    assert {f'{c.code.co_filename}:{c.position[0]}' for c in calls} <= kept_sources(report)

    with_mask = any(key in config for key in INSTANCE_SEGMENTATION)
    train_step(model, with_mask, size)  # phase I: ReLU with statistics
    realign_model(model)
    train_step(model, with_mask, size)  # phase II: the op at every site, channels-last included
    grads = [m.points.grad for m in layers.values()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


# torch.compile with the aot_eager backend: dynamo's trace and AOTAutograd's joint graph through
# the op's fake kernels and registered autograd, without inductor's code generation (minutes on
# a 2-core CPU, and the op's own compiled tests are in tests/ops).
# A rewritten Bottleneck with a shared ReLU (ResNet), SiLU modules in CSP blocks (YOLOX), and
# token sites with channel_axis=-1 (Swin).
COMPILED_FAMILIES = ['faster-rcnn_r50', 'yolox-s', 'mask-rcnn_swin-t']
STATE = ('running_mean', 'running_std', 'channel_batches_tracked')


def _features(model, images):
    return list(model.extract_feat(images))


def _step(fn, model, images):
    """Sum of the features' means, backward; returns the outputs and every PWLU gradient."""
    model.zero_grad()
    torch.manual_seed(3)  # the same drop paths (Swin) in both runs
    images = images.clone().requires_grad_(True)
    feats = fn(images)
    sum(f.float().mean() for f in feats).backward()
    grads = [m.points.grad for _, m in find_pwlu_layers(model)]
    return [f.detach() for f in feats], grads, images.grad


def _phase_one_state(model):
    return [getattr(m, name).clone() for _, m in find_pwlu_layers(model) for name in STATE]


@pytest.mark.slow
@pytest.mark.parametrize('family', COMPILED_FAMILIES)
def test_converted_detector_compiles_fullgraph(family):
    torch._dynamo.reset()
    model = build(FAMILIES[family][0])
    convert_activations(model, dict(type='PWLU'))
    model.train()
    torch.manual_seed(2)
    images = torch.randn(2, 3, SIZE, SIZE)
    compiled = torch.compile(lambda x: _features(model, x), backend='aot_eager', fullgraph=True)

    # Phase I: ReLU forward; the statistics each layer collects are the eager ones.
    eager_model_state = {k: v.clone() for k, v in model.state_dict().items()}
    eager, _, eager_grad = _step(lambda x: _features(model, x), model, images)
    eager_state = _phase_one_state(model)
    model.load_state_dict(eager_model_state)
    got, _, got_grad = _step(compiled, model, images)
    assert len(got) == len(eager)
    for a, b in zip(got, eager):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(got_grad, eager_grad)
    for a, b in zip(_phase_one_state(model), eager_state):
        torch.testing.assert_close(a, b)
    assert any(m.channel_batches_tracked.sum() > 0 for _, m in find_pwlu_layers(model))

    # Phase II: the op at every site, its gradients through the registered autograd.
    realign_model(model)
    torch._dynamo.reset()  # the phase is a Python attribute of each layer: a new graph
    eager, eager_points, eager_grad = _step(lambda x: _features(model, x), model, images)
    got, got_points, got_grad = _step(compiled, model, images)
    for a, b in zip(got, eager):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(got_grad, eager_grad)
    # The backbone's and neck's layers have gradients (the heads' are not run).
    assert [g is None for g in got_points] == [g is None for g in eager_points]
    assert any(g is not None for g in got_points)
    for a, b in zip(got_points, eager_points):
        if b is not None:
            torch.testing.assert_close(a, b)
    assert any(isinstance(m, PWLU) for m in model.modules())
