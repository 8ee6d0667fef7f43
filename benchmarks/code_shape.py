"""The shape of the package, measured (issue #32's before/after): modules at the package's top level,
subpackages, import edges, import levels and the longest import chain, and private names imported across modules.

An edge is an ``import`` of another ``img2img_lab`` module anywhere in a module (functions included: they run too).
A module's level is 0 when it imports no other package module, else one more than the highest level it imports; the
longest chain is a path through the most levels. Works on any checkout, old (flat) or new (subpackages):
``python benchmarks/code_shape.py [PACKAGE_DIR]``; ``--readme`` prints README's architecture section instead,
generated from :mod:`img2img_lab._utils.layout` and each subpackage's docstring.
"""

from __future__ import annotations

import ast
import re
import sys
from functools import lru_cache
from pathlib import Path

ARGS = [arg for arg in sys.argv[1:] if not arg.startswith("--")]
PACKAGE = Path(ARGS[0]) if ARGS else Path(__file__).resolve().parent.parent / "img2img_lab"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def graph_and_private_imports() -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph, private = {}, []
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
                for alias in node.names:
                    imported.add(f"{node.module}.{alias.name}")
                    if (alias.name.startswith("_") and not alias.name.startswith("__") and node.module in modules
                            and node.module != name):
                        private.append((name, node.module, alias.name))
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
        graph[name] = {module for module in imported if module in modules and module not in (PACKAGE.name, name)}
    return graph, private


def measure() -> None:
    graph, private = graph_and_private_imports()

    @lru_cache(maxsize=None)
    def level(node: str) -> int:
        return 0 if not graph[node] else 1 + max(level(successor) for successor in graph[node])

    @lru_cache(maxsize=None)
    def chain(node: str) -> tuple[str, ...]:
        if not graph[node]:
            return (node,)
        return (node, *max((chain(successor) for successor in graph[node]), key=len))

    top = sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__")
    packages = sorted(path.parent.name for path in PACKAGE.glob("*/__init__.py"))
    rooms = {name: (name.split(".")[1] if "." in name else "") for name in graph}
    room_edges = {(rooms[a], rooms[b]) for a, targets in graph.items() for b in targets if rooms[a] != rooms[b]}
    longest = max((chain(node) for node in graph), key=len)
    room_graph = {room: {b for a, b in room_edges if a == room} for room in set(rooms.values()) - {""}}

    @lru_cache(maxsize=None)
    def room_level(node: str) -> int:  # the rooms' imports have no cycle (tests/test_architecture.py)
        return 1 + max((room_level(other) for other in room_graph[node] if other), default=0)

    print(f"modules: {len(graph)}; at the package's top level: {len(top)} ({', '.join(top)})")
    print(f"subpackages: {len(packages)} ({', '.join(packages)})")
    print(f"import edges between modules: {sum(len(edges) for edges in graph.values())}; between rooms "
          f"(subpackages and top-level modules): {len(room_edges)}")
    print(f"import levels (modules): {max(map(level, graph)) + 1}; (rooms): "
          f"{max(room_level(room) for room in room_graph if room not in ('__main__',))}")
    print(f"longest import chain ({len(longest)} modules): {' -> '.join(longest)}")
    print(f"private names imported across modules: {len(private)}")
    for importer, module, alias in sorted(private):
        print(f"  {importer} imports {module}.{alias}")


def readme_section() -> str:
    """README's architecture table: one row per layer, bottom to top, each room with its docstring's first line."""
    sys.path.insert(0, str(PACKAGE.parent))
    from img2img_lab._utils.layout import LAYERS

    rows = ["| layer | subpackage or module | what it holds |", "| --- | --- | --- |"]
    for index, names in reversed(list(enumerate(LAYERS, 1))):
        for name in names:
            path = PACKAGE / name / "__init__.py" if (PACKAGE / name).is_dir() else PACKAGE / f"{name}.py"
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            first = re.sub(r":\w+:`~?\.?([^`]+)`", r"`\1`", " ".join(doc.split("\n\n")[0].split())).replace("``", "`")
            shown = f"`{name}/`" if path.name == "__init__.py" else f"`{name}.py`"
            rows.append(f"| {index} | {shown} | {first} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(readme_section()) if "--readme" in sys.argv else measure()
