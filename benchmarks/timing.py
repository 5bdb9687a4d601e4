"""The timing rule of every benchmark here: the implementations compared run in one process,
interleaved, and are compared by ratios measured the same way.

:func:`interleaved_times` warms every callable up, then times ``repeat`` rounds; each round calls
every callable once, starting with another one each round, so that drift in the machine's speed
(a shared CPU moves by 10-20% within a minute) hits each alike and none always runs first.
:func:`median_ratio` compares two callables by the median of their per-round ratios, which cancels
the drift between rounds. A timer turns a callable into a measurement: :func:`wall_timer` (one
call, wall time with the device synchronised: training steps, CPU ops) or :func:`cuda_event_timer`
(a batch of back-to-back calls between CUDA events: single GPU ops).
"""
import statistics
import time
from typing import Callable, Dict, Hashable, List, Sequence

import torch

Timer = Callable[[Callable[[], object]], Callable[[], float]]

# CUDA event batches: back-to-back calls of one callable, enough for this many ms of GPU time.
GPU_BATCH_MS = 2.0
MAX_GPU_BATCH = 200


def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def wall_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call in ms, the device synchronised after it."""
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return (time.perf_counter() - t0) * 1e3


def cuda_event_ms(fn: Callable[[], object], calls: int = 1) -> float:
    """Time of one call in ms from CUDA events around ``calls`` back-to-back calls, divided by
    ``calls``. Several calls let the host queue the next launches while the GPU runs, as in a
    training step; events around a single call would time the host's launch latency as well,
    which on a fast GPU is most of a small op."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / calls


def wall_timer(device: torch.device) -> Timer:
    """Measures a callable by :func:`wall_ms`."""
    return lambda fn: lambda: wall_ms(fn, device)


def cuda_event_timer(device: torch.device) -> Timer:
    """Measures a callable by :func:`cuda_event_ms` over a batch of calls sized once, from one
    timed call, to about ``GPU_BATCH_MS`` of GPU time."""
    def timer(fn):
        synchronize(device)
        one = cuda_event_ms(fn)
        calls = max(1, min(MAX_GPU_BATCH, int(GPU_BATCH_MS / max(one, 1e-3))))
        return lambda: cuda_event_ms(fn, calls)
    return timer


def interleaved_times(fns: Dict[Hashable, Callable[[], object]], timer: Timer, repeat: int,
                      warmup: int) -> Dict[Hashable, List[float]]:
    """Times (ms) of ``repeat`` rounds of every callable, in round order.

    Args:
        fns (dict): Name -> callable; the first is the usual baseline (ReLU).
        timer (callable): :func:`wall_timer` or :func:`cuda_event_timer` of the device.
        repeat (int): Timed rounds.
        warmup (int): Untimed rounds before them.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    measure = {name: timer(fns[name]) for name in names}
    times = {name: [] for name in names}
    for i in range(repeat):
        for name in names[i % len(names):] + names[:i % len(names)]:
            times[name].append(measure[name]())
    return times


def median_ratio(times: Sequence[float], base: Sequence[float]) -> float:
    """Median of the per-round ratios ``times[i] / base[i]``."""
    return statistics.median(a / b for a, b in zip(times, base))


def median_ratios(times: Dict[Hashable, List[float]], base: Hashable = 'ReLU') -> dict:
    """Per name: ``(median ms, median of the per-round ratios to base)``."""
    return {name: (statistics.median(t), median_ratio(t, times[base]))
            for name, t in times.items()}
