"""PWLU (or any activation) in MMDetection detectors.

:func:`convert_activations` gives every hidden activation site of a built mmdet model its own
layer; importing this subpackage also lets any detector config take ``model.act_cfg``
(:mod:`.build`). The ``Act*`` components are mmdet's with their sites converted as they are
built, under the names that their checkpoints use.

Importing this subpackage needs mmdet; it registers the components in mmdet's ``MODELS`` and
imports :mod:`pwlu_mmdet.engine` (the activation layers, ``PWLUHook``, the optimizer constructor
and the checkpoint loading; see there), so that a config's
``custom_imports = dict(imports=['pwlu_mmdet.models'])`` brings everything a run needs.
"""
from .. import engine  # noqa: F401

from .activation import build_site_act, site_act_cfg, spread_act_cfg
from .backbones import ActResNet
from .build import warn_without_pwlu_hook
from .conversion import ConversionReport, ConvertedAway, SiteEntry, convert_activations
from .dense_heads import ActRetinaHead, ActRPNHead
from .detectors import ActDetectorMixin, ActFasterRCNN, ActMaskRCNN, ActRetinaNet
from .necks import ActFPN
from .roi_heads import (ActConvFCBBoxHead, ActFCNMaskHead, ActShared2FCBBoxHead,
                        ActShared4Conv1FCBBoxHead)

__all__ = [
    'convert_activations', 'ConversionReport', 'SiteEntry', 'ConvertedAway',
    'warn_without_pwlu_hook', 'build_site_act', 'site_act_cfg', 'spread_act_cfg', 'ActResNet',
    'ActFPN', 'ActRPNHead', 'ActRetinaHead', 'ActConvFCBBoxHead', 'ActShared2FCBBoxHead',
    'ActShared4Conv1FCBBoxHead', 'ActFCNMaskHead', 'ActDetectorMixin', 'ActMaskRCNN',
    'ActFasterRCNN', 'ActRetinaNet'
]
