"""ResNet with every activation site built from ``act_cfg``, by :func:`convert_activations`.

mmdet's ``BasicBlock``/``Bottleneck`` call one ``nn.ReLU`` at two/three places (Bottleneck:
after conv1 and conv2, ``planes`` channels, and after the residual sum, ``4 * planes``); the
conversion gives each place its own layer, ``act1``/``act2``/``act3``, and the stem's its
``act1``: ResNet-50 has 1 + 16 * 3 = 49 sites, ResNet-18 1 + 8 * 2 = 17.
"""
from mmdet.models.backbones.resnet import ResNet
from mmdet.registry import MODELS

from .activation import ACT_CFG_DEFAULT, inherits_act_cfg
from .components import convert_component, example

__all__ = ['ActResNet']


@MODELS.register_module()
@inherits_act_cfg
class ActResNet(ResNet):
    """mmdet's ``ResNet`` with every activation built from ``act_cfg``: the stem's ``act1`` (or
    ``stem.{2,5,8}`` with ``deep_stem``) and the blocks' ``act1``/``act2``/``act3``. All other
    arguments are mmdet's.

    Args:
        act_cfg (dict): Activation config of every site, e.g. ``dict(type='PWLU')``; the site's
            channel count is filled in as ``num_channels`` when the activation takes it.
            Inherited from the detector's ``act_cfg`` when not set.
    """

    def __init__(self, depth, *args, act_cfg=ACT_CFG_DEFAULT, **kwargs):
        super().__init__(depth, *args, **kwargs)
        self.act_cfg = act_cfg
        stem = self.stem[0] if self.deep_stem else self.conv1
        convert_component(self, act_cfg, example(stem.in_channels, 64),
                          names={'ResNet': {'relu': 'act1'}})
        self._freeze_stages()

    def _freeze_stages(self):
        super()._freeze_stages()
        # The stem's site is not under norm1/conv1, which mmdet freezes.
        if self.frozen_stages >= 0 and hasattr(self, 'act1') and not self.deep_stem:
            self.act1.eval()
            for param in self.act1.parameters():
                param.requires_grad = False
