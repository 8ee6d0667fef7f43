"""Memory, measured and parsed: the peak a block of code reaches (CUDA: the allocator's peak; CPU: the process's
resident memory, sampled), the memory available on a device, and sizes written as text (``"6GB"``).

>>> parse_size("6GB"), parse_size("512 MiB"), parse_size(1024)
(6000000000, 536870912, 1024)
>>> with PeakMemory("cpu") as peak:
...     block = bytearray(64 * 2**20)
>>> peak.rise >= 0
True
"""

from __future__ import annotations

import re
import threading
import time

from img2img_lab.errors import PlanError

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20,
          "gib": 2**30, "tib": 2**40}


def parse_size(value) -> int:
    """A memory size in bytes: an integer, or text such as ``6GB``, ``6 GiB``, ``500MB``."""
    if isinstance(value, bool):
        raise PlanError(f"memory size {value!r} is not a size. Fix: write e.g. 6GB or 512MiB.")
    if isinstance(value, (int, float)) and value > 0:
        return int(value)
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]i?b|b)?\s*", str(value).lower())
    if not match or float(match.group(1)) <= 0:
        raise PlanError(f"memory size {value!r} is not a size. Fix: write e.g. 6GB or 512MiB.")
    return int(float(match.group(1)) * _UNITS[match.group(2) or ""])


def resident_bytes() -> int:
    """This process's resident memory now (Linux ``/proc/self/statm``; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm") as stream:
            import os

            return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def available_bytes(device: str) -> int:
    """Memory a new allocation may take on ``device``: CUDA's free memory; on the CPU, ``MemAvailable``."""
    if str(device).startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as stream:
            for line in stream:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """The peak memory a ``with`` block reaches above what was in use when it began (``rise``), and the peak itself
    (``peak``): on CUDA the allocator's (``torch.cuda.max_memory_allocated``), on the CPU the resident memory, sampled
    every ``interval`` seconds by a thread (a peak shorter than that can be missed)."""

    def __init__(self, device: str = "cpu", *, interval: float = 0.002):
        self.device, self.interval = str(device), interval
        self.start = self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> "PeakMemory":
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = self.peak = torch.cuda.memory_allocated()
            return self
        self.start = self.peak = resident_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, resident_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, resident_bytes())

    @property
    def rise(self) -> int:
        return max(0, self.peak - self.start)
