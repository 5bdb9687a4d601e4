"""MMDetection components in which every activation site is its own module built from an
``act_cfg`` with the site's channel count, and detectors with one model-wide ``act_cfg``.

Importing this subpackage needs mmdet; it registers the components in mmdet's ``MODELS`` and
imports :mod:`pwlu_mmdet.engine` (the activation layers, ``PWLUHook``, the optimizer constructor
and the checkpoint loading; see there), so that a config's
``custom_imports = dict(imports=['pwlu_mmdet.models'])`` brings everything a run needs.
"""
from .. import engine  # noqa: F401

from .activation import build_site_act, set_conv_module_act, site_act_cfg, spread_act_cfg
from .backbones import ActBasicBlock, ActBottleneck, ActResNet
from .dense_heads import ActRetinaHead, ActRPNHead
from .detectors import ActDetectorMixin, ActFasterRCNN, ActMaskRCNN, ActRetinaNet
from .necks import ActFPN
from .roi_heads import (ActConvFCBBoxHead, ActFCNMaskHead, ActShared2FCBBoxHead,
                        ActShared4Conv1FCBBoxHead)

__all__ = [
    'build_site_act', 'set_conv_module_act', 'site_act_cfg', 'spread_act_cfg', 'ActBasicBlock',
    'ActBottleneck', 'ActResNet', 'ActFPN', 'ActRPNHead', 'ActRetinaHead', 'ActConvFCBBoxHead',
    'ActShared2FCBBoxHead', 'ActShared4Conv1FCBBoxHead', 'ActFCNMaskHead', 'ActDetectorMixin',
    'ActMaskRCNN', 'ActFasterRCNN', 'ActRetinaNet'
]
