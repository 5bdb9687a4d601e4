# The quick start's schedule and runtime: mmdet's default runtime, logging every 20 iterations
# and one checkpoint at the end of the schedule, which is why the schedule is a base here.
_base_ = ['./schedules/synthetic_400.py', 'mmdet::_base_/default_runtime.py']

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval={{_base_.max_iters}}),
    visualization=dict(type='DetVisualizationHook'))
log_processor = dict(by_epoch=False, window_size=20)
# A fixed seed (initialisation, sampling order, augmentation): the quick start gives the same
# numbers on every run on the same machine (CPU kernels, this op's sums included, are
# deterministic for a given thread count). `--cfg-options randomness.seed=N` tries another seed.
randomness = dict(seed=0)
