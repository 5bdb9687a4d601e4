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
one and the config does not choose: a detector has five small PWLU tensors per activation, and
stepping them one group at a time cost the quick-start Mask R-CNN 1.7 ms per training step
(0.7 ms shared and ``foreach``, on CPU). ``pwlu_shared_groups=False`` keeps a group per
parameter, as before, e.g. to resume an optimizer state saved that way.

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

from ..layers import PWLU

__all__ = ['PWLUOptimWrapperConstructor']


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

    def _pwlu_group(self, name: str, param: nn.Parameter) -> dict:
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
            group['lr'] = self.base_lr * self.pwlu_lr_mult
        if self.base_wd is not None:
            group['weight_decay'] = self.base_wd * self.pwlu_decay_mult
        elif self.pwlu_decay_mult == 0:
            # No weight_decay in the optimizer config means the optimizer's own default (AdamW:
            # 0.01), which "no decay" must override too.
            group['weight_decay'] = 0.
        return group

    def add_params(self,
                   params: List[dict],
                   module: nn.Module,
                   prefix: str = '',
                   is_dcn_module=None) -> None:
        """Add PWLU parameters whatever their ``requires_grad``; defer the rest to the parent."""
        if not isinstance(module, PWLU):
            super().add_params(params, module, prefix, is_dcn_module)
            return
        bypass_duplicate = self.paramwise_cfg.get('bypass_duplicate', False)
        for name, param in module.named_parameters(recurse=False):
            full_name = f'{prefix}.{name}' if prefix else name
            group = self._pwlu_group(full_name, param)
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
