"""tools/train.py and tools/test.py on a detector built from mmdet's stock types whose config
sets ``model.act_cfg``: the hook added for it, two processes, resume, test; a stock mmdet
config switched by one command-line override."""
import argparse
import os.path as osp

import pytest
import torch
from helpers import ROOT, load_script

pytest.importorskip('mmdet')

from test_train_test_tools import (checkpoint_phases, options, run,  # noqa: E402
                                   run_dist)

from pwlu_mmdet.apis import PHASE_ONE_FRACTION, add_pwlu_hook, load_config  # noqa: E402
from pwlu_mmdet.datasets import generate_synthetic_coco  # noqa: E402

STOCK_CONFIG = osp.join(ROOT, 'configs', 'synthetic',
                        'mask-rcnn_r18-tiny_fpn_gn-all-stock-pwlu_synthetic.py')
SITES = 28  # the quick-start model's PWLU layers, as ActMaskRCNN's
train_tool = load_script('tools/train.py')


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('data'))
    generate_synthetic_coco(root, num_train=8, num_val=4)
    return root


def config_args(config, *cfg_options):
    return argparse.Namespace(config=config, cfg_options=dict(
        item.split('=', 1) for item in cfg_options) or None, work_dir=None, launcher='none',
                              local_rank=0)


def test_one_override_switches_a_stock_mmdet_config():
    cfg = load_config(config_args('mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py',
                                  'model.act_cfg.type=PWLU'))
    assert cfg.work_dir.endswith('fcos_r50-caffe_fpn_gn-head_1x_coco')
    add_pwlu_hook(cfg)
    assert cfg.custom_hooks[-1] == dict(type='PWLUHook', realign_epoch=2)  # 12 epochs
    add_pwlu_hook(cfg)
    assert [h['type'] for h in cfg.custom_hooks].count('PWLUHook') == 1
    from mmdet.registry import MODELS
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(cfg.model)
    from pwlu_mmdet import PWLU
    assert sum(isinstance(m, PWLU) for m in model.modules()) == 48


@pytest.mark.parametrize('loop, hook', [
    (dict(type='IterBasedTrainLoop', max_iters=270000), dict(realign_iter=36646)),
    (dict(type='EpochBasedTrainLoop', max_epochs=300), dict(realign_epoch=41)),
    (dict(type='EpochBasedTrainLoop', max_epochs=3), dict(realign_epoch=1)),
])
def test_added_hook_switches_at_the_papers_fraction(loop, hook):
    from mmengine.config import Config
    cfg = Config(dict(model=dict(type='FCOS', act_cfg=dict(type='PWLU')), train_cfg=loop))
    add_pwlu_hook(cfg)
    assert cfg.custom_hooks == [dict(type='PWLUHook', **hook)]
    assert abs(PHASE_ONE_FRACTION * 270000 - 36646) < 1


def test_no_hook_added_for_other_activations():
    from mmengine.config import Config
    for act in (dict(type='ReLU'), None):
        cfg = Config(dict(model=dict(type='FCOS', act_cfg=act), train_cfg=dict(max_iters=10)))
        add_pwlu_hook(cfg)
        assert not cfg.get('custom_hooks')


def test_train_adds_the_hook_then_test(data_root, tmp_path):
    work_dir = str(tmp_path / 'work')
    log = run('train.py', STOCK_CONFIG, '--work-dir', work_dir, *options(data_root, 4),
              'custom_hooks=[]')
    assert "added {'type': 'PWLUHook', 'realign_iter': 1}" in log
    assert f'convert_activations: {SITES} activation sites of MaskRCNN' in log
    assert f'realigned {SITES} PWLU layers at iter 1' in log
    assert all(checkpoint_phases(osp.join(work_dir, 'iter_4.pth')))
    log = run('test.py', STOCK_CONFIG, osp.join(work_dir, 'iter_4.pth'), '--work-dir',
              str(tmp_path / 'test'), *options(data_root, 4))
    assert 'coco/bbox_mAP' in log


@pytest.mark.slow
def test_two_processes_then_resume(data_root, tmp_path):
    work_dir = str(tmp_path / 'work')
    log = run_dist('dist_train.sh', STOCK_CONFIG, '2', '--work-dir', work_dir,
                   *options(data_root, 4))
    assert 'Distributed training: True' in log
    assert log.count(f'realigned {SITES} PWLU layers at iter 2') == 1
    assert all(checkpoint_phases(osp.join(work_dir, 'iter_4.pth')))
    log = run('train.py', STOCK_CONFIG, '--work-dir', str(tmp_path / 'resumed'), '--resume',
              osp.join(work_dir, 'iter_2.pth'), *options(data_root, 4))
    assert 'resumed epoch: 0, iter: 2' in log
    assert f'realigned {SITES} PWLU layers at iter 2' in log
    state = torch.load(str(tmp_path / 'resumed' / 'iter_4.pth'), weights_only=False)
    assert 'rpn_head.act1.points' in state['state_dict']


def test_the_readme_config_lines(tmp_path):
    """The README's config for any detector, as written there, builds the converted model
    and its optimizer (PWLU parameters in groups of their own, without weight decay)."""
    with open(osp.join(ROOT, 'README.md')) as f:
        readme = f.read()
    start = readme.index("```python\n_base_ = 'mmdet::fcos/") + len('```python\n')
    config = tmp_path / 'fcos_pwlu.py'
    config.write_text(readme[start:readme.index('```', start)])
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import MODELS, DefaultScope

    from pwlu_mmdet import PWLU
    cfg = Config.fromfile(str(config))
    assert cfg.custom_hooks[0].type == 'PWLUHook'
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(cfg.model)
        optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    layers = [m for m in model.modules() if isinstance(m, PWLU)]
    assert len(layers) == 48
    pwlu_params = {id(p) for m in layers for p in m.parameters()}
    groups = [g for g in optim_wrapper.optimizer.param_groups
              if any(id(p) in pwlu_params for p in g['params'])]
    assert groups and all(g['weight_decay'] == 0 for g in groups)
    assert all(id(p) in pwlu_params for g in groups for p in g['params'])
