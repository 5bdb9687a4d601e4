"""Detectors with one ``act_cfg`` key that selects the activation of every site.

``ActMaskRCNN``, ``ActFasterRCNN`` and ``ActRetinaNet`` are mmdet's detectors with an extra
``act_cfg`` argument that is handed to every component whose type takes it from the detector
(``ActResNet``, ``ActFPN``, ``ActRPNHead``, ``ActRetinaHead``, the ``Act*BBoxHead``\\ s and
``ActFCNMaskHead``, including nested ones such as ``roi_head.bbox_head``) unless the component
sets its own ``act_cfg``. So ``--cfg-options model.act_cfg.type=Swish`` switches a whole model.
"""
import warnings

from mmdet.models.detectors import FasterRCNN, MaskRCNN, RetinaNet
from mmdet.registry import MODELS

from .activation import ACT_CFG_DEFAULT, spread_act_cfg
from .build import warn_without_pwlu_hook

__all__ = ['ActDetectorMixin', 'ActMaskRCNN', 'ActFasterRCNN', 'ActRetinaNet']

# Keyword arguments of mmdet detectors that hold no model components.
_NON_COMPONENT_KEYS = ('train_cfg', 'test_cfg', 'data_preprocessor', 'init_cfg')
# mmdet components with hard-coded ReLUs and their per-site replacement.
_REPLACEMENTS = dict(
    ResNet='ActResNet', FPN='ActFPN', RPNHead='ActRPNHead', RetinaHead='ActRetinaHead',
    ConvFCBBoxHead='ActConvFCBBoxHead', Shared2FCBBoxHead='ActShared2FCBBoxHead',
    Shared4Conv1FCBBoxHead='ActShared4Conv1FCBBoxHead', FCNMaskHead='ActFCNMaskHead')


def _warn_replaceable(cfg, path):
    if isinstance(cfg, (list, tuple)):
        for i, c in enumerate(cfg):
            _warn_replaceable(c, f'{path}[{i}]')
    elif isinstance(cfg, dict):
        comp_type = cfg.get('type')
        if isinstance(comp_type, str) and comp_type.split('.')[-1] in _REPLACEMENTS:
            warnings.warn(f'{path} is mmdet\'s {comp_type}, whose activations ignore the '
                          f'detector\'s act_cfg; use '
                          f'{_REPLACEMENTS[comp_type.split(".")[-1]]} instead')
        for key, value in cfg.items():
            _warn_replaceable(value, f'{path}.{key}')


class ActDetectorMixin:
    """Gives an mmdet detector an ``act_cfg`` argument spread to its components.

    Args:
        act_cfg (dict): Activation of every site of the components that inherit it, e.g.
            ``dict(type='PWLU')``, ``dict(type='Swish')``; defaults to ReLU.
    """

    def __init__(self, *args, act_cfg=ACT_CFG_DEFAULT, **kwargs):
        for key, value in kwargs.items():
            if key not in _NON_COMPONENT_KEYS and value is not None:
                _warn_replaceable(value, key)
                kwargs[key] = spread_act_cfg(value, act_cfg)
        super().__init__(*args, **kwargs)
        self.act_cfg = act_cfg
        warn_without_pwlu_hook(self)


@MODELS.register_module()
class ActMaskRCNN(ActDetectorMixin, MaskRCNN):
    """Mask R-CNN with a model-wide ``act_cfg`` (see :class:`ActDetectorMixin`)."""


@MODELS.register_module()
class ActFasterRCNN(ActDetectorMixin, FasterRCNN):
    """Faster R-CNN with a model-wide ``act_cfg`` (see :class:`ActDetectorMixin`)."""


@MODELS.register_module()
class ActRetinaNet(ActDetectorMixin, RetinaNet):
    """RetinaNet with a model-wide ``act_cfg`` (see :class:`ActDetectorMixin`)."""
