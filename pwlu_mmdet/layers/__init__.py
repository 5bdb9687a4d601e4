"""Activation layers and what measures them at run time; need only torch.

PWLU, and the PWLU paper's comparison set FReLU, ChannelPReLU, APL and PAU
(:func:`build_activation` builds any of them by name). ``import pwlu_mmdet.engine`` registers
them in mmengine's root ``MODELS``; importing this package does not import mmengine.
"""
from .apl import APL
from .factory import TORCH_ACTIVATIONS, build_activation
from .frelu import FReLU
from .pau import PAU
from .prelu import ChannelPReLU
from .pwlu import PWLU
from .running_stats import pool_moments
from .statistics import (InputStatistics, LayerAlignment, alignment_iou, find_pwlu_layers,
                         realign_model, stage_name, statistics_step, summarize_stages,
                         unwrap_model)

__all__ = [
    'PWLU', 'FReLU', 'ChannelPReLU', 'APL', 'PAU', 'TORCH_ACTIVATIONS', 'build_activation',
    'pool_moments', 'alignment_iou', 'find_pwlu_layers', 'unwrap_model', 'statistics_step',
    'realign_model', 'InputStatistics', 'LayerAlignment', 'stage_name', 'summarize_stages'
]
