"""Gradient all-reduce for PWLU parameters that DistributedDataParallel does not manage.

Why not let DDP do it: PWLU parameters have ``requires_grad=False`` in phase I (the forward is
pure ReLU), so a DDP wrapper built then -- which is when mmengine's ``Runner`` wraps the model,
before any checkpoint is resumed -- leaves them out of its reducer. That is what we want in
phase I: no collective is spent on gradients that would be thrown away, and DDP without
``find_unused_parameters`` does not wait for gradients that never come. In phase II they
require grad, but DDP cannot add parameters after construction, so their gradients must be
averaged here, with the same semantics as DDP's own:

* once per backward, at its end (an autograd engine callback queued by the first PWLU
  post-accumulate-grad hook that fires), i.e. before gradient clipping, AMP's unscale/inf check
  and the optimizer step, so every rank sees identical gradients in all of them;
* one flat all-reduce of all trainable PWLU gradients of the model in ``named_parameters``
  order; a parameter without a gradient on this rank contributes zeros and receives the mean;
* skipped while the wrapper is in ``no_sync()`` (gradient accumulation), decided at forward time
  like DDP does; the locally accumulated sum is reduced at the next synchronised backward, which
  gives the same mean.

Every rank must run a backward that reaches at least one PWLU parameter whenever one rank does
(the same requirement DDP without ``find_unused_parameters`` puts on all parameters).
"""
import weakref
from typing import List, Optional

import torch
import torch.distributed as dist
from torch import nn

from ..layers import find_pwlu_layers

__all__ = ['PWLUGradSync', 'install_pwlu_grad_sync']

# Unwrapped model -> its PWLUGradSync. Not an attribute of the model, so that deepcopy (EMA
# hooks) and pickling of the model never copy hooks or a process group.
_INSTALLED: 'weakref.WeakKeyDictionary[nn.Module, PWLUGradSync]' = weakref.WeakKeyDictionary()


class PWLUGradSync:
    """Averages the gradients of a model's PWLU parameters over the ranks of a process group.

    Use :func:`install_pwlu_grad_sync` rather than the constructor: it is idempotent.

    Args:
        module (nn.Module): The unwrapped model.
        ddp (nn.Module, optional): Its DDP wrapper. Parameters that require grad at
            construction time are assumed to be in DDP's reducer already (DDP was built when they
            were trainable) and are left to it; ``no_sync()`` is honoured. Defaults to None.
        process_group (ProcessGroup, optional): Defaults to the DDP wrapper's, else the default
            group (looked up at each sync, never held).
    """

    def __init__(self,
                 module: nn.Module,
                 ddp: Optional[nn.Module] = None,
                 process_group=None) -> None:
        if process_group is None and ddp is not None:
            process_group = getattr(ddp, 'process_group', None)
            if process_group is dist.group.WORLD:
                # Resolved at each sync instead: a reference here would keep the default group
                # (and gloo's worker threads) alive after destroy_process_group().
                process_group = None
        self.process_group = process_group
        self.params: List[nn.Parameter] = []
        self.names: List[str] = []
        self._queued = False
        self._sync_next_backward = True
        self._handles = []
        for name, layer in find_pwlu_layers(module):
            for pname, param in layer.named_parameters(recurse=False):
                if ddp is not None and param.requires_grad:
                    continue  # already reduced by DDP, see above
                self.params.append(param)
                self.names.append(f'{name}.{pname}' if name else pname)
                # A hook can only be registered on a tensor that requires grad; it stays
                # registered when requires_grad is switched off and on again (phase changes).
                trainable = param.requires_grad
                param.requires_grad_(True)
                self._handles.append(param.register_post_accumulate_grad_hook(self._on_grad))
                param.requires_grad_(trainable)
        if ddp is not None:
            self._handles.append(ddp.register_forward_pre_hook(self._on_ddp_forward))

    def _on_ddp_forward(self, ddp, args) -> None:
        # DDP decides at forward time whether the coming backward is synchronised.
        self._sync_next_backward = bool(getattr(ddp, 'require_backward_grad_sync', True))

    def _on_grad(self, param: torch.Tensor) -> None:
        if not self._queued:
            self._queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._finish_backward)

    def _finish_backward(self) -> None:
        self._queued = False
        if self._sync_next_backward:
            self.sync()

    @torch.no_grad()
    def sync(self) -> None:
        """All-reduce (mean) the gradients of the trainable PWLU parameters now."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        world = dist.get_world_size(self.process_group)
        params = [p for p in self.params if p.requires_grad]
        if world == 1 or not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).to(params[0].dtype) for g in grads])
        flat.div_(world)
        dist.all_reduce(flat, group=self.process_group)
        offset = 0
        for p in params:
            chunk = flat[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
            if p.grad is None:
                p.grad = chunk.to(p.dtype).clone()
            else:
                p.grad.copy_(chunk)

    def remove(self) -> None:
        """Remove every hook this object registered."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def install_pwlu_grad_sync(model: nn.Module, process_group=None) -> Optional[PWLUGradSync]:
    """Make the PWLU gradients of a (possibly DDP-wrapped) model synchronised across ranks.

    Idempotent: the sync object is stored on the unwrapped model and returned again. Does
    nothing (returns None) when the model has no PWLU parameter to handle.

    Args:
        model (nn.Module): The model, or its ``DistributedDataParallel`` wrapper (including
            mmengine's ``MMDistributedDataParallel``).
        process_group (ProcessGroup, optional): See :class:`PWLUGradSync`.

    Returns:
        PWLUGradSync | None: The installed sync object.
    """
    ddp = model if isinstance(model, nn.parallel.DistributedDataParallel) else None
    module = model.module if ddp is not None else model
    existing = _INSTALLED.get(module)
    if existing is not None:
        return existing
    sync = PWLUGradSync(module, ddp=ddp, process_group=process_group)
    if not sync.params:
        sync.remove()
        return None
    _INSTALLED[module] = sync
    return sync
