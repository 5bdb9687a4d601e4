"""Registration of the torch-only layers in mmengine's root ``MODELS``, when it is installed.

The root registry is the one every OpenMMLab scope falls back to (``mmdet``'s ``MODELS``, mmcv's
``build_activation_layer``), so ``dict(type='FReLU', num_channels=64)`` builds with or without a
default scope, exactly as ``PWLU`` does. Without mmengine the layers stay plain ``nn.Module``\\ s.
"""
from typing import Optional, Type

try:
    from mmengine.registry import MODELS as _MODELS
except ImportError:  # the layers need only torch
    _MODELS = None

__all__ = ['register_activation']


def register_activation(cls: Optional[Type] = None, *, name: Optional[str] = None):
    """Class decorator: register ``cls`` in mmengine's root ``MODELS`` if mmengine is there.

    Args:
        cls (type, optional): The layer class (when used as ``@register_activation``).
        name (str, optional): Registry name. Defaults to the class name.

    Returns:
        The class, unchanged.
    """

    def register(layer_cls):
        if _MODELS is not None:
            _MODELS.register_module(name=name or layer_cls.__name__, module=layer_cls)
        return layer_cls

    return register if cls is None else register(cls)
