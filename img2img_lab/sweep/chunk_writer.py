"""A sweep's chunks decoded, measured and stored on a writer thread while the next chunk denoises.

Generation is the UNet; decoding a chunk's final latents (on the CPU, where the model allows it:
:func:`~img2img_lab.models.memory.decodes_beside_denoising`), measuring its outputs (LPIPS and the fidelity metrics,
batched) and storing them (PNG encoding, the image and row files, the table's part) is other work that need not wait
for it: one writer thread takes each denoised chunk while the main thread runs the next. At one torch thread on a
two-core machine the two overlap on separate cores; on a GPU the metrics run on the GPU beside the next chunk. Where every core generates (:func:`spare_core`), chunks are written in turn instead. At most one chunk waits
to be written (:meth:`ChunkWriter.submit` first waits for the one before), so a killed sweep loses at most the chunk
being written and the one generating, and both are recorded batches that run again whole
(:mod:`img2img_lab.engine.runners`). The store's writes take the folder's lock, so the main thread's batch records
and the writer's files never interleave.

>>> written = []
>>> with ChunkWriter() as writer:
...     for chunk in ([1, 2], [3]):
...         writer.submit(written.extend, chunk)
>>> written
[1, 2, 3]
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import Future, ThreadPoolExecutor


def spare_core(device: str) -> bool:
    """Whether a writer thread has somewhere to run beside generation: the model is on a GPU, or torch's threads
    leave a CPU core idle (with every core busy generating, the writer only slows the UNet down: measured in
    ``benchmarks/sweep_bound.py``'s sweep at 2 threads on 2 cores, 3 sweeps each: 70–74 % of the bound with it,
    79–90 % without).
    ``IMG2IMG_LAB_WRITER_THREAD=0`` or ``1`` decides instead (other processes may hold the idle cores: the test
    suite's workers do).

    >>> spare_core("cuda:0") if "IMG2IMG_LAB_WRITER_THREAD" not in os.environ else True
    True
    """
    import torch

    chosen = os.environ.get("IMG2IMG_LAB_WRITER_THREAD", "").strip()
    if chosen in ("0", "1"):
        return chosen == "1"
    return not device.startswith("cpu") or torch.get_num_threads() < (os.cpu_count() or 1)


#: Python's thread switch interval while a writer thread runs beside generation (seconds; Python's default is 0.005).
#: Between two torch operations the generating thread needs the GIL back; a writer in pure Python keeps it for up to
#: the whole interval. Measured on the embedded model at 1 torch thread, with a pure-Python loop beside 35 replayed
#: UNet calls: 1.7 s alone, 93 s at 0.005, 6.6 s at 0.0002.
SWITCH_INTERVAL = 0.0002


class ChunkWriter:
    """One writer thread, at most one chunk in flight; its errors surface at the next :meth:`submit` or at the end
    of the ``with`` block, which waits for the last chunk (also when the block ends with an error). With
    ``overlap=False`` each chunk is written at once, on the calling thread. While the writer runs, Python hands the
    GIL back every :data:`SWITCH_INTERVAL` (restored at the end of the block)."""

    def __init__(self, *, overlap: bool = True):
        self.overlap = overlap
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future | None = None
        self._switch_interval: float | None = None

    def __enter__(self) -> "ChunkWriter":
        if self.overlap:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="img2img-lab-writer")
            self._switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(min(self._switch_interval, SWITCH_INTERVAL))
        return self

    def submit(self, function, *args) -> None:
        """Run ``function(*args)`` on the writer thread once the chunk before it is written."""
        self.wait()
        if self._executor is None:
            function(*args)
            return
        self._pending = self._executor.submit(function, *args)

    def wait(self) -> None:
        """Wait for the chunk in flight; raise its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __exit__(self, exc_type, exc, traceback) -> None:
        try:
            if exc_type is None:
                self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)  # a chunk being written is finished, never left half-written
            if self._switch_interval is not None:
                sys.setswitchinterval(self._switch_interval)
