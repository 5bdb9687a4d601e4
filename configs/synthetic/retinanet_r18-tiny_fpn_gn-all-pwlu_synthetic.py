# RetinaNet at the quick start's scale (ResNet-18 at 1/4 width, 64-channel FPN and head, 128 px
# synthetic shapes, the same schedule and PWLUHook). Its head runs each of its eight activation
# sites on five FPN levels per step; tools/analysis/realign_levels.py measures on it.
_base_ = [
    '../_base_/models/retinanet_r50-scratch_fpn_gn-all.py',
    '../_base_/synthetic_shapes_instance.py', '../_base_/synthetic_runtime.py'
]

norm_cfg = dict(type='GN', num_groups=8, requires_grad=True)
model = dict(
    act_cfg=dict(type='PWLU'),
    backbone=dict(depth=18, base_channels=16, norm_cfg=norm_cfg),
    neck=dict(in_channels=[16, 32, 64, 128], out_channels=64, norm_cfg=norm_cfg),
    bbox_head=dict(
        num_classes=4, in_channels=64, feat_channels=64, norm_cfg=norm_cfg,
        anchor_generator=dict(octave_base_scale=2)),
    test_cfg=dict(nms_pre=300, max_per_img=20))

optim_wrapper = dict(optimizer=dict(lr=0.01))
val_evaluator = dict(metric='bbox')
test_evaluator = val_evaluator
