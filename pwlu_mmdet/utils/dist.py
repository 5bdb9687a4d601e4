"""Ending a torch.distributed job cleanly (needs only torch)."""
import gc

import torch.distributed as dist

__all__ = ['destroy_process_group']


def destroy_process_group() -> None:
    """Synchronise the ranks, then destroy the process groups while Python is fully alive.

    Why: gloo runs collectives on C++ worker threads, and a worker releases a finished
    collective -- with the Python objects captured in its thread-local state -- only after the
    caller has woken up. If that happens while the interpreter is finalising, the thread cannot
    take the GIL and the process aborts ("terminate called without an active exception",
    SIGABRT) although the job itself finished. Destroying a group joins its threads, but only
    once nothing else holds the group; ``DistributedDataParallel`` wrappers hold it through
    reference cycles, hence the garbage collection first. (With NCCL this also avoids torch's
    "process group has NOT been destroyed" warning at exit.)

    Drop your own references to DDP-wrapped models (e.g. the runner) before calling this. Does
    nothing when torch.distributed is not initialised.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()
    dist.barrier()  # no rank closes its connections while another is still in a collective
    dist.destroy_process_group()
