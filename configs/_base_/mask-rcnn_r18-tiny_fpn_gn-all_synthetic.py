# CPU quick start: the paper's Mask R-CNN (GN everywhere, from scratch, every activation site from
# `model.act_cfg`) scaled down for 128 px images on a few CPU cores: ResNet-18 at 1/4 width,
# 64-channel FPN/heads, few RoIs. Trained on the synthetic shapes data set for `max_iters`
# iterations; PWLU variants realign after `pwlu_realign_iter` iterations.
_base_ = [
    './models/mask-rcnn_r50-scratch_fpn_gn-all.py', './synthetic_shapes_instance.py',
    './synthetic_runtime.py'
]

num_classes = 4
norm_cfg = dict(type='GN', num_groups=8, requires_grad=True)
model = dict(
    backbone=dict(depth=18, base_channels=16, norm_cfg=norm_cfg),
    neck=dict(in_channels=[16, 32, 64, 128], out_channels=64, num_outs=4, norm_cfg=norm_cfg),
    rpn_head=dict(
        in_channels=64,
        feat_channels=64,
        anchor_generator=dict(scales=[4], strides=[4, 8, 16, 32])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(
            in_channels=64,
            conv_out_channels=64,
            fc_out_channels=256,
            num_classes=num_classes,
            norm_cfg=norm_cfg),
        mask_roi_extractor=dict(out_channels=64),
        mask_head=dict(
            in_channels=64, conv_out_channels=64, num_classes=num_classes, norm_cfg=norm_cfg)),
    train_cfg=dict(
        rpn=dict(sampler=dict(num=128)),
        rpn_proposal=dict(nms_pre=500, max_per_img=100),
        rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(
        rpn=dict(nms_pre=300, max_per_img=50),
        rcnn=dict(max_per_img=20)))
