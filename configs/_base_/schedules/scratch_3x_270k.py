# The paper's COCO schedule ("Rethinking ImageNet Pre-training" 3x): 270k iterations of 16 images
# (8 GPUs x 2), SGD lr 0.02, momentum 0.9, weight decay 1e-4 (none on norm and PWLU parameters),
# linear warm-up, lr x0.1 at 210k and 250k.
max_iters = 270000
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=30000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_iters,
        by_epoch=False,
        milestones=[210000, 250000],
        gamma=0.1)
]

# PWLUOptimWrapperConstructor: mmengine's default constructor plus the PWLU parameters in their
# own groups (they are frozen until the realignment); it changes nothing for other models.
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='PWLUOptimWrapperConstructor',
    optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4),
    paramwise_cfg=dict(norm_decay_mult=0., pwlu_decay_mult=0.))

# The lr above is for 16 images per iteration; other GPU counts / batch sizes scale it linearly.
auto_scale_lr = dict(enable=True, base_batch_size=16)

# PWLU phase switch (realignment) after 5 epochs of COCO train2017 at 16 images per iteration:
# 117266 training images (train2017 without images lacking annotations, mmdet's
# filter_empty_gt) -> 5 * 117266 / 16 = 36645.6 -> 36646 iterations.
pwlu_realign_iter = round(5 * 117266 / 16)
