"""RPN and RetinaNet heads with one activation module per site, built from ``act_cfg``."""
import torch.nn as nn
from mmdet.models.dense_heads import RetinaHead, RPNHead
from mmdet.registry import MODELS

from .activation import ACT_CFG_DEFAULT, build_site_act, inherits_act_cfg, set_conv_module_act

__all__ = ['ActRPNHead', 'ActRetinaHead']


@MODELS.register_module()
@inherits_act_cfg
class ActRPNHead(RPNHead):
    """mmdet's ``RPNHead`` with the activation after its conv(s) built from ``act_cfg``.

    ``num_convs=1`` (default): one site ``rpn_act`` (``feat_channels``) after ``rpn_conv``, shared
    by all FPN levels like the conv. ``num_convs>1``: one site per ``ConvModule`` in
    ``rpn_conv`` (mmdet also applies a redundant second ReLU after the last one; that one is
    dropped rather than becoming an extra site).
    """

    def __init__(self, in_channels, *args, act_cfg=ACT_CFG_DEFAULT, **kwargs):
        self.act_cfg = act_cfg
        super().__init__(in_channels, *args, **kwargs)

    def _init_layers(self):
        super()._init_layers()
        if self.num_convs > 1:
            for conv in self.rpn_conv:
                set_conv_module_act(conv, self.act_cfg)
            self.rpn_act = nn.Identity()
        else:
            self.rpn_act = build_site_act(self.act_cfg, self.feat_channels, inplace=False)

    def forward_single(self, x):
        x = self.rpn_act(self.rpn_conv(x))
        return self.rpn_cls(x), self.rpn_reg(x)


@MODELS.register_module()
@inherits_act_cfg
class ActRetinaHead(RetinaHead):
    """mmdet's ``RetinaHead`` whose ``cls_convs``/``reg_convs`` end with their own activation
    built from ``act_cfg`` (``feat_channels`` each): ``2 * stacked_convs`` sites, each shared by
    all FPN levels like its conv."""

    def __init__(self, num_classes, in_channels, *args, act_cfg=ACT_CFG_DEFAULT, **kwargs):
        self.act_cfg = act_cfg
        super().__init__(num_classes, in_channels, *args, **kwargs)

    def _init_layers(self):
        super()._init_layers()
        del self.relu  # built but never used by mmdet
        for conv in list(self.cls_convs) + list(self.reg_convs):
            set_conv_module_act(conv, self.act_cfg)
