"""Run data through a model and collect the input statistics of its PWLU layers.

:func:`collect_alignment` works on any mmengine ``BaseModel`` (its ``data_preprocessor`` and
``forward(mode=...)``); :func:`build_model` and :func:`build_train_dataloader` build them from an
mmdet config and need mmdet (imported inside the functions).
"""
import itertools
from collections import OrderedDict
from typing import Iterable, Optional

import torch
from torch import nn

from ..layers import InputStatistics, LayerAlignment, find_pwlu_layers

__all__ = ['load_config', 'build_model', 'build_train_dataloader', 'collect_alignment']


def load_config(config, cfg_options: Optional[dict] = None):
    """An mmengine ``Config`` from a path (or a ``Config``), with ``cfg_options`` merged."""
    from mmengine.config import Config
    cfg = Config.fromfile(config) if isinstance(config, str) else config.copy()
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def _register_mmdet() -> None:
    # This project's components come from the config's custom_imports (pwlu_mmdet.models),
    # which Config.fromfile imports.
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=True)


def build_model(config, checkpoint: Optional[str] = None, cfg_options: Optional[dict] = None,
                device: str = 'cpu') -> nn.Module:
    """Build ``cfg.model`` (mmdet registry) and load ``checkpoint`` into it, in eval mode.

    Args:
        config (str | Config): Config file or object.
        checkpoint (str, optional): Checkpoint to load (strict). Defaults to None.
        cfg_options (dict, optional): Overrides merged into the config. Defaults to None.
        device (str): Device of the model. Defaults to ``'cpu'``.

    Returns:
        nn.Module: The model.
    """
    _register_mmdet()
    from mmdet.registry import MODELS
    from mmengine.runner import load_checkpoint

    from ..utils.checkpoint import mmengine_checkpoint_globals
    cfg = load_config(config, cfg_options)
    model = MODELS.build(cfg.model)
    if checkpoint is not None:
        with mmengine_checkpoint_globals():
            load_checkpoint(model, checkpoint, map_location='cpu', strict=True)
    return model.to(device).eval()


def build_train_dataloader(config, cfg_options: Optional[dict] = None, seed: int = 0):
    """The config's ``train_dataloader``, built by ``Runner.build_dataloader``."""
    _register_mmdet()
    from mmengine.runner import Runner
    cfg = load_config(config, cfg_options)
    return Runner.build_dataloader(cfg.train_dataloader, seed=seed)


@torch.no_grad()
def collect_alignment(model: nn.Module,
                      data: Iterable,
                      num_batches: int,
                      mode: str = 'loss',
                      sigma: Optional[float] = None,
                      include_empty: bool = False) -> 'OrderedDict[str, LayerAlignment]':
    """Input statistics and Eq. 7 alignment of every PWLU over ``num_batches`` batches.

    The model's state is not changed: in ``'loss'`` mode the model runs in training mode (the
    inputs PWLU sees while training, e.g. the sampled RoIs of a two-stage detector) without
    gradients, and every buffer (PWLU running statistics, BatchNorm statistics, ...) is restored
    afterwards, as is each module's ``training`` flag.

    Args:
        model (nn.Module): An mmengine model (``data_preprocessor`` + ``forward(..., mode)``).
        data (Iterable): Batches as the dataloader yields them.
        num_batches (int): ``K``, the number of batches to run.
        mode (str): ``'loss'`` (training forward) or ``'predict'`` (inference forward).
            Defaults to ``'loss'``.
        sigma (float, optional): Input range width for the IoU; each layer's own by default.
        include_empty (bool): Also report layers that saw no input. Defaults to False.

    Returns:
        OrderedDict[str, LayerAlignment]: Per layer, in module order.
    """
    if mode not in ('loss', 'predict'):
        raise ValueError(f"collect_alignment: mode must be 'loss' or 'predict', got {mode!r}")
    if num_batches < 1:
        raise ValueError(f'collect_alignment: num_batches must be positive, got {num_batches}')
    layers = find_pwlu_layers(model)
    if not layers:
        raise ValueError('collect_alignment: the model has no PWLU layer')
    training = {m: m.training for m in model.modules()}
    buffers = [(b, b.clone()) for b in model.buffers()]
    stats = InputStatistics(layers, sigma=sigma)
    seen = 0
    try:
        model.train(mode == 'loss')
        with stats:
            for batch in itertools.islice(data, num_batches):
                batch = model.data_preprocessor(batch, training=mode == 'loss')
                if isinstance(batch, dict):
                    model(**batch, mode=mode)
                else:
                    model(*batch, mode=mode)
                seen += 1
    finally:
        for buf, saved in buffers:
            buf.copy_(saved)
        for m, flag in training.items():
            m.training = flag
    if seen == 0:
        raise ValueError('collect_alignment: the data yielded no batch')
    return stats.results(include_empty=include_empty)
