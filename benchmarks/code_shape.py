"""The shape of the package, measured (issues #32 and #38's before/after): modules at the package's top level,
subpackages, uses between modules (imports anywhere, relative imports, module paths written as text — not doctest
examples), imports inside functions, import levels and the longest chain, private names imported across modules, and
where each family and each axis lives.

A module's level is 0 when it uses no other package module, else one more than the highest level it uses; the longest
chain is a path through the most levels. The edges come from :func:`img2img_lab._utils.layout.package_edges` of this
checkout, applied to any tree, old (flat) or new: ``python benchmarks/code_shape.py [PACKAGE_DIR]`` (point it at
``git archive <commit> img2img_lab | tar -x``). A family lives in the package files that name one of its classes (the
families and their classes come from this checkout's registry); an axis in the files that name its field or YAML key.
``--readme`` prints README's architecture section instead, generated from the layer table and each subpackage's
docstring.
"""

from __future__ import annotations

import ast
import re
import sys
from functools import lru_cache
from pathlib import Path

ARGS = [arg for arg in sys.argv[1:] if not arg.startswith("--")]
REPO = Path(__file__).resolve().parent.parent
PACKAGE = Path(ARGS[0]) if ARGS else REPO / "img2img_lab"
sys.path.insert(0, str(REPO))


def measure() -> None:
    from img2img_lab._utils.layout import import_graph, module_name, package_edges

    edges = package_edges(PACKAGE)
    modules = {module_name(path, PACKAGE) for path in PACKAGE.rglob("*.py")}
    cycle = _cycle(import_graph(edges, modules))
    if cycle:  # levels are measured on import statements alone then
        print(f"an import cycle (module paths written as text included): {' -> '.join(cycle)}")
    graph = import_graph([edge for edge in edges if edge.kind != "string"], modules) if cycle else \
        import_graph(edges, modules)
    private = sorted({(edge.importer, edge.target, edge.name) for edge in edges
                      if edge.kind != "doctest" and edge.name and edge.name.startswith("_")
                      and not edge.name.startswith("__") and edge.target in modules and edge.target != edge.importer})
    inside = sum(edge.in_function and edge.kind in ("import", "relative") for edge in edges)

    @lru_cache(maxsize=None)
    def level(node: str) -> int:
        return 0 if not graph[node] else 1 + max(level(successor) for successor in graph[node])

    @lru_cache(maxsize=None)
    def chain(node: str) -> tuple[str, ...]:
        if not graph[node]:
            return (node,)
        return (node, *max((chain(successor) for successor in graph[node]), key=len))

    top = sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__")
    packages = sorted(str(path.parent.relative_to(PACKAGE)) for path in PACKAGE.glob("**/__init__.py")
                      if path.parent != PACKAGE)
    longest = max((chain(node) for node in graph), key=len)
    print(f"modules: {len(graph)}; at the package's top level: {len(top)} ({', '.join(top)})")
    print(f"subpackages: {len(packages)} ({', '.join(packages)})")
    print(f"uses between modules: {sum(len(targets) for targets in graph.values())}; imports inside functions: "
          f"{inside}; module paths written as text: {sum(edge.kind == 'string' for edge in edges)}")
    print(f"import levels (modules): {max(map(level, graph)) + 1}")
    print(f"longest import chain ({len(longest)} modules): {' -> '.join(longest)}")
    print(f"private names imported across modules: {len(private)}")
    for importer, module, alias in private:
        print(f"  {importer} imports {module}.{alias}")
    print(_where_things_live())


@lru_cache(maxsize=None)
def _code_words(path: Path) -> frozenset:
    """The words a file's code uses — names, attributes, keyword and parameter names, and the words of its string
    literals — docstrings and comments left out (a mention in prose is not where a thing lives)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and ast.get_docstring(node, clean=False) is not None}
    words = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.add(node.id)
        elif isinstance(node, ast.Attribute):
            words.add(node.attr)
        elif isinstance(node, (ast.keyword, ast.arg)) and (node.arg if isinstance(node, ast.keyword) else True):
            words.add(node.arg)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words.update(re.findall(r"\w+", node.value))
    return frozenset(words)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (``None`` if there is none)."""
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for successor in sorted(graph[node]):
            if state.get(successor) == 1:
                return path[path.index(successor):] + [successor]
            if successor not in state and (found := visit(successor, path + [successor])):
                return found
        state[node] = 2
        return None

    return next((found for node in sorted(graph) if node not in state and (found := visit(node, [node]))), None)


def _files_naming(names) -> list[str]:
    return [str(path.relative_to(PACKAGE)) for path in sorted(PACKAGE.rglob("*.py"))
            if _code_words(path) & set(names)]


def _where_things_live() -> str:
    """A table: for each family, the package files whose code names one of its classes; for each axis, the files whose
    code names its field or its YAML key (docstrings and comments aside)."""
    from img2img_lab.models.registry import FAMILY_CLASSES
    from img2img_lab.plan.axes import AXES

    lines = ["", "| family | files | where |", "| --- | --- | --- |"]
    for family in FAMILY_CLASSES:
        names = [*family.class_names(), *family.text_to_image]
        files = _files_naming(names)
        lines.append(f"| {family.name} | {len(files)} | {', '.join(files)} |")
    lines += ["", "| axis | files | where |", "| --- | --- | --- |"]
    for axis in AXES:
        files = _files_naming([axis.name, axis.plural])
        lines.append(f"| {axis.name} | {len(files)} | {', '.join(files)} |")
    return "\n".join(lines)


def readme_section() -> str:
    """README's architecture table: one row per layer, bottom to top, each room with its docstring's first line."""
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
