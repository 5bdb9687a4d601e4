"""Registration of the activation layers in mmengine's root ``MODELS``.

The layers need only torch and are defined in :mod:`pwlu_mmdet.layers` without any registry;
this module registers them when ``pwlu_mmdet.engine`` is imported. The root registry is the one
every OpenMMLab scope falls back to (``mmdet``'s ``MODELS``, mmcv's ``build_activation_layer``),
so ``dict(type='PWLU', num_channels=64)`` builds with or without a default scope.
"""
from mmengine.registry import MODELS

from ..layers import APL, PAU, PWLU, ChannelPReLU, FReLU

__all__ = ['ACTIVATIONS']

# The activations this project adds (mmcv registers ReLU, Swish, PReLU ... itself).
ACTIVATIONS = (PWLU, FReLU, ChannelPReLU, APL, PAU)

for _cls in ACTIVATIONS:
    MODELS.register_module(module=_cls)
