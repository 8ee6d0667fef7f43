"""LoRA adapters on a model's pipeline, through diffusers' own loaders: within :func:`adapters_loaded` each adapter file
is loaded once (``pipe.load_lora_weights(file, adapter_name=...)``, PEFT underneath), and :meth:`AdapterSwitch.activate`
puts one setting (:mod:`img2img_lab.plan.lora_settings`) on the pipeline the way a user's script does —
``pipe.set_adapters(names, weights)`` — or turns every adapter off for ``none``. When the block ends (also after an
error) every adapter is unloaded (``pipe.unload_lora_weights()``): the model is the one it was, bit for bit, and its
fingerprint is unchanged.

>>> with adapters_loaded(model, {"0123456789abcdef": lora_file}) as switch:  # a random LoRA for the model
...     switch.activate("style#0123456789abcdef@0.5")
...     sorted(model.pipe.get_active_adapters())
['lab_0123456789abcdef']
>>> model.pipe.get_list_adapters()
{}
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from img2img_lab.errors import ModelError
from img2img_lab.plan.lora_settings import NO_LORA, adapter_name, setting_parts


class AdapterSwitch:
    """Puts one adapter setting at a time on a pipeline whose adapters :func:`adapters_loaded` loaded."""

    def __init__(self, pipe, loaded: set[str]):
        self.pipe, self.loaded, self.current = pipe, loaded, None

    def activate(self, setting: str) -> None:
        """Run the next calls with ``setting`` (``none``: every adapter off, the model as it is)."""
        if setting == self.current:
            return
        parts = setting_parts(setting)
        missing = [name for name, file_hash, _ in parts if file_hash not in self.loaded]
        if missing:
            raise ModelError(f"LoRA {missing[0]!r} is not loaded for this sweep. Fix: list its file in the plan's "
                             f"loras.")
        if self.loaded:
            if parts:
                self.pipe.enable_lora()
                self.pipe.set_adapters([adapter_name(file_hash) for _, file_hash, _ in parts],
                                       adapter_weights=[scale for _, _, scale in parts])
            else:
                self.pipe.disable_lora()
        self.current = setting


@contextmanager
def adapters_loaded(model, files: dict[str, str | Path]):
    """Within the block, every adapter file of ``files`` (``{hash: path}``) is loaded on the model's pipeline; yields
    the :class:`AdapterSwitch`. A file the pipeline cannot take raises one :class:`ModelError` line naming it and the
    fix; nothing stays loaded afterwards."""
    pipe = model.pipe
    if files and not callable(getattr(pipe, "load_lora_weights", None)):
        raise ModelError(f"{type(pipe).__name__} cannot load LoRA adapters (diffusers gives it no LoRA loader). Fix: "
                         f"remove loras from the plan, or use a model whose pipeline takes them.")
    loaded: set[str] = set()
    try:
        for file_hash, path in files.items():
            _load(pipe, file_hash, Path(path))
            loaded.add(file_hash)
        switch = AdapterSwitch(pipe, loaded)
        switch.activate(NO_LORA)
        yield switch
    finally:
        if files:
            _unload(pipe)


def check_adapters(model, files: dict[str, str | Path]) -> None:
    """Load and unload every adapter file: what the pipeline cannot take is refused before anything is written."""
    with adapters_loaded(model, files):
        pass


def _load(pipe, file_hash: str, path: Path) -> None:
    name = adapter_name(file_hash)
    try:
        pipe.load_lora_weights(str(path), adapter_name=name)
    except Exception as error:  # noqa: BLE001 - diffusers and PEFT raise several kinds for a file they cannot map
        reason = " ".join(str(error).split())[:160]
        raise ModelError(f"{path}: {type(pipe).__name__} cannot load this LoRA ({reason}). Fix: use a LoRA trained "
                         f"for this model's architecture.") from None
    layers, injected = _file_layers(path), _injected_layers(pipe, name)
    if injected < layers:
        matched = "none" if injected == 0 else f"only {injected}"
        raise ModelError(f"{path}: {matched} of its {layers} LoRA layers match a module of {type(pipe).__name__} (a "
                         f"LoRA for another architecture?). Fix: use a LoRA trained for this model.")


#: The names a LoRA file gives each adapted layer's first matrix: diffusers/PEFT, older diffusers, kohya.
_FIRST_MATRIX = ("lora_A.weight", "lora.down.weight", "lora_down.weight")


def _file_layers(path: Path) -> int:
    """How many layers a LoRA file adapts (one first matrix each)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return sum(key.endswith(_FIRST_MATRIX) for key in handle.keys())


def _injected_layers(pipe, name: str) -> int:
    """How many layers of the pipeline's LoRA-loadable components took the adapter ``name`` (a converted file may
    split one fused layer into several: never fewer than the file's, unless some matched nothing)."""
    count = 0
    for component in getattr(type(pipe), "_lora_loadable_modules", ()):
        module = getattr(pipe, component, None)
        if module is None or not hasattr(module, "modules"):
            continue
        count += sum(1 for layer in module.modules() if name in getattr(layer, "lora_A", {}))
    return count


def _unload(pipe) -> None:
    """Every adapter off the pipeline: diffusers puts each adapted layer's base layer back (the same tensors)."""
    pipe.unload_lora_weights()
