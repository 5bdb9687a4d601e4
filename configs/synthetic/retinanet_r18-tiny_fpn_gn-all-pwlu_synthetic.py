# RetinaNet at the quick start's scale (ResNet-18 at 1/4 width, 64-channel FPN and head, 128 px
# synthetic shapes, the same schedule and PWLUHook). Its head runs each of its eight activation
# sites on five FPN levels per step; tools/analysis/realign_levels.py measures on it.
_base_ = [
    '../_base_/models/retinanet_r50-scratch_fpn_gn-all.py',
    '../_base_/synthetic_shapes_instance.py', 'mmdet::_base_/default_runtime.py'
]

max_iters = 400
pwlu_realign_iter = 100
norm_cfg = dict(type='GN', num_groups=8, requires_grad=True)
model = dict(
    act_cfg=dict(type='PWLU'),
    backbone=dict(depth=18, base_channels=16, norm_cfg=norm_cfg),
    neck=dict(in_channels=[16, 32, 64, 128], out_channels=64, norm_cfg=norm_cfg),
    bbox_head=dict(
        num_classes=4, in_channels=64, feat_channels=64, norm_cfg=norm_cfg,
        anchor_generator=dict(octave_base_scale=2)),
    test_cfg=dict(nms_pre=300, max_per_img=20))

train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_iters,
        by_epoch=False,
        milestones=[int(max_iters * 0.8)],
        gamma=0.1)
]
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='PWLUOptimWrapperConstructor',
    optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=1e-4),
    paramwise_cfg=dict(norm_decay_mult=0., pwlu_decay_mult=0.))
val_evaluator = dict(metric='bbox')
test_evaluator = val_evaluator

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters),
    visualization=dict(type='DetVisualizationHook'))
log_processor = dict(by_epoch=False, window_size=20)
custom_hooks = [dict(type='PWLUHook', realign_iter=pwlu_realign_iter)]
randomness = dict(seed=0)
