"""The package's layers, bottom to top: which subpackage (or top-level module) may import which.

A module may import modules of its own *room* (its subpackage, or itself for a top-level module) and of rooms in
lower layers, never of a room in its own layer or above: data flows one way, plan → models → engine → store →
metrics → sweep → calibration → figures / widgets / cli. ``tests/test_architecture.py`` enforces it on every import
(functions included); README's architecture section is generated from it (``benchmarks/code_shape.py --readme``).

>>> layer_of("metrics") < layer_of("sweep")
True
>>> room("img2img_lab.metrics.masks"), room("img2img_lab.errors")
('metrics', 'errors')
"""

from __future__ import annotations

#: Bottom to top; rooms in one layer do not import each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors",),
    ("_utils", "images", "resources", "schedulers"),
    ("plan",),
    ("models",),
    ("engine", "store", "strength"),
    ("metrics",),
    ("sweep", "figures", "shapes"),
    ("calibration", "testing"),
    ("widgets", "cli"),
)

#: The package's face may import anything: ``img2img_lab`` (lazy) and ``python -m img2img_lab``.
FACE = frozenset({"img2img_lab", "img2img_lab.__main__"})

#: Private helpers every layer may use (like scikit-image's ``_shared``); a private *name* still may not cross.
SHARED_PRIVATE_ROOMS = frozenset({"_utils"})


def room(module: str) -> str:
    """The subpackage (or top-level module) a dotted module name belongs to."""
    return module.split(".")[1]


def layer_of(name: str) -> int:
    """The layer (1 = bottom) of a room."""
    for index, names in enumerate(LAYERS, 1):
        if name in names:
            return index
    raise KeyError(f"{name!r} has no layer. Fix: add it to img2img_lab._utils.layout.LAYERS.")
