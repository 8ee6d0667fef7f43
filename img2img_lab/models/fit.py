"""Will it fit? A model's parameters and the memory its weights need in each dtype, from its configs alone — a
model folder, a hub id (its ``model_index.json`` and config files: kilobytes, never the weights) or a bundled
architecture name (``sd15``, ``sdxl``, ``sd35-medium``, ``flux-dev-reduced``) — the memory this machine has, and the
settings img2img-lab recommends (dtype, offload, batch). Components are built on torch's meta device: no memory, no
weights. ``img2img-lab doctor --fit MODEL`` prints it.

>>> fit = fit_report("sd15")
>>> fit["parameters"] // 10**6, round(fit["bytes"]["float16"] / 1e9, 2)
(1066, 2.13)
"""

from __future__ import annotations

import json
from pathlib import Path

from img2img_lab.errors import ModelError

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
#: The share of a device's free memory weights may take before offload is recommended (activations need the rest).
WEIGHT_SHARE = 0.7


def _component_specs(model: str) -> tuple[str, dict]:
    """``(pipeline class, {component: (library, class, config)})`` of a bundled architecture, a folder or a hub id."""
    from img2img_lab.models.families.architectures import architecture
    from img2img_lab.models.registry import REAL_SIZE

    if model in REAL_SIZE:
        record = architecture(model)
        return record["pipeline"], {name: (spec["library"], spec["class"], spec["config"])
                                    for name, spec in record["components"].items() if "library" in spec}
    from img2img_lab.models.loading import resolve_model

    label, folder = resolve_model(model)
    index = json.loads(_config_text(label, folder, "model_index.json"))
    specs = {}
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or entry[0] not in ("diffusers", "transformers"):
            continue
        try:
            specs[name] = (entry[0], entry[1], json.loads(_config_text(label, folder, f"{name}/config.json")))
        except (OSError, ValueError):
            continue  # a tokenizer, a scheduler (no config.json of a model)
    return index.get("_class_name", "?"), specs


def _config_text(label: str, folder: Path | None, name: str) -> str:
    """A config file of a folder, or of a hub model (downloaded alone where the hub is reachable)."""
    if folder is not None:
        return (Path(folder) / name).read_text()
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(label, name)).read_text()
    except Exception as error:  # noqa: BLE001 - offline, missing file, no access: said in one line
        raise OSError(f"{label}/{name}: {type(error).__name__}") from None


def _parameters(library: str, class_name: str, config: dict) -> int:
    """A component's parameters, built from its config on the meta device."""
    import torch

    module = __import__(library)
    cls = getattr(module, class_name)
    config = {key: value for key, value in config.items() if not key.startswith("_")}
    with torch.device("meta"):
        if library == "diffusers":
            component = cls.from_config(config)
        else:
            component = cls(cls.config_class(**config))
    return sum(parameter.numel() for parameter in component.parameters())


def fit_report(model: str) -> dict:
    """The parameters of each component, the weights' memory per dtype, this machine's memory and the settings it
    recommends (see the module doc)."""
    pipeline, specs = _component_specs(model)
    if not specs:
        raise ModelError(f"{model}: no model component configs found. Fix: pass a diffusers model folder, a hub id or "
                         f"one of the bundled architectures (sd15, sdxl, sd35-medium, flux-dev-reduced).")
    components = {name: {"class": class_name, "parameters": _parameters(library, class_name, config)}
                  for name, (library, class_name, config) in specs.items()}
    total = sum(entry["parameters"] for entry in components.values())
    largest = max(entry["parameters"] for entry in components.values())
    here = _machine()
    report = {"model": model, "pipeline": pipeline, "components": components, "parameters": total,
              "bytes": {dtype: total * size for dtype, size in DTYPE_BYTES.items()},
              "largest_component": {dtype: largest * size for dtype, size in DTYPE_BYTES.items()}, "here": here}
    report["recommends"] = recommend(report)
    return report


def _machine() -> dict:
    import torch

    from img2img_lab._utils.memory import available_bytes

    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info(0)
        return {"device": "cuda", "name": torch.cuda.get_device_name(0), "free": int(free), "total": int(total)}
    return {"device": "cpu", "name": "CPU", "free": available_bytes("cpu"), "total": None}


def recommend(report: dict) -> dict:
    """dtype, offload and batch for the weights' size against the free memory here (``WEIGHT_SHARE`` of it)."""
    here = report["here"]
    room = here["free"] * WEIGHT_SHARE
    if here["device"] == "cpu":
        fits = report["bytes"]["float32"] <= room
        return {"dtype": "float32", "offload": "none", "memory_budget": "none (16 samples a call)", "fits": fits,
                "why": ("a CPU computes half precision slowly and offload needs an accelerator; "
                        + ("the float32 weights fit" if fits else f"the float32 weights need "
                           f"{_bytes(report['bytes']['float32'])} and {_bytes(here['free'])} are available: weights "
                           f"and activations will not fit here"))}
    dtype = "bfloat16" if report["pipeline"].startswith(("Flux", "StableDiffusion3", "QwenImage", "Chroma")) \
        else "float16"
    if report["bytes"][dtype] <= room:
        offload, why = "none", f"the {dtype} weights fit in {WEIGHT_SHARE:.0%} of the free memory"
    elif report["largest_component"][dtype] <= room:
        offload, why = "model", "the largest component fits, not all of them: each moves to the GPU while it runs"
    else:
        offload, why = "sequential", "not even the largest component fits: submodule by submodule (slowest)"
    return {"dtype": dtype, "offload": offload, "memory_budget": "auto", "fits": offload != "sequential", "why": why}


def _bytes(size: float) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"


def _count(parameters: int) -> str:
    return f"{parameters / 1e6:,.0f} M" if parameters >= 1e7 else f"{parameters / 1e6:.2f} M"


def format_fit(report: dict) -> str:
    """The screen ``img2img-lab doctor --fit`` prints.

    >>> print(format_fit(fit_report("sd15")).splitlines()[1])
      unet          UNet2DConditionModel                860 M parameters
    """
    width = max(len(name) for name in report["components"])
    lines = [f"will it fit: {report['model']} ({report['pipeline']})"]
    for name, entry in sorted(report["components"].items(), key=lambda item: -item[1]["parameters"]):
        lines.append(f"  {name:<{width}}  {entry['class']:<32} {_count(entry['parameters']):>8} parameters")
    sizes = ", ".join(f"{dtype} {_bytes(size)}" for dtype, size in report["bytes"].items())
    here = report["here"]
    lines.append(f"  weights: {_count(report['parameters'])} parameters: {sizes}")
    lines.append(f"  here:    {here['device']} ({here['name']}), {_bytes(here['free'])} free"
                 + (f" of {_bytes(here['total'])}" if here["total"] else ""))
    advice = report["recommends"]
    lines.append(f"  recommends: dtype {advice['dtype']}, offload {advice['offload']}, memory_budget "
                 f"{advice['memory_budget']} ({advice['why']})")
    return "\n".join(lines)
