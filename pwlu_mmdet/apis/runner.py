"""What ``tools/train.py`` and ``tools/test.py`` share (from MMDetection's tools)."""
import argparse
import os
import os.path as osp
from datetime import timedelta

import torch
import torch.distributed as dist
from mmdet.registry import RUNNERS
from mmengine.config import Config, DictAction
from mmengine.hub import get_config
from mmengine.logging import print_log
from mmengine.runner import Runner

__all__ = ['add_common_args', 'load_config', 'add_pwlu_hook', 'init_cpu_distributed',
           'build_runner']

# The paper switches phase after 5 of its 36.8 COCO epochs (36646 of 270k iterations); a config
# without PWLUHook gets its switch at the same fraction of its own schedule.
PHASE_ONE_FRACTION = 36646 / 270000


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """``--cfg-options``, ``--launcher`` and ``--local-rank`` (torch.distributed.launch)."""
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override some settings in the used config, the key-value pair in xxx=yyy format '
        'will be merged into config file, e.g. model.act_cfg.type=PWLU. If the value to be '
        'overwritten is a list, it should be like key="[a,b]" or key=a,b. It also allows '
        'nested list/tuple values, e.g. key="[(a,b),(c,d)]". Note that the quotation marks '
        'are necessary and that no white space is allowed.')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
        help='job launcher')
    # torch.distributed.launch of PyTorch >= 2.0 passes --local-rank.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def read_config(path: str) -> Config:
    """A config file, or a config of an installed package (``mmdet::fcos/...py``)."""
    return get_config(path) if '::' in path else Config.fromfile(path)


def load_config(args: argparse.Namespace) -> Config:
    """The config with ``--cfg-options`` merged, the launcher and the work dir (CLI > config >
    ``./work_dirs/<config name>``); sets ``LOCAL_RANK`` from ``--local-rank`` if unset.

    ``args.config`` is a file or a config of an installed package, e.g.
    ``mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py``.
    """
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    cfg = read_config(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        name = osp.basename(args.config.split('::')[-1])
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(name)[0])
    return cfg


def add_pwlu_hook(cfg: Config) -> None:
    """Add ``PWLUHook`` to a config whose ``model.act_cfg`` is PWLU and that has none.

    The switch comes after :data:`PHASE_ONE_FRACTION` of the schedule (``realign_epoch`` for
    epoch-based loops, ``realign_iter`` for iteration-based ones), as in the paper. This is what
    lets ``--cfg-options model.act_cfg.type=PWLU`` switch any detector config alone.
    """
    act_cfg = cfg.get('model', {}).get('act_cfg')
    hooks = list(cfg.get('custom_hooks') or [])
    if (not isinstance(act_cfg, dict) or act_cfg.get('type') != 'PWLU'
            or any(h.get('type') == 'PWLUHook' for h in hooks)):
        return
    loop = cfg.get('train_cfg') or {}
    unit = 'iter' if 'max_iters' in loop else 'epoch'
    length = loop['max_iters'] if unit == 'iter' else loop.get('max_epochs', 12)
    hook = {'type': 'PWLUHook', f'realign_{unit}': max(1, round(PHASE_ONE_FRACTION * length))}
    cfg.custom_hooks = hooks + [hook]
    print_log(f'model.act_cfg is PWLU and the config has no PWLUHook: added {hook}',
              logger='current')


def init_cpu_distributed(cfg: Config) -> None:
    """``--launcher pytorch`` without CUDA: a gloo process group and DDP without device ids.

    mmengine's ``init_dist('pytorch')`` calls ``torch.cuda.set_device`` and its default DDP
    wrapper gets ``device_ids=[LOCAL_RANK]``; both need a GPU. Started here, the group makes
    the runner skip ``init_dist``, so ``torchrun --nproc_per_node N tools/train.py ...`` runs on
    CPUs too (to try a multi-process setup without GPUs). Does nothing in other cases.
    """
    if cfg.get('launcher') != 'pytorch' or torch.cuda.is_available() or dist.is_initialized():
        return
    timeout = cfg.get('env_cfg', {}).get('dist_cfg', {}).get('timeout')
    dist.init_process_group('gloo', timeout=None if timeout is None else timedelta(seconds=timeout))
    wrapper = cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel', broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper.setdefault('device_ids', None)
    cfg.model_wrapper_cfg = wrapper


def build_runner(cfg: Config) -> Runner:
    """mmengine's default runner, or ``cfg.runner_type`` from the registry (after
    :func:`init_cpu_distributed`)."""
    init_cpu_distributed(cfg)
    if 'runner_type' not in cfg:
        return Runner.from_cfg(cfg)
    return RUNNERS.build(cfg)
