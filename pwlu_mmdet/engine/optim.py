"""The PWLU parameters in the optimizer: the constructor for PWLU configs, and the param groups
given to an optimizer that another constructor built (stock ``optim_wrapper`` configs).

Phase-I PWLU parameters have ``requires_grad=False``, which mmengine's default constructor
skips as soon as a ``paramwise_cfg`` is set, so they would never train after the switch. In
the optimizer they get no gradient in phase I, which every torch optimizer treats as "skip":
no step, decay, momentum or Adam count. docs/training.md describes the options.
"""
import inspect
from typing import List, Optional

from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper, OptimWrapperDict
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIMIZERS
from torch import nn

from ..layers import PAU, PWLU, ChannelPReLU, find_pwlu_layers

__all__ = ['PWLUOptimWrapperConstructor', 'add_pwlu_param_groups', 'setup_pwlu_optimizer']

# Activations whose authors train their parameters without weight decay: PReLU (He et al.,
# Sec. 2.2: decay would push the slopes towards 0, i.e. towards ReLU) and PAU (its reference
# code steps the rational coefficients with an optimizer of their own, without decay).
NO_DECAY_ACTIVATIONS = (ChannelPReLU, nn.PReLU, PAU)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class PWLUOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor`` that adds the PWLU parameters whatever their
    ``requires_grad``, in groups of their own, and the PReLU and PAU parameters without decay.

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

    Note:
        A ``custom_keys`` entry that matches a parameter's name takes precedence, as for any
        other parameter. Shared groups matter: a detector has five small PWLU tensors per site,
        and stepping them one group at a time costs far more than one multi-tensor step.
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
    return [param_schedulers] if hasattr(param_schedulers, 'param_name') else []


def add_pwlu_param_groups(optim_wrapper: OptimWrapper, model: nn.Module,
                          param_schedulers=None, decay_mult: float = 0.,
                          lr_mult: float = 1.) -> int:
    """Give the PWLU parameters of ``model`` their own param groups in a built optimizer.

    Each PWLU parameter that is missing (a stock constructor with ``paramwise_cfg`` skips
    frozen parameters) or shares a group with other parameters (one without it decays them)
    moves to a new group with the settings its group has now (the first group's if missing),
    ``lr * lr_mult`` and ``weight_decay = defaults * decay_mult``.

    Args:
        optim_wrapper (OptimWrapper): A single optimizer's wrapper.
        model (nn.Module): The model (or its wrapper).
        param_schedulers (list | dict, optional): The schedulers built on the optimizer.
        decay_mult (float): Weight decay relative to the optimizer's. Defaults to 0.
        lr_mult (float): Learning rate relative to the template group. Defaults to 1.

    Returns:
        int: The number of PWLU parameters moved or added.

    Note:
        Call it after the schedulers are built and before any step or resume, as
        ``PWLUHook.before_run`` does: a resumed optimizer state then matches the groups.
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
    schedulers = [s for s in _schedulers_of(param_schedulers)
                  if s.optimizer in (optimizer, optim_wrapper)]
    views = [list(s.optimizer.param_groups) for s in schedulers]
    templates = {}
    for template, params in by_template.values():
        moved = {id(p) for p in params}
        template['params'] = [q for q in template['params'] if id(q) not in moved]
        group = {k: v for k, v in template.items() if k != 'params'}
        for key in [k for k in group if k == 'lr' or k.endswith('_lr')]:
            group[key] = group[key] * lr_mult
        group['weight_decay'] = optimizer.defaults.get('weight_decay', 0.) * decay_mult
        optimizer.add_param_group(dict(group, params=params))
        templates[id(optimizer.param_groups[-1])] = template
    for scheduler, view in zip(schedulers, views):
        _add_groups_to_scheduler(scheduler, view, templates)
    return sum(len(params) for _, params in by_template.values())


# What a built mmengine scheduler holds per param group: the base value of every scheduler
# and ReduceOnPlateau's floor. The rest of its state is per scheduler, or read from the groups
# themselves (``initial_<name>``, OneCycle's phase values), which the new groups copy.
PER_GROUP_STATE = ('base_values', 'min_values')


def _add_groups_to_scheduler(scheduler, view: List[dict], templates: dict) -> None:
    """Give a built scheduler the groups added to its optimizer since it saw ``view``.

    mmengine has no API to add a group to a built scheduler; its state dict is the interface
    through which resume sets that state. Per-group entries follow the scheduler's own order
    of groups: an ``OptimWrapper`` of several groups lists its base settings last, after the
    new groups. A new group's base value is its ``initial_<name>``; its other entries are its
    template's.
    """
    name = scheduler.param_name
    index = {id(group): i for i, group in enumerate(view)}
    state = scheduler.state_dict()
    for key in PER_GROUP_STATE:
        values = state.get(key)
        if not isinstance(values, list) or len(values) != len(view):
            continue
        aligned = []
        for group in scheduler.optimizer.param_groups:
            if id(group) in index:
                aligned.append(values[index[id(group)]])
            elif key == 'base_values':
                aligned.append(group.setdefault(f'initial_{name}', group[name]))
            else:
                aligned.append(values[index[id(templates[id(group)])]])
        state[key] = aligned
    scheduler.load_state_dict(state)


def setup_pwlu_optimizer(runner, add_param_groups: bool = True, decay_mult: float = 0.,
                         lr_mult: float = 1.) -> None:
    """Make the runner's built optimizer train every PWLU parameter in phase II.

    An optimizer not built by :class:`PWLUOptimWrapperConstructor` gets the PWLU parameters'
    groups from :func:`add_pwlu_param_groups` (``add_param_groups``); then every PWLU
    parameter must be in the optimizer (a ``RuntimeError`` otherwise). Nothing is done before
    the optimizer is built (val or test runs).
    """
    wrapper = getattr(runner, 'optim_wrapper', None)
    if not isinstance(wrapper, OptimWrapper):
        return
    layers = find_pwlu_layers(runner.model)
    if not layers:
        return
    wrappers = list(wrapper.values()) if isinstance(wrapper, OptimWrapperDict) else [wrapper]
    built_here = any(getattr(w, 'pwlu_param_groups', False) for w in wrappers)
    if add_param_groups and not built_here and len(wrappers) == 1:
        moved = add_pwlu_param_groups(wrapper, runner.model, runner.param_schedulers,
                                      decay_mult, lr_mult)
        if moved:
            runner.logger.info(
                f'PWLUHook: {moved} PWLU parameters given their own param groups (weight decay '
                f'x{decay_mult}, lr x{lr_mult}); the optimizer constructor had left them out or '
                'grouped them with other parameters')
    groups = {id(p): g for w in wrappers for g in w.optimizer.param_groups for p in g['params']}
    missing, decayed = [], []
    for name, layer in layers:
        for pname, p in layer.named_parameters(recurse=False):
            group = groups.get(id(p))
            if group is None:
                missing.append(f'{name}.{pname}')
            elif group.get('weight_decay', 0) and not (built_here or add_param_groups):
                decayed.append(f'{name}.{pname}')
    if missing:
        raise RuntimeError(
            f'PWLUHook: {len(missing)} PWLU parameters are not in the optimizer (e.g. '
            f'{missing[0]}): they have requires_grad=False in phase I and the optimizer '
            "constructor skipped them. Set optim_wrapper=dict(constructor="
            "'PWLUOptimWrapperConstructor', ...).")
    if decayed:
        runner.logger.warning(
            f'PWLUHook: {len(decayed)} PWLU parameters get weight decay from the default '
            "optimizer constructor; use constructor='PWLUOptimWrapperConstructor' (no decay "
            'by default, paramwise_cfg.pwlu_decay_mult to choose)')
