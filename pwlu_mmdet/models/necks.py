"""FPN whose activation sites, when it has any, are separate modules built from ``act_cfg``."""
import torch.nn.functional as F
from mmdet.models.necks import FPN
from mmdet.registry import MODELS
from torch import nn

from .activation import ACT_CFG_DEFAULT, build_site_act, inherits_act_cfg, site_act_cfg

__all__ = ['ActFPN']


@MODELS.register_module()
@inherits_act_cfg
class ActFPN(FPN):
    """mmdet's ``FPN`` in which ``act_cfg`` only chooses the activation of the sites the FPN
    has; it never adds sites. mmdet's FPN has none by default (as in the paper's models), so a
    detector's ``act_cfg`` is inherited here without changing the architecture. Sites, all of
    ``out_channels`` channels:

    - ``conv_act=True``: after every lateral, output and extra conv (what mmdet's
      ``FPN(act_cfg=...)`` does, with one module per conv);
    - ``relu_before_extra_convs=True``: ``extra_acts[i]`` before every extra conv after the
      first (mmdet's ``F.relu``).

    Args:
        act_cfg (dict): Activation of the sites above (inherited from the detector if unset).
        conv_act (bool): Whether the convs end with an activation. Defaults to False.
        Others: as mmdet's ``FPN``.
    """

    def __init__(self, in_channels, out_channels, num_outs, *args, act_cfg=ACT_CFG_DEFAULT,
                 conv_act=False, **kwargs):
        conv_act_cfg = site_act_cfg(act_cfg, out_channels) if conv_act else None
        super().__init__(in_channels, out_channels, num_outs, *args, act_cfg=conv_act_cfg,
                         **kwargs)
        self.conv_act = conv_act
        used_levels = self.backbone_end_level - self.start_level
        num_extra_sites = 0
        if self.add_extra_convs and self.relu_before_extra_convs and act_cfg is not None:
            num_extra_sites = max(self.num_outs - used_levels - 1, 0)
        self.extra_acts = nn.ModuleList(
            build_site_act(act_cfg, out_channels, inplace=False) for _ in range(num_extra_sites))

    def forward(self, inputs):
        """mmdet's ``FPN.forward`` with ``extra_acts`` in place of ``F.relu``."""
        assert len(inputs) == len(self.in_channels)
        laterals = [
            lateral_conv(inputs[i + self.start_level])
            for i, lateral_conv in enumerate(self.lateral_convs)
        ]
        used_levels = len(laterals)
        for i in range(used_levels - 1, 0, -1):
            if 'scale_factor' in self.upsample_cfg:
                up = F.interpolate(laterals[i], **self.upsample_cfg)
            else:
                up = F.interpolate(laterals[i], size=laterals[i - 1].shape[2:],
                                   **self.upsample_cfg)
            laterals[i - 1] = laterals[i - 1] + up
        outs = [self.fpn_convs[i](laterals[i]) for i in range(used_levels)]
        if self.num_outs > len(outs):
            if not self.add_extra_convs:
                for _ in range(self.num_outs - used_levels):
                    outs.append(F.max_pool2d(outs[-1], 1, stride=2))
            else:
                source = dict(on_input=inputs[self.backbone_end_level - 1],
                              on_lateral=laterals[-1], on_output=outs[-1])[self.add_extra_convs]
                outs.append(self.fpn_convs[used_levels](source))
                for k, i in enumerate(range(used_levels + 1, self.num_outs)):
                    x = self.extra_acts[k](outs[-1]) if self.extra_acts else outs[-1]
                    outs.append(self.fpn_convs[i](x))
        return tuple(outs)
