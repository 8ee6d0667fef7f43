"""The runners a sweep generates with, behind one protocol: :class:`PerCellRunner` (the reference: one plain
diffusers call per cell, :func:`img2img_lab.engine.per_cell.run_cell`) and :class:`BatchedRunner` (many cells per UNet call,
:func:`img2img_lab.engine.batched.run_cells_batched`).

A runner splits the cells to generate into **chunks** and **runs** a chunk, returning one
:class:`~img2img_lab.engine.per_cell.CellOutput` per cell. A batched chunk holds only cells to generate — an extension of a
finished sweep (a new strength, seed, prompt or source) generates exactly its new cells — and is named by its
``batch_id``. The pixels of a batched cell depend on its batch, which the run folder records before the batch runs:
a recorded batch that is not wholly stored (a killed sweep, a damaged image) runs again whole, with the same
composition, so a resumed or repaired sweep stores the same pixels; a per-cell chunk is one cell with no batch.

>>> runner, reason = choose_runner(model, sources, engine="batched")
>>> runner.name, reason
('batched', 'StableDiffusionImg2ImgPipeline')
>>> planned = [(cell, f"key{index}") for index, cell in enumerate(cells) if cell.duplicate_of is None]
>>> [(len(chunk), batch_id is not None) for chunk, batch_id in runner.chunks(planned, planned[:1])]
[(1, True)]
>>> recorded = [{"keys": [key for _, key in planned], "max_batch_size": runner.batch_limit}]  # a killed sweep's batch
>>> [len(chunk) for chunk, _ in runner.chunks(planned, planned[:1], recorded)]
[6]
>>> [output.produced for output in PerCellRunner(model, sources).run(cells[:2])]
['vae_roundtrip', 'diffusion']
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Iterator, Protocol

from img2img_lab.engine.batch_limits import DEFAULT_MAX_BATCH, fit_batch_limit
from img2img_lab.engine.per_cell import CellOutput, run_cell
from img2img_lab.engine.remembered import EncodingMemo, remembered_encodings
from img2img_lab.models.handle import ModelHandle
from img2img_lab.plan.axes import chunk_key
from img2img_lab.plan.sweep_plan import Cell

#: A chunk: the (cell, key) pairs run together, and the id of their batch (None for a per-cell chunk).
Chunk = tuple[list[tuple[Cell, str]], "str | None"]


class Runner(Protocol):
    """What a sweep needs of a runner (see the module doc)."""

    name: str

    def chunks(self, planned: list[tuple[Cell, str]], pending: list[tuple[Cell, str]],
               recorded=()) -> Iterator[Chunk]:
        """The chunks that generate every ``pending`` cell (``planned``: every non-duplicate cell of the plan;
        ``recorded``: the run folder's batch records that hold a pending cell)."""

    def run(self, cells: list[Cell]) -> list[CellOutput]:
        """Generate one chunk's cells; one output per cell, in order."""

    def start(self, cells: list[Cell]) -> Callable[[], list[CellOutput]]:
        """Generate one chunk's cells up to what may be finished on another thread (the batched engine's decoding);
        the function returned finishes them and returns :meth:`run`'s outputs."""

    @property
    def batch_limit(self) -> int | None:
        """UNet samples per call (None: one cell per call)."""

    def remembering(self):
        """A context manager around a sweep's generation: what the runner may compute once for all its chunks."""


def cell_work(steps) -> int:
    """A cell's share of a sweep's progress, from its :class:`~img2img_lab.models.handle.StepPlan`: the denoiser evaluations
    it runs (one per timestep of its loop; a zero-step cell's VAE round trip counts 1)."""
    return 0 if steps is None else max(int(steps.denoiser_evaluations), 1)


@dataclass
class PerCellRunner:
    """The reference runner: each pending cell alone, in plan order, with a plain pipeline call. ``on_work(n)`` (both
    runners) is told each unit of :func:`cell_work` as it is done."""

    model: ModelHandle
    sources: list
    on_step: object = None
    on_work: object = None
    conditions: list | None = None  # sweep_conditions.SourceCondition per source (masks, control images)
    name = "per-cell"
    batch_limit = None
    memo: EncodingMemo | None = None

    @contextmanager
    def remembering(self):
        """Within the block, each pipeline's prompt encodings and its VAE's encodings of a source are computed once
        (:mod:`img2img_lab.engine.remembered`: bit-identical to plain calls, undone afterwards)."""
        with remembered_encodings() as self.memo:
            try:
                yield self.memo
            finally:
                self.memo = None

    def chunks(self, planned, pending, recorded=()) -> Iterator[Chunk]:
        for cell, key in pending:
            yield [(cell, key)], None

    def run(self, cells: list[Cell]) -> list[CellOutput]:
        return [self._run_one(cell) for cell in cells]

    def start(self, cells: list[Cell]) -> Callable[[], list[CellOutput]]:
        outputs = self.run(cells)
        return lambda: outputs

    def _run_one(self, cell: Cell) -> CellOutput:
        condition = None if self.conditions is None else self.conditions[cell.image_index].call_inputs(cell.mode)
        if self.memo is not None:
            self.memo.install(self.model.for_mode(cell.mode).pipe)
        return _reported_cell(self.model, cell, self.sources[cell.image_index], condition, self.on_step, self.on_work)


def _reported_cell(model, cell: Cell, source, condition, on_step, on_work) -> CellOutput:
    """:func:`run_cell`, telling ``on_step`` each step and ``on_work`` each unit of :func:`cell_work`."""
    def step(done: int, total: int) -> None:
        if on_step is not None:
            on_step(done, total)
        if on_work is not None:
            on_work(1)

    output = run_cell(model, cell, source, on_step=step, condition=condition)
    if cell.zero_step and on_work is not None:
        on_work(1)
    return output


def run_chunk(model: ModelHandle, cells: list[Cell], sources: list, conditions: list | None = None, *,
              max_batch_size: int | None = None, on_step=None, on_work=None) -> list[CellOutput]:
    """One batched chunk, as the batched runner runs it and ``verify`` regenerates it: through the batched engine
    (cells cropped around their mask, ``padding_mask_crop``, on their cropped views), except a chunk whose mode's
    pipeline the engine does not reproduce (a UNet with a guidance embedding, a LoRA scale...), which
    runs per cell.
    ``conditions[i]``: source ``i``'s call inputs for the chunk's mode (``mask_image``, ``control_image``), or
    ``None``.

    >>> [output.produced for output in run_chunk(model, cells[:2], sources)]
    ['vae_roundtrip', 'diffusion']
    """
    return start_chunk(model, cells, sources, conditions, max_batch_size=max_batch_size, on_step=on_step,
                       on_work=on_work)()


def start_chunk(model: ModelHandle, cells: list[Cell], sources: list, conditions: list | None = None, *,
                max_batch_size: int | None = None, on_step=None, on_work=None) -> Callable[[], list[CellOutput]]:
    """:func:`run_chunk` up to its decoding: returns the function that decodes the chunk and returns its outputs
    (a chunk run per cell is finished at once).

    >>> finish = start_chunk(model, cells[:2], sources)
    >>> [output.produced for output in finish()]
    ['vae_roundtrip', 'diffusion']
    """
    from img2img_lab.engine.batched import batching_supported, denoise_cells_batched

    runner = model.for_mode(cells[0].mode)
    options = {"max_batch_size": max_batch_size, "on_step": on_step, "on_work": on_work}
    batchable, cropped = batching_supported(runner)[0], getattr(cells[0], "padding_mask_crop", None) is not None
    if batchable and not cropped:
        return denoise_cells_batched(model, cells, sources, conditions=conditions, **options)
    if batchable:
        return _start_cropped_chunk(runner, cells, sources, conditions, **options)
    outputs = [_reported_cell(model, cell, sources[cell.image_index],
                              None if conditions is None else conditions[cell.image_index], on_step, on_work)
               for cell in cells]
    return lambda: outputs


def _start_cropped_chunk(runner: ModelHandle, cells: list[Cell], sources: list, conditions: list, *, on_step, on_work,
                         **options) -> Callable[[], list[CellOutput]]:
    """:func:`start_chunk` for cells cropped around their mask (``padding_mask_crop``): batched on the cropped views
    (:mod:`img2img_lab.engine.mask_crop`), a zero-step cell per cell (it never reaches the pipeline)."""
    from img2img_lab.engine.mask_crop import denoise_cropped_cells

    outputs = {index: _reported_cell(runner, cell, sources[cell.image_index], conditions[cell.image_index], on_step,
                                     on_work) for index, cell in enumerate(cells) if cell.zero_step}
    active = [index for index, cell in enumerate(cells) if not cell.zero_step]
    decode = denoise_cropped_cells(runner, [cells[index] for index in active], sources, conditions, on_step=on_step,
                                   on_work=on_work, **options) if active else list

    def finish() -> list[CellOutput]:
        outputs.update(zip(active, decode()))
        return [outputs[index] for index in range(len(cells))]

    return finish


@dataclass
class BatchedRunner:
    """The batched runner: chunks of up to ``max(2 * limit, 32)`` cells to generate that share every axis cells of one
    batch must share (:func:`~img2img_lab.plan.axes.chunk_key`: steps, scheduler, mode, ControlNet settings) and a
    size.

    First every recorded batch that holds a cell to generate runs again whole (its recorded composition: a killed or
    damaged batch stores the same pixels as before); the other cells to generate are chunked in plan order. A fresh
    sweep and its resumption therefore store the same images, and an extension generates only its new cells (batched
    among themselves: within the engine's tolerance of a fresh sweep of the extended plan).
    """

    model: ModelHandle
    sources: list
    max_batch_size: int | None = None
    on_step: object = None
    on_work: object = None
    fitted: dict | None = None  # batch_limits.fit_batch_limit's answer where a memory budget applies
    conditions: list | None = None  # sweep_conditions.SourceCondition per source (masks, control images)
    streams: int = 1  # chunks the sweep runs side by side (sweep/chunk_streams.py); they are dealt to match
    name = "batched"

    @cached_property
    def device_type(self) -> str:
        """The pipeline's device type, read once (a sweep's pipeline stays where it is)."""
        return self.model.device.type

    @property
    def batch_limit(self) -> int:
        """UNet samples per call: ``max_batch_size`` if given, else the largest batch under the memory budget, else
        the device's fixed cap."""
        if self.max_batch_size:
            return self.max_batch_size
        return self.fitted["limit"] if self.fitted else DEFAULT_MAX_BATCH.get(self.device_type, 16)

    def chunks(self, planned, pending, recorded=()) -> Iterator[Chunk]:
        limit, todo = self.batch_limit, {key for _, key in pending}
        known = {key: (cell, key) for cell, key in planned}
        replayed: set[str] = set()
        for record in sorted(recorded, key=lambda record: record["keys"]):  # 1. recorded batches, whole
            keys = list(record["keys"])
            if (record["max_batch_size"] == limit and todo & set(keys) and all(key in known for key in keys)
                    and not replayed & set(keys)):
                replayed |= set(keys)
                yield [known[key] for key in keys], _batch_id(keys, limit)
        groups: dict[tuple, list[tuple[Cell, str]]] = {}  # 2. the rest of the cells to generate, in plan order
        for cell, key in pending:
            if key not in replayed:
                size = self.sources[cell.image_index].size
                groups.setdefault((*chunk_key(cell), size), []).append((cell, key))
        for members in groups.values():
            for chunk in split_chunks(members, max(2 * limit, 32), streams=self.streams,
                                      work=lambda member: member[0].strength):
                yield chunk, _batch_id([key for _, key in chunk], limit)

    def remembering(self):
        """Nothing to remember across chunks: each chunk encodes its prompts and sources once."""
        return nullcontext()

    def run(self, cells: list[Cell]) -> list[CellOutput]:
        """One chunk (:func:`run_chunk`)."""
        return self.start(cells)()

    def start(self, cells: list[Cell]) -> Callable[[], list[CellOutput]]:
        """One chunk up to its decoding (:func:`start_chunk`)."""
        conditions = None if self.conditions is None else [condition.call_inputs(cells[0].mode)
                                                           for condition in self.conditions]
        return start_chunk(self.model, cells, self.sources, conditions, max_batch_size=self.batch_limit,
                           on_step=self.on_step, on_work=self.on_work)


def choose_runner(model: ModelHandle, sources: list, *, engine: str, max_batch_size: int | None = None,
                  on_step=None, conditions: list | None = None, memory_budget=None) -> tuple[Runner, str]:
    """``(runner, reason)``: the batched runner where ``engine="batched"`` and the pipeline supports it (the reason
    names the pipeline), else the per-cell reference (the reason says why). ``conditions`` (masks, control images per
    source) go with the cells to either runner; the batched runner runs per cell a mode whose pipeline it does not
    reproduce. ``memory_budget`` (bytes or ``auto``; on CUDA ``auto`` unless given) sizes the batched runner's batches
    by measured memory (:mod:`img2img_lab.engine.batch_limits`) where ``max_batch_size`` does not."""
    if engine == "batched":
        from img2img_lab.engine.batched import batching_supported

        supported, reason = batching_supported(model)
        if supported:
            if memory_budget is None and model.device.type == "cuda":
                memory_budget = "auto"
            fitted = None if max_batch_size or memory_budget is None else fit_batch_limit(
                model, max(sources, key=lambda source: source.width * source.height), memory_budget)
            return BatchedRunner(model, sources, max_batch_size=max_batch_size, on_step=on_step,
                                 fitted=fitted, conditions=conditions), reason
        return PerCellRunner(model, sources, on_step=on_step, conditions=conditions), reason
    return PerCellRunner(model, sources, on_step=on_step, conditions=conditions), "per-cell runner requested"


def split_chunks(members: list, size: int, *, streams: int = 1, work=None) -> list[list]:
    """``members`` in chunks of at most ``size``: one slice after another in plan order; for ``streams`` > 1 in as
    many chunks as that takes, rounded up to a multiple of ``streams`` (at most one per member), dealt so that chunks
    run side by side hold the same mix of work and finish together: the members ordered by ``work`` (a member's
    cost, largest first; plan order where not given), then dealt out and back (0, 1, 1, 0, 0, 1, ...).

    >>> split_chunks(list(range(5)), 4)
    [[0, 1, 2, 3], [4]]
    >>> split_chunks(list(range(5)), 4, streams=2)
    [[0, 3, 4], [1, 2]]
    >>> split_chunks([1, 2, 3, 4], 4, streams=2, work=lambda strength: strength)
    [[4, 1], [3, 2]]
    """
    if streams <= 1:
        return [members[first:first + size] for first in range(0, len(members), size)]
    count = min(len(members), -(-len(members) // (size * streams)) * streams)
    ordered = members if work is None else sorted(members, key=work, reverse=True)
    chunks: list[list] = [[] for _ in range(count)]
    for index, member in enumerate(ordered):
        turn, place = divmod(index, count)
        chunks[place if turn % 2 == 0 else count - 1 - place].append(member)
    return chunks


def _batch_id(keys: list[str], limit: int) -> str:
    """A batch's name: its cells' keys in order and its UNet cap, hashed."""
    return hashlib.sha256(json.dumps([keys, limit]).encode()).hexdigest()[:16]
