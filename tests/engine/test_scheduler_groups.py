"""PWLU param groups added to an optimizer after its schedulers were built (stock
``optim_wrapper`` configs) follow the schedule as if they had been there from the start."""
import pytest
import torch
from torch import nn

pytest.importorskip('mmengine')

from mmengine.optim import OptimWrapper  # noqa: E402
from mmengine.registry import PARAM_SCHEDULERS  # noqa: E402

from pwlu_mmdet import PWLU  # noqa: E402
from pwlu_mmdet.engine import add_pwlu_param_groups  # noqa: E402

STEPS = 12
LR = 0.1
BACKBONE_LR_MULT = 0.1  # a custom_keys group that the PWLU parameters come from
LR_MULT = 2.

SCHEDULERS = [
    dict(type='LinearLR', start_factor=0.1, end=4),
    dict(type='MultiStepLR', milestones=[3, 7], gamma=0.5),
    dict(type='StepLR', step_size=4, gamma=0.5),
    dict(type='ExponentialLR', gamma=0.8),
    dict(type='ConstantLR', factor=0.3, end=5),
    dict(type='CosineAnnealingLR', T_max=STEPS, eta_min=1e-3),
    dict(type='PolyLR', power=2., eta_min=1e-3, end=STEPS),
    dict(type='CosineRestartLR', periods=[5, 7], restart_weights=[1, 0.5], eta_min=1e-3),
    dict(type='OneCycleLR', eta_max=0.2, total_steps=STEPS),
    dict(type='CosineAnnealingMomentum', T_max=STEPS, eta_min=0.5),
    dict(type='ReduceOnPlateauLR', monitor='loss', patience=1, min_value=0.02, factor=0.5),
]


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 1), PWLU(4), nn.Conv2d(4, 2, 1))


def _optimizer(model, with_pwlu_group, lr_mult):
    """Backbone group (conv 0 and, unless it has its own group, the PWLU) at 0.1x; head at 1x;
    the PWLU group as add_pwlu_param_groups makes it: the backbone's settings, lr x lr_mult,
    no decay."""
    pwlu = list(model[1].parameters())
    backbone = list(model[0].parameters()) + ([] if with_pwlu_group else pwlu)
    groups = [dict(params=backbone, lr=LR * BACKBONE_LR_MULT),
              dict(params=list(model[2].parameters()))]
    if with_pwlu_group:
        groups.append(dict(params=pwlu, lr=LR * BACKBONE_LR_MULT * lr_mult, weight_decay=0.))
    return OptimWrapper(torch.optim.SGD(groups, lr=LR, momentum=0.9, weight_decay=1e-4))


def _trajectory(cfg, add_later, lr_mult):
    model = _model()
    wrapper = _optimizer(model, with_pwlu_group=not add_later, lr_mult=lr_mult)
    by_epoch = cfg['type'].startswith('ReduceOnPlateau')
    scheduler = PARAM_SCHEDULERS.build(dict(cfg, optimizer=wrapper, by_epoch=by_epoch))
    if add_later:
        assert add_pwlu_param_groups(wrapper, model, [scheduler], lr_mult=lr_mult) == 5
    name = scheduler.param_name
    values = []
    for step in range(STEPS):
        wrapper.step()
        if by_epoch:
            scheduler.step(dict(loss=1.))  # a loss that never improves
        else:
            scheduler.step()
        values.append([group[name] for group in wrapper.param_groups])
    return values, wrapper


@pytest.mark.parametrize('cfg', SCHEDULERS, ids=[c['type'] for c in SCHEDULERS])
def test_added_group_scheduled_as_if_built_with_it(cfg):
    """Including the non-chainable schedulers, which read a base value per group in the
    wrapper's order (its base settings last) and ReduceOnPlateau's per-group floor."""
    import mmengine.optim  # noqa: F401  (registers the schedulers)
    lr_mult = 1. if cfg['type'] == 'OneCycleLR' else LR_MULT  # OneCycle's values are absolute
    expected, built = _trajectory(cfg, add_later=False, lr_mult=lr_mult)
    actual, added = _trajectory(cfg, add_later=True, lr_mult=lr_mult)
    assert len(added.param_groups) == len(built.param_groups) == 4  # + the base settings
    for step, (got, want) in enumerate(zip(actual, expected)):
        assert got == pytest.approx(want, rel=1e-12), step
    assert len({tuple(v) for v in expected}) > 1  # the schedule did change the values
