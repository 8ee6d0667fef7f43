"""What a run folder's ``manifest.json`` records, and how concurrent writers combine it.

A manifest describes the folder's cells: the model(s) and their fingerprints, device, dtype, engine, package
versions, sources, and for provenance

* ``plans``: every plan swept into the folder (with its engine, batch cap and metrics), appended once each, so
  ``verify --repair`` (and a person) can rerun every one of them: extensions and calibration rounds included;
* ``planned``: every planned cell's key with a short label, so ``verify`` names a planned cell that is missing;
* ``history``: one entry per sweep (start time and command), appended under the folder's lock;
* ``completed``: the signature of the last finished sweep and a digest of its files (the quick rerun answer).

Writers update it only through :meth:`img2img_lab.store.run_store.RunStore.update_manifest` (under the lock), so two
sweeps into one folder append to ``plans``, ``planned`` and ``history`` instead of overwriting each other.

>>> merged = merge_manifest({"plans": [{"plan": {"name": "a"}}], "created": "t0"},
...                         {"plans": [{"plan": {"name": "b"}}], "created": "t1"})
>>> [entry["plan"]["name"] for entry in merged["plans"]], merged["created"]
(['a', 'b'], 't0')
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
from pathlib import Path

from img2img_lab._utils.version import __version__
from img2img_lab.errors import StoreError

#: Keys of a manifest that accumulate over every writer (merged, never replaced).
ACCUMULATED = ("plans", "planned", "history", "notes", "models")


def package_versions() -> dict[str, str]:
    """Versions of the packages that determine a run's pixels and tables, read once per process (the code that runs is
    the code this process imported, even after an upgrade on disk).

    >>> package_versions()["img2img_lab"] == __version__
    True
    """
    return dict(_imported_versions())


@functools.lru_cache(maxsize=1)
def _imported_versions() -> tuple:
    from importlib import metadata

    versions = {"python": platform.python_version(), "img2img_lab": __version__}
    for name in ("torch", "torchvision", "diffusers", "transformers", "numpy", "pillow", "pandas", "pyarrow",
                 "scikit-image", "lpips", "safetensors"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return tuple(versions.items())


def plan_record(plan, *, engine: str, max_batch_size: int | None, metrics, fingerprint: str | None = None) -> dict:
    """One entry of ``manifest["plans"]``: what to pass to ``run_sweep`` to rerun this plan into the folder.

    >>> from img2img_lab.plan.sweep_plan import SweepPlan
    >>> plan_record(SweepPlan(images=["a.png"], prompts=["p"], strengths=[0.5]), engine="batched",
    ...             max_batch_size=None, metrics=["ssim"])["engine"]
    'batched'
    """
    record = {"plan": plan.to_dict(), "engine": engine, "max_batch_size": max_batch_size,
              "metrics": sorted(metrics), "model_fingerprint": fingerprint}
    record_id = hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return {**record, "config": f"configs/sweep-{record_id}.yaml"}


def plan_config(plan_dict: dict) -> dict:
    """A plan as a config file holds it: image paths absolute (the file lives in the run folder), defaults kept.

    >>> plan_config({"images": ["a.png"], "name": "x"})["images"][0] == str(Path("a.png").resolve())
    True
    """
    return {**plan_dict, "images": [str(Path(image).resolve()) for image in plan_dict.get("images", [])]}


def rerun_command(record: dict, out: str = "RUN_DIR") -> str:
    """The command that sweeps a recorded plan (:func:`plan_record`) again, into ``out``.

    >>> rerun_command({"config": "configs/sweep-1.yaml", "engine": "per-cell", "max_batch_size": None,
    ...                "metrics": ["ssim"]}, "runs/a")
    'img2img-lab sweep runs/a/configs/sweep-1.yaml --out runs/a --engine per-cell --metrics ssim'
    """
    command = f"img2img-lab sweep {out}/{record['config']} --out {out}"
    if record.get("engine") == "per-cell":
        command += " --engine per-cell"
    if record.get("max_batch_size"):
        command += f" --max-batch {record['max_batch_size']}"
    if record.get("metrics"):
        command += f" --metrics {','.join(record['metrics'])}"
    return command


def registered_models(manifest: dict) -> list[dict]:
    """The models whose cells a run folder holds: ``[{spec, model, fingerprint, family}]`` (older folders: one).

    >>> registered_models({"models": [{"spec": None, "model": "embedded", "fingerprint": "f", "family": "sd"}]})
    [{'spec': None, 'model': 'embedded', 'fingerprint': 'f', 'family': 'sd'}]
    """
    if manifest.get("models"):
        return list(manifest["models"])
    fingerprint = (manifest.get("model_fingerprint") or {}).get("fingerprint")
    if not fingerprint:
        return []
    return [{"spec": (manifest.get("plan") or {}).get("model"), "model": manifest.get("model"),
             "fingerprint": fingerprint, "family": (manifest.get("model_family") or {}).get("family")}]


def _unique(items: list) -> list:
    seen, kept = set(), []
    for item in items:
        text = json.dumps(item, sort_keys=True, default=str)
        if text not in seen:
            seen.add(text)
            kept.append(item)
    return kept


def merge_manifest(previous: dict | None, new: dict) -> dict:
    """``new`` on top of ``previous`` (``None``: none, or unreadable), the accumulated keys merged.

    ``plans``, ``history`` and ``notes`` are appended (each entry once), ``planned`` is the union of both,
    ``models`` keeps one entry per fingerprint, ``adapters`` one per file hash, ``sources`` one per pixel hash (the
    newest: how each source file was fitted, which a mask file of it follows), and ``created`` is the first
    writer's.
    """
    if previous is None:
        return dict(new)
    merged = {**previous, **new}
    merged["created"] = previous.get("created", new.get("created"))
    for key in ("plans", "history", "notes"):
        merged[key] = _unique(list(previous.get(key) or []) + list(new.get(key) or []))
    merged["planned"] = {**(previous.get("planned") or {}), **(new.get("planned") or {})}
    merged["sources"] = list({entry.get("hash"): entry for entry in [*(previous.get("sources") or []),
                                                                     *(new.get("sources") or [])]
                              if isinstance(entry, dict)}.values())
    merged["metric_weights"] = {**(previous.get("metric_weights") or {}), **(new.get("metric_weights") or {})}
    merged["adapters"] = {**(previous.get("adapters") or {}), **(new.get("adapters") or {})}
    models = {entry["fingerprint"]: entry for entry in registered_models(previous)}
    models.update({entry["fingerprint"]: entry for entry in new.get("models") or []})
    merged["models"] = list(models.values())
    return merged


def check_one_model(previous: dict | None, fingerprint: str, label: str, out_dir) -> None:
    """Refuse a sweep of another model into a folder that holds one model's cells (``models: [A, B]`` compares
    models in one folder; its sweep passes this check per model)."""
    registry = registered_models(previous or {})
    known = {entry["fingerprint"] for entry in registry}
    if known and fingerprint not in known:
        others = ", ".join(f"{entry['model']} ({entry['fingerprint'][:12]})" for entry in registry)
        raise StoreError(
            f"'{out_dir}' holds a run of another model ({others}); this sweep uses {label} ({fingerprint[:12]}). "
            f"Fix: choose a new --out folder, or compare the models in one folder with `models: [A, B]` in the "
            f"config."
        )


def files_digest(store, keys: list[str], source_hashes: list[str]) -> str | None:
    """A digest of the size and modification time of every image, row file and source of ``keys``, or ``None``
    if one is missing: any change to a stored file (truncated, replaced, deleted) changes it."""
    paths = [store.image_path(key) for key in keys] + [store.row_path(key) for key in keys]
    paths += [store.source_path(source_hash) for source_hash in source_hashes]
    stats = []
    for path in paths:
        try:
            stat = Path(path).stat()
        except OSError:
            return None
        stats.append((str(path.name), stat.st_size, stat.st_mtime_ns))
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()
