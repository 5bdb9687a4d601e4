"""MMEngine integration: the phase hook, the optimizer constructor and the DDP gradient sync.

Importing this package (directly, through ``pwlu_mmdet.models``, or through a config's
``custom_imports = dict(imports=['pwlu_mmdet.engine'])``) does, and only then:

* registers the activation layers (``PWLU``, ``FReLU``, ``ChannelPReLU``, ``APL``, ``PAU``) in
  mmengine's root ``MODELS`` (:mod:`pwlu_mmdet.engine.activations`), ``PWLUHook`` and
  ``PWLUAlignmentHook`` in ``HOOKS`` and ``PWLUOptimWrapperConstructor`` in
  ``OPTIM_WRAPPER_CONSTRUCTORS``;
* patches ``mmengine.runner.CheckpointLoader.load_checkpoint`` so that it loads mmengine's own
  checkpoints (resume, test from a checkpoint) under torch >= 2.6, allowing exactly the extra
  globals they hold (:func:`pwlu_mmdet.utils.checkpoint.patch_mmengine_checkpoint_loading`).
"""
from ..layers import realign_model
from ..utils.checkpoint import mmengine_safe_globals, patch_mmengine_checkpoint_loading
from .activations import ACTIVATIONS
from .grad_sync import PWLUGradSync, install_pwlu_grad_sync
from .hooks import PWLUAlignmentHook, PWLUHook
from .optim import PWLUOptimWrapperConstructor, add_pwlu_param_groups, setup_pwlu_optimizer

patch_mmengine_checkpoint_loading()

__all__ = [
    'PWLUHook', 'PWLUAlignmentHook', 'PWLUOptimWrapperConstructor', 'add_pwlu_param_groups',
    'setup_pwlu_optimizer', 'PWLUGradSync',
    'install_pwlu_grad_sync', 'realign_model', 'ACTIVATIONS', 'mmengine_safe_globals',
    'patch_mmengine_checkpoint_loading'
]
