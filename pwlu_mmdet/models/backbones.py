"""ResNet with one configurable activation module per site (stem, and every block).

mmdet's ``BasicBlock``/``Bottleneck`` share one hard-coded ``nn.ReLU`` between their sites
(Bottleneck: after conv1 and conv2, ``planes`` channels, and after the residual sum,
``4 * planes`` channels); the stem has one more. Here each site is its own module built from
``act_cfg`` with its channel count: ResNet-50 has 1 + 16 * 3 = 49 sites, ResNet-18 1 + 8 * 2 = 17.
"""
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmdet.models.backbones.resnet import BasicBlock, Bottleneck, ResNet
from mmdet.registry import MODELS

from .activation import ACT_CFG_DEFAULT, build_site_act, inherits_act_cfg

__all__ = ['ActBasicBlock', 'ActBottleneck', 'ActResNet']


def _run(block, inner_forward, x):
    if block.with_cp and x.requires_grad:
        return cp.checkpoint(inner_forward, x, use_reentrant=False)
    return inner_forward(x)


class ActBasicBlock(BasicBlock):
    """mmdet's ``BasicBlock`` with sites ``act1`` (after conv1) and ``act2`` (after the sum)."""

    def __init__(self, inplanes, planes, *args, act_cfg=ACT_CFG_DEFAULT, **kwargs):
        super().__init__(inplanes, planes, *args, **kwargs)
        del self.relu
        self.act1 = build_site_act(act_cfg, planes, inplace=True)
        self.act2 = build_site_act(act_cfg, planes * self.expansion, inplace=True)

    def forward(self, x):

        def _inner_forward(x):
            identity = x
            out = self.act1(self.norm1(self.conv1(x)))
            out = self.norm2(self.conv2(out))
            if self.downsample is not None:
                identity = self.downsample(x)
            return out + identity

        return self.act2(_run(self, _inner_forward, x))


class ActBottleneck(Bottleneck):
    """mmdet's ``Bottleneck`` with sites ``act1``, ``act2`` (``planes`` channels) and ``act3``
    (after the residual sum, ``4 * planes`` channels)."""

    def __init__(self, *args, act_cfg=ACT_CFG_DEFAULT, **kwargs):
        super().__init__(*args, **kwargs)
        del self.relu
        self.act1 = build_site_act(act_cfg, self.planes, inplace=True)
        self.act2 = build_site_act(act_cfg, self.planes, inplace=True)
        self.act3 = build_site_act(act_cfg, self.planes * self.expansion, inplace=True)

    def forward(self, x):

        def _inner_forward(x):
            identity = x
            out = self.act1(self.norm1(self.conv1(x)))
            if self.with_plugins:
                out = self.forward_plugin(out, self.after_conv1_plugin_names)
            out = self.act2(self.norm2(self.conv2(out)))
            if self.with_plugins:
                out = self.forward_plugin(out, self.after_conv2_plugin_names)
            out = self.norm3(self.conv3(out))
            if self.with_plugins:
                out = self.forward_plugin(out, self.after_conv3_plugin_names)
            if self.downsample is not None:
                identity = self.downsample(x)
            return out + identity

        return self.act3(_run(self, _inner_forward, x))


@MODELS.register_module()
@inherits_act_cfg
class ActResNet(ResNet):
    """mmdet's ``ResNet`` (depths 18, 34, 50, 101, 152) with every activation built from
    ``act_cfg``: the stem's ``act1`` (or ``stem.{2,5,8}`` with ``deep_stem``) and the blocks'
    ``act1``/``act2``/``act3``. All other arguments are mmdet's.

    Args:
        act_cfg (dict): Activation config of every site, e.g. ``dict(type='PWLU')``; the site's
            channel count is filled in as ``num_channels`` when the activation takes it.
            Inherited from the detector's ``act_cfg`` when not set.
    """

    arch_settings = {
        18: (ActBasicBlock, (2, 2, 2, 2)),
        34: (ActBasicBlock, (3, 4, 6, 3)),
        50: (ActBottleneck, (3, 4, 6, 3)),
        101: (ActBottleneck, (3, 4, 23, 3)),
        152: (ActBottleneck, (3, 8, 36, 3))
    }

    def __init__(self, depth, *args, act_cfg=ACT_CFG_DEFAULT, **kwargs):
        self.act_cfg = act_cfg
        super().__init__(depth, *args, **kwargs)
        # mmdet decides the zero-init of the last norm by `block is BasicBlock`, which is False
        # for the subclasses; restore it.
        if (self.zero_init_residual and kwargs.get('init_cfg') is None
                and kwargs.get('pretrained') is None):
            last_norm = 'norm2' if self.block is ActBasicBlock else 'norm3'
            for name in self.res_layers:
                for block in getattr(self, name):
                    block.init_cfg = dict(type='Constant', val=0, override=dict(name=last_norm))

    def make_res_layer(self, **kwargs):
        return super().make_res_layer(act_cfg=self.act_cfg, **kwargs)

    def _make_stem_layer(self, in_channels, stem_channels):
        super()._make_stem_layer(in_channels, stem_channels)
        if self.deep_stem:
            for idx, channels in ((2, stem_channels // 2), (5, stem_channels // 2),
                                  (8, stem_channels)):
                assert isinstance(self.stem[idx], nn.ReLU)
                self.stem[idx] = build_site_act(self.act_cfg, channels, inplace=True)
        else:
            del self.relu
            self.act1 = build_site_act(self.act_cfg, stem_channels, inplace=True)

    def _freeze_stages(self):
        super()._freeze_stages()
        if self.frozen_stages >= 0 and not self.deep_stem:
            self.act1.eval()
            for param in self.act1.parameters():
                param.requires_grad = False

    def forward(self, x):
        if self.deep_stem:
            x = self.stem(x)
        else:
            x = self.act1(self.norm1(self.conv1(x)))
        x = self.maxpool(x)
        outs = []
        for i, layer_name in enumerate(self.res_layers):
            x = getattr(self, layer_name)(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)
