# RetinaNet, ResNet-50-FPN, GroupNorm everywhere, trained from scratch, with every activation
# site built from `model.act_cfg`: backbone 49 sites, head 4 cls + 4 reg convs = 57.
_base_ = 'mmdet::_base_/models/retinanet_r50_fpn.py'

custom_imports = dict(imports=['pwlu_mmdet.models'], allow_failed_imports=False)

norm_cfg = dict(type='GN', num_groups=32, requires_grad=True)
model = dict(
    type='ActRetinaNet',
    # The one key that selects the activation of every site; a component may override it.
    act_cfg=dict(type='ReLU'),
    backbone=dict(
        type='ActResNet',
        frozen_stages=-1,
        norm_eval=False,
        zero_init_residual=False,
        norm_cfg=norm_cfg,
        init_cfg=None),  # from scratch: no pre-trained weights
    neck=dict(type='ActFPN', norm_cfg=norm_cfg),  # no activation sites (as mmdet's FPN)
    bbox_head=dict(type='ActRetinaHead', norm_cfg=norm_cfg))
