"""MMEngine integration: the phase hook, the optimizer constructor, DDP gradient sync and the
checkpoint-loading fix (applied on import, see :mod:`pwlu_mmdet.engine.checkpoint`)."""
from .checkpoint import mmengine_safe_globals, patch_mmengine_checkpoint_loading
from .grad_sync import PWLUGradSync, install_pwlu_grad_sync
from .hooks import PWLUHook, pwlu_layers, realign_model
from .optim import PWLUOptimWrapperConstructor

patch_mmengine_checkpoint_loading()

__all__ = [
    'PWLUHook', 'PWLUOptimWrapperConstructor', 'PWLUGradSync', 'install_pwlu_grad_sync',
    'pwlu_layers', 'realign_model', 'mmengine_safe_globals', 'patch_mmengine_checkpoint_loading'
]
