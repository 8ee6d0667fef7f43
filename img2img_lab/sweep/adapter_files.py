"""The adapter files of a sweep (:mod:`img2img_lab.plan.lora_settings`): found, checked on the model and kept in the
run folder before anything else is written, so the folder reproduces without the original files.

Each setting names its files by hash. A sweep takes the run folder's intact copy (``adapters/<hash>.safetensors``)
where it has one, else the plan's file, checked against the hash; a repair (``sources_from_folder``) takes only the
folder's copies, as it does for sources. The manifest records every adapter (``adapters``: name, file, bytes).

>>> from img2img_lab.plan.sweep_plan import SweepPlan
>>> adapter_files(SweepPlan(images=["a.png"], prompts=["p"], strengths=[0.5]), None)
{}
"""

from __future__ import annotations

from pathlib import Path

from img2img_lab.errors import PlanError
from img2img_lab.plan.lora_settings import adapter_file_hash, setting_parts


def used_adapters(plan) -> dict[str, str]:
    """``{hash: name}`` of every adapter the plan's settings name, in order."""
    return {file_hash: name for setting in plan.loras for name, file_hash, _ in setting_parts(setting)}


def adapter_files(plan, store, *, from_folder: bool = False) -> dict[str, Path]:
    """``{hash: file}`` for every adapter the plan names (``store``: the run folder, or ``None`` before it exists),
    or one line naming the adapter that is nowhere and the fix."""
    files = {}
    for file_hash, name in used_adapters(plan).items():
        kept = store.intact_adapter(file_hash) if store is not None else None
        given = None if from_folder else (plan.adapters or {}).get(file_hash)
        if kept is not None:
            files[file_hash] = kept
        elif given is not None and Path(given).is_file() and adapter_file_hash(Path(given).read_bytes()) == file_hash:
            files[file_hash] = Path(given)
        else:
            where = "the run folder holds no intact copy" if from_folder else \
                f"{given or 'its file'} is missing or changed and the run folder holds no copy"
            raise PlanError(f"LoRA {name!r} ({file_hash}): {where}. Fix: give the adapter file again in the plan's "
                            f"loras and rerun the sweep.")
    return files


def keep_adapters(store, plan, files: dict[str, Path]) -> dict:
    """Copy each adapter file into the run folder; returns the manifest's record of them."""
    names = used_adapters(plan)
    record = {}
    for file_hash, path in files.items():
        kept = store.keep_adapter(file_hash, path)
        record[file_hash] = {"name": names[file_hash], "file": str((plan.adapters or {}).get(file_hash, path)),
                             "bytes": kept.stat().st_size}
    return record
