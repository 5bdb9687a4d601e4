"""A tiny model and dataset with PWLU layers for tests and examples (CPU, seconds).

Kept in the package, not in ``tests/``, so that processes started by
``torch.multiprocessing.spawn`` can import them.
"""
import os
import socket
from typing import Optional

import torch
from mmengine.model import BaseModel
from torch import nn
from torch.utils.data import Dataset

from ..layers import PWLU

__all__ = ['TinyPWLUNet', 'TinyDataset', 'free_port', 'tiny_runner_cfg']


class TinyPWLUNet(BaseModel):
    """conv -> PWLU (channel) -> GroupNorm -> conv -> PWLU (layer) -> pool -> linear, MSE loss."""

    def __init__(self, channels: int = 4, num_intervals: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1)
        self.norm1 = nn.GroupNorm(2, channels)
        self.act1 = PWLU(channels, num_intervals=num_intervals)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act2 = PWLU(channels, num_intervals=num_intervals, mode='layer')
        self.fc = nn.Linear(channels, 1)

    def forward(self, inputs: torch.Tensor, target: Optional[torch.Tensor] = None,
                mode: str = 'tensor'):
        x = self.norm1(self.act1(self.conv1(inputs)))
        x = self.act2(self.conv2(x))
        out = self.fc(x.mean(dim=(2, 3)))
        if mode == 'loss':
            return dict(loss=((out - target)**2).mean())
        if mode == 'predict':
            return [o for o in out]
        return out


class TinyDataset(Dataset):
    """Fixed random images; ``seed`` also sets their mean and scale (per-rank distributions)."""

    def __init__(self, length: int = 16, seed: int = 0, size: int = 6) -> None:
        g = torch.Generator().manual_seed(seed)
        self.inputs = torch.randn(length, 3, size, size, generator=g) * (1.5 + seed) + 0.5 + seed
        self.targets = torch.randn(length, 1, generator=g)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> dict:
        return dict(inputs=self.inputs[i], target=self.targets[i])


def free_port() -> int:
    """A free TCP port on localhost."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def tiny_runner_cfg(work_dir: str, max_iters: int, realign_iter: Optional[int],
                    optimizer: Optional[dict] = None, seed: int = 0, data_seed: int = 0,
                    model_wrapper_cfg: Optional[dict] = None, **kwargs) -> dict:
    """Runner kwargs for an iteration-based run of :class:`TinyPWLUNet` (no shuffling).

    ``model_wrapper_cfg`` is only read from the Runner's ``cfg``, so it goes there.
    """
    if optimizer is None:
        optimizer = dict(type='SGD', lr=0.05, momentum=0.9, weight_decay=1e-2)
    cfg = dict(
        model=TinyPWLUNet(),
        work_dir=work_dir,
        train_dataloader=dict(
            dataset=TinyDataset(seed=data_seed),
            batch_size=2,
            num_workers=0,
            sampler=dict(type='DefaultSampler', shuffle=False),
            collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(
            constructor='PWLUOptimWrapperConstructor',
            optimizer=optimizer,
            paramwise_cfg=dict(norm_decay_mult=0.)),
        train_cfg=dict(by_epoch=False, max_iters=max_iters, val_interval=10**6),
        custom_hooks=[dict(type='PWLUHook', realign_iter=realign_iter)]
        if realign_iter is not None else [],
        default_hooks=dict(
            logger=dict(type='LoggerHook', interval=1),
            checkpoint=dict(type='CheckpointHook', interval=10**6, by_epoch=False)),
        randomness=dict(seed=seed),
        env_cfg=dict(dist_cfg=dict(backend='gloo')),
        log_level=os.environ.get('PWLU_TEST_LOG_LEVEL', 'WARNING'),
    )
    if model_wrapper_cfg is not None:
        cfg['cfg'] = dict(model_wrapper_cfg=model_wrapper_cfg)
    cfg.update(kwargs)
    return cfg
