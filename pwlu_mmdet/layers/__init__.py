"""Activation layers (need only torch; registered in mmengine's root MODELS when it is installed):
PWLU, and the PWLU paper's comparison set FReLU, ChannelPReLU, APL and PAU."""
from .apl import APL
from .factory import TORCH_ACTIVATIONS, build_activation
from .frelu import FReLU
from .pau import PAU
from .prelu import ChannelPReLU
from .pwlu import PWLU, alignment_iou

__all__ = ['PWLU', 'alignment_iou', 'FReLU', 'ChannelPReLU', 'APL', 'PAU', 'TORCH_ACTIVATIONS',
           'build_activation']
