"""img2img-lab: measure what the img2img strength dial does for your model, image and prompt.

Data flows one way through the subpackages, in layers: ``plan`` → ``models`` → ``engine`` / ``store`` /
``strength`` → ``metrics`` → ``sweep`` / ``figures`` / ``shapes`` → ``calibration`` / ``testing`` → ``widgets`` /
``cli``. The names below are the public face (above every layer: nothing inside the package imports it), listed in
``__init__.pyi`` and imported the first time they are used, so ``import img2img_lab`` stays light (no torch) and
``dir(img2img_lab)`` lists the whole API (:mod:`img2img_lab._utils.layout` holds the layer table, with ``errors`` and
the shared modules below ``plan``).

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

from img2img_lab._utils.version import __version__  # noqa: E402

__getattr__, _lazy_dir, _lazy_all = lazy_loader.attach_stub(__name__, __file__)

__all__ = sorted({*_lazy_all, "__version__"})


def __dir__() -> list[str]:
    """The public API (lazy names included), so ``dir()`` and tab completion list it."""
    return list(__all__)
