"""Peak memory of one call, for the side-by-side benchmarks (imported by bench_decode.py and bench_train_step.py).

    grew_mb = peak_rss_growth(lambda: model.generate(...))

On Linux a process's peak resident set size (VmHWM in /proc/self/status) can be reset by writing 5 to
/proc/self/clear_refs; so: reset, run, read the new peak, subtract what was resident before. That is the memory the
call needed on top of what the process already held (the models, and the memory the allocator kept from earlier
calls: after a warm-up, a small model's step reuses it and reads near 0 MB). On CUDA, torch's own peak counter.
"""
from __future__ import annotations

import re

import torch


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
