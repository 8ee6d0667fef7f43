"""How a sweep runs, as one frozen object handed down (what it generates is the plan's business).

>>> options = SweepOptions(metrics=["ssim"], progress=False).checked()
>>> options.metrics, options.engine
(('ssim',), 'batched')
>>> SweepOptions(engine="fast").checked()
Traceback (most recent call last):
...
img2img_lab.errors.PlanError: unknown engine 'fast'. Fix: use 'batched' (default) or 'per-cell'.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Callable

from img2img_lab.errors import PlanError
from img2img_lab.plan.memory_settings import MemoryControls


@dataclass(frozen=True)
class SweepOptions:
    """The options of :func:`~img2img_lab.sweep.run.run_sweep`, checked once (:meth:`checked`) and handed down.

    ``device``/``dtype``: where the model loads (ignored when a model is given); ``progress``: show the bar;
    ``metrics``: measured as the sweep goes; ``on_step(done, total)``: after every denoising step; ``engine``:
    ``"batched"`` or ``"per-cell"``; ``max_batch_size``: UNet samples per call; ``cache``: a shared cache folder;
    ``sources_from_folder``: take the sources from the run folder's copies (``verify --repair``);
    ``progress_label``: what the progress bar is called (a calibration names its round); ``memory``: the memory
    controls (:class:`~img2img_lab.plan.memory_settings.MemoryControls`, or their settings as a mapping).
    """

    device: str | None = None
    dtype: str | None = None
    progress: bool = True
    metrics: tuple[str, ...] | str = ()  # names (a comma-separated string is split by checked())
    on_step: Callable | None = None
    engine: str = "batched"
    max_batch_size: int | None = None
    cache: str | os.PathLike | None = None
    sources_from_folder: bool = False
    progress_label: str | None = None  # the progress bar's name (default: "sweep <plan name>")
    memory: MemoryControls | dict | None = None

    def checked(self) -> "SweepOptions":
        """These options with the metric names resolved and every value checked (one line naming the fix)."""
        from img2img_lab.metrics.registry import check_metric_names
        from img2img_lab.plan.values import check_batch_size

        if self.engine not in ("batched", "per-cell"):
            raise PlanError(f"unknown engine {self.engine!r}. Fix: use 'batched' (default) or 'per-cell'.")
        memory = self.memory.record() if isinstance(self.memory, MemoryControls) else self.memory
        return replace(self, metrics=tuple(check_metric_names(self.metrics)),
                       max_batch_size=check_batch_size(self.max_batch_size),
                       memory=MemoryControls.from_config(memory))
