"""RoI heads (ConvFC bbox heads, FCN mask head) with one activation layer per site."""
from mmdet.models.roi_heads.bbox_heads import ConvFCBBoxHead
from mmdet.models.roi_heads.mask_heads import FCNMaskHead
from mmdet.registry import MODELS

from .activation import ACT_CFG_DEFAULT, inherits_act_cfg
from .components import convert_component, example

__all__ = ['ActConvFCBBoxHead', 'ActShared2FCBBoxHead', 'ActShared4Conv1FCBBoxHead',
           'ActFCNMaskHead']


def _rois(head):
    return example(head.in_channels, head.roi_feat_size, batch=2)


@MODELS.register_module()
@inherits_act_cfg
class ActConvFCBBoxHead(ConvFCBBoxHead):
    """mmdet's ``ConvFCBBoxHead`` where each conv (``conv_out_channels``) and each fc
    (``fc_out_channels``) of the shared, cls and reg branches has its own activation built from
    ``act_cfg``; mmdet shares one ``nn.ReLU`` between all fcs. The fc sites are
    ``shared_fc_acts``, ``cls_fc_acts`` and ``reg_fc_acts``."""

    def __init__(self, *args, act_cfg=ACT_CFG_DEFAULT, **kwargs):
        super().__init__(*args, **kwargs)
        self.act_cfg = act_cfg
        names = dict(act1='shared_fc_acts', act2='cls_fc_acts', act3='reg_fc_acts')
        convert_component(self, act_cfg, _rois(self), names={'ConvFCBBoxHead': names})


@MODELS.register_module()
class ActShared2FCBBoxHead(ActConvFCBBoxHead):
    """``Shared2FCBBoxHead`` with per-site activations (2 sites)."""

    def __init__(self, fc_out_channels: int = 1024, *args, **kwargs):
        super().__init__(*args, num_shared_fcs=2, fc_out_channels=fc_out_channels, **kwargs)


@MODELS.register_module()
class ActShared4Conv1FCBBoxHead(ActConvFCBBoxHead):
    """``Shared4Conv1FCBBoxHead`` with per-site activations (4 convs + 1 fc = 5 sites)."""

    def __init__(self, fc_out_channels: int = 1024, *args, **kwargs):
        super().__init__(*args, num_shared_convs=4, num_shared_fcs=1,
                         fc_out_channels=fc_out_channels, **kwargs)


@MODELS.register_module()
@inherits_act_cfg
class ActFCNMaskHead(FCNMaskHead):
    """mmdet's ``FCNMaskHead`` whose convs (``conv_out_channels``) and, with the default
    ``deconv`` upsampling, the deconv (``upsample_act``) have their own activation built from
    ``act_cfg``: ``num_convs + 1`` sites."""

    def __init__(self, *args, act_cfg=ACT_CFG_DEFAULT, **kwargs):
        super().__init__(*args, **kwargs)
        self.act_cfg = act_cfg
        convert_component(self, act_cfg, _rois(self),
                          names={'FCNMaskHead': {'relu': 'upsample_act'}})
