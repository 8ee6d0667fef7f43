"""One sweep or calibration across processes, GPUs and hosts, launched by ``torchrun`` (or ``accelerate launch``).

Every rank reads the launcher's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), takes its own device
(``cuda:LOCAL_RANK``, else the CPU), loads the model once (all at once from a local folder; a hub model on rank 0
first, the others after it from the cache it filled) and generates its **shard** of the cells. Ranks coordinate only through barriers of a gloo process group
(no tensors move between ranks; gloo runs everywhere, and its barriers get an explicit long timeout,
:data:`BARRIER_TIMEOUT_S`).

Sharding (:func:`shard_chunks`) splits the *chunks* a runner makes (a batched chunk is never split: its pixels depend
on its composition) by estimated cost (executed steps x cells, x2 with classifier-free guidance), largest first,
each to the least-loaded rank, ties broken by a SHA-256 of the chunk's keys (Python's ``hash`` is salted per
process). The chunks themselves are fixed by the plan, not by the world size, so any world size (1, 2 or 8, or a
resumed run with another) stores the same images.

Files: each rank writes only its own cells (image and row files, atomically); rank 0 alone writes the manifest,
the sources, the VAE floor and ``results.parquet``, after a barrier. A shared filesystem is required (NFS is fine:
``flock`` only guards writers on one host; ranks never write the same file). After a failed job,
``img2img-lab consolidate RUN`` rebuilds ``results.parquet`` by hand, and a plain rerun (any world size) generates
only the missing cells.

>>> context_from_environment({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
Context(rank=1, world_size=2, local_rank=1)
>>> context_from_environment({}).is_main
True
>>> [len(shard) for shard in shard_chunks([(["a"], 5.0), (["b"], 3.0), (["c"], 3.0), (["d"], 1.0)], 2)]
[2, 2]
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta

from img2img_lab.errors import Img2ImgLabError

#: How long a rank waits at a barrier for the others (a slow rank may have hours of cells left).
BARRIER_TIMEOUT_S = 24 * 3600


@dataclass(frozen=True)
class Context:
    """Where this process stands in a launched job (``world_size`` 1: a plain single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def context_from_environment(environ=None) -> Context:
    """The launcher's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (a single process when they are absent)."""
    environ = os.environ if environ is None else environ
    try:
        world_size = int(environ.get("WORLD_SIZE", "1"))
        rank = int(environ.get("RANK", "0"))
        local_rank = int(environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise Img2ImgLabError(f"RANK / WORLD_SIZE / LOCAL_RANK must be whole numbers (got RANK={environ.get('RANK')!r}, "
                              f"WORLD_SIZE={environ.get('WORLD_SIZE')!r}). Fix: launch with torchrun.") from None
    if world_size < 1 or not 0 <= rank < world_size:
        raise Img2ImgLabError(f"RANK={rank} does not fit WORLD_SIZE={world_size}. Fix: launch with torchrun.")
    return Context(rank=rank, world_size=world_size, local_rank=local_rank)


def current() -> Context:
    """This process's context; in a launched job the gloo process group is started on first use."""
    context = context_from_environment()
    if context.distributed:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="gloo", timeout=timedelta(seconds=BARRIER_TIMEOUT_S))
    return context


def leave() -> None:
    """Leave the job's process group, if this process joined one (at the end of a command)."""
    import sys

    dist = sys.modules.get("torch.distributed")  # never imported: no group to leave (and no torch import to pay)
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: Context) -> None:
    """Wait for every rank (nothing to do in a single process)."""
    if context.distributed:
        import torch.distributed as dist

        dist.barrier()


def main_first(context: Context, function):
    """Run ``function`` on rank 0, then, after a barrier, on the other ranks, and wait until all are done; return
    this rank's result (rank 0 downloads a model into the cache, or creates the run folder, before the others need
    it, and no rank moves on while another still reads the folder's state)."""
    result = function() if context.is_main else None
    barrier(context)
    if not context.is_main:
        result = function()
    barrier(context)
    return result


def load_model(context: Context, load, *, local: bool):
    """``load()`` on every rank: all at once for a model in a local folder, rank 0 first for a hub model (it
    downloads into the cache the others then read)."""
    return load() if local else main_first(context, load)


def agree(context: Context, value):
    """Rank 0's ``value``, on every rank (a decision all ranks must take the same way)."""
    if not context.distributed:
        return value
    import torch.distributed as dist

    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def sum_counts(context: Context, counts: dict) -> dict:
    """Every rank's whole-number ``counts`` added up, on every rank (the job's totals; other entries are rank 0's),
    with ``generated_by_rank``.

    >>> sum_counts(Context(), {"generated": 3})
    {'generated': 3}
    """
    if not context.distributed:
        return counts
    import torch.distributed as dist

    gathered = [None] * context.world_size
    dist.all_gather_object(gathered, counts)
    total = dict(gathered[0])
    for name in {name for part in gathered for name, value in part.items()
                 if isinstance(value, int) and not isinstance(value, bool)}:
        total[name] = sum(part.get(name, 0) for part in gathered)
    total["generated_by_rank"] = [part.get("generated", 0) for part in gathered]
    return total


def rank_device(context: Context, device: str | None) -> str | None:
    """The device a rank uses: ``cuda:LOCAL_RANK`` in a launched job on a GPU host (unless ``device`` says
    otherwise), else ``device`` as given (None: the best available)."""
    if not context.distributed or device not in (None, "cuda"):
        return device
    import torch

    return f"cuda:{context.local_rank}" if torch.cuda.is_available() else "cpu"


def consolidate(run_dir) -> tuple[int, int]:
    """Rebuild ``results.parquet`` from every row file (what rank 0 does at the end of a job; by hand after a failed
    one); returns ``(rows now, rows before)``."""
    from img2img_lab.store.run_store import RunStore

    store = RunStore.open(run_dir)
    before = len(store.read_table(allow_damaged=True))
    store.reload()
    store.flush()
    return len(store.read_table(allow_damaged=True)), before


def chunk_cost(cells) -> float:
    """Estimated cost of a chunk: executed steps per cell (at least 1: a zero-step cell still runs the VAE), x2 with
    classifier-free guidance (guidance > 1 evaluates the denoiser twice per step)."""
    return float(sum(max(cell.executed_steps, 1) * (2 if cell.guidance_scale > 1 else 1) for cell in cells))


def _tie_breaker(keys) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


def shard_chunks(chunks, world_size: int) -> list[list]:
    """Assign ``(keys, cost)`` chunks to ``world_size`` shards: largest cost first, each to the least-loaded shard
    (lowest rank on a tie), chunks of equal cost ordered by a SHA-256 of their keys. Deterministic on every rank and
    in every process; returns the chunks of each shard, each in its original order."""
    order = sorted(range(len(chunks)), key=lambda index: (-chunks[index][1], _tie_breaker(chunks[index][0])))
    loads = [0.0] * world_size
    owner = {}
    for index in order:
        rank = min(range(world_size), key=lambda candidate: (loads[candidate], candidate))
        owner[index] = rank
        loads[rank] += chunks[index][1]
    return [[chunk for index, chunk in enumerate(chunks) if owner[index] == rank] for rank in range(world_size)]


@dataclass
class ShardedRunner:
    """A runner (:mod:`img2img_lab.engine.runners`) restricted to this rank's shard of its chunks."""

    runner: object
    context: Context

    @property
    def name(self) -> str:
        return self.runner.name

    @property
    def batch_limit(self):
        return self.runner.batch_limit

    def remembering(self):
        return self.runner.remembering()

    def chunks(self, planned, pending, recorded=()):
        chunks = list(self.runner.chunks(planned, pending, recorded))
        costed = [([key for _, key in chunk], chunk_cost([cell for cell, _ in chunk])) for chunk, _ in chunks]
        shards = shard_chunks(costed, self.context.world_size)
        wanted = {tuple(keys) for keys, _ in shards[self.context.rank]}
        for chunk, batch_id in chunks:
            if tuple(key for _, key in chunk) in wanted:
                yield chunk, batch_id

    def run(self, cells):
        return self.runner.run(cells)

    def start(self, cells):
        return self.runner.start(cells)


def job_progress(bar, world_size: int):
    """``on_work`` for rank 0's progress bar in a job of ``world_size`` ranks: each of its denoising steps stands for
    one step of every rank (the shards are cost-balanced, so the ranks keep one pace), never past the bar's total; a
    single process counts its own steps. :meth:`~img2img_lab.sweep.session.SweepWriter.show_job_progress` corrects
    it from the cells every rank stored.

    >>> import io
    >>> from tqdm import tqdm
    >>> bar = tqdm(total=10, file=io.StringIO()); advance = job_progress(bar, 2)
    >>> advance(3); advance(3); bar.n
    10
    """
    if world_size == 1:
        return bar.update

    def advance(steps: int) -> None:
        bar.update(min(steps * world_size, bar.total - bar.n))

    return advance
