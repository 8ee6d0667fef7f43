"""One sweep into one run folder: the session behind :func:`img2img_lab.sweep.run.run_sweep`.

:class:`SweepSession` holds what a sweep knows about its folder: the model handle, the options, the open run store,
the prepared sources, every cell's key, what is done, what the shared cache holds, and the counts. ``run_sweep``'s
numbered steps are these (1–3 happen before a session exists):

1. check the request (:class:`~img2img_lab.sweep.options.SweepOptions`), 2. answer a finished sweep from the folder,
3. load the model; then the session's methods: 4. :meth:`~SweepSession.open` (create or reopen the folder) and
:meth:`~SweepSession.key_cells`, 5. :meth:`~SweepSession.copy_from_cache`, 6. :meth:`~SweepSession.generate`,
7. :meth:`~SweepSession.reuse_duplicates`, 8. :meth:`~SweepSession.finish` (measure, record, return the table).

The sweep's manifest is made by :func:`img2img_lab.sweep.sources.build_manifest`; its sources, what a strength runs
and the VAE floor in :mod:`img2img_lab.sweep.sources`; what :meth:`SweepSession.open` checks and writes before the
session exists in :mod:`img2img_lab.sweep.session_setup`.

A stored cell is an image and its row, written or adopted together: the first writer of a key wins, a later writer
adopts that writer's image *and* row, and the shared cache receives exactly the pair this folder holds. Copies in
both directions are hash-checked (:meth:`img2img_lab.store.run_store.RunStore.stored_cell`).

>>> from img2img_lab.sweep.options import SweepOptions
>>> session = SweepSession.open(plan, "runs/demo", model, SweepOptions(progress=False))
>>> type(session).__name__, session.engine
('SweepSession', 'batched')
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field, replace

from img2img_lab._utils.progress import progress_bar
from img2img_lab.engine.runners import PerCellRunner, cell_work
from img2img_lab.images.hashes import content_hash
from img2img_lab.models.adapters import adapters_loaded, check_adapters
from img2img_lab.models.handle import ModelHandle
from img2img_lab.models.memory import apply_memory_controls, decodes_beside_denoising
from img2img_lab.plan.schema import COLUMNS, Produced, cell_key, cell_parameters, is_duplicate  # noqa: F401
from img2img_lab.plan.sweep_plan import Cell, SweepPlan
from img2img_lab.store.manifest import merge_manifest
from img2img_lab.store.run_store import RunStore
from img2img_lab.sweep.adapter_files import adapter_files, keep_adapters
from img2img_lab.sweep.chunk_streams import generate_side_by_side, stream_threads
from img2img_lab.sweep.chunk_writer import ChunkWriter, spare_core
from img2img_lab.sweep.distributed import Context, job_progress
from img2img_lab.sweep.options import SweepOptions
from img2img_lab.sweep.session_setup import (completed_record, copy_batch_record, create_folder,  # noqa: F401
                                             in_plan_order, now, plan_manifest, store_sources)
from img2img_lab.sweep.source_conditions import strength_meaning
from img2img_lab.sweep.sources import (build_manifest, folder_sources, metric_needs, prepare_sources,  # noqa: F401
                                       source_steps)


@dataclass
class SweepSession:
    """The state of one sweep into one run folder; see the module doc for its steps."""

    plan: SweepPlan
    model: ModelHandle
    options: SweepOptions
    store: RunStore  # opened once, by :meth:`open`, and handed to the metrics at the end
    sources: list  # prepared PIL images, in plan order
    manifest: dict  # this sweep's manifest (merged into the folder's)
    runner: object  # a runners.Runner: per-cell or batched (a distributed.ShardedRunner in a launched job)
    context: Context = field(default_factory=Context)
    cache_store: RunStore | None = None
    allow_other_models: bool = False  # a models-axis plan puts several models' cells in one folder
    conditions: list | None = None  # conditions.SourceCondition per source (None: plain img2img)
    references: object = None  # fidelity.ReferenceCache: each source's side of the metrics, computed once
    adapters: dict = field(default_factory=dict)  # LoRA file hash -> the file loaded for it (adapter_files.py)
    # filled by key_cells
    steps_of: object = None  # sources.source_steps: (scheduler, steps, strength, image, mode) -> StepPlan
    keys: dict = field(default_factory=dict)  # (cell group, strength) -> cell key
    cells: list = field(default_factory=list)
    planned: list = field(default_factory=list)   # every non-duplicate cell (fixes the batched runner's chunks)
    pending: list = field(default_factory=list)   # (cell, key) to generate
    duplicates: list = field(default_factory=list)
    from_cache: list = field(default_factory=list)
    work: dict = field(default_factory=dict)  # key -> its denoising steps (the progress bar's unit)
    recorded: list = field(default_factory=list)  # batch records holding a cell to generate
    bar: object = None
    # kept up to date by every step
    counts: dict = field(default_factory=lambda: {"generated": 0, "reused": 0, "already_done": 0})
    started_clock: float = field(default_factory=time.perf_counter)
    progress_listed: float = 0.0
    last_flush: float = field(default_factory=time.monotonic)  # when the writer last refreshed results' parts

    def __post_init__(self):
        self.device = self.model.device  # read once: a sweep's pipeline stays where it is

    @property
    def pipe(self):
        return self.model.pipe

    @property
    def metrics(self) -> list[str]:
        return list(self.options.metrics)

    # ------------------------------------------------------------------ 4. open
    @classmethod
    def open(cls, plan: SweepPlan, out_dir, model: ModelHandle, options: SweepOptions, *,
             context: Context | None = None, cache_store: RunStore | None = None,
             allow_other_models: bool = False) -> "SweepSession":
        """Prepare the sources (``options.sources_from_folder``: the copies the run folder keeps, for a repair),
        then create (or reopen) the run folder with this sweep's manifest merged into the folder's under its lock;
        store the sources and each source's VAE round trip. In a launched job only rank 0 writes these; the other
        ranks open the folder rank 0 made (:mod:`img2img_lab.sweep.distributed`)."""
        context, options = context or Context(), options.checked()  # idempotent: a caller may pass them unchecked
        model.check_sweepable()  # a pipeline with no strength dial is refused before anything is written
        apply_memory_controls(model, options.memory)  # as is offload on a machine without an accelerator
        existing = RunStore.open(out_dir) if options.sources_from_folder else None  # a repair reads its own copies
        sources, recorded = folder_sources(plan, existing) if existing is not None else \
            (prepare_sources(plan, model), None)
        adapters = adapter_files(plan, RunStore.open(out_dir) if RunStore.is_run_folder(out_dir) else None,
                                 from_folder=options.sources_from_folder)
        check_adapters(model, adapters)  # a LoRA the pipeline cannot take: refused before writing
        manifest, runner, conditions = plan_manifest(plan, model, options, sources, recorded, context, existing)
        if not context.is_main:
            return cls(plan=plan, model=model, options=replace(options, progress=False), store=RunStore.open(out_dir),
                       sources=sources, manifest=manifest, runner=runner, context=context, cache_store=cache_store,
                       allow_other_models=allow_other_models, conditions=conditions, adapters=adapters)
        store = create_folder(out_dir, manifest, model, allow_other_models=allow_other_models)
        if adapters:
            kept = keep_adapters(store, plan, adapters)
            store.update_manifest(lambda folder: {**folder, "adapters": {**(folder.get("adapters") or {}), **kept}})
        references = store_sources(store, plan, model, options, sources, manifest, conditions)
        return cls(plan=plan, model=model, options=options, store=store, sources=sources, manifest=manifest,
                   runner=runner, context=context, cache_store=cache_store, allow_other_models=allow_other_models,
                   conditions=conditions, references=references, adapters=adapters)

    @property
    def source_hashes(self) -> list[str]:
        return [entry["hash"] for entry in self.manifest["sources"]]

    @property
    def engine(self) -> str:
        return self.manifest["engine"]["name"]

    # ------------------------------------------------------------------ 4. key
    def key_cells(self) -> None:
        """Key every cell and sort it: done (an intact stored pair), in the shared cache, a duplicate strength,
        or to generate; record the planned keys in the manifest (``verify`` names a missing one). A batched sweep
        takes a cell the per-cell reference stored (its key says ``per-cell``) as done: the reference's pixels are
        the ones the engine approximates, so a folder swept per cell (masks and control images were, before the
        engine batched them) is not generated again."""
        store, model = self.store, self.model
        self.steps_of = source_steps(model, self.sources)
        self.cells = self.plan.cells(steps=self.steps_of)
        labels, done_work, device_type = {}, 0, self.device.type
        for cell in self.cells:
            key = self._cell_key(cell, self.engine, device_type)
            if self.engine != "per-cell" and not store.has_cell(key):  # the per-cell reference's image serves too
                reference = self._cell_key(cell, "per-cell", device_type)
                key = reference if store.has_cell(reference) else key
            self.keys[(cell.group(), cell.strength)] = key
            self.work[key] = 0 if cell.duplicate_of is not None else cell_work(self._steps(cell))
            labels[key] = cell.label() + (f" · {self.manifest['model']}" if self.allow_other_models else "")
            if cell.duplicate_of is None:
                self.planned.append((cell, key))
            if store.has_cell(key):
                self.counts["already_done"] += 1
                done_work += self.work[key]
                store.restore_row_file(key)  # a deleted or damaged row file comes back from results.parquet
            elif self.cache_store is not None and self.cache_store.has_cell(key):
                self.from_cache.append((cell, key))
            elif cell.duplicate_of is not None:
                self.duplicates.append((cell, key))
            else:
                self.pending.append((cell, key))
        if self.context.is_main:
            store.update_manifest(lambda manifest: {**manifest, "planned": {**(manifest.get("planned") or {}),
                                                                             **labels}})
        self._attach_progress(done=done_work)

    def _cell_key(self, cell: Cell, engine: str, device_type: str) -> str:
        """The cell's key with the scheduler it will use (the pipeline's own is left alone) and ``engine``."""
        source = self.sources[cell.image_index]
        return cell_key(cell, fingerprint=self.manifest["model_fingerprint"]["fingerprint"],
                        scheduler_config=dict(self.model.scheduler(cell.scheduler).config),
                        source_hash=self.source_hashes[cell.image_index], width=source.width, height=source.height,
                        dtype=self.manifest["dtype"], device_type=device_type,
                        versions=self.manifest["packages"], engine=engine,
                        conditioning={**self._condition(cell).key_part(cell.mode), **self.options.memory.key_part()})

    def _attach_progress(self, done: int) -> None:
        """The progress bar counts denoising steps (:func:`img2img_lab.engine.runners.cell_work`; reused duplicate strengths
        cost none), advanced by the runner as each step is done, so its rate and ETA hold from the first seconds."""
        self.bar = progress_bar(total=sum(self.work.values()), initial=done, unit="step",
                                desc=self.options.progress_label or f"sweep {self.plan.name}",
                                disable=not self.options.progress)
        getattr(self.runner, "runner", self.runner).on_work = job_progress(self.bar, self.context.world_size)

    # ------------------------------------------------------------------ 5. cache
    def copy_from_cache(self) -> None:
        """Copy intact cells (image and row together, hash-checked) from the shared cache; a cache cell damaged
        since it was keyed is generated instead."""
        for cell, key in self.from_cache:
            pair = self.cache_store.stored_cell(key)
            if pair is None:
                (self.duplicates if cell.duplicate_of is not None else self.pending).append((cell, key))
                continue
            image, row = pair
            copy_batch_record(self.cache_store, self.store, row.get("batch_id"))
            self.store.save_cell(key, image, {**row, "output_path": self._output_path(key)})
            self.counts["from_cache"] = self.counts.get("from_cache", 0) + 1
            self.bar.update(self.work[key])
        if self.from_cache:
            self.store.checkpoint()

    # ------------------------------------------------------------------ 6. generate
    def generate(self) -> None:
        """Generate every pending cell with the sweep's runner (:mod:`img2img_lab.engine.runners`), chunk by chunk. Each
        batched chunk is recorded before it runs, so a crash loses at most the two chunks in flight (both run again
        whole); per-cell rows are durable once written and refresh ``results.parquet`` every few seconds. Cells run
        with their LoRA setting (:mod:`img2img_lab.models.adapters`: chunks share one; the adapters are unloaded
        afterwards); what the runner remembers is remembered per setting (a text-encoder LoRA changes an encoding)."""
        chunks = self.runner.chunks(self.planned, self.pending, self.recorded)
        with adapters_loaded(self.model, self.adapters) as switch:
            for setting, same_setting in itertools.groupby(chunks, key=lambda chunk: chunk[0][0][0].lora):
                switch.activate(setting)
                with self.runner.remembering():
                    self._generate_chunks(same_setting)

    def _generate_chunks(self, chunks) -> None:
        """Each chunk denoised on this thread, then decoded (on the CPU, where the model allows it:
        :func:`~img2img_lab.models.memory.decodes_beside_denoising`), measured and stored on the writer
        thread (:mod:`img2img_lab.sweep.chunk_writer`) while the next one denoises. On a GPU chunks are decoded here:
        there the VAE's activations would sit in memory beside the next chunk's, a peak no device has measured yet.
        Chunks side by side (:mod:`img2img_lab.sweep.chunk_streams`): each stream does all of it for its own."""
        todo, chunks = {key for _, key in self.pending}, list(chunks)
        if getattr(self.runner, "streams", 1) > 1:
            generate_side_by_side(chunks, self.runner, record=self._record, store=self._save_chunk,
                                  measure=lambda chunk, outputs: self._measure_chunk(chunk, todo, outputs))
            return
        overlap = spare_core(str(self.device))
        decode_on_writer = overlap and self.device.type == "cpu" and decodes_beside_denoising(self.model)
        with ChunkWriter(overlap=overlap) as writer:
            for index, (chunk, batch_id) in enumerate(chunks):
                self._record(chunk, batch_id)
                cells = [cell for cell, _ in chunk]
                if decode_on_writer:
                    finish = self.runner.start(cells)
                else:
                    outputs = self.runner.run(cells)
                    finish = lambda outputs=outputs: outputs  # noqa: E731 - the chunk is finished already
                writer.submit(self._store_chunk, chunk, todo, finish, batch_id, index == len(chunks) - 1)

    def _record(self, chunk: list, batch_id: str | None) -> None:
        """Record a batched chunk's cells before it runs (``batches/``; a per-cell chunk has no batch)."""
        if batch_id is not None:
            self.store.write_batch(batch_id, [key for _, key in chunk], max_batch_size=self.runner.batch_limit)

    def _store_chunk(self, chunk: list, todo: set, finish, batch_id: str | None, last: bool = False) -> None:
        """Finish a chunk (``finish()``: its outputs, decoded here where the model allows), measure and store it."""
        self._save_chunk(self._measure_chunk(chunk, todo, finish()), batch_id, last)

    def _measure_chunk(self, chunk: list, todo: set, outputs: list) -> list[tuple]:
        """``(cell, key, output, metric values)`` of a chunk's cells to generate, measured in one batch per source."""
        finished = [(cell, key, output) for (cell, key), output in zip(chunk, outputs) if key in todo]
        measured = self._measure([(cell, output.image) for cell, _, output in finished])
        return [(*cell_key_output, values) for cell_key_output, values in zip(finished, measured)]

    def _save_chunk(self, measured: list[tuple], batch_id: str | None, last: bool) -> None:
        """Store measured cells; the table is checkpointed after each batched chunk but the ``last`` (the sweep's
        flush follows it; its row files are durable already)."""
        for cell, key, output, values in measured:
            self.save(cell, key, output.image, output.produced, output.seconds, output.nsfw_flagged, batch_id,
                      measured=values)
        if self.context.is_main and not last and (batch_id is not None or time.monotonic() - self.last_flush > 5):
            self.store.checkpoint()  # rank 0 alone writes the table; every rank's row files are durable
            self.last_flush = time.monotonic()
            self.show_job_progress()

    def _measure(self, pairs: list) -> list[dict]:
        """The sweep's metrics (those without a mask) of ``(cell, image)`` pairs, one dict per pair, batched on the
        model's device with each source's side computed once."""
        from img2img_lab.metrics.fidelity import ReferenceCache
        from img2img_lab.metrics.measure import measure_pairs

        names = [name for name in self.metrics if not metric_needs(name, "mask")]
        if not names or not pairs:
            return [{} for _ in pairs]
        device = str(self.device)
        if self.references is None:
            self.references = ReferenceCache(device=device)
        values = measure_pairs([self.sources[cell.image_index] for cell, _ in pairs], [image for _, image in pairs],
                               names, prompts=[cell.prompt for cell, _ in pairs], device=device,
                               references=self.references)
        return [{name: float(values[name][index]) for name in names} for index in range(len(pairs))]

    def note_recorded_batches(self) -> None:
        """Remember the folder's batch records that hold a cell to generate (a killed or damaged batch runs again
        whole). Taken before any rank generates, so every rank of a job chunks the same way."""
        todo = {key for _, key in self.pending}
        if not todo or self.runner.batch_limit is None:
            return
        records = (self.store.read_batch(batch_id) for batch_id in self.store.batch_ids())
        self.recorded = [record for record in records if record is not None and todo & set(record["keys"])]

    def show_job_progress(self, *, final: bool = False) -> None:
        """In a launched job rank 0's bar is the whole job's: between listings each of its steps stands for one step
        of every rank (:func:`job_progress`), at a listing (every 10 s at most, and at the end) it catches up with
        every rank's stored cells (their row files); it never runs backwards."""
        if not (self.context.distributed and self.bar is not None):
            return
        if final or time.monotonic() - self.progress_listed > 10:
            self.progress_listed = time.monotonic()
            stored = sum(self.work[key] for key in self.store.row_file_keys() & set(self.keys.values()))
            self.bar.n = min(self.bar.total, max(self.bar.n, stored))
            self.bar.refresh()

    # ------------------------------------------------------------------ 7. duplicates
    def reuse_duplicates(self) -> None:
        """Strengths that run the same steps as a lower one reuse its stored image."""
        for cell, key in self.duplicates:
            canonical = self.store.row(self.keys[(cell.group(), cell.duplicate_of)])
            pair = self.store.stored_cell(canonical["cell_key"]) if canonical is not None else None
            if pair is not None:
                image, canonical = pair
                self.save(cell, key, image, Produced.duplicate(canonical["produced"]), 0.0, canonical["nsfw_flagged"])
            else:  # cannot happen for plans from SweepPlan.cells(); kept for hand-made cell lists
                output = PerCellRunner(self.model, self.sources, on_step=self.options.on_step).run([cell])[0]
                self.save(cell, key, output.image, output.produced, output.seconds, output.nsfw_flagged)

    # ------------------------------------------------------------------ saving one cell
    def save(self, cell: Cell, key: str, image, produced: str, seconds: float, nsfw,
             batch_id: str | None = None, *, measured: dict | None = None) -> None:
        """Store one finished cell (first writer wins) with its metrics (``measured``, else measured here) and hand
        the pair this folder now holds to the cache."""
        row = self._row(cell, key, image, produced, seconds, nsfw, batch_id)
        row.update(self._measure([(cell, image)])[0] if measured is None else measured)
        if self.store.save_cell(key, image, row):
            self.counts["reused" if is_duplicate(produced) else "generated"] += 1
            pair = (image, row)
        else:  # a concurrent sweep into this folder stored it first: its image and row are kept, together
            self.counts["stored_by_another_writer"] = self.counts.get("stored_by_another_writer", 0) + 1
            pair = self.store.stored_cell(key)
        if self.cache_store is not None and pair is not None:
            copy_batch_record(self.store, self.cache_store, pair[1].get("batch_id"))
            self.cache_store.save_cell(key, *pair)

    def _steps(self, cell: Cell):
        return self.steps_of(cell.scheduler, cell.num_inference_steps, cell.strength, cell.image_index, mode=cell.mode)

    def _condition(self, cell: Cell):
        from img2img_lab.sweep.source_conditions import SourceCondition

        return SourceCondition() if self.conditions is None else self.conditions[cell.image_index]

    def _output_path(self, key: str) -> str:
        return str(self.store.image_path(key).relative_to(self.store.root))

    def _row(self, cell: Cell, key: str, image, produced: str, seconds: float, nsfw, batch_id) -> dict:
        steps = self._steps(cell)
        manifest, condition = self.manifest, self._condition(cell)
        return {
            "cell_key": key, **cell_parameters(cell, self.source_hashes[cell.image_index], condition.columns(cell.mode)),
            "width": image.width, "height": image.height,
            "executed_steps": steps.executed_steps, "t_start": steps.t_start,
            "unet_evaluations": steps.denoiser_evaluations, "start_timestep": steps.start_timestep,
            "timesteps": steps.timesteps_text(), "sigma": steps.sigma, "log_snr": steps.log_snr,
            "sqrt_alpha_bar": steps.sqrt_alpha_bar, "flow_sigma": steps.flow_sigma, "zero_step": steps.zero_step,
            "duplicate_of": cell.duplicate_of, **strength_meaning(self.model, cell, steps),
            "produced": produced, "seconds": seconds,
            "output_path": self._output_path(key), "output_hash": content_hash(image), "nsfw_flagged": nsfw,
            "model": manifest["model"], "model_family": manifest["model_family"]["family"],
            "model_fingerprint": manifest["model_fingerprint"]["fingerprint"], "device": manifest["device"],
            "dtype": manifest["dtype"], "engine": self.engine,
            "torch_threads": stream_threads(manifest["torch_threads"], getattr(self.runner, "streams", 1)),
            "batch_id": batch_id, "memory_controls": ",".join(self.options.memory.key_part().get("memory", [])),
        }

    # ------------------------------------------------------------------ 8. finish
    def finish(self, signature: str | None):
        """Flush the table, measure rows from earlier runs, record the finished sweep (merged into the folder's
        manifest under its lock) and return this plan's rows in plan order."""
        store = self.store
        store.flush()  # consolidated: results.parquet holds every row, the part files are gone
        self.bar.close()
        if self.metrics and (self.counts["already_done"] or self.counts.get("from_cache")
                             or any(metric_needs(name, "mask") for name in self.metrics)):
            from img2img_lab.metrics.measure import measure_run

            measure_run(store, self.metrics, device=str(self.device), progress=False)  # the open store
        plan_keys = list(dict.fromkeys(self.keys[(cell.group(), cell.strength)] for cell in self.cells))
        completed = completed_record(store, signature, plan_keys, self.source_hashes)
        counts = {**self.counts, "cells": len(self.cells),
                  "seconds": round(time.perf_counter() - self.started_clock, 3)}
        store.update_manifest(lambda manifest: {**merge_manifest(manifest, self.manifest), "finished": now(),
                                                "counts": counts, "completed": completed})
        store.remove_empty_work_folders()
        return in_plan_order(store.read_table(allow_damaged=True), plan_keys)

    def plan_table(self):
        """This plan's rows in plan order, as the folder holds them now (the other ranks' view of the result)."""
        self.store.reload()
        if self.bar is not None:
            self.bar.close()
        plan_keys = list(dict.fromkeys(self.keys[(cell.group(), cell.strength)] for cell in self.cells))
        return in_plan_order(self.store.read_table(allow_damaged=True), plan_keys)

