"""The package's layers, bottom to top: which subpackage (or top-level module) may import which.

A module may use modules of its own *room* (its subpackage, or itself for a top-level module) and of rooms in
lower layers, never of a room in its own layer or above, nor the package's face: data flows one way, in the order of
:data:`LAYERS`. A *use* is any :class:`Edge` — an import statement (functions included), a relative import, a module
path written as text (``importlib``, plugins) or an import in a docstring example — so nothing climbs by a side
door. ``tests/test_architecture.py`` enforces it; ``benchmarks/code_shape.py`` measures the graph and generates
README's architecture section.

>>> layer_of("metrics") < layer_of("sweep")
True
>>> room("img2img_lab.metrics.masks"), room("img2img_lab.errors")
('metrics', 'errors')
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

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

#: The package's name.
PACKAGE = __name__.split(".")[0]
#: The package's face may import anything: ``img2img_lab`` (lazy) and ``python -m img2img_lab``; nothing below it
#: may use it.
FACE = frozenset({PACKAGE, f"{PACKAGE}.__main__"})

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


# ---------------------------------------------------------------------------------------------------------------- edges
#: A dotted module path written as text (``importlib.import_module("img2img_lab.x.y")``, a plugin's ``"mod:func"``).
_MODULE_TEXT = re.compile(r"^img2img_lab(\.[A-Za-z_]\w*)+(:[A-Za-z_]\w*)?$")
#: An import in a docstring example (``>>> from img2img_lab.x import y`` / ``>>> import img2img_lab.x``).
_DOCTEST_IMPORT = re.compile(r"^\s*(?:>>>|\.\.\.)\s+(?:from\s+(img2img_lab[\w.]*)\s+import|import\s+(img2img_lab[\w.]*))")


@dataclass(frozen=True)
class Edge:
    """One module's use of another: ``kind`` is ``import`` (an import statement, functions included),
    ``relative`` (a relative import, resolved), ``string`` (a module path written as text: ``importlib``, plugins),
    or ``doctest`` (an import in a docstring example, which runs in the test suite)."""

    importer: str
    target: str
    kind: str
    name: str | None = None  # the name imported from ``target`` (``from target import name``)
    in_function: bool = False


def module_name(path: Path, package: Path) -> str:
    """The dotted name of a file of ``package`` (a package's ``__init__`` is the package)."""
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolved(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute module of a relative import (``from ..x import y`` in ``module``)."""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([target] if target else []))


def _function_nodes(tree) -> set[int]:
    return {id(child) for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            for child in ast.walk(node) if child is not node}


def module_edges(path: Path, package: Path) -> list[Edge]:
    """Every use of a package module by the file at ``path``: import statements anywhere (functions included),
    relative imports resolved, module paths written as text, and imports in its docstring examples."""
    importer = module_name(path, package)
    tree = ast.parse(path.read_text())
    inside, docstrings, edges = _function_nodes(tree), set(), []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc is not None:
                docstrings.add(id(node.body[0].value))
                edges += [Edge(importer, match.group(1) or match.group(2), "doctest")
                          for line in doc.splitlines() if (match := _DOCTEST_IMPORT.match(line))]
    for node in ast.walk(tree):
        nested = id(node) in inside
        if isinstance(node, ast.ImportFrom):
            relative = node.level > 0
            target = _resolved(importer, path.name == "__init__.py", node.level, node.module) if relative \
                else node.module
            edges += [Edge(importer, target, "relative" if relative else "import", alias.name, nested)
                      for alias in node.names]
        elif isinstance(node, ast.Import):
            edges += [Edge(importer, alias.name, "import", None, nested) for alias in node.names]
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
              and _MODULE_TEXT.match(node.value)):
            edges.append(Edge(importer, node.value.split(":")[0], "string", None, nested))
    return [edge for edge in edges if edge.target == package.name or edge.target.startswith(package.name + ".")]


def package_edges(package: Path) -> list[Edge]:
    """:func:`module_edges` of every file of ``package``."""
    return [edge for path in sorted(package.rglob("*.py")) for edge in module_edges(path, package)]


def layer_violations(edges: list[Edge], modules: set[str]) -> list[str]:
    """Every edge that climbs (one line each): to a room in the importer's own layer or above, or to the package's
    face (``img2img_lab`` itself, above every layer) from a module that is not the face.

    >>> layer_violations([Edge("p.metrics.masks", "p.shapes.oracle", "string")], {"p.metrics.masks", "p.shapes.oracle"})
    ['p.metrics.masks uses p.shapes.oracle (string): shapes (layer 7) is not below metrics (layer 6)']
    """
    found = []
    for edge in edges:
        if edge.importer in FACE or "." not in edge.importer:
            continue
        target = _module_of(edge, modules)
        if target is None:
            continue
        source_room = room(edge.importer)
        if target in FACE:  # img2img_lab itself (the lazy face) or python -m img2img_lab
            found.append(f"{edge.importer} uses the package's face ({edge.kind}: "
                         f"{'from ' + target + ' import ' + edge.name if edge.name else target}): the face sits above "
                         f"every layer; import the module that defines the name")
            continue
        target_room = room(target)
        if target_room != source_room and layer_of(target_room) >= layer_of(source_room):
            found.append(f"{edge.importer} uses {target} ({edge.kind}): {target_room} (layer {layer_of(target_room)}) "
                         f"is not below {source_room} (layer {layer_of(source_room)})")
    return sorted(set(found))


def _module_of(edge: Edge, modules: set[str]) -> str | None:
    """The package module an edge reaches (``from x import submodule`` reaches the submodule)."""
    if edge.name and f"{edge.target}.{edge.name}" in modules:
        return f"{edge.target}.{edge.name}"
    return edge.target if edge.target in modules else None


def import_graph(edges: list[Edge], modules: set[str]) -> dict[str, set[str]]:
    """Which package modules each module uses (doctest examples aside), for cycles and levels."""
    graph: dict[str, set[str]] = {module: set() for module in modules}
    for edge in edges:
        target = _module_of(edge, modules)
        if edge.kind != "doctest" and target is not None and target != edge.importer and "." in target:
            graph[edge.importer].add(target)
    return graph
