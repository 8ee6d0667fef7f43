"""The shape of the package, measured (issue #32's before/after): modules at the top level, subpackages, import
edges, import levels and the longest import chain, and private names imported across modules.

An edge is an ``import`` of another ``img2img_lab`` module anywhere in a module (functions included: they run too).
A module's level is 0 when it imports no other package module, else one more than the highest level it imports; the
longest chain is a path through the most levels. Run: ``python benchmarks/code_shape.py [PACKAGE_DIR]``.
"""

from __future__ import annotations

import ast
import sys
from functools import lru_cache
from pathlib import Path

PACKAGE = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "img2img_lab"


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


def main() -> None:
    graph, private = graph_and_private_imports()

    @lru_cache(maxsize=None)
    def level(node: str) -> int:
        return 0 if not graph[node] else 1 + max(level(successor) for successor in graph[node])

    @lru_cache(maxsize=None)
    def chain(node: str) -> tuple[str, ...]:
        if not graph[node]:
            return (node,)
        return (node, *max((chain(successor) for successor in graph[node]), key=len))

    top = [name for name in graph if name.count(".") == 1]
    packages = sorted({name.split(".")[1] for name in graph if name.count(".") >= 2})
    longest = max((chain(node) for node in graph), key=len)
    print(f"modules: {len(graph)} ({len(top)} at the top level); subpackages: {len(packages)} {packages}")
    print(f"import edges: {sum(len(edges) for edges in graph.values())}; levels: {max(map(level, graph)) + 1}")
    print(f"longest chain ({len(longest)} modules): {' -> '.join(longest)}")
    print(f"private names imported across modules: {len(private)}")
    for importer, module, alias in sorted(private):
        print(f"  {importer} imports {module}.{alias}")


if __name__ == "__main__":
    main()
