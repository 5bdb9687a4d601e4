"""Building one activation module per site, told the site's channel count.

mmcv's ``ConvModule`` and ``build_activation_layer`` never pass a channel count to the
activation, and mmdet shares one ``nn.ReLU`` between several sites. Here every site gets its own
module from an ``act_cfg``; activations whose constructor takes ``num_channels`` (e.g. the
channel-wise ``PWLU``) get the site's width, the others (ReLU, Swish, ...) are built unchanged.
"""
import copy
import inspect
from typing import Optional

import torch.nn as nn
from mmdet.registry import MODELS

from ..layers.factory import site_kwargs

__all__ = ['ACT_CFG_DEFAULT', 'act_class', 'site_act_cfg', 'build_site_act', 'inherits_act_cfg',
           'spread_act_cfg']

ACT_CFG_DEFAULT = dict(type='ReLU')


def act_class(act_cfg: dict):
    act_type = act_cfg['type']
    cls = act_type if inspect.isclass(act_type) else MODELS.get(act_type)
    if cls is None:
        raise KeyError(f'activation {act_type!r} is not registered in MMDetection/MMEngine '
                       f'MODELS (did you import its package, e.g. pwlu_mmdet.engine?)')
    return cls


def site_act_cfg(act_cfg: Optional[dict], num_channels: int) -> Optional[dict]:
    """A copy of ``act_cfg`` with ``num_channels`` set if the activation takes it.

    ``None`` stays ``None`` (no activation). A ``num_channels`` already in ``act_cfg`` is kept.
    """
    if act_cfg is None:
        return None
    cfg = copy.deepcopy(dict(act_cfg))
    return dict(type=cfg['type'], **site_kwargs(act_class(cfg), cfg, num_channels))


def build_site_act(act_cfg: dict, num_channels: int, inplace: Optional[bool] = None) -> nn.Module:
    """Build the activation module of one site with ``num_channels`` channels.

    ``inplace`` is passed (unless ``act_cfg`` sets it) only to activations that accept it.
    """
    cfg = copy.deepcopy(dict(act_cfg))
    return MODELS.build(
        dict(type=cfg['type'], **site_kwargs(act_class(cfg), cfg, num_channels, inplace)))


def inherits_act_cfg(cls):
    """Class decorator: the component takes ``act_cfg`` from its detector's ``act_cfg``."""
    cls.inherits_act_cfg = True
    return cls


def spread_act_cfg(cfg, act_cfg: Optional[dict]):
    """A copy of the component config ``cfg`` in which every sub-config whose type is decorated
    with :func:`inherits_act_cfg` and that sets no ``act_cfg`` of its own gets ``act_cfg``.

    Recurses through nested dicts and lists (e.g. ``roi_head.bbox_head``).
    """
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(spread_act_cfg(c, act_cfg) for c in cfg)
    if not isinstance(cfg, dict):
        return cfg
    out = copy.copy(cfg)
    for key, value in cfg.items():
        if isinstance(value, (dict, list, tuple)):
            out[key] = spread_act_cfg(value, act_cfg)
    comp_type = cfg.get('type')
    if comp_type is not None and 'act_cfg' not in cfg:
        cls = comp_type if inspect.isclass(comp_type) else MODELS.get(comp_type)
        if getattr(cls, 'inherits_act_cfg', False):
            out['act_cfg'] = copy.deepcopy(act_cfg)
    return out
