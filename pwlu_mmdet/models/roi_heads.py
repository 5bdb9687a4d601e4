"""RoI heads (ConvFC bbox heads, FCN mask head) with one activation module per site."""
import torch.nn as nn
from mmdet.models.roi_heads.bbox_heads import ConvFCBBoxHead
from mmdet.models.roi_heads.mask_heads import FCNMaskHead
from mmdet.registry import MODELS

from .activation import ACT_CFG_DEFAULT, build_site_act, inherits_act_cfg, set_conv_module_act

__all__ = ['ActConvFCBBoxHead', 'ActShared2FCBBoxHead', 'ActShared4Conv1FCBBoxHead',
           'ActFCNMaskHead']


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
        del self.relu
        for conv in [*self.shared_convs, *self.cls_convs, *self.reg_convs]:
            set_conv_module_act(conv, act_cfg)
        self.shared_fc_acts = self._fc_acts(self.shared_fcs)
        self.cls_fc_acts = self._fc_acts(self.cls_fcs)
        self.reg_fc_acts = self._fc_acts(self.reg_fcs)

    def _fc_acts(self, fcs):
        return nn.ModuleList(
            build_site_act(self.act_cfg, fc.out_features, inplace=True) for fc in fcs)

    def _branch(self, x, convs, fcs, acts):
        for conv in convs:
            x = conv(x)
        if fcs and x.dim() > 2:
            if self.with_avg_pool:
                x = self.avg_pool(x)
            x = x.flatten(1)
        for fc, act in zip(fcs, acts):
            x = act(fc(x))
        return x

    def forward(self, x):
        """mmdet's ``ConvFCBBoxHead.forward`` with per-fc activations."""
        x = self._branch(x, self.shared_convs, self.shared_fcs, self.shared_fc_acts)
        x_cls = self._branch(x, self.cls_convs, self.cls_fcs, self.cls_fc_acts)
        x_reg = self._branch(x, self.reg_convs, self.reg_fcs, self.reg_fc_acts)
        if x_cls.dim() > 2:
            x_cls = (self.avg_pool(x_cls) if self.with_avg_pool else x_cls).flatten(1)
        if x_reg.dim() > 2:
            x_reg = (self.avg_pool(x_reg) if self.with_avg_pool else x_reg).flatten(1)
        cls_score = self.fc_cls(x_cls) if self.with_cls else None
        bbox_pred = self.fc_reg(x_reg) if self.with_reg else None
        return cls_score, bbox_pred


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
        del self.relu
        for conv in self.convs:
            set_conv_module_act(conv, act_cfg)
        if self.upsample_method == 'deconv':
            self.upsample_act = build_site_act(act_cfg, self.conv_out_channels, inplace=True)
        else:
            self.upsample_act = nn.Identity()

    def forward(self, x):
        for conv in self.convs:
            x = conv(x)
        if self.upsample is not None:
            x = self.upsample_act(self.upsample(x))
        return self.conv_logits(x)
