"""Memory settings: what a sweep may do to fit a model on the user's machine (a config's ``memory:`` mapping, the
``sweep`` command's options, ``run_sweep``'s arguments), recorded in the run folder's manifest and applied to the
model by :func:`img2img_lab.models.memory.apply_memory_controls`.

* ``offload``: ``none``, ``model`` (diffusers' ``enable_model_cpu_offload``: each component moves to the accelerator
  only while it runs) or ``sequential`` (``enable_sequential_cpu_offload``: submodule by submodule, slowest, least
  memory). Both need an accelerator and the ``accelerate`` package; on a CPU-only machine every weight already lives
  in main memory, so offload is refused in one line.
* ``vae_tiling`` (``vae.enable_tiling``: large images decoded tile by tile, the seams blended: pixels differ from an
  untiled decode), ``vae_slicing`` (``vae.enable_slicing``: a batch decoded one image at a time) and
  ``attention_slicing`` (``enable_attention_slicing``: attention computed in slices; UNet pipelines only).
* ``memory_budget``: bytes (or ``"6GB"``, or ``auto``: most of the device's free memory) the batched engine may
  fill; it measures one sample's footprint and chooses the largest batch under the budget
  (:func:`img2img_lab.engine.batched.fit_batch_limit`). Without one, the device's fixed cap applies on a CPU (16
  samples: more buys no speed there) and ``auto`` on CUDA.

A control that can change pixels (tiling, slicing) enters the cell key, so a cell is never reused across them;
offload and the budget only move weights and size batches.

>>> controls = MemoryControls.from_config({"vae_tiling": True, "memory_budget": "6GB"})
>>> controls.record(), controls.key_part()
({'offload': 'none', 'vae_tiling': True, 'vae_slicing': False, 'attention_slicing': False, 'memory_budget': 6000000000}, {'memory': ['vae_tiling']})
>>> MemoryControls.from_config({"offload": "disk"})
Traceback (most recent call last):
...
img2img_lab.errors.PlanError: unknown offload mode 'disk'. Fix: use none, model or sequential.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from img2img_lab._utils.memory import parse_size
from img2img_lab.errors import PlanError

OFFLOAD = ("none", "model", "sequential")
#: The controls that can change pixels (they enter the cell key where enabled).
PIXEL_CONTROLS = ("vae_tiling", "vae_slicing", "attention_slicing")


@dataclass(frozen=True)
class MemoryControls:
    """A sweep's memory controls (see the module doc); ``memory_budget`` is bytes, ``"auto"`` or ``None``."""

    offload: str = "none"
    vae_tiling: bool = False
    vae_slicing: bool = False
    attention_slicing: bool = False
    memory_budget: int | str | None = None

    @classmethod
    def from_config(cls, data) -> "MemoryControls":
        """Checked controls from a config's ``memory:`` mapping (or ``None``), one line per mistake."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise PlanError(f"memory must be a mapping (offload, vae_tiling, vae_slicing, attention_slicing, "
                            f"memory_budget), got {data!r}. Fix: e.g. memory: {{vae_tiling: true}}.")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise PlanError(f"unknown memory setting {sorted(unknown)[0]!r}. Fix: use "
                            f"{', '.join(cls.__dataclass_fields__)}.")
        return cls(**data).checked()

    def checked(self) -> "MemoryControls":
        if self.offload not in OFFLOAD:
            raise PlanError(f"unknown offload mode {self.offload!r}. Fix: use none, model or sequential.")
        for name in PIXEL_CONTROLS:
            if not isinstance(getattr(self, name), bool):
                raise PlanError(f"memory setting {name} must be true or false, got {getattr(self, name)!r}.")
        budget = self.memory_budget
        if budget is not None and budget != "auto":
            budget = parse_size(budget)
        return MemoryControls(self.offload, self.vae_tiling, self.vae_slicing, self.attention_slicing, budget)

    def record(self) -> dict:
        """What the manifest records."""
        return asdict(self)

    def key_part(self) -> dict:
        """What enters the cell key: the enabled controls that can change pixels (empty: keys as before)."""
        enabled = [name for name in PIXEL_CONTROLS if getattr(self, name)]
        return {"memory": enabled} if enabled else {}
