# Mask R-CNN, ResNet-50-FPN, GroupNorm everywhere, trained from scratch ("Rethinking ImageNet
# Pre-training"; mmdet's configs/scratch), with every activation site built from `model.act_cfg`:
# backbone 49 sites, RPN 1, bbox head 4 convs + 1 fc, mask head 4 convs + the deconv = 60.
_base_ = 'mmdet::_base_/models/mask-rcnn_r50_fpn.py'

custom_imports = dict(imports=['pwlu_mmdet.models'], allow_failed_imports=False)

norm_cfg = dict(type='GN', num_groups=32, requires_grad=True)
model = dict(
    type='ActMaskRCNN',
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
    rpn_head=dict(type='ActRPNHead'),
    roi_head=dict(
        bbox_head=dict(
            type='ActShared4Conv1FCBBoxHead', conv_out_channels=256, norm_cfg=norm_cfg),
        mask_head=dict(type='ActFCNMaskHead', norm_cfg=norm_cfg)))
