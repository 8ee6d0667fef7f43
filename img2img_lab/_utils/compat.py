"""Make a CUDA-built torchvision importable beside a CPU-only torch.

Some package registries only carry a CUDA build of torchvision. Installed beside a CPU build of torch,
its compiled extension (``torchvision/_C``) fails to load, and ``import torchvision`` then dies in
``torchvision/_meta_registrations.py`` with ``operator torchvision::nms does not exist``, because that
module registers fake (meta) kernels for ``nms`` and ``qnms`` unconditionally. transformers, diffusers
and lpips all import torchvision, so the whole stack breaks.

:func:`ensure_torchvision_importable` defines the two missing operator *schemas* (no kernels) with
``torch.library`` before torchvision is imported. It does nothing when the extension loads (a matching
torchvision build), when torchvision is absent, or when torchvision is already imported. The only
effect is that the two detection ops raise a "no kernel" error if called, which img2img-lab never does.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

_MISSING_OP_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)

# Holds the torch.library.Library object: dropping it would unregister the schemas.
_shim_library = None


def torchvision_extension_loads() -> bool | None:
    """Whether torchvision's compiled extension loads with the installed torch.

    Returns ``None`` when torchvision is not installed.

    >>> torchvision_extension_loads() in (True, False, None)
    True
    """
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    candidates = sorted(package_dir.glob("_C*.so")) + sorted(package_dir.glob("_C*.pyd"))
    if not candidates:
        return False
    import torch

    try:
        torch.ops.load_library(str(candidates[0]))
    except (OSError, ImportError, RuntimeError):
        return False
    return True


def ensure_torchvision_importable() -> bool:
    """Register the operator schemas torchvision needs when its extension cannot load.

    Returns ``True`` when the shim was installed by this call, ``False`` when nothing had to be done.

    >>> ensure_torchvision_importable() in (True, False)
    True
    """
    global _shim_library
    if _shim_library is not None or "torchvision" in sys.modules:
        return False
    if torchvision_extension_loads() is not False:
        return False
    import torch

    library = torch.library.Library("torchvision", "DEF")
    for schema in _MISSING_OP_SCHEMAS:
        library.define(schema)
    _shim_library = library
    return True


class _TorchvisionImportHook(importlib.abc.MetaPathFinder):
    """Runs :func:`ensure_torchvision_importable` right before the first ``import torchvision``, then steps aside."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision":
            uninstall_import_hook()
            ensure_torchvision_importable()
        return None  # the regular finders import it


def install_import_hook() -> None:
    """Arrange for the shim to run lazily, when something first imports torchvision (transformers, diffusers,
    lpips do). Importing img2img_lab therefore does not import torch.

    >>> install_import_hook()
    """
    if "torchvision" in sys.modules or any(isinstance(finder, _TorchvisionImportHook) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, _TorchvisionImportHook())


def uninstall_import_hook() -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _TorchvisionImportHook)]


def shim_active() -> bool:
    """Whether :func:`ensure_torchvision_importable` installed the schemas in this process."""
    return _shim_library is not None
