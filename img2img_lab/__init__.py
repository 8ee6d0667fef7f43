"""img2img-lab: measure what the img2img strength dial does for your model, image and prompt.

Data flows one way: plan -> engine -> store (-> metrics -> calibrate -> grids / report).

>>> import img2img_lab
>>> plan = img2img_lab.SweepPlan(images=["data/sources/red_circle_on_blue.png"], prompts=["a cat"],
...                              strengths=[0.2, 0.5])
>>> len(plan.cells())
2
"""

from __future__ import annotations

from img2img_lab._compat import install_import_hook

# The torchvision shim must run before anything imports torchvision (transformers, diffusers and lpips do);
# the hook runs it at that moment, so `import img2img_lab` itself stays light (no torch import).
install_import_hook()

from img2img_lab.errors import (  # noqa: E402
    ImageError,
    Img2ImgLabError,
    ModelError,
    PlanError,
    StoreError,
)

__version__ = "0.1.0"

_LAZY = {
    "load_image": "img2img_lab.images",
    "content_hash": "img2img_lab.images",
    "load_pipeline": "img2img_lab.pipelines",
    "set_scheduler": "img2img_lab.pipelines",
    "model_fingerprint": "img2img_lab.pipelines",
    "SweepPlan": "img2img_lab.plan",
    "Cell": "img2img_lab.plan",
    "run_cell": "img2img_lab.engine",
    "RunStore": "img2img_lab.store",
    "run_sweep": "img2img_lab.sweep",
    "recommended_guidance": "img2img_lab.pipelines",
    "measure_run": "img2img_lab.metrics",
    "comparison_grid": "img2img_lab.grids",
    "strength_curves": "img2img_lab.grids",
    "bundled_sources": "img2img_lab.resources",
    "StrengthExplorer": "img2img_lab.widgets",
    "GridExplorer": "img2img_lab.grid_explorer",
    "measure_pairs": "img2img_lab.metrics",
    "describe_pipeline": "img2img_lab.pipelines",
    "calibrate": "img2img_lab.calibrate",
    "load_config": "img2img_lab.calibrate",
    "CalibrationResult": "img2img_lab.calibrate",
    "calibrate_modes": "img2img_lab.mode_table",
    "write_report": "img2img_lab.report",
    "strength_map": "img2img_lab.strength_map",
    "translate": "img2img_lab.strength_map",
}

__all__ = [
    "Img2ImgLabError",
    "ImageError",
    "PlanError",
    "ModelError",
    "StoreError",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str):
    # Lazy so that `import img2img_lab` (and the CLI's --help) does not pay for importing diffusers.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'img2img_lab' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public API (lazy names included), so ``dir()`` and tab completion list it."""
    return sorted(set(__all__) | set(globals()))
