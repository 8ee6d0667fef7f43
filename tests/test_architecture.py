"""The shape of the code (issue #14): no import cycle, even through imports inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "img2img_lab"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Which img2img_lab modules each module imports, anywhere in its code (functions included)."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
                imported |= {f"{node.module}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
        graph[name] = {module for module in imported if module in modules and module not in ("img2img_lab", name)}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (``None`` if there is none): a depth-first search for a back edge.

    >>> find_cycle({"a": {"b"}, "b": {"a"}})
    ['a', 'b', 'a']
    """
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for successor in sorted(graph[node]):
            if state.get(successor) == 1:
                return path[path.index(successor):] + [successor]
            if successor not in state and (cycle := visit(successor, path + [successor])):
                return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert len(graph) > 30 and "img2img_lab.shapes.oracle" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_public_face_lists_the_api_and_imports_no_torch():
    """`dir(img2img_lab)` names the whole lazy API (tab completion), every name resolves, and importing the package
    imports neither torch nor diffusers (issue #32's public face, in part)."""
    import subprocess
    import sys

    import img2img_lab

    names = dir(img2img_lab)
    for name in ("SweepPlan", "load_pipeline", "run_sweep", "measure_run", "calibrate", "CalibrationResult",
                 "calibrate_modes", "write_report", "measure_pairs", "describe_pipeline", "load_config",
                 "strength_map", "translate", "GridExplorer"):
        assert name in names and getattr(img2img_lab, name) is not None, name
    printed = subprocess.run([sys.executable, "-c", "import sys, img2img_lab; print('torch' in sys.modules, "
                              "'diffusers' in sys.modules)"], capture_output=True, text=True, check=True).stdout
    assert printed.split() == ["False", "False"]
