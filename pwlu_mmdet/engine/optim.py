"""Optimizer wrapper constructor that puts PWLU parameters in the optimizer, without decay.

Why a constructor: PWLU parameters have ``requires_grad=False`` in phase I (see
:class:`pwlu_mmdet.PWLU`), and mmengine's ``DefaultOptimWrapperConstructor`` *skips*
``requires_grad=False`` parameters as soon as a ``paramwise_cfg`` is set (mmdet's configs set
``norm_decay_mult=0.`` and friends), so they would never be trained after the switch. This
constructor always adds them, in their own param groups, with ``weight_decay = base_wd *
pwlu_decay_mult`` (default 0: they are activation parameters, like norm weights) and ``lr =
base_lr * pwlu_lr_mult``. In phase I they get no gradient, which every torch optimizer treats as
"skip this parameter" -- no step, no weight decay, no momentum, no Adam step count -- so they
stay bit-identical until :meth:`PWLU.realign` makes them trainable.

PWLU parameters with the same settings share one param group (the stock constructor makes a
group per parameter), which takes the optimizer's multi-tensor (``foreach``) path where it has
one and the config does not choose: a detector has five small PWLU tensors per activation site,
and stepping them one small group at a time costs far more than one multi-tensor step over all
of them. ``pwlu_shared_groups=False`` keeps a group per parameter, e.g. to resume an optimizer
state saved with such groups.

Config (any mmdet ``optim_wrapper``, stock ``paramwise_cfg`` options still apply to the other
parameters)::

    optim_wrapper = dict(
        constructor='PWLUOptimWrapperConstructor',
        optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4),
        paramwise_cfg=dict(norm_decay_mult=0., pwlu_decay_mult=0., pwlu_lr_mult=1.))

A ``custom_keys`` entry of ``paramwise_cfg`` that matches a PWLU parameter's name takes
precedence, exactly as it does for any other parameter.
"""
import inspect
from typing import List, Optional

from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIMIZERS
from torch import nn

from ..layers import PAU, PWLU, ChannelPReLU, find_pwlu_layers

__all__ = ['PWLUOptimWrapperConstructor', 'add_pwlu_param_groups']

# Activations whose authors train their parameters without weight decay: PReLU (He et al.,
# Sec. 2.2: decay would push the slopes towards 0, i.e. towards ReLU) and PAU (its reference
# code steps the rational coefficients with an optimizer of their own, without decay).
NO_DECAY_ACTIVATIONS = (ChannelPReLU, nn.PReLU, PAU)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class PWLUOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor`` that handles PWLU parameters (see the module doc).

    Args:
        optim_wrapper_cfg (dict): As for ``DefaultOptimWrapperConstructor``.
        paramwise_cfg (dict, optional): As for ``DefaultOptimWrapperConstructor``, plus:

            - ``pwlu_decay_mult`` (float): weight decay multiplier of PWLU parameters.
              Defaults to 0.
            - ``pwlu_lr_mult`` (float): learning-rate multiplier of PWLU parameters.
              Defaults to 1.
            - ``pwlu_shared_groups`` (bool): PWLU parameters with the same settings share a
              param group (``foreach`` where the optimizer has it and the config does not
              choose). False: one group per parameter. Defaults to True.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None) -> None:
        paramwise_cfg = dict(paramwise_cfg or {})
        self.pwlu_decay_mult = float(paramwise_cfg.pop('pwlu_decay_mult', 0.))
        self.pwlu_lr_mult = float(paramwise_cfg.pop('pwlu_lr_mult', 1.))
        self.pwlu_shared_groups = bool(paramwise_cfg.pop('pwlu_shared_groups', True))
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        if not self.paramwise_cfg:
            # The parent only walks modules (add_params) when paramwise_cfg is non-empty; an
            # empty custom_keys selects that path and changes nothing for other parameters
            # (their groups get the optimizer's defaults).
            self.paramwise_cfg = dict(custom_keys={})
        self._shared_groups = {}
        self._pwlu_foreach = self._takes_foreach()

    def _takes_foreach(self) -> bool:
        """Whether the PWLU groups may ask for ``foreach``: the optimizer has the option and
        the config leaves it to the default."""
        if 'foreach' in self.optimizer_cfg:
            return False
        optimizer_type = self.optimizer_cfg.get('type')
        cls = OPTIMIZERS.get(optimizer_type) if isinstance(optimizer_type,
                                                           str) else optimizer_type
        try:
            return cls is not None and 'foreach' in inspect.signature(cls).parameters
        except (TypeError, ValueError):
            return False

    def _pwlu_group(self, name: str, param: nn.Parameter, lr_mult: float,
                    decay_mult: float) -> dict:
        group = {'params': [param]}
        custom_keys = self.paramwise_cfg.get('custom_keys', {})
        for key in sorted(sorted(custom_keys), key=len, reverse=True):
            if key in name:  # same matching and precedence as the parent
                custom = custom_keys[key]
                if self.base_lr is not None:
                    group['lr'] = self.base_lr * custom.get('lr_mult', 1.)
                if self.base_wd is not None:
                    group['weight_decay'] = self.base_wd * custom.get('decay_mult', 1.)
                group.update(custom)
                return group
        if self.base_lr is not None:
            group['lr'] = self.base_lr * lr_mult
        if self.base_wd is not None:
            group['weight_decay'] = self.base_wd * decay_mult
        elif decay_mult == 0:
            # No weight_decay in the optimizer config means the optimizer's own default (AdamW:
            # 0.01), which "no decay" must override too.
            group['weight_decay'] = 0.
        return group

    def add_params(self,
                   params: List[dict],
                   module: nn.Module,
                   prefix: str = '',
                   is_dcn_module=None) -> None:
        """Add PWLU parameters whatever their ``requires_grad``, PReLU and PAU parameters
        without decay; defer the rest to the parent."""
        if isinstance(module, NO_DECAY_ACTIVATIONS):
            for name, param in module.named_parameters(recurse=False):
                full_name = f'{prefix}.{name}' if prefix else name
                group = self._pwlu_group(full_name, param, 1., 0.)
                if param.requires_grad and not (self.paramwise_cfg.get('bypass_duplicate')
                                                and self._is_in(group, params)):
                    params.append(group)
            return
        if not isinstance(module, PWLU):
            super().add_params(params, module, prefix, is_dcn_module)
            return
        bypass_duplicate = self.paramwise_cfg.get('bypass_duplicate', False)
        for name, param in module.named_parameters(recurse=False):
            full_name = f'{prefix}.{name}' if prefix else name
            group = self._pwlu_group(full_name, param, self.pwlu_lr_mult, self.pwlu_decay_mult)
            if bypass_duplicate and self._is_in(group, params):
                continue
            if not self.pwlu_shared_groups:
                params.append(group)
                continue
            settings = tuple(sorted((k, v) for k, v in group.items() if k != 'params'))
            shared = self._shared_groups.get(settings)
            if shared is not None:
                shared['params'].append(param)
                continue
            if self._pwlu_foreach:
                group['foreach'] = True
            self._shared_groups[settings] = group
            params.append(group)

    def __call__(self, model: nn.Module) -> OptimWrapper:
        self._shared_groups = {}  # groups are shared within one optimizer only
        optim_wrapper = super().__call__(model)
        # Lets PWLUHook tell a deliberate PWLU weight decay from a stock constructor's default.
        optim_wrapper.pwlu_param_groups = True
        return optim_wrapper


def _schedulers_of(param_schedulers) -> List:
    """Every ``_ParamScheduler`` in the runner's ``param_schedulers`` (list, dict or None)."""
    if param_schedulers is None:
        return []
    if isinstance(param_schedulers, dict):
        return [s for value in param_schedulers.values() for s in _schedulers_of(value)]
    if isinstance(param_schedulers, (list, tuple)):
        return [s for value in param_schedulers for s in _schedulers_of(value)]
    return [param_schedulers] if hasattr(param_schedulers, 'base_values') else []


def _new_group(template: dict, params: List[nn.Parameter], defaults: dict, decay_mult: float,
               lr_mult: float, schedulers: List) -> dict:
    """A param group for ``params`` that every scheduler treats as if built with the others.

    The settings are the template group's as they are now, i.e. after the auto-scaling of the
    learning rate and the schedulers' first step, scaled by ``lr_mult`` (learning rates) and
    with ``weight_decay = defaults['weight_decay'] * decay_mult``.
    """
    group = {k: v for k, v in template.items() if k != 'params'}
    group['params'] = params
    for key in [k for k in group if k == 'lr' or k.endswith('_lr')]:
        group[key] = group[key] * lr_mult
    group['weight_decay'] = defaults.get('weight_decay', 0.) * decay_mult
    for scheduler in schedulers:
        name = scheduler.param_name
        group.setdefault(f'initial_{name}', group[name])
        scheduler.base_values.append(group[f'initial_{name}'])
        if hasattr(scheduler, '_last_value'):
            scheduler._last_value.append(group[name])
    return group


def add_pwlu_param_groups(optim_wrapper: OptimWrapper, model: nn.Module,
                          param_schedulers=None, decay_mult: float = 0.,
                          lr_mult: float = 1.) -> int:
    """Give the PWLU parameters of ``model`` their own param groups in a built optimizer.

    For optimizers built by another constructor than :class:`PWLUOptimWrapperConstructor`
    (mmdet's stock ``optim_wrapper`` configs): with a ``paramwise_cfg`` mmengine's default
    constructor leaves the frozen PWLU parameters out, without one it puts them in a group
    with weight decay. Each PWLU parameter that is missing, or sits in a group with other
    parameters, is moved to a new group that copies the hyperparameters of the group it came
    from (missing ones: of the first group), with ``lr_mult`` and no weight decay by default.
    Parameter schedulers built on this optimizer get the new groups' base values, so they
    schedule them like the others.

    Call it after the schedulers are built and before any optimizer step or resume
    (:meth:`PWLUHook.before_run` does): a resumed optimizer state then matches the groups.

    Args:
        optim_wrapper (OptimWrapper): The runner's optimizer wrapper (not an
            ``OptimWrapperDict``).
        model (nn.Module): The model (or its wrapper).
        param_schedulers (list | dict, optional): The runner's built parameter schedulers.
        decay_mult (float): Weight decay of the PWLU groups relative to the optimizer's.
            Defaults to 0.
        lr_mult (float): Learning rate of the PWLU groups relative to their template group.
            Defaults to 1.

    Returns:
        int: The number of PWLU parameters moved or added.
    """
    optimizer = optim_wrapper.optimizer
    pwlu = [p for _, layer in find_pwlu_layers(model) for p in layer.parameters()]
    pwlu_ids = {id(p) for p in pwlu}
    owner = {id(p): group for group in optimizer.param_groups for p in group['params']}
    by_template = {}
    for p in pwlu:
        group = owner.get(id(p))
        if group is not None and all(id(q) in pwlu_ids for q in group['params']):
            continue  # already in a group of PWLU parameters only: a deliberate setting
        template = group if group is not None else optimizer.param_groups[0]
        by_template.setdefault(id(template), (template, []))[1].append(p)
    if not by_template:
        return 0
    schedulers = [s for s in _schedulers_of(param_schedulers)
                  if s.optimizer in (optimizer, optim_wrapper)]
    for template, params in list(by_template.values()):
        moved = {id(p) for p in params}
        template['params'] = [q for q in template['params'] if id(q) not in moved]
        optimizer.add_param_group(
            _new_group(template, params, optimizer.defaults, decay_mult, lr_mult, schedulers))
    return sum(len(params) for _, params in by_template.values())
