"""``model.act_cfg`` for any mmdet detector, and a loud warning for PWLU without ``PWLUHook``.

mmengine's Runner wraps the model in DDP as soon as it builds it, so the conversion must happen
while the model is built. Importing this module wraps the model build function of mmengine's
root ``MODELS`` and mmdet's: a detector config that sets ``act_cfg`` (which no stock detector
takes) is built without it and then converted by :func:`convert_activations`, with the options
in ``act_convert``. Every other config builds as before; a whole model (an mmengine
``BaseModel``) that holds PWLU layers also gets the check for ``PWLUHook``.
"""
import copy
import functools
import inspect
import logging
import warnings

from mmdet.models.detectors import BaseDetector
from mmdet.registry import MODELS as MMDET_MODELS
from mmengine.logging import print_log
from mmengine.model import BaseModel
from mmengine.registry import MODELS as ROOT_MODELS
from torch import nn

from ..layers import PWLU
from .conversion import convert_activations

__all__ = ['build_with_act_cfg', 'warn_without_pwlu_hook']


def _converts(cfg, registry) -> bool:
    """Whether ``cfg`` is a detector that takes ``act_cfg`` only through this module."""
    if not isinstance(cfg, dict) or 'act_cfg' not in cfg:
        return False
    obj_type = cfg.get('type')
    if isinstance(obj_type, str):
        with registry.switch_scope_and_registry(cfg.get('_scope_')) as scoped:
            obj_type = scoped.get(obj_type)
    return (inspect.isclass(obj_type) and issubclass(obj_type, BaseDetector)
            and 'act_cfg' not in inspect.signature(obj_type).parameters)


def build_with_act_cfg(build_func):
    """``build_func`` (a registry's) that converts detectors whose config sets ``act_cfg``."""
    if getattr(build_func, 'converts_act_cfg', False):
        return build_func

    @functools.wraps(build_func)
    def build(cfg, *args, registry, **kwargs):
        if not _converts(cfg, registry):
            model = build_func(cfg, *args, registry=registry, **kwargs)
            if isinstance(model, BaseModel):  # a whole model, whatever holds its PWLU layers
                warn_without_pwlu_hook(model)
            return model
        cfg = copy.copy(cfg)
        act_cfg = cfg.pop('act_cfg')
        options = dict(cfg.pop('act_convert', None) or {})
        model = build_func(cfg, *args, registry=registry, **kwargs)
        report = convert_activations(model, act_cfg, **options)
        kept = len(report) - len(report.converted)
        print_log(f'convert_activations: {len(report.converted)} activation sites of '
                  f'{type(model).__name__} -> {act_cfg}; {kept} kept (output clamps, frozen '
                  'or excluded layers)', logger='current')
        warn_without_pwlu_hook(model)
        return model

    build.converts_act_cfg = True
    return build


for _registry in (ROOT_MODELS, MMDET_MODELS):
    _registry.build_func = build_with_act_cfg(_registry.build_func)


class _PhaseOneCheck:
    """Forward pre-hook that looks once, at the first training forward, for ``PWLUHook``."""

    def __init__(self) -> None:
        self.hook_id = None

    def __call__(self, model: nn.Module, args, kwargs) -> None:
        if not model.training:
            return
        model._forward_pre_hooks.pop(self.hook_id, None)
        model._forward_pre_hooks_with_kwargs.pop(self.hook_id, None)
        waiting = [m for m in model.modules() if isinstance(m, PWLU) and not m.realigned]
        if waiting and not any(m.in_statistics_step for m in waiting):
            message = (
                f'{len(waiting)} PWLU layers are training in phase I without PWLUHook: they stay '
                'a frozen ReLU for the whole run. Add custom_hooks = [dict(type=\'PWLUHook\', '
                'realign_iter=...)] to the config (tools/train.py adds it itself).')
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            print_log(message, logger='current', level=logging.WARNING)


def warn_without_pwlu_hook(model: nn.Module) -> None:
    """Warn at the first training forward of ``model`` if its PWLU layers are in phase I and
    no ``PWLUHook`` opened a statistics step, i.e. nothing will ever switch them to phase II."""
    if '_pwlu_phase_one_check' in model.__dict__:
        return
    if any(isinstance(m, PWLU) for m in model.modules()):
        check = _PhaseOneCheck()
        model.__dict__['_pwlu_phase_one_check'] = check
        check.hook_id = model.register_forward_pre_hook(check, with_kwargs=True).id
