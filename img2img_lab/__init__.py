"""img2img-lab: measure what the img2img strength dial does for your model, image and prompt.

Data flows one way through the subpackages: ``plan`` → ``models`` → ``engine`` → ``store`` → ``metrics`` →
``sweep`` → ``calibration`` → ``figures`` / ``widgets`` / ``cli``. The names below are the public face, listed in
``__init__.pyi`` in that order and imported the first time they are used, so ``import img2img_lab`` stays light
(no torch) and ``dir(img2img_lab)`` lists the whole API.

>>> import img2img_lab
>>> plan = img2img_lab.SweepPlan(images=["data/sources/red_circle_on_blue.png"], prompts=["a cat"],
...                              strengths=[0.2, 0.5])
>>> len(plan.cells())
2
>>> "run_sweep" in dir(img2img_lab)
True
"""

from __future__ import annotations

import lazy_loader

from img2img_lab._utils.compat import install_import_hook

# The torchvision shim must run before anything imports torchvision (transformers, diffusers and lpips do);
# the hook runs it at that moment, so `import img2img_lab` itself stays light (no torch import).
install_import_hook()

from img2img_lab.errors import ImageError, Img2ImgLabError, ModelError, PlanError, StoreError  # noqa: E402

__version__ = "0.1.0"

__getattr__, _lazy_dir, _lazy_all = lazy_loader.attach_stub(__name__, __file__)

__all__ = sorted({*_lazy_all, "__version__"})


def __dir__() -> list[str]:
    """The public API (lazy names included), so ``dir()`` and tab completion list it."""
    return list(__all__)
