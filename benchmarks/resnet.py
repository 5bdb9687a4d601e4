"""ResNet-18/34 image classifiers with every activation site built from one ``act_cfg``.

The PWLU paper times its activations on an ImageNet ResNet-18 (Table 4). The primary backbone is
this project's ``ActResNet`` (mmdet's ``ResNet``, every site its own module); where MMDetection
is not installed (a bare GPU machine with torch only), :class:`TorchResNet` builds the same
network with the same module names, so a state dict loads into either and both compute the same
function (``tests/benchmarks/test_bench_table4.py`` checks it).
"""
import importlib.util
import logging
from typing import Optional, Sequence

import torch
from torch import nn

from pwlu_mmdet.layers.factory import build_activation
from pwlu_mmdet.layers.frelu import build_norm

__all__ = ['TorchResNet', 'ResNetClassifier', 'build_resnet_classifier']

_STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


class _BasicBlock(nn.Module):
    """mmdet's ``BasicBlock`` with the ``ActBasicBlock`` sites ``act1`` and ``act2``."""

    def __init__(self, inplanes: int, planes: int, stride: int, act_cfg: dict,
                 norm_cfg: dict) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=1, bias=False)
        self.bn1 = build_norm(norm_cfg, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = build_norm(norm_cfg, planes)
        self.act1 = build_activation(act_cfg, planes, inplace=True)
        self.act2 = build_activation(act_cfg, planes, inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), build_norm(norm_cfg, planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(out + identity)


class TorchResNet(nn.Module):
    """ResNet-18/34 in torch only, laid out as ``ActResNet`` (``style='pytorch'``, 7 x 7 stem,
    max-pool, four stages of basic blocks): same module names and parameter shapes.

    Args:
        depth (int): 18 or 34. Defaults to 18.
        act_cfg (dict): Activation of every site (:func:`pwlu_mmdet.layers.build_activation`
            names). Defaults to ``dict(type='ReLU')``.
        norm_cfg (dict): Normalisation (``'BN'``, ``'GN'``, ``'SyncBN'``). Defaults to
            ``dict(type='BN')``.
        out_indices (Sequence[int]): Stages whose outputs are returned. Defaults to ``(3,)``.
    """

    def __init__(self, depth: int = 18, act_cfg: Optional[dict] = None,
                 norm_cfg: Optional[dict] = None, out_indices: Sequence[int] = (3, )) -> None:
        super().__init__()
        if depth not in _STAGES:
            raise ValueError(f'TorchResNet: depth must be one of {sorted(_STAGES)}, got {depth}')
        act_cfg = dict(type='ReLU') if act_cfg is None else act_cfg
        norm_cfg = dict(type='BN') if norm_cfg is None else norm_cfg
        self.out_indices = tuple(out_indices)
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = build_norm(norm_cfg, 64)
        self.act1 = build_activation(act_cfg, 64, inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.res_layers = []
        inplanes = 64
        for i, blocks in enumerate(_STAGES[depth]):
            planes = 64 * 2**i
            stride = 1 if i == 0 else 2
            layer = nn.Sequential(*[
                _BasicBlock(inplanes if b == 0 else planes, planes, stride if b == 0 else 1,
                            act_cfg, norm_cfg) for b in range(blocks)
            ])
            inplanes = planes
            self.add_module(f'layer{i + 1}', layer)
            self.res_layers.append(f'layer{i + 1}')
        self.init_weights()

    def init_weights(self) -> None:
        """mmdet ``ResNet``'s default: Kaiming (fan-out, ReLU) convs, unit norm weights, and
        ``zero_init_residual``: each block's last norm starts at zero."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.SyncBatchNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, _BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> tuple:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        outs = []
        for i, name in enumerate(self.res_layers):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)


class ResNetClassifier(nn.Module):
    """Backbone, global average pooling and a linear classifier (torchvision's ResNet head).

    Args:
        backbone (nn.Module): Returns a tuple whose last entry is the last stage's map.
        num_features (int): Channels of that map. Defaults to 512 (ResNet-18/34).
        num_classes (int): Defaults to 1000 (ImageNet).
    """

    def __init__(self, backbone: nn.Module, num_features: int = 512,
                 num_classes: int = 1000) -> None:
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.backbone(x)[-1]
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def mmdet_available() -> bool:
    """Whether MMDetection, mmcv and mmengine are all installed."""
    return all(importlib.util.find_spec(p) is not None for p in ('mmdet', 'mmcv', 'mmengine'))


def build_resnet_classifier(depth: int = 18, act_cfg: Optional[dict] = None,
                            norm_cfg: Optional[dict] = None, num_classes: int = 1000,
                            impl: str = 'auto') -> ResNetClassifier:
    """The Table 4 model: a ResNet classifier with every activation site from ``act_cfg``.

    Args:
        depth (int): 18 or 34. Defaults to 18.
        act_cfg (dict, optional): Activation of every site. Defaults to ``dict(type='ReLU')``.
        norm_cfg (dict, optional): Defaults to ``dict(type='BN')`` (ImageNet training).
        num_classes (int): Defaults to 1000.
        impl (str): ``'mmdet'`` (``ActResNet``), ``'torch'`` (:class:`TorchResNet`) or
            ``'auto'`` (``'mmdet'`` when it is installed). Defaults to ``'auto'``.

    Returns:
        ResNetClassifier: Initialised as mmdet's ``ResNet`` initialises itself.
    """
    if impl not in ('auto', 'mmdet', 'torch'):
        raise ValueError(f"impl must be 'auto', 'mmdet' or 'torch', got {impl!r}")
    act_cfg = dict(type='ReLU') if act_cfg is None else act_cfg
    norm_cfg = dict(type='BN') if norm_cfg is None else norm_cfg
    if impl == 'torch' or (impl == 'auto' and not mmdet_available()):
        backbone = TorchResNet(depth, act_cfg, norm_cfg)
    else:
        from mmengine.logging import MMLogger

        from pwlu_mmdet.models import ActResNet
        backbone = ActResNet(depth, act_cfg=act_cfg, norm_cfg=norm_cfg, out_indices=(3, ),
                             style='pytorch')
        # init_weights logs every parameter at INFO level.
        logger = MMLogger.get_current_instance()
        level = logger.level
        logger.setLevel(logging.WARNING)
        try:
            backbone.init_weights()
        finally:
            logger.setLevel(level)
    return ResNetClassifier(backbone, num_classes=num_classes)
