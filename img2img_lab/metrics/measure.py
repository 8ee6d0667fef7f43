"""Measure outputs against their sources: :func:`measure_pair` and :func:`measure_pairs` over images and arrays,
:func:`measure_run` over a run folder (only the values it lacks). Every metric is looked up in the registry
(:mod:`img2img_lab.metrics.registry`, which lists the built-in ones and loads plugins); the library's own fidelity
metrics are computed per source at once (:mod:`img2img_lab.metrics.fidelity`), region metrics with the sources'
subject masks (:mod:`img2img_lab.metrics.regions`).

>>> import numpy as np
>>> image = np.zeros((32, 32, 3), np.uint8)
>>> measure_pair(image, image, ["ssim", "psnr", "delta_e"])
{'ssim': 1.0, 'psnr': inf, 'delta_e': 0.0}
"""

from __future__ import annotations

import warnings

import numpy as np

from img2img_lab._utils.progress import progress_bar
from img2img_lab.errors import ImageError, Img2ImgLabError, MetricUnavailable
from img2img_lab.metrics import fidelity
from img2img_lab.metrics.availability import metric_weights, prepare_metric
from img2img_lab.metrics.fidelity import FIDELITY_METRICS, ReferenceCache, fidelity_values
from img2img_lab.metrics.lpips_metric import lpips_distances
from img2img_lab.metrics.masks import masks_for_measuring
from img2img_lab.metrics.registry import (DEFAULT_METRICS, LPIPS_NETS, check_metric_names, metric_spec,
                                          pair_function, prompt_scorer)


def measure_pairs(sources, outputs, names, *, prompts=None, masks=None, device: str | None = None,
                  references: ReferenceCache | None = None) -> dict[str, np.ndarray]:
    """Compute metrics for many (source, output) pairs; unavailable metrics come back as NaN arrays. Region metrics
    (``ssim@subject``, :mod:`img2img_lab.metrics.regions`) need each pair's subject mask in ``masks``.

    The fidelity metrics (:mod:`img2img_lab.metrics.fidelity`) run on ``device`` in batches per source, each source's side
    computed once: pass the same source object for its pairs (a run folder's loaded sources are), and a
    :class:`~img2img_lab.metrics.fidelity.ReferenceCache` in ``references`` to keep that work across calls (a sweep does).

    Returns ``{name: values}``. Use :func:`metric_status` to learn why a metric is NaN.

    >>> values = measure_pairs([image, image], [image, output], ["ssim", "psnr"])
    >>> values["ssim"].round(3).tolist(), float(values["psnr"][0])
    ([1.0, 0.559], inf)
    """
    names = check_metric_names(names)
    sources, outputs = list(sources), list(outputs)
    results: dict[str, np.ndarray] = _region_values(sources, outputs, [n for n in names if metric_spec(n).needs_mask],
                                                    masks)
    fidelity_names = [name for name in names if _is_builtin_fidelity(name)]
    results.update(_fidelity_by_source(sources, outputs, fidelity_names,
                                       references or ReferenceCache(device=device)))
    for name in names:
        spec = metric_spec(name)
        if spec.needs_mask or name in fidelity_names:
            continue
        if name in LPIPS_NETS:
            try:
                results[name] = lpips_distances(sources, outputs, net=LPIPS_NETS[name], device=device)
            except MetricUnavailable:
                results[name] = np.full(len(outputs), np.nan)
            except ImageError as error:  # images too small for the backbone: NaN, and said once
                warnings.warn(f"{name} is NaN: {error}", stacklevel=2)
                results[name] = np.full(len(outputs), np.nan)
        elif spec.needs_prompt:
            if prompts is None:
                raise Img2ImgLabError(f"metric {name!r} needs the prompts. Fix: pass prompts=[...].")
            try:
                scorer = prompt_scorer(name)
                results[name] = np.asarray([scorer(output, prompt) for output, prompt in zip(outputs, prompts)],
                                           dtype=np.float64)
            except MetricUnavailable:
                results[name] = np.full(len(outputs), np.nan)
        else:
            function = pair_function(name)
            results[name] = np.asarray([function(a, b) for a, b in zip(sources, outputs)], dtype=np.float64)
    return {name: results[name] for name in names}


def _is_builtin_fidelity(name: str) -> bool:
    """Whether ``name`` is registered as this library's fidelity metric (a plugin may have replaced it)."""
    return name in FIDELITY_METRICS and pair_function(name) is getattr(fidelity, name)


def _fidelity_by_source(sources, outputs, names, references: ReferenceCache) -> dict[str, np.ndarray]:
    """Fidelity metrics of every pair, one batch of outputs per source object."""
    if not names:
        return {}
    results = {name: np.full(len(outputs), np.nan) for name in names}
    groups: dict[int, list[int]] = {}
    for index, source in enumerate(sources):
        groups.setdefault(id(source), []).append(index)
    for indices in groups.values():
        values = fidelity_values(references.get(sources[indices[0]]), [outputs[i] for i in indices], names)
        for name in names:
            results[name][indices] = values[name]
        references.trim()
    return results


def measure_pair(source, output, names, *, prompt: str | None = None, mask=None, device: str | None = None,
                 references: ReferenceCache | None = None) -> dict[str, float]:
    """Compute metrics for one pair: ``{name: value}`` (NaN where a metric is unavailable).

    >>> measure_pair(np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16, 3), np.uint8), ["ssim", "mse"])
    {'ssim': 1.0, 'mse': 0.0}
    """
    values = measure_pairs([source], [output], names, prompts=None if prompt is None else [prompt],
                           masks=None if mask is None else [mask], device=device, references=references)
    return {name: float(array[0]) for name, array in values.items()}


def _region_values(sources, outputs, names, masks) -> dict[str, np.ndarray]:
    if not names:
        return {}
    if masks is None:
        raise Img2ImgLabError(f"region metrics ({', '.join(names)}) need the subject masks. Fix: measure the run "
                              f"folder (img2img-lab measure RUN --metrics {names[0]} [--masks auto|oracle|FOLDER]).")
    from img2img_lab.metrics.regions import region_scores

    scores = [region_scores(source, output, mask, names) for source, output, mask in zip(sources, outputs, masks)]
    return {name: np.asarray([score[name] for score in scores], dtype=np.float64) for name in names}


# --------------------------------------------------------------------------- run folders


def _fill_missing(frame, names, available, store, *, with_prompts: bool, device, progress: bool,
                  masks: dict | None = None) -> dict:
    """Add NaN columns for ``names`` to ``frame`` (in place) and compute the missing values of ``available``.

    Each needed image is read once; rows missing the same metrics are measured together (LPIPS in batches, the
    fidelity metrics sharing their work and each source's side computed once). Returns ``{metric: values computed}``.
    """
    for name in names:
        if name not in frame.columns:
            frame[name] = np.nan
    todo = [name for name in available if frame[name].isna().any()]
    needed = frame.index[frame[todo].isna().any(axis=1)] if todo else []
    sources: dict[str, object] = {}
    outputs: dict[object, object] = {}
    with progress_bar(total=len(needed), desc="measure: read", unit="image", disable=not progress) as bar:
        for index in needed:  # the bar is closed (its line ended) also when a read fails
            row = frame.loc[index]
            if row["source_hash"] not in sources:
                sources[row["source_hash"]] = store.load_source(row["source_hash"])
            outputs[index] = store.load_output(row)
            bar.update(1)
    computed = {name: int(frame[name].isna().sum()) for name in todo}
    if not todo:
        return computed
    references = ReferenceCache(device=device)
    for gaps, missing in frame.loc[needed, todo].isna().groupby(todo):
        group = [name for name, gap in zip(todo, gaps if isinstance(gaps, tuple) else (gaps,)) if gap]
        rows = missing.index
        values = measure_pairs([sources[frame.at[index, "source_hash"]] for index in rows],
                               [outputs[index] for index in rows], group,
                               prompts=list(frame.loc[rows, "prompt"]) if with_prompts else None, device=device,
                               masks=[masks[frame.at[index, "source_hash"]] for index in rows] if masks else None,
                               references=references)
        for name in group:
            frame.loc[rows, name] = values[name]
    return computed


def measure_run(run_dir, names=DEFAULT_METRICS, *, device: str | None = None, progress: bool = True,
                masks=None) -> dict:
    """Add metric columns to a run folder's results.parquet (and floor.parquet); idempotent. ``run_dir``: the
    folder, or its open :class:`~img2img_lab.store.run_store.RunStore`.

    Only missing values are computed: rerunning costs nothing once every value is present. Unavailable
    metrics stay NaN and get a note in manifest.json (``notes``) with the fix. Needs no model.

    Region metrics (``ssim@subject``) use each source's subject mask (:mod:`img2img_lab.metrics.masks`): the one the folder
    keeps, else made automatically; ``masks`` (``"auto"``, ``"oracle"``, a folder of ``<source name>.png`` or
    ``{source name: path}``) makes them anew, and the region values of a source whose mask changed are measured
    again.

    Returns ``{"computed": {metric: count}, "unavailable": {metric: explanation}}``.

    >>> measure_run("runs/demo", ["ssim", "psnr", "delta_e"], progress=False)  # SSIM and PSNR were measured already
    {'computed': {'delta_e': 6}, 'unavailable': {}}
    """
    from img2img_lab.store.run_store import RunStore

    names = check_metric_names(names)
    store = run_dir if isinstance(run_dir, RunStore) else RunStore.open(run_dir)  # a sweep hands its open store
    table = store.read_table()
    report: dict = {"computed": {}, "unavailable": {}}
    statuses = {name: prepare_metric(name) for name in names}
    for name, (available, explanation) in statuses.items():
        if not available:
            report["unavailable"][name] = explanation
    floor = store.read_floor()
    source_masks = masks_for_measuring(store, [table, floor], names, masks)
    if not table.empty:
        available = [name for name in names if statuses[name][0]]
        before = table.copy()
        report["computed"] = _fill_missing(table, names, available, store, with_prompts=True, device=device,
                                           progress=progress, masks=source_masks)
        store.record_measurements(before, table)  # the durable log first: results.parquet is its cache
        store.replace_table(table)
    pair_names = [name for name in names if not metric_spec(name).needs_prompt]
    if not floor.empty and pair_names:
        available = [name for name in pair_names if statuses[name][0]]
        _fill_missing(floor, pair_names, available, store, with_prompts=False, device=device, progress=False,
                      masks=source_masks)
        store.write_floor(floor)
    if report["unavailable"]:
        added = [f"{explanation} (recorded as NaN)" for explanation in report["unavailable"].values()]
        store.update_manifest(lambda manifest: {**manifest, "notes": list(dict.fromkeys(
            list(manifest.get("notes") or []) + added))})
    weights = metric_weights(names)
    if weights:
        store.update_manifest(lambda manifest: {**manifest, "metric_weights": {
            **(manifest.get("metric_weights") or {}), **weights}})
    return report
