"""Phase I really freezes PWLU parameters in a real mmengine Runner; phase II trains them."""
import copy

import pytest
import torch

pytest.importorskip('mmengine')

from mmengine.hooks import Hook  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

import pwlu_mmdet.engine  # noqa: E402,F401
from pwlu_mmdet import PWLU  # noqa: E402
from pwlu_mmdet.utils.testing import TinyPWLUNet, tiny_runner_cfg  # noqa: E402

T = 3
ITERS = 6
PARAMS = ('points', 'left_bound', 'right_bound', 'left_slope', 'right_slope')


class Recorder(Hook):
    """Snapshots of the PWLU parameters after every iteration (and right after the reset)."""

    priority = 'LOWEST'  # after PWLUHook

    def __init__(self):
        self.after = {}
        self.reset = None
        self.other = {}

    @staticmethod
    def _pwlu(model):
        return {f'{name}.{p}': getattr(m, p).detach().clone()
                for name, m in model.named_modules() if isinstance(m, PWLU) for p in PARAMS}

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter == T:
            self.reset = self._pwlu(runner.model)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.after[runner.iter] = self._pwlu(runner.model)
        self.other[runner.iter] = runner.model.conv1.weight.detach().clone()


def _run(tmp_path, optimizer, **kwargs):
    cfg = tiny_runner_cfg(str(tmp_path), ITERS, T, optimizer=optimizer, **kwargs)
    recorder = Recorder()
    cfg['custom_hooks'].append(recorder)
    runner = Runner(**cfg)
    init = Recorder._pwlu(runner.model)
    runner.train()
    return runner, init, recorder


OPTIMIZERS = {
    'sgd': dict(type='SGD', lr=0.05, momentum=0.9, weight_decay=1e-2),
    'adamw': dict(type='AdamW', lr=0.01, weight_decay=0.05),
}


@pytest.mark.parametrize('name', list(OPTIMIZERS))
def test_phase_one_frozen_then_trained(tmp_path, name):
    runner, init, rec = _run(tmp_path, OPTIMIZERS[name])
    for it in range(T):  # iterations 0..T-1: phase I
        for key, value in rec.after[it].items():
            assert torch.equal(value, init[key]), (name, it, key)
    # The rest of the model did train in phase I (the freeze is specific).
    assert not torch.equal(rec.other[0], rec.other[T - 1])
    # Phase II: the realigned parameters are trained by the same optimizer.
    changed = [k for k, v in rec.after[ITERS - 1].items() if not torch.equal(v, rec.reset[k])]
    assert any('points' in k for k in changed) and any('bound' in k for k in changed), changed
    optimizer = runner.optim_wrapper.optimizer
    points = runner.model.act1.points
    if name == 'adamw':
        # No Adam step (nor moment) was taken in phase I.
        assert optimizer.state[points]['step'].item() == ITERS - T
    else:
        assert 'momentum_buffer' in optimizer.state[points]


def _groups_by_param(optim_wrapper):
    return {id(p): g for g in optim_wrapper.optimizer.param_groups for p in g['params']}


def _build(optimizer, paramwise_cfg=None, constructor='PWLUOptimWrapperConstructor'):
    from mmengine.optim import build_optim_wrapper
    cfg = dict(optimizer=optimizer, constructor=constructor)
    if paramwise_cfg is not None:
        cfg['paramwise_cfg'] = paramwise_cfg
    model = TinyPWLUNet()
    return model, build_optim_wrapper(model, cfg)


@pytest.mark.parametrize('paramwise_cfg', [None, dict(norm_decay_mult=0.)])
def test_constructor_adds_pwlu_params_without_decay(paramwise_cfg):
    model, wrapper = _build(OPTIMIZERS['sgd'], paramwise_cfg)
    groups = _groups_by_param(wrapper)
    for m in (model.act1, model.act2):
        for p in PARAMS:
            param = getattr(m, p)
            assert not param.requires_grad  # phase I ...
            assert groups[id(param)]['weight_decay'] == 0.  # ... but in the optimizer
            assert groups[id(param)]['lr'] == 0.05
    assert groups[id(model.conv1.weight)]['weight_decay'] == 1e-2
    expected_norm_decay = 0. if paramwise_cfg else 1e-2
    assert groups[id(model.norm1.weight)]['weight_decay'] == expected_norm_decay
    assert wrapper.pwlu_param_groups


def test_constructor_options_and_custom_keys():
    model, wrapper = _build(
        OPTIMIZERS['sgd'],
        dict(pwlu_decay_mult=0.5, pwlu_lr_mult=2., custom_keys={'act2': dict(lr_mult=0.1)}))
    groups = _groups_by_param(wrapper)
    g1 = groups[id(model.act1.points)]
    assert g1['weight_decay'] == pytest.approx(5e-3) and g1['lr'] == pytest.approx(0.1)
    g2 = groups[id(model.act2.points)]  # custom key wins, as for any other parameter
    assert g2['lr'] == pytest.approx(0.005) and g2['weight_decay'] == pytest.approx(1e-2)


def _pwlu_groups(model, wrapper):
    pwlu = {id(p) for m in model.modules() if isinstance(m, PWLU) for p in m.parameters()}
    return [g for g in wrapper.optimizer.param_groups
            if any(id(p) in pwlu for p in g['params'])]


def test_pwlu_params_share_groups_and_take_foreach():
    """PWLU parameters with one setting share a group (one optimizer step call for all of them),
    with foreach unless the config chooses; different settings keep different groups."""
    model, wrapper = _build(OPTIMIZERS['sgd'], dict(norm_decay_mult=0.))
    (group, ) = _pwlu_groups(model, wrapper)
    assert len(group['params']) == 10 and group['foreach'] is True
    # Every other parameter keeps its own group, as the stock constructor makes them.
    assert all(len(g['params']) == 1 for g in wrapper.optimizer.param_groups if g is not group)
    model, wrapper = _build(dict(OPTIMIZERS['sgd'], foreach=False),
                            dict(custom_keys={'act2.points': dict(lr_mult=0.1)}))
    groups = _pwlu_groups(model, wrapper)
    assert sorted(len(g['params']) for g in groups) == [1, 9]
    assert all(g['foreach'] is False for g in groups)
    # The old layout, a group per parameter (to resume an optimizer state saved with it).
    model, wrapper = _build(OPTIMIZERS['sgd'], dict(pwlu_shared_groups=False))
    groups = _pwlu_groups(model, wrapper)
    assert len(groups) == 10 and all(len(g['params']) == 1 for g in groups)


@pytest.mark.parametrize('name', sorted(OPTIMIZERS))
def test_shared_pwlu_groups_step_like_per_parameter_groups(name):
    """Two steps with the shared (foreach) groups equal two steps with a group per parameter."""
    torch.manual_seed(0)
    model, wrapper = _build(OPTIMIZERS[name], dict(norm_decay_mult=0.))
    for m in (model.act1, model.act2):
        m(torch.randn(2, 4, 3, 3))
        m.realign()
    reference = copy.deepcopy(model)
    before = model.act1.points.detach().clone()
    per_param = [dict(g, params=[reference.get_parameter(n)]) for n, p in model.named_parameters()
                 for g in wrapper.optimizer.param_groups if any(p is q for q in g['params'])]
    for g in per_param:
        g.pop('foreach', None)
    optimizer_type = getattr(torch.optim, OPTIMIZERS[name]['type'])
    ref_optimizer = optimizer_type(per_param, lr=OPTIMIZERS[name]['lr'])
    for step in range(2):
        for m in (model, reference):
            g = torch.Generator().manual_seed(step)
            for p in m.parameters():
                p.grad = torch.randn(p.shape, generator=g)
        wrapper.step()
        ref_optimizer.step()
    for (n, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, atol=1e-7, rtol=1e-6, msg=lambda m: f'{n}: {m}')
    assert not torch.equal(model.act1.points, before)  # the PWLU parameters did move


def test_constructor_overrides_optimizer_default_decay():
    # AdamW's own default weight_decay is 0.01; "no decay" must not inherit it.
    model, wrapper = _build(dict(type='AdamW', lr=1e-3))
    groups = _groups_by_param(wrapper)
    assert groups[id(model.act1.points)]['weight_decay'] == 0.
    assert groups[id(model.conv1.weight)]['weight_decay'] == pytest.approx(0.01)


@pytest.mark.parametrize('paramwise_cfg', [None, dict(norm_decay_mult=0.)])
def test_baseline_activations_decayed_as_their_authors_train_them(paramwise_cfg):
    """PReLU slopes (He et al.) and PAU coefficients (its reference code) get no weight decay;
    APL's parameters keep the optimizer's (its paper's L2 penalty); custom_keys still win."""
    from mmengine.optim import build_optim_wrapper

    from pwlu_mmdet.layers import APL, PAU, ChannelPReLU
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), ChannelPReLU(4), torch.nn.PReLU(),
                                PAU(), APL(4), torch.nn.Conv2d(4, 4, 1), ChannelPReLU(4))
    cfg = dict(optimizer=dict(type='SGD', lr=0.1, weight_decay=1e-2),
               constructor='PWLUOptimWrapperConstructor',
               paramwise_cfg=dict(paramwise_cfg or {}, custom_keys={'6.weight': dict(
                   decay_mult=0.5)}))
    groups = _groups_by_param(build_optim_wrapper(model, cfg))
    for p in (model[1].weight, model[2].weight, model[3].numerator, model[3].denominator):
        assert groups[id(p)]['weight_decay'] == 0. and groups[id(p)]['lr'] == 0.1
    for p in (model[4].slopes, model[4].hinges, model[0].weight):
        assert groups[id(p)]['weight_decay'] == pytest.approx(1e-2)
    assert groups[id(model[6].weight)]['weight_decay'] == pytest.approx(5e-3)
    assert len({id(p) for g in groups.values() for p in g['params']}) == len(
        list(model.parameters()))


def test_stock_constructor_without_the_hook_groups_is_refused(tmp_path):
    """The trap: the default constructor skips requires_grad=False parameters; with the hook's
    param groups switched off that is an error, not a silently untrained activation."""
    cfg = tiny_runner_cfg(str(tmp_path), 2, 1)
    cfg['optim_wrapper'].pop('constructor')
    cfg['custom_hooks'][0]['add_param_groups'] = False
    runner = Runner(**cfg)
    with pytest.raises(RuntimeError, match='PWLUOptimWrapperConstructor'):
        runner.train()


@pytest.mark.parametrize('paramwise_cfg', [dict(norm_decay_mult=0.), None])
def test_stock_optim_wrapper_configs_train_pwlu(tmp_path, paramwise_cfg):
    """mmdet's stock optim_wrapper (no constructor, with or without paramwise_cfg) and a
    warm-up + step schedule: the hook gives the PWLU parameters a group without weight decay
    that the schedulers drive like the others; phase I stays frozen, phase II trains."""
    optim_wrapper = dict(type='OptimWrapper', optimizer=OPTIMIZERS['sgd'])
    if paramwise_cfg is not None:
        optim_wrapper['paramwise_cfg'] = paramwise_cfg
    schedule = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=4),
                dict(type='MultiStepLR', milestones=[5], by_epoch=False)]
    runner, init, rec = _run(tmp_path, OPTIMIZERS['sgd'], optim_wrapper=optim_wrapper,
                             param_scheduler=schedule)
    for it in range(T):
        for key, value in rec.after[it].items():
            assert torch.equal(value, init[key]), (it, key)
    changed = [k for k, v in rec.after[ITERS - 1].items() if not torch.equal(v, rec.reset[k])]
    assert any('points' in k for k in changed), changed
    groups = runner.optim_wrapper.optimizer.param_groups
    pwlu = {id(p) for m in runner.model.modules() if isinstance(m, PWLU) for p in m.parameters()}
    pwlu_groups = [g for g in groups if any(id(p) in pwlu for p in g['params'])]
    assert len(pwlu_groups) == 1 and len(pwlu_groups[0]['params']) == len(pwlu)
    (group, ) = pwlu_groups
    assert group['weight_decay'] == 0 and all(id(p) in pwlu for p in group['params'])
    conv_group = next(g for g in groups if any(p is runner.model.conv1.weight
                                               for p in g['params']))
    # Warmed up and stepped down exactly as the conv weights' group.
    assert group['lr'] == conv_group['lr'] and group['initial_lr'] == conv_group['initial_lr']
    assert conv_group['lr'] == pytest.approx(0.05 * 0.1)  # after the milestone at 5
    assert 'momentum_buffer' in runner.optim_wrapper.optimizer.state[runner.model.act1.points]


def test_stock_constructor_without_paramwise_still_frozen(tmp_path):
    cfg = dict(constructor='DefaultOptimWrapperConstructor')
    runner, init, rec = _run(tmp_path, OPTIMIZERS['sgd'],
                             optim_wrapper=dict(optimizer=OPTIMIZERS['sgd'], **cfg))
    for it in range(T):
        for key, value in rec.after[it].items():
            assert torch.equal(value, init[key]), (it, key)
