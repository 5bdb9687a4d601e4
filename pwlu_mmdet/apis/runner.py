"""What ``tools/train.py`` and ``tools/test.py`` share (from MMDetection's tools)."""
import argparse
import os
import os.path as osp
from datetime import timedelta

import torch
import torch.distributed as dist
from mmdet.registry import RUNNERS
from mmengine.config import Config, DictAction
from mmengine.runner import Runner

__all__ = ['add_common_args', 'load_config', 'init_cpu_distributed', 'build_runner']


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


def load_config(args: argparse.Namespace) -> Config:
    """The config with ``--cfg-options`` merged, the launcher and the work dir (CLI > config >
    ``./work_dirs/<config name>``); sets ``LOCAL_RANK`` from ``--local-rank`` if unset."""
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg


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
