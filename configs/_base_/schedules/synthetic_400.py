# The quick start's schedule: 400 iterations of 4 images (SGD, linear warm-up, lr x0.1 at 80%),
# PWLU switching phase after 100 iterations.
max_iters = 400
pwlu_realign_iter = 100
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
    optimizer=dict(type='SGD', lr=0.04, momentum=0.9, weight_decay=1e-4),
    paramwise_cfg=dict(norm_decay_mult=0., pwlu_decay_mult=0.))
auto_scale_lr = dict(enable=False, base_batch_size=4)
# PWLU phase switch (a no-op for the other activations). To move it from the command line use
# `--cfg-options custom_hooks.0.realign_iter=N`.
custom_hooks = [dict(type='PWLUHook', realign_iter=pwlu_realign_iter)]
