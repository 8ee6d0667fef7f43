"""LoRA adapters as a sweep axis (``loras:``): each value is one adapter setting a cell runs with.

A config lists settings; an entry with several scales is several settings::

    loras:
      - none                                               # the model as it is
      - {file: adapters/pastel.safetensors, scales: [0.25, 0.5, 1.0]}
      - {files: [a.safetensors, b.safetensors], scales: [[0.5, 1.0], [1.0, 1.0]]}   # combined adapters

Files are LoRA safetensors that diffusers' ``load_lora_weights`` reads (diffusers or kohya keys), given as local
paths. A setting is written as text, content-addressed: ``name#hash@scale`` per adapter (the file's stem, the first 16
hex digits of the file's SHA-256, the scale), joined by ``+``; ``none`` is the model without adapters. The cell key
reads only hashes and scales, so renaming a file keeps its cells; the plan keeps where each hash was found
(``adapters: {hash: path}``) and the run folder a copy of each file (the store's ``adapters/``).

>>> import tempfile, pathlib
>>> from safetensors.numpy import save_file
>>> import numpy as np
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> save_file({"unet.down.lora_A.weight": np.zeros((2, 4), np.float32)}, folder / "pastel.safetensors")
>>> settings, files = expand_lora_entries(["none", {"file": str(folder / "pastel.safetensors"), "scales": [0.5, 1]}])
>>> settings
['none', 'pastel#9414c4587f32b5d0@0.5', 'pastel#9414c4587f32b5d0@1.0']
>>> lora_columns(settings[1])
{'lora': 'pastel 0.5', 'lora_hashes': '9414c4587f32b5d0', 'lora_scales': '0.5'}
>>> check_lora_setting("pastel#9414c4587f32b5d0@9")
Traceback (most recent call last):
...
img2img_lab.errors.PlanError: LoRA scale 9.0 (in 'pastel#9414c4587f32b5d0@9') is outside [-4, 4]. Fix: give scales between -4 and 4.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from img2img_lab.errors import PlanError
from img2img_lab.plan.values import as_list, is_number, shown

#: The model as it is (no adapter): the axis's baseline.
NO_LORA = "none"
#: The scales a setting may give an adapter.
MAX_SCALE = 4.0
_PART = re.compile(r"^([^#@+]+)#([0-9a-f]{16})@([-0-9.e]+)$")


def adapter_name(file_hash: str) -> str:
    """The name an adapter file is loaded under in a pipeline (diffusers' ``adapter_name``)."""
    return f"lab_{file_hash}"


def adapter_file_hash(data: bytes) -> str:
    """An adapter file's hash: the first 16 hex digits of the SHA-256 of its bytes."""
    return hashlib.sha256(data).hexdigest()[:16]


def setting_parts(setting: str) -> list[tuple[str, str, float]]:
    """``[(name, hash, scale), ...]`` of a setting's text (``[]`` for ``none``).

    >>> setting_parts("a#0123456789abcdef@0.5+b#fedcba9876543210@1.0")
    [('a', '0123456789abcdef', 0.5), ('b', 'fedcba9876543210', 1.0)]
    """
    if setting == NO_LORA:
        return []
    parts = []
    for text in setting.split("+"):
        match = _PART.match(text)
        try:
            scale = float(match[3]) if match is not None else None
        except ValueError:
            scale = None
        if scale is None:
            raise PlanError(f"LoRA setting {shown(setting)} is not 'none' or name#hash@scale joined by '+'. Fix: "
                            f"list files as {{file: path.safetensors, scales: [0.5, 1.0]}}.")
        parts.append((match[1], match[2], scale))
    return parts


def check_lora_setting(value: Any) -> str:
    """One checked setting's text (the axis's check): ``none``, or adapters with scales in [-4, 4], none twice."""
    if not isinstance(value, str):
        raise PlanError(f"LoRA setting {shown(value)} is not a setting's text. Fix: list files as "
                        f"{{file: path.safetensors, scales: [0.5, 1.0]}} (expand_lora_entries reads them).")
    parts = setting_parts(value)
    for _, _, scale in parts:
        if not -MAX_SCALE <= scale <= MAX_SCALE:
            raise PlanError(f"LoRA scale {scale} (in {value!r}) is outside [-4, 4]. Fix: give scales between -4 "
                            f"and 4.")
    hashes = [file_hash for _, file_hash, _ in parts]
    if len(set(hashes)) != len(hashes):
        raise PlanError(f"LoRA setting {value!r} gives one file twice. Fix: list each adapter once per setting.")
    return value


def lora_key(setting: str) -> str:
    """What the cell key holds: hashes and scales only (a renamed file keeps its cells)."""
    return "+".join(f"{file_hash}@{scale!r}" for _, file_hash, scale in setting_parts(setting)) or NO_LORA


def lora_columns(setting: str) -> dict[str, str | None]:
    """A setting's table columns: ``lora`` (each adapter's name and scale, what analyses split by: ``none`` without
    one), ``lora_hashes`` and ``lora_scales`` (joined by ``+``)."""
    parts = setting_parts(setting)
    if not parts:
        return {"lora": NO_LORA, "lora_hashes": None, "lora_scales": None}
    return {"lora": lora_words(setting), "lora_hashes": "+".join(h for _, h, _ in parts),
            "lora_scales": "+".join(repr(scale) for _, _, scale in parts)}


def lora_from_row(row: dict) -> str:
    """The setting a results row records (a row from before the axis existed: ``none``).

    >>> lora_from_row(lora_columns("pastel#0123456789abcdef@0.5"))
    'pastel#0123456789abcdef@0.5'
    """
    words, hashes, scales = (row.get(column) for column in ("lora", "lora_hashes", "lora_scales"))
    if not isinstance(hashes, str) or not hashes:
        return NO_LORA
    names = [part.rsplit(" ", 1)[0] for part in str(words).split(" + ")]
    return "+".join(f"{name}#{file_hash}@{float(scale)!r}" for name, file_hash, scale in
                    zip(names, hashes.split("+"), str(scales).split("+")))


def lora_words(setting: str) -> str:
    """A setting in words (labels and the ``lora`` column): ``pastel 0.5 + outline 1``; ``none`` without one.

    >>> lora_words("pastel#0123456789abcdef@0.5+outline#fedcba9876543210@1.0")
    'pastel 0.5 + outline 1'
    """
    return " + ".join(f"{name} {scale:g}" for name, _, scale in setting_parts(setting)) or NO_LORA


def expand_lora_entries(entries, known: dict | None = None) -> tuple[list[str], dict[str, str]]:
    """A config's ``loras:`` entries as ``(settings, {hash: path})``: each file checked (present, a LoRA
    safetensors, not a hub id) and hashed. An entry that is already a setting's text keeps its hash (``known``:
    where its file was; the run folder keeps a copy of each)."""
    settings: list[str] = []
    files = dict(known or {})
    for entry in as_list(entries, "loras"):
        if entry is None or entry == NO_LORA:
            settings.append(NO_LORA)
        elif isinstance(entry, str) and "#" in entry:
            settings.append(check_lora_setting(entry))
        elif isinstance(entry, (str, os.PathLike)):
            settings += _entry_settings({"file": entry}, files)
        elif isinstance(entry, dict):
            settings += _entry_settings(entry, files)
        else:
            raise PlanError(f"loras entry {shown(entry)} is not 'none', a file or a mapping. Fix: e.g. "
                            f"{{file: style.safetensors, scales: [0.5, 1.0]}}.")
    return settings, files


def _entry_settings(entry: dict, files: dict[str, str]) -> list[str]:
    unknown = set(entry) - {"file", "files", "scales"}
    if unknown or ("file" in entry) == ("files" in entry):
        raise PlanError(f"loras entry {shown(entry)} needs exactly one of 'file' or 'files' (and optional 'scales'). "
                        f"Fix: e.g. {{file: style.safetensors, scales: [0.5, 1.0]}}.")
    paths = [entry["file"]] if "file" in entry else as_list(entry["files"], "loras files")
    named = [_hashed_file(path) for path in paths]
    files.update({file_hash: path for _, file_hash, path in named})
    scales = as_list(entry.get("scales", [1.0]), "loras scales")
    settings = []
    for scale in scales:
        row = as_list(scale) if "files" in entry else [scale]
        if len(row) != len(named) or not all(is_number(value) for value in row):
            raise PlanError(f"loras scales {shown(scale)} must be {len(named)} number(s), one per file. Fix: e.g. "
                            f"scales: [{'[0.5, 1.0]' if len(named) > 1 else '0.5, 1.0'}].")
        settings.append(check_lora_setting("+".join(f"{name}#{file_hash}@{float(value)!r}"
                                                    for (name, file_hash, _), value in zip(named, row))))
    return settings


def resolve_lora_paths(entries, base_dir) -> list:
    """``loras:`` entries with relative file paths resolved against ``base_dir`` (a config file's folder)."""
    def resolved(path):
        path = Path(str(path)).expanduser()
        return str(path if path.is_absolute() or not (Path(base_dir) / path).exists() else Path(base_dir) / path)

    out = []
    for entry in as_list(entries, "loras"):
        if isinstance(entry, dict) and "file" in entry:
            entry = {**entry, "file": resolved(entry["file"])}
        elif isinstance(entry, dict) and "files" in entry:
            entry = {**entry, "files": [resolved(path) for path in as_list(entry["files"])]}
        elif isinstance(entry, (str, os.PathLike)) and entry != NO_LORA and "#" not in str(entry):
            entry = resolved(entry)
        out.append(entry)
    return out


def _hashed_file(path) -> tuple[str, str, str]:
    """``(name, hash, path)`` of one adapter file, or one line saying what is wrong with it."""
    text = str(path)
    resolved = Path(text).expanduser()
    if not resolved.exists():
        if re.fullmatch(r"[\w.-]+/[\w.-]+", text) and not text.endswith(".safetensors"):
            offline = any(os.environ.get(name) for name in ("HF_HUB_OFFLINE", "IMG2IMG_LAB_OFFLINE"))
            raise PlanError(f"LoRA {text!r} looks like a hub id{' and the hub is offline' if offline else ''}: "
                            f"img2img-lab reads adapters from local files. Fix: download it (huggingface-cli "
                            f"download {text}) and give the .safetensors file's path.")
        raise PlanError(f"LoRA file {text!r} does not exist. Fix: give the path of a .safetensors file.")
    _check_lora_file(resolved)
    digest = adapter_file_hash(resolved.read_bytes())
    return re.sub(r"[#@+]", "_", resolved.stem), digest, str(resolved)


def _check_lora_file(path: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            keys = list(handle.keys())
    except Exception:
        raise PlanError(f"{path}: not a safetensors file. Fix: give a LoRA saved as .safetensors (diffusers' "
                        f"save_lora_weights or a kohya file).") from None
    if not any("lora" in key.lower() for key in keys):
        raise PlanError(f"{path}: no LoRA weights in it ({len(keys)} tensors, none named lora). Fix: give a LoRA "
                        f"adapter file, not a model checkpoint.")
