"""A CPU sweep's chunks run side by side: two streams, each on its share of torch's threads.

On a CPU with every core generating, one chunk at a time on all of torch's threads wastes much of them: the embedded
model's UNet calls are small, and at 2 threads on 2 cores they run only about 1.4 times as fast as at 1. The decoding,
the metrics and the files then run in turn between chunks, the metrics and the files on one core. Two chunks side by
side, each on half of the threads, keep both cores busy through most of it (``benchmarks/sweep_bound.py``; the
figures are in the benchmarks page of the docs).

A sweep runs its chunks side by side where (:func:`chunk_streams`):

* the batched engine runs on the CPU with at least 2 torch threads, on a machine with at least 2 cores;
* the model is small (under :data:`~img2img_lab.models.threads.SMALL_MODEL_PARAMETERS`, as for the thread default):
  a large one keeps every thread busy in one chunk. An SD 1.5-sized pipeline at 256 px (4 cells, 4 steps, 2 threads,
  3 interleaved rounds) swept side by side took 47.6–49.9 s against 42.2–45.7 s one chunk at a time;
* the pipeline class is one its family module declares safe to run twice at once (``Family.side_by_side``: its
  batched chunks keep no state on the pipeline; perturbed-attention guidance, for one, swaps the UNet's attention
  processors);
* the sweep sets no batch size or memory budget: those size one batch in flight, and two streams hold two (of a
  small model's, each at the device's fixed cap: 16 samples per call on a CPU; halving it for each stream made the
  embedded model's side-by-side sweep only 1.05 times as fast as one chunk at a time, against 1.21–1.22 at 16);
* nothing else shares the pipeline's state: no LoRA (diffusers scales the LoRA layers in place for each call), no
  offload hook or cast VAE (:func:`~img2img_lab.models.memory.decodes_beside_denoising`), no ``on_step`` callback
  (it would hear two chunks' steps interleaved), not a launched job (its ranks are the parallelism).

``IMG2IMG_LAB_CHUNK_STREAMS=1`` runs chunks one at a time; ``2`` asks for two wherever the rules allow it (a machine
with one core too). The manifest's ``engine`` entry records the choice and its reason.

Each stream records its chunk's batch, runs and decodes it, then measures and stores it. Measuring and storing are
each one stream at a time (the metrics' reference cache, the store and the counts are the session's), so one stream
measures while the other stores. At most two chunks are ever in flight, so a killed sweep loses at most two recorded
batches, which run again whole.

>>> done = []
>>> run_side_by_side([1, 2, 3], done.append, streams=2)
>>> sorted(done)
[1, 2, 3]
"""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from img2img_lab.errors import PlanError
from img2img_lab.sweep.chunk_writer import SWITCH_INTERVAL

#: The environment variable that decides instead of the rules' default: ``1`` (one chunk at a time) or ``2``.
STREAMS_VARIABLE = "IMG2IMG_LAB_CHUNK_STREAMS"


def chunk_streams(model, runner, *, on_step=None, lora: bool = False, distributed: bool = False) -> tuple[int, str]:
    """``(streams, reason)``: how many chunks of this sweep run side by side (1 or 2) and why (see the module doc).

    >>> from img2img_lab.engine.runners import choose_runner
    >>> runner = choose_runner(model, sources, engine="batched")[0]
    >>> chunk_streams(model, runner, lora=True)
    (1, 'one chunk at a time: a LoRA is scaled in place on the pipeline for each call')
    """
    import torch

    from img2img_lab.models.memory import decodes_beside_denoising
    from img2img_lab.models.threads import SMALL_MODEL_PARAMETERS, pipeline_parameters

    refusals = (  # checked in order, each only if those before it pass (a walk over the modules comes last)
        (lambda: getattr(runner, "name", None) != "batched", "the per-cell runner runs one cell at a time"),
        (lambda: distributed, "a launched job runs its ranks side by side instead"),
        (lambda: model.device.type != "cpu", f"chunks run side by side on a CPU only, not on {model.device.type}"),
        (lambda: type(model.pipe).__name__ not in model.family.side_by_side,
         f"{type(model.pipe).__name__} is not declared safe to run twice at once by its family module"),
        (lambda: bool(getattr(runner, "max_batch_size", None) or getattr(runner, "fitted", None)),
         "a batch size or memory budget set for the sweep sizes one batch at a time"),
        (lambda: lora, "a LoRA is scaled in place on the pipeline for each call"),
        (lambda: on_step is not None, "an on_step callback hears one chunk's steps at a time"),
        (lambda: not decodes_beside_denoising(model), "an offload hook or a cast VAE changes the pipeline as it runs"),
    )
    refusal = next((why for held, why in refusals if held()), None)
    if refusal is not None:
        return 1, f"one chunk at a time: {refusal}"
    chosen = os.environ.get(STREAMS_VARIABLE, "").strip()
    if chosen not in ("", "1", "2"):
        raise PlanError(f"{STREAMS_VARIABLE}={chosen!r} is not 1 or 2. Fix: set it to 1 (one chunk at a time) or 2 "
                        f"(two side by side where the rules allow it), or unset it.")
    if chosen:
        how = "one chunk at a time" if chosen == "1" else "2 side by side"
        return int(chosen), f"{how}, as {STREAMS_VARIABLE} asks"
    threads, cores = torch.get_num_threads(), os.cpu_count() or 1
    if threads < 2 or cores < 2:
        return 1, f"one chunk at a time: {threads} torch thread(s) on {cores} core(s)"
    parameters = pipeline_parameters(model.pipe)
    if parameters >= SMALL_MODEL_PARAMETERS:
        return 1, (f"one chunk at a time: a large model ({parameters / 1e6:.0f} M parameters) keeps every thread busy "
                   f"in one chunk")
    return 2, f"2 side by side, {stream_threads(threads, 2)} torch thread(s) each ({threads} threads on {cores} cores)"


def stream_threads(threads: int, streams: int) -> int:
    """The torch threads each of ``streams`` streams runs on, of ``threads`` (what the rows of its cells record: on a
    CPU the thread count changes a convolution's last bits, and ``verify`` regenerates with it).

    >>> stream_threads(2, 2), stream_threads(1, 2), stream_threads(8, 1)
    (1, 1, 8)
    """
    return max(1, threads // streams)


def generate_side_by_side(chunks: list, runner, *, record, measure, store) -> None:
    """Generate ``chunks`` (``(cells and keys, batch id)`` pairs) on ``runner.streams`` streams: each stream records
    its chunk's batch (``record(chunk, batch_id)``), runs and decodes it (``runner.run``), measures the outputs
    (``measured = measure(chunk, outputs)``, holding one lock: the metrics' reference cache is the sweep's), then
    stores them (``store(measured, batch_id, last)``, holding another: the store and the counts are the sweep's).
    So one stream measures while the other stores, also when the last two chunks finish together.
    ``runner.on_work``, the progress bar's, is called under a lock too.

    >>> class Doubling:
    ...     streams, on_work = 2, None
    ...     def run(self, cells):
    ...         return [2 * cell for cell in cells]
    >>> stored = []
    >>> chunks = [([(1, "key 1"), (2, "key 2")], "a"), ([(3, "key 3")], "b")]
    >>> generate_side_by_side(chunks, Doubling(), record=lambda chunk, batch_id: None,
    ...                       measure=lambda chunk, outputs: [(key, output, output > 3)
    ...                                                       for (_, key), output in zip(chunk, outputs)],
    ...                       store=lambda measured, batch_id, last: stored.append((batch_id, measured, last)))
    >>> sorted(stored)
    [('a', [('key 1', 2, False), ('key 2', 4, True)], False), ('b', [('key 3', 6, True)], True)]
    """
    measuring, storing, counting, last = threading.Lock(), threading.Lock(), threading.Lock(), len(chunks) - 1
    advance = runner.on_work

    def counted(steps: int) -> None:
        with counting:
            advance(steps)

    def stream(indexed) -> None:
        index, (chunk, batch_id) = indexed
        record(chunk, batch_id)
        outputs = runner.run([cell for cell, _ in chunk])
        with measuring:
            measured = measure(chunk, outputs)
        with storing:
            store(measured, batch_id, index == last)

    runner.on_work = counted if advance is not None else None
    try:
        run_side_by_side(list(enumerate(chunks)), stream, streams=runner.streams)
    finally:
        runner.on_work = advance


def run_side_by_side(chunks, work, *, streams: int = 2) -> None:
    """Call ``work(chunk)`` for every chunk on ``streams`` threads, each taking the next chunk when it is done, with
    torch's threads shared among them (restored afterwards, as is Python's thread switch interval, which is
    :data:`~img2img_lab.sweep.chunk_writer.SWITCH_INTERVAL` meanwhile). The first error, or an interrupt (Ctrl-C),
    stops the streams from taking more chunks; the chunks in flight finish (never half-written), then it is raised."""
    import torch

    pending, lock, stop, failed = iter(list(chunks)), threading.Lock(), threading.Event(), []

    def stream() -> None:
        while not stop.is_set():
            with lock:
                chunk = next(pending, None)
            if chunk is None:
                return
            try:
                work(chunk)
            except BaseException as error:  # noqa: BLE001 - raised again on the calling thread
                failed.append(error)
                stop.set()

    threads, interval = torch.get_num_threads(), sys.getswitchinterval()
    torch.set_num_threads(stream_threads(threads, streams))
    sys.setswitchinterval(min(interval, SWITCH_INTERVAL))
    try:
        with ThreadPoolExecutor(max_workers=streams, thread_name_prefix="img2img-lab-stream") as pool:
            futures = [pool.submit(stream) for _ in range(streams)]
            try:
                for future in futures:
                    future.result()
            except BaseException:  # an interrupt on this thread: the streams finish their chunks and stop
                stop.set()
                raise
    finally:
        torch.set_num_threads(threads)
        sys.setswitchinterval(interval)
    if failed:
        raise failed[0]
