"""FPN whose activation sites, when it has any, are built from ``act_cfg``."""
from mmdet.models.necks import FPN
from mmdet.registry import MODELS

from .activation import ACT_CFG_DEFAULT, inherits_act_cfg, site_act_cfg
from .components import convert_component, example

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
        inputs = [example(c, max(64 >> i, 1)) for i, c in enumerate(in_channels)]
        convert_component(self, act_cfg, inputs, names={'FPN': {'act1': 'extra_acts'}})
