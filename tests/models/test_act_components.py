"""The mmdet components with one activation module per site (pwlu_mmdet.models)."""
import copy
import os.path as osp
import warnings

import pytest
import torch
from helpers import ROOT
from torch import nn

pytest.importorskip('mmdet')

from mmdet.registry import MODELS  # noqa: E402
from mmdet.testing import demo_mm_inputs  # noqa: E402
from mmdet.utils import register_all_modules  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import pwlu_mmdet.models  # noqa: E402,F401
from pwlu_mmdet import PWLU  # noqa: E402
from pwlu_mmdet.engine import realign_model  # noqa: E402
from pwlu_mmdet.layers import TORCH_ACTIVATIONS  # noqa: E402
from pwlu_mmdet.models import spread_act_cfg  # noqa: E402

register_all_modules()


@pytest.fixture(autouse=True)
def mmdet_scope():
    """Build in mmdet's scope whatever default scope earlier tests (e.g. an mmengine Runner)
    left behind; the previous scopes are restored afterwards."""
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmdet'):
        yield


MASK_RCNN = osp.join(ROOT, 'configs', 'mask_rcnn', 'mask-rcnn_r50-scratch_fpn_gn-all-{}_3x_coco.py')
RETINANET = osp.join(ROOT, 'configs', 'retinanet', 'retinanet_r50-scratch_fpn_gn-all-{}_3x_coco.py')
ACTS = ('relu', 'swish', 'pwlu')
ACT_TYPES = dict(relu=nn.ReLU, pwlu=PWLU)


def _act_type(act):
    if act == 'swish':
        from mmcv.cnn.bricks import Swish
        return Swish
    return ACT_TYPES[act]


def resnet_sites(depth, base=64, prefix='backbone.'):
    """{site name: channels} of a ResNet, derived from the architecture, not from the code."""
    blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    bottleneck = depth >= 50
    sites = {prefix + 'act1': base}
    for stage, num in enumerate(blocks):
        planes = base * 2**stage
        for b in range(num):
            name = f'{prefix}layer{stage + 1}.{b}.'
            sites[name + 'act1'] = planes
            if bottleneck:
                sites[name + 'act2'] = planes
                sites[name + 'act3'] = planes * 4
            else:
                sites[name + 'act2'] = planes
    return sites


def mask_rcnn_sites():
    sites = resnet_sites(50)
    sites['rpn_head.rpn_act'] = 256
    for k in range(4):
        sites[f'roi_head.bbox_head.shared_convs.{k}.activate'] = 256
        sites[f'roi_head.mask_head.convs.{k}.activate'] = 256
    sites['roi_head.bbox_head.shared_fc_acts.0'] = 1024
    sites['roi_head.mask_head.upsample_act'] = 256
    return sites


def retinanet_sites():
    sites = resnet_sites(50)
    for k in range(4):
        sites[f'bbox_head.cls_convs.{k}.activate'] = 256
        sites[f'bbox_head.reg_convs.{k}.activate'] = 256
    return sites


def small_cfg(path):
    """The paper config with few RoIs, so that a CPU step takes a second."""
    cfg = Config.fromfile(path)
    if 'roi_head' in cfg.model:
        cfg.model.train_cfg.rpn_proposal.update(nms_pre=200, max_per_img=32)
        cfg.model.train_cfg.rcnn.sampler.num = 16
        cfg.model.test_cfg.rpn.update(nms_pre=200, max_per_img=16)
    return cfg


def pwlu_sites(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, PWLU)}


class OpRecorder(TorchDispatchMode):
    """Records the name of every aten/custom op that runs."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.name())
        return func(*args, **(kwargs or {}))


def relu_ops(ops):
    return [op for op in ops if 'relu' in op.lower() or 'threshold' in op.lower()]


def batch(model, num_classes=80, size=64, with_mask=True):
    packed = demo_mm_inputs(1, [(3, size, size)], num_items=[2], num_classes=num_classes,
                            with_mask=with_mask)
    return model.data_preprocessor(packed, True)


def loss_backward(model, data):
    losses = model(**data, mode='loss')
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    model.zero_grad()
    loss.backward()
    return loss


@pytest.mark.parametrize('path, expected', [(MASK_RCNN, mask_rcnn_sites),
                                            (RETINANET, retinanet_sites)],
                         ids=['mask-rcnn', 'retinanet'])
def test_pwlu_sites_and_channels(path, expected):
    model = MODELS.build(Config.fromfile(path.format('pwlu')).model)
    sites = pwlu_sites(model)
    want = expected()
    assert len(want) == (60 if 'mask' in path else 57)
    assert {name: m.num_channels for name, m in sites.items()} == want
    assert all(m.mode == 'channel' and m.num_intervals == 16 for m in sites.values())
    assert not [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    # every site is its own module (no module shared between two sites)
    assert len({id(m) for m in sites.values()}) == len(sites)


@pytest.mark.parametrize('act', ACTS)
@pytest.mark.parametrize('path', [MASK_RCNN, RETINANET], ids=['mask-rcnn', 'retinanet'])
def test_forward_backward_each_activation(path, act):
    """Loss, backward and predict on CPU; with PWLU (after the phase switch) no ReLU runs."""
    torch.manual_seed(0)
    model = MODELS.build(small_cfg(path.format(act)).model)
    model.train()
    num_sites = 60 if path == MASK_RCNN else 57
    act_modules = [m for m in model.modules() if type(m) is _act_type(act)]
    assert len(act_modules) == num_sites
    data = batch(model, with_mask=path == MASK_RCNN)
    with OpRecorder() as rec:
        loss_backward(model, data)
    assert model.backbone.conv1.weight.grad.abs().sum() > 0
    # ReLU sites run ReLU ops, and so does PWLU in phase I (it is ReLU then): the recorder
    # sees them, so the check below can fail.
    assert bool(relu_ops(rec.ops)) == (act != 'swish')
    if act == 'pwlu':
        # phase I: PWLU parameters are frozen; after realignment they are trained
        assert all(p.grad is None for m in act_modules for p in m.parameters())
        realign_model(model)
        with OpRecorder() as rec:
            loss_backward(model, data)
            model.eval()
            with torch.no_grad():
                model(**data, mode='predict')
        assert any('pwlu' in op for op in rec.ops)
        assert relu_ops(rec.ops) == []
        for m in act_modules:
            assert all(p.grad is not None for p in m.parameters())
        assert sum(m.points.grad.abs().sum() for m in act_modules) > 0
    model.eval()
    with torch.no_grad():
        results = model(**data, mode='predict')
    assert len(results) == 1 and 'bboxes' in results[0].pred_instances


def test_inplace_pwlu_inference_predicts_the_same():
    """In phase-II inference the sites that mmdet runs as ReLU(inplace=True) run pwlu_ in
    place; the detector's predictions are identical to those of out-of-place PWLU."""
    torch.manual_seed(0)
    cfg = small_cfg(MASK_RCNN.format('pwlu'))
    cfg.model.test_cfg.rcnn.score_thr = 0.0  # an untrained model: keep every box
    model = MODELS.build(cfg.model)
    model.train()
    data = batch(model)
    with torch.no_grad():
        model(**data, mode='loss')  # phase I statistics
    realign_model(model)
    model.eval()
    sites = list(pwlu_sites(model).values())
    assert 0 < sum(m.inplace for m in sites) < len(sites)  # both kinds of sites exist
    with OpRecorder() as rec, torch.no_grad():
        in_place = model(**copy.deepcopy(data), mode='predict')
    assert any(op.startswith('pwlu_mmdet::pwlu_') for op in rec.ops)
    for m in sites:
        m.inplace = False
    with torch.no_grad():
        out_of_place = model(**copy.deepcopy(data), mode='predict')
    assert sum(len(r.pred_instances) for r in in_place) > 0  # something to compare
    for a, b in zip(in_place, out_of_place):
        assert torch.equal(a.pred_instances.bboxes, b.pred_instances.bboxes)
        assert torch.equal(a.pred_instances.scores, b.pred_instances.scores)
        assert torch.equal(a.pred_instances.masks, b.pred_instances.masks)


def test_recorder_sees_mmdet_relus():
    """Control for the recorder: nn.ReLU modules and mmdet's F.relu are recorded."""
    backbone = MODELS.build(dict(type='ResNet', depth=18, base_channels=8))
    head = MODELS.build(dict(type='RPNHead', in_channels=8, feat_channels=8))
    backbone.eval()
    with OpRecorder() as rec, torch.no_grad():
        backbone(torch.randn(1, 3, 32, 32))
        head.forward_single(torch.randn(1, 8, 8, 8))
    assert len(relu_ops(rec.ops)) == 17 + 1


@pytest.mark.parametrize('depth', [18, 34, 50, 101])
def test_resnet_depths(depth):
    backbone = MODELS.build(dict(type='ActResNet', depth=depth, act_cfg=dict(type='PWLU')))
    sites = {n: m.num_channels for n, m in pwlu_sites(backbone).items()}
    assert sites == resnet_sites(depth, prefix='')
    assert not any(isinstance(m, nn.ReLU) for m in backbone.modules())


def test_resnet_deep_stem_and_base_channels():
    backbone = MODELS.build(dict(type='ActResNet', depth=18, base_channels=16, deep_stem=True,
                                 avg_down=True, act_cfg=dict(type='PWLU')))
    sites = {n: m.num_channels for n, m in pwlu_sites(backbone).items()}
    assert {k: v for k, v in sites.items() if k.startswith('stem')} == {
        'stem.2': 8, 'stem.5': 8, 'stem.8': 16}
    assert len(sites) == 3 + 16
    out = backbone(torch.randn(2, 3, 64, 64))
    assert [o.shape[1] for o in out] == [16, 32, 64, 128]


@pytest.mark.parametrize('depth, last_norm', [(18, 'norm2'), (50, 'norm3')])
def test_resnet_zero_init_residual(depth, last_norm):
    backbone = MODELS.build(
        dict(type='ActResNet', depth=depth, base_channels=8, zero_init_residual=True))
    backbone.init_weights()
    for block in backbone.layer1:
        assert getattr(block, last_norm).weight.abs().sum() == 0
    assert backbone.layer1[0].norm1.weight.abs().sum() > 0


def _same_output(ours, theirs, *inputs):
    ours.load_state_dict(theirs.state_dict(), strict=True)
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        a, b = ours(*inputs), theirs(*inputs)
    flat_a, flat_b = _flatten(a), _flatten(b)
    assert len(flat_a) == len(flat_b)
    for x, y in zip(flat_a, flat_b):
        torch.testing.assert_close(x, y)


def _flatten(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _flatten(o)]


def _pair(ours, theirs, **kwargs):
    torch.manual_seed(0)
    ref = MODELS.build(dict(type=theirs, **kwargs))
    return MODELS.build(dict(type=ours, **kwargs)), ref


GN = dict(type='GN', num_groups=4, requires_grad=True)


@pytest.mark.parametrize('kwargs', [
    dict(depth=18),
    dict(depth=50, base_channels=8, norm_cfg=GN),
    dict(depth=18, base_channels=8, deep_stem=True, avg_down=True),
    dict(depth=50, base_channels=8, with_cp=True),
])
def test_resnet_with_relu_equals_mmdet(kwargs):
    ours, ref = _pair('ActResNet', 'ResNet', **kwargs)
    _same_output(ours, ref, torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize('kwargs', [
    dict(num_outs=5),
    dict(num_outs=5, start_level=1, add_extra_convs='on_input', relu_before_extra_convs=True),
    dict(num_outs=5, start_level=1, add_extra_convs='on_output', relu_before_extra_convs=True),
])
def test_fpn_with_relu_equals_mmdet(kwargs):
    ours, ref = _pair('ActFPN', 'FPN', in_channels=[8, 16, 32, 64], out_channels=8, **kwargs)
    feats = [torch.randn(1, c, 32 // 2**i, 32 // 2**i) for i, c in enumerate([8, 16, 32, 64])]
    _same_output(ours, ref, feats)


def test_fpn_sites():
    kwargs = dict(in_channels=[8, 16, 32, 64], out_channels=8, num_outs=6, start_level=1,
                  add_extra_convs='on_input')
    plain = MODELS.build(dict(type='ActFPN', act_cfg=dict(type='PWLU'), **kwargs))
    assert not pwlu_sites(plain)  # mmdet's FPN has no activation: nor does ours by default
    extra = MODELS.build(dict(type='ActFPN', act_cfg=dict(type='PWLU'),
                              relu_before_extra_convs=True, **kwargs))
    assert sorted(pwlu_sites(extra)) == ['extra_acts.0', 'extra_acts.1']
    conv = MODELS.build(dict(type='ActFPN', act_cfg=dict(type='PWLU'), conv_act=True, **kwargs))
    sites = pwlu_sites(conv)
    assert len(sites) == 3 + 3 + 3 and {m.num_channels for m in sites.values()} == {8}
    # conv_act with ReLU is mmdet's FPN(act_cfg=ReLU)
    torch.manual_seed(0)
    ref = MODELS.build(dict(type='FPN', act_cfg=dict(type='ReLU'), **kwargs))
    ours = MODELS.build(dict(type='ActFPN', conv_act=True, **kwargs))
    feats = [torch.randn(1, c, 32 // 2**i, 32 // 2**i) for i, c in enumerate([8, 16, 32, 64])]
    _same_output(ours, ref, feats)


@pytest.mark.parametrize('num_convs', [1, 2])
def test_rpn_head(num_convs):
    ours, ref = _pair('ActRPNHead', 'RPNHead', in_channels=8, feat_channels=16,
                      num_convs=num_convs, anchor_generator=dict(
                          type='AnchorGenerator', scales=[8], ratios=[1.0], strides=[4]))
    _same_output(ours, ref, [torch.randn(1, 8, 16, 16)])
    head = MODELS.build(dict(type='ActRPNHead', in_channels=8, feat_channels=16,
                             num_convs=num_convs, act_cfg=dict(type='PWLU')))
    assert sorted(m.num_channels for m in pwlu_sites(head).values()) == [16] * num_convs


def test_retina_head():
    kwargs = dict(num_classes=3, in_channels=8, feat_channels=16, stacked_convs=2,
                  norm_cfg=GN)
    ours, ref = _pair('ActRetinaHead', 'RetinaHead', **kwargs)
    _same_output(ours, ref, [torch.randn(1, 8, 16, 16), torch.randn(1, 8, 8, 8)])
    head = MODELS.build(dict(type='ActRetinaHead', act_cfg=dict(type='PWLU'), **kwargs))
    assert sorted(pwlu_sites(head)) == [
        'cls_convs.0.activate', 'cls_convs.1.activate', 'reg_convs.0.activate',
        'reg_convs.1.activate']
    assert not any(isinstance(m, nn.ReLU) for m in head.modules())


BBOX = dict(in_channels=8, roi_feat_size=7, num_classes=3, conv_out_channels=16,
            fc_out_channels=32)


@pytest.mark.parametrize('ours, theirs, extra, sites', [
    ('ActShared2FCBBoxHead', 'Shared2FCBBoxHead', {}, [32, 32]),
    ('ActShared4Conv1FCBBoxHead', 'Shared4Conv1FCBBoxHead', dict(norm_cfg=GN),
     [16, 16, 16, 16, 32]),
    ('ActConvFCBBoxHead', 'ConvFCBBoxHead',
     dict(num_shared_convs=1, num_cls_convs=1, num_cls_fcs=1, num_reg_convs=2, num_reg_fcs=1),
     [16, 16, 32, 16, 16, 32]),
    ('ActConvFCBBoxHead', 'ConvFCBBoxHead',
     dict(num_shared_fcs=1, num_cls_fcs=2, num_reg_fcs=0, with_avg_pool=True), [32, 32, 32]),
])
def test_bbox_heads(ours, theirs, extra, sites):
    a, b = _pair(ours, theirs, **BBOX, **extra)
    _same_output(a, b, torch.randn(5, 8, 7, 7))
    head = MODELS.build(dict(type=ours, act_cfg=dict(type='PWLU'), **BBOX, **extra))
    assert sorted(m.num_channels for m in pwlu_sites(head).values()) == sorted(sites)
    assert not any(isinstance(m, nn.ReLU) for m in head.modules())


@pytest.mark.parametrize('upsample, num_sites', [('deconv', 3), ('bilinear', 2)])
def test_mask_head(upsample, num_sites):
    kwargs = dict(num_convs=2, in_channels=8, conv_out_channels=16, num_classes=3,
                  norm_cfg=GN, upsample_cfg=dict(type=upsample, scale_factor=2))
    ours, ref = _pair('ActFCNMaskHead', 'FCNMaskHead', **kwargs)
    _same_output(ours, ref, torch.randn(3, 8, 14, 14))
    head = MODELS.build(dict(type='ActFCNMaskHead', act_cfg=dict(type='PWLU'), **kwargs))
    assert [m.num_channels for m in pwlu_sites(head).values()] == [16] * num_sites


def test_component_act_cfg_overrides_model_act_cfg():
    cfg = Config.fromfile(MASK_RCNN.format('pwlu'))
    cfg.model.backbone.act_cfg = dict(type='ReLU')
    model = MODELS.build(cfg.model)
    assert not any(isinstance(m, PWLU) for m in model.backbone.modules())
    assert sum(isinstance(m, nn.ReLU) for m in model.backbone.modules()) == 49
    assert len(pwlu_sites(model)) == 60 - 49


def test_spread_act_cfg_copies_and_respects_overrides():
    cfg = dict(type='StandardRoIHead',
               bbox_head=dict(type='ActShared2FCBBoxHead', act_cfg=dict(type='Swish')),
               mask_head=dict(type='ActFCNMaskHead'),
               mask_roi_extractor=dict(type='SingleRoIExtractor', roi_layer=dict(type='RoIAlign')))
    before = copy.deepcopy(cfg)
    out = spread_act_cfg(cfg, dict(type='PWLU'))
    assert cfg == before
    assert out['bbox_head']['act_cfg'] == dict(type='Swish')
    assert out['mask_head']['act_cfg'] == dict(type='PWLU')
    assert 'act_cfg' not in out and 'act_cfg' not in out['mask_roi_extractor']


def test_mmdet_component_in_act_detector_warns():
    cfg = Config.fromfile(RETINANET.format('pwlu'))
    cfg.model.backbone.type = 'ResNet'
    with pytest.warns(UserWarning, match='use ActResNet'):
        model = MODELS.build(cfg.model)
    assert len(pwlu_sites(model)) == 8


@pytest.mark.parametrize('act', ['ReLU', 'Swish', 'ChannelPReLU', 'APL', 'PAU', 'FReLU', 'PWLU'])
def test_quickstart_model_trains_one_step(act):
    """One training step of the quick-start model with each comparison activation, selected
    by ``model.act_cfg.type`` alone."""
    torch.manual_seed(0)
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'synthetic',
                                   'mask-rcnn_r18-tiny_fpn_gn-all-relu_synthetic.py'))
    cfg.model.act_cfg = dict(type=act)
    model = MODELS.build(cfg.model)
    model.init_weights()
    sites = [m for m in model.modules() if type(m) is TORCH_ACTIVATIONS.get(act, type(None))]
    if act != 'Swish':  # mmcv's Swish is another class than the torch-only twin
        assert len(sites) == 28  # the quick-start model's sites (ResNet-18: 17, RPN 1, heads 10)
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    packed = demo_mm_inputs(2, [(3, 128, 128)] * 2, num_items=[3, 3], num_classes=4,
                            with_mask=True)
    before = [p.detach().clone() for m in sites for p in m.parameters()]
    model.train()
    with OpRecorder() as rec:
        losses = model.train_step(packed, optim_wrapper)
    assert all(torch.isfinite(v).all() for v in losses.values())
    # The activations' own parameters are in the optimizer and moved (PWLU's are frozen in
    # phase I, before its realignment).
    after = [p.detach() for m in sites for p in m.parameters()]
    if act in ('ChannelPReLU', 'APL', 'PAU', 'FReLU'):
        assert before and any(not torch.equal(a, b) for a, b in zip(before, after))
    # No ReLU runs where the activation is not built from one (PReLU's and APL's ops are).
    assert bool(relu_ops(rec.ops)) == (act in ('ReLU', 'ChannelPReLU', 'APL', 'PWLU'))
    model.eval()
    with torch.no_grad():
        results = model.test_step(packed)
    assert len(results) == 2


ACT_CHECKPOINTS = osp.join(osp.dirname(__file__), 'act_checkpoint_keys.json')
ACT_CONFIGS = {
    'mask-rcnn_r50-scratch_fpn_gn-all-pwlu': MASK_RCNN.format('pwlu'),
    'retinanet_r50-scratch_fpn_gn-all-pwlu': RETINANET.format('pwlu'),
    'mask-rcnn_r18-tiny_fpn_gn-all-pwlu_synthetic': osp.join(
        ROOT, 'configs', 'synthetic', 'mask-rcnn_r18-tiny_fpn_gn-all-pwlu_synthetic.py'),
}


@pytest.mark.parametrize('name', list(ACT_CONFIGS))
def test_checkpoints_of_act_models_load_strict(name):
    """Same state_dict keys and shapes as the Act* models had when they held their own copy
    of mmdet's forward code (recorded in tests/models/act_checkpoint_keys.json)."""
    import hashlib
    import json
    with open(ACT_CHECKPOINTS) as f:
        recorded = json.load(f)[name]
    state = MODELS.build(Config.fromfile(ACT_CONFIGS[name]).model).state_dict()
    lines = sorted(f'{k} {tuple(v.shape)}' for k, v in state.items())
    assert {k[:-len('.points')]: v.shape[0] for k, v in state.items()
            if k.endswith('.points')} == recorded['pwlu_sites']
    assert len(lines) == recorded['num_keys']
    assert hashlib.sha256('\n'.join(lines).encode()).hexdigest() == recorded['sha256']


def test_stock_types_with_act_cfg_build_the_act_model():
    """The quick-start model from mmdet's stock types and ``model.act_cfg``: the same weights
    as ActMaskRCNN under its site names, and the same training loss."""
    models = []
    for act_name in ('pwlu', 'stock-pwlu'):
        torch.manual_seed(0)
        cfg = Config.fromfile(osp.join(ROOT, 'configs', 'synthetic',
                                       f'mask-rcnn_r18-tiny_fpn_gn-all-{act_name}_synthetic.py'))
        model = MODELS.build(cfg.model)
        model.init_weights()
        models.append(model)
    act, stock = models
    assert type(act).__name__ == 'ActMaskRCNN' and type(stock).__name__ == 'MaskRCNN'
    renames = {'backbone.relu.': 'backbone.act1.', 'rpn_head.act1.': 'rpn_head.rpn_act.',
               'bbox_head.act1.': 'bbox_head.shared_fc_acts.',
               'mask_head.relu.': 'mask_head.upsample_act.'}

    def act_name(key):
        for old, new in renames.items():
            key = key.replace(old, new)
        return key

    act_state = act.state_dict()
    stock_state = {act_name(k): v for k, v in stock.state_dict().items()}
    assert stock_state.keys() == act_state.keys()
    assert all(torch.equal(v, act_state[k]) for k, v in stock_state.items())
    packed = demo_mm_inputs(2, [(3, 128, 128)] * 2, num_items=[3, 3], num_classes=4,
                            with_mask=True)
    losses = []
    for model in models:
        torch.manual_seed(1)
        model.train()
        data = model.data_preprocessor(packed, True)
        losses.append(model.parse_losses(model(**data, mode='loss'))[0])
    assert torch.equal(*losses)


def test_pwlu_without_hook_warns_at_the_first_training_forward():
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'synthetic',
                                   'mask-rcnn_r18-tiny_fpn_gn-all-stock-pwlu_synthetic.py'))
    packed = demo_mm_inputs(1, [(3, 64, 64)], num_items=[2], num_classes=4, with_mask=True)
    for with_hook in (False, True):
        model = MODELS.build(cfg.model)
        model.train()
        data = model.data_preprocessor(packed, True)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter('always')
            if with_hook:  # what PWLUHook does around every training iteration
                with pwlu_mmdet.layers.statistics_step(model):
                    model(**data, mode='loss')
            else:
                model(**data, mode='loss')
        messages = [str(w.message) for w in record if 'PWLUHook' in str(w.message)]
        assert bool(messages) != with_hook
        if messages:
            assert messages[0].startswith('28 PWLU layers are training in phase I')
            assert all(w.category is RuntimeWarning for w in record if 'PWLUHook' in str(w.message))


def test_any_model_with_pwlu_layers_gets_the_hook_check():
    """A stock detector whose backbone alone is an Act* component, built by the registry."""
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'synthetic',
                                   'mask-rcnn_r18-tiny_fpn_gn-all-stock-pwlu_synthetic.py'))
    del cfg.model['act_cfg']
    cfg.model.backbone.type = 'ActResNet'
    cfg.model.backbone.act_cfg = dict(type='PWLU')
    model = MODELS.build(cfg.model)
    assert type(model).__name__ == 'MaskRCNN'
    packed = demo_mm_inputs(1, [(3, 64, 64)], num_items=[2], num_classes=4, with_mask=True)
    model.train()
    with pytest.warns(RuntimeWarning, match='17 PWLU layers are training in phase I'):
        model(**model.data_preprocessor(packed, True), mode='loss')
