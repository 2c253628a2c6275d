"""What the side-by-side benchmarks share: timing a call, its peak memory, and writing the results.

    seconds = timed(lambda: model(ids), device, repeats=5)      # median, after a warm-up call
    grew_mb = peak_rss_growth(lambda: model.generate(...))
    write_results(results, args.json)                           # --json PATH (nothing when None)

On Linux a process's peak resident set size (VmHWM in /proc/self/status) can be reset by writing 5 to
/proc/self/clear_refs; so: reset, run, read the new peak, subtract what was resident before. That is the memory the
call needed on top of what the process already held (the models, and the memory the allocator kept from earlier
calls: after a warm-up, a small model's step reuses it and reads near 0 MB). On CUDA, torch's own peak counter.
"""
from __future__ import annotations

import re
import statistics
import time

import torch

from llava_mini.jsonio import write_json


def sync(device) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def elapsed(fn, device=None) -> float:
    """Seconds of one fn() call (on a GPU, until its kernels finish)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def timed(fn, device=None, repeats: int = 5, warmup: int = 1) -> float:
    """Median seconds of fn() over `repeats` calls, after `warmup` calls that are not counted."""
    for _ in range(warmup):
        fn()
    return statistics.median(elapsed(fn, device) for _ in range(repeats))


def write_results(results: dict, path: str | None) -> None:
    """The benchmark's --json: write `results` there (atomically) and say so."""
    if path:
        write_json(results, path)
        print(f"wrote {path}")


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s*(\d+) kB", f.read())[1])


def peak_rss_growth(fn, device=None) -> float | None:
    """MB of memory fn() needed beyond what was allocated before it (None where this cannot be measured)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2 ** 20
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                              # reset VmHWM to the current RSS
        before = _rss_kb("VmRSS")
    except OSError:
        return None
    fn()
    return max(0, _rss_kb("VmHWM") - before) / 1024
