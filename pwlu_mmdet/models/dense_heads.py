"""RPN and RetinaNet heads with one activation layer per site, built from ``act_cfg``."""
from mmdet.models.dense_heads import RetinaHead, RPNHead
from mmdet.registry import MODELS

from .activation import ACT_CFG_DEFAULT, inherits_act_cfg
from .components import convert_component, feature_maps

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
        super().__init__(in_channels, *args, **kwargs)
        self.act_cfg = act_cfg
        rpn_act = 'rpn_act' if self.num_convs == 1 else None
        convert_component(self, act_cfg, feature_maps(in_channels, 2),
                          names={'RPNHead': {'act1': rpn_act}})


@MODELS.register_module()
@inherits_act_cfg
class ActRetinaHead(RetinaHead):
    """mmdet's ``RetinaHead`` whose ``cls_convs``/``reg_convs`` end with their own activation
    built from ``act_cfg`` (``feat_channels`` each): ``2 * stacked_convs`` sites, each shared by
    all FPN levels like its conv."""

    def __init__(self, num_classes, in_channels, *args, act_cfg=ACT_CFG_DEFAULT, **kwargs):
        super().__init__(num_classes, in_channels, *args, **kwargs)
        self.act_cfg = act_cfg
        convert_component(self, act_cfg, feature_maps(in_channels, 2))
