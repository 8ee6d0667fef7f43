"""A model's fingerprint: hashes of every component's config and weights (what a cell key names the model by).

Weights are hashed as loaded (after any dtype cast), tensor by tensor in name order, so the fingerprint changes
exactly when the numbers that make the pixels change. :meth:`img2img_lab.models.handle.ModelHandle.fingerprint` caches it.

>>> _hash_json({"b": 1, "a": 2}) == _hash_json({"a": 2, "b": 1})
True
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def pipeline_components(pipe) -> dict[str, Any]:
    """A pipeline's components that are set (``None`` entries, e.g. a missing safety checker, left out)."""
    return {name: module for name, module in pipe.components.items() if module is not None}


def component_sizes(pipe) -> tuple[dict[str, dict], int]:
    """``({component: {"class", "parameters", "megabytes"}}, total bytes)`` of a pipeline's components.

    >>> sizes, total = component_sizes(pipe)
    >>> sizes["unet"]["class"], total > 1_000_000
    ('UNet2DConditionModel', True)
    """
    components, total_bytes = {}, 0
    for name, component in sorted(pipeline_components(pipe).items()):
        entry: dict[str, Any] = {"class": type(component).__name__}
        if hasattr(component, "parameters") and callable(component.parameters):
            parameters = list(component.parameters())
            size = sum(parameter.numel() * parameter.element_size() for parameter in parameters)
            entry.update(parameters=sum(parameter.numel() for parameter in parameters), megabytes=round(size / 1e6, 2))
            total_bytes += size
        components[name] = entry
    return components, total_bytes


def _config_dict(component) -> dict:
    config = getattr(component, "config", None)
    if config is None:
        if hasattr(component, "get_vocab"):  # tokenizers
            return {"class": type(component).__name__, "vocab": sorted(component.get_vocab().items()),
                    "model_max_length": getattr(component, "model_max_length", None)}
        return {"class": type(component).__name__}
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {key: value for key, value in data.items() if not key.startswith("_name_or_path")}


def _hash_json(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def compute_fingerprint(pipe, label: str, *, scheduler_config=None, reuse: dict | None = None) -> dict:
    """Hash every component's config and weights. Weights are hashed as loaded (after any dtype cast), tensor by
    tensor in name order, so the fingerprint changes exactly when the numbers that make the pixels change.

    ``scheduler_config`` is the model's own scheduler config (the handle passes it): the scheduler a sweep puts on
    the pipeline is a cell's parameter, not the model's identity. ``reuse`` maps component names to their entries of
    an earlier fingerprint whose weights are known unchanged (the handle passes those whose
    :func:`component_stamps` stayed): their weights are not hashed again."""
    components: dict[str, dict] = {}
    for name, component in sorted(pipeline_components(pipe).items()):
        entry: dict[str, Any] = {"class": type(component).__name__, "config_hash": _hash_json(_config_dict(component))}
        if name == "scheduler" and scheduler_config is not None:
            config = dict(scheduler_config)
            entry = {"class": config.get("_class_name", type(component).__name__),
                     "config_hash": _hash_json({key: value for key, value in config.items()
                                                if not key.startswith("_name_or_path")})}
        earlier = (reuse or {}).get(name, {})
        if "weights_hash" in earlier and earlier.get("class") == entry["class"]:
            entry.update(weights_hash=earlier["weights_hash"], parameters=earlier["parameters"])
        elif hasattr(component, "state_dict") and callable(component.state_dict) and name != "scheduler":
            digest = hashlib.sha256()
            parameters = 0
            for key, tensor in sorted(component.state_dict().items()):
                data = tensor.detach().to("cpu").contiguous()
                digest.update(f"{key}:{data.dtype}:{tuple(data.shape)};".encode())
                digest.update(data.view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
                parameters += data.numel()
            entry["weights_hash"] = digest.hexdigest()
            entry["parameters"] = parameters
        components[name] = entry
    return {"fingerprint": _hash_json(components), "pipeline_class": type(pipe).__name__,
            "model": label, "components": components}


def weights_stamp(pipe) -> str:
    """A cheap stamp of a pipeline's current weights (of its :func:`component_stamps`). It changes when weights are
    replaced (a LoRA fused, a component swapped, a dtype round trip) or modified in place, so a cached fingerprint
    is recomputed then; hashing every weight is what :func:`compute_fingerprint` does.

    >>> from img2img_lab.models.registry import tiny_pipeline
    >>> pipe = tiny_pipeline("sd1")
    >>> before = weights_stamp(pipe)
    >>> pipe.unet.conv_in.bias.data.mul_(2)  # doctest: +ELLIPSIS
    tensor(...)
    >>> weights_stamp(pipe) == before
    False
    """
    return _hash_json(component_stamps(pipe))


def component_stamps(pipe) -> dict[str, str]:
    """Per component (the scheduler aside), a stamp of its weights: per tensor its storage address, version counter,
    shape, dtype and 8 evenly spaced values. A float16 VAE run in float32 and cast back (``force_upcast``) gets new
    storage, so only that component's stamp changes: the handle hashes the VAE's weights again, not the UNet's.

    >>> from img2img_lab.models.registry import tiny_pipeline
    >>> pipe = tiny_pipeline("sd1")
    >>> before = component_stamps(pipe)
    >>> _ = pipe.vae.double().float()
    >>> sorted(name for name, stamp in component_stamps(pipe).items() if stamp != before[name])
    ['vae']
    """
    import torch

    stamps = {}
    for name, component in sorted(pipeline_components(pipe).items()):
        if name == "scheduler":  # swapped by every sweep; not part of the model's identity (see compute_fingerprint)
            continue
        digest = hashlib.sha256(f"{name}:{id(component)}:{type(component).__name__};".encode())
        stamps[name] = digest
        if not (hasattr(component, "state_dict") and callable(component.state_dict)):
            continue
        for key, tensor in component.state_dict().items():
            flat = tensor.detach().reshape(-1)
            # integer positions: a float32 linspace rounds the last index of a tensor over 2**24 values past its end
            sample = flat[torch.arange(8) * (flat.numel() - 1) // 7] if flat.numel() else flat
            digest.update(f"{key}:{tensor.data_ptr()}:{tensor._version}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
            digest.update(sample.to("cpu", torch.float64).numpy().tobytes())
    return {name: digest.hexdigest() for name, digest in stamps.items()}
