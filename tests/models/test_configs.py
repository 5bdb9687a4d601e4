"""The shipped configs: they build, follow the paper's setting and switch activation by one key."""
import glob
import os.path as osp

import pytest
from helpers import ROOT, load_script
from torch import nn

pytest.importorskip('mmdet')

from mmdet.registry import MODELS  # noqa: E402
from mmdet.utils import register_all_modules  # noqa: E402
from mmengine.config import Config  # noqa: E402

import pwlu_mmdet.models  # noqa: E402,F401
from pwlu_mmdet import PWLU  # noqa: E402

register_all_modules()

CONFIGS = sorted(
    f for f in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'), recursive=True)
    if '_base_' not in f)
PAPER = [f for f in CONFIGS if f.endswith('_3x_coco.py')]


def act_counts(model):
    counts = {}
    for m in model.modules():
        name = type(m).__name__
        if name in ('ReLU', 'Swish', 'PWLU', 'SiLU', 'FReLU', 'ChannelPReLU', 'PReLU', 'APL',
                    'PAU'):
            counts[name] = counts.get(name, 0) + 1
    return counts


def test_config_list():
    names = {osp.basename(f) for f in CONFIGS}
    for det in ('mask-rcnn', 'retinanet'):
        for act in ('relu', 'swish', 'frelu', 'pwlu'):
            assert f'{det}_r50-scratch_fpn_gn-all-{act}_3x_coco.py' in names
    assert 'mask-rcnn_r18-tiny_fpn_gn-all-pwlu_synthetic.py' in names
    assert len(PAPER) == 8


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: osp.basename(p)[:-3])
def test_config_builds(path):
    cfg = Config.fromfile(path)
    assert cfg.custom_imports.imports == ['pwlu_mmdet.models']
    model = MODELS.build(cfg.model)
    act = cfg.model.act_cfg.type
    counts = act_counts(model)
    assert list(counts) == [act]
    if '_3x_coco' in path:
        assert counts[act] == (60 if 'mask-rcnn' in path else 57)
    # the hook and the optimizer constructor that PWLU needs are in every config
    assert [h.type for h in cfg.custom_hooks] == ['PWLUHook']
    assert cfg.optim_wrapper.constructor == 'PWLUOptimWrapperConstructor'


@pytest.mark.parametrize('path', PAPER, ids=lambda p: osp.basename(p)[:-3])
def test_paper_setting(path):
    cfg = Config.fromfile(path)
    assert cfg.train_cfg.type == 'IterBasedTrainLoop' and cfg.train_cfg.max_iters == 270000
    warmup, steps = cfg.param_scheduler
    assert warmup.type == 'LinearLR' and not warmup.by_epoch
    assert steps.type == 'MultiStepLR' and not steps.by_epoch
    assert steps.milestones == [210000, 250000] and steps.gamma == 0.1
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.momentum, opt.weight_decay) == ('SGD', 0.02, 0.9, 1e-4)
    assert cfg.optim_wrapper.paramwise_cfg.norm_decay_mult == 0
    assert cfg.optim_wrapper.paramwise_cfg.pwlu_decay_mult == 0
    assert cfg.auto_scale_lr == dict(enable=True, base_batch_size=16)
    assert cfg.train_dataloader.batch_size == 2  # x 8 GPUs = 16 images per iteration
    resize = [t for t in cfg.train_dataloader.dataset.pipeline if t.type == 'Resize'][0]
    assert min(resize.scale) == 800
    assert cfg.train_dataloader.dataset.ann_file.endswith('instances_train2017.json')
    assert cfg.val_dataloader.dataset.ann_file.endswith('instances_val2017.json')
    # 5 epochs of the 117266 train2017 images with annotations, at 16 images per iteration
    assert cfg.custom_hooks[0].realign_iter == 36646
    # from scratch, GroupNorm everywhere
    assert cfg.model.backbone.init_cfg is None and cfg.get('load_from') is None
    model = MODELS.build(cfg.model)
    norm_types = (nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
    norms = [m for m in model.modules() if isinstance(m, norm_types)]
    assert norms and all(isinstance(m, nn.GroupNorm) for m in norms)
    assert len(norms) >= (53 + 5 + 4 if 'mask-rcnn' in path else 53 + 8 + 8)


@pytest.mark.parametrize('det', ['mask-rcnn', 'retinanet', 'mask-rcnn_r18-tiny'])
def test_variants_differ_only_in_activation(det):
    if det.endswith('tiny'):
        paths = [osp.join(ROOT, 'configs', 'synthetic',
                          f'mask-rcnn_r18-tiny_fpn_gn-all-{a}_synthetic.py')
                 for a in ('relu', 'pwlu')]
    else:
        paths = [p for p in PAPER if osp.basename(p).startswith(det + '_')]
    dicts = []
    for path in paths:
        cfg = Config.fromfile(path).to_dict()
        cfg['model'].pop('act_cfg')
        dicts.append(cfg)
    assert len(dicts) >= 2 and all(d == dicts[0] for d in dicts)


@pytest.mark.parametrize('target, count', [('Swish', 60), ('ReLU', 60), ('PWLU', 60),
                                           ('FReLU', 60), ('ChannelPReLU', 60), ('APL', 60),
                                           ('PAU', 60)])
def test_act_switch_from_cfg_options(target, count):
    """`tools/train.py CONFIG --cfg-options model.act_cfg.type=X` switches every site."""
    train = load_script('tools/train.py')
    for source in ('relu', 'pwlu'):
        config = osp.join(ROOT, 'configs', 'mask_rcnn',
                          f'mask-rcnn_r50-scratch_fpn_gn-all-{source}_3x_coco.py')
        args = train.parse_args([config, '--work-dir', '/tmp/unused',
                                 '--cfg-options', f'model.act_cfg.type={target}'])
        cfg = train.build_cfg(args)
        assert act_counts(MODELS.build(cfg.model)) == {target: count}


def test_act_switch_with_pwlu_options_from_cfg_options():
    train = load_script('tools/train.py')
    config = osp.join(ROOT, 'configs', 'mask_rcnn',
                      'mask-rcnn_r50-scratch_fpn_gn-all-relu_3x_coco.py')
    args = train.parse_args([config, '--cfg-options', 'model.act_cfg.type=PWLU',
                             'model.act_cfg.num_intervals=8', 'model.act_cfg.mode=layer'])
    model = MODELS.build(train.build_cfg(args).model)
    layers = [m for m in model.modules() if isinstance(m, PWLU)]
    assert len(layers) == 60
    assert all(m.num_intervals == 8 and m.mode == 'layer' for m in layers)


@pytest.mark.parametrize('det, sites', [('mask_rcnn/mask-rcnn', 60), ('retinanet/retinanet', 57)])
def test_frelu_configs(det, sites):
    """Table 3's F-ReLU row: a funnel unit at every site (the box head's fc sites included, as
    1 x 1 funnels), GroupNorm in every funnel condition, no ReLU module left."""
    from pwlu_mmdet.layers import FReLU
    cfg = Config.fromfile(
        osp.join(ROOT, 'configs', f'{det}_r50-scratch_fpn_gn-all-frelu_3x_coco.py'))
    model = MODELS.build(cfg.model)
    frelus = [m for m in model.modules() if isinstance(m, FReLU)]
    assert len(frelus) == sites and act_counts(model) == {'FReLU': sites}
    assert not [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.SiLU, PWLU))]
    assert all(m.flat_input == 'funnel' and isinstance(m.norm, nn.GroupNorm)
               and m.norm.num_groups == 32 for m in frelus)
    if sites == 60:
        fc_sites = model.roi_head.bbox_head.shared_fc_acts
        assert len(fc_sites) == 1 and isinstance(fc_sites[0], FReLU)
