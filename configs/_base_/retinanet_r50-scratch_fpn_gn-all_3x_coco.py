# The paper's RetinaNet setting; the ReLU / Swish / PWLU configs differ only in `model.act_cfg`.
_base_ = [
    './models/retinanet_r50-scratch_fpn_gn-all.py', 'mmdet::_base_/datasets/coco_detection.py',
    './schedules/scratch_3x_270k.py', 'mmdet::_base_/default_runtime.py'
]
train_dataloader = dict(batch_size=2, sampler=dict(type='InfiniteSampler'))  # 8 GPUs x 2 images
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=10000, max_keep_ckpts=3))
log_processor = dict(by_epoch=False)
# PWLU phase I (PWLU = ReLU, statistics only) until pwlu_realign_iter, then realignment and PWLU
# training. Kept in every variant so that `--cfg-options model.act_cfg.type=PWLU` needs nothing
# else; without PWLU layers the hook only logs that it has nothing to do.
custom_hooks = [dict(type='PWLUHook', realign_iter={{_base_.pwlu_realign_iter}})]
