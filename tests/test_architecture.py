"""The shape of the code: subpackages in layer order (no import climbs), no private name imported across
subpackages, no import cycle (even through imports inside functions), adapted diffusers code marked with a source
that still exists, and a public face that lists the API without importing torch."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "img2img_lab"

from img2img_lab._utils.layout import FACE, LAYERS, SHARED_PRIVATE_ROOMS, room


def _module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path):
    """``(module, name or None)`` for every import in a file, functions included."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                yield node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Which package modules each module imports, anywhere in its code (functions included)."""
    modules = {_module_name(path, package): path for path in package.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        imported = set()
        for module, alias in _imports(path):
            imported.add(module)
            if alias:
                imported.add(f"{module}.{alias}")
        graph[name] = {module for module in imported if module in modules and module not in (package.name, name)}
    return graph


def climbing_imports(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    """Every import of a room in the importer's own layer or above (one line each).

    >>> climbing_imports({"p.metrics.masks": {"p.shapes.oracle"}, "p.shapes.oracle": set()})
    ['p.metrics.masks imports p.shapes.oracle: shapes (layer 7) is not below metrics (layer 6)']
    """
    level = {name: index for index, names in enumerate(layers, 1) for name in names}
    found = []
    for importer, imported in graph.items():
        if importer in FACE or "." not in importer:
            continue
        for target in imported:
            source_room, target_room = room(importer), room(target)
            if source_room != target_room and level[target_room] >= level[source_room]:
                found.append(f"{importer} imports {target}: {target_room} (layer {level[target_room]}) is not "
                             f"below {source_room} (layer {level[source_room]})")
    return sorted(found)


def private_imports(package: Path = PACKAGE) -> list[str]:
    """Every private name (``_x``) imported from another subpackage, and every private module reached from
    outside its room (``_utils`` excepted: the package's shared helpers)."""
    found = []
    for path in package.rglob("*.py"):
        importer = _module_name(path, package)
        if importer in FACE:
            continue
        for module, alias in _imports(path):
            if not module.startswith(package.name + ".") or module.count(".") == 0:
                continue
            other = room(module) != room(importer)
            parts = module.split(".")[1:] + ([alias] if alias else [])
            private = [part for part in parts if part.startswith("_") and not part.startswith("__")
                       and part not in SHARED_PRIVATE_ROOMS]
            if other and private:
                found.append(f"{importer} imports {module}" + (f".{alias}" if alias else "") +
                             f": {private[0]} is private to {room(module)}")
    return sorted(found)


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


def test_every_room_has_a_layer_and_no_import_climbs():
    graph = import_graph()
    rooms = {room(module) for module in graph if module.count(".") >= 1} - {"__init__", "__main__"}
    assert rooms == {name for names in LAYERS for name in names}
    assert climbing_imports(graph) == []


def test_no_private_name_crosses_a_subpackage():
    assert private_imports() == []


@pytest.fixture
def package_copy(tmp_path):
    copy = tmp_path / "img2img_lab"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_the_layer_check_fails_on_a_climbing_import(package_copy):
    """A deliberately wrong import (the plan reaching up into the sweep) is caught, naming both rooms."""
    values = package_copy / "plan" / "values.py"
    values.write_text(values.read_text() + "\n\ndef _wrong():\n    from img2img_lab.sweep.run import run_sweep\n")
    assert climbing_imports(import_graph(package_copy)) == [
        "img2img_lab.plan.values imports img2img_lab.sweep.run: sweep (layer 7) is not below plan (layer 3)"]


def test_the_private_check_fails_on_a_private_name_from_another_subpackage(package_copy):
    grids = package_copy / "figures" / "grids.py"
    grids.write_text(grids.read_text() + "\n\nfrom img2img_lab.store.run_store import _json_value  # noqa\n")
    assert private_imports(package_copy) == [
        "img2img_lab.figures.grids imports img2img_lab.store.run_store._json_value: _json_value is private to store"]


ADAPTED = re.compile(r"#\s*(?:Copied|Adapted) from (diffusers(?:\.\w+)+)")


def adapted_sources(package: Path = PACKAGE) -> dict[str, list[str]]:
    """Every ``# Copied from diffusers…`` / ``# Adapted from diffusers…`` marker: dotted source → where."""
    found: dict[str, list[str]] = {}
    for path in sorted(package.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if match := ADAPTED.search(line):
                found.setdefault(match.group(1), []).append(f"{path.relative_to(package.parent)}:{number}")
    return found


def _resolve(dotted: str):
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            target = getattr(target, name)
        return target
    raise ImportError(dotted)


def test_adapted_diffusers_code_names_a_source_that_still_exists():
    """The batched engine, its conditioning and the timestep rules say which diffusers code they follow; each named
    function or method still exists in the installed diffusers (a rename upstream fails here, not silently)."""
    import img2img_lab  # noqa: F401 - torchvision shim before diffusers

    sources = adapted_sources()
    assert {"engine/batched.py", "models/families/base.py", "models/families/sdxl.py",
            "models/families/stable_diffusion.py"} <= {
        where.split(":")[0].split("/", 1)[1] for places in sources.values() for where in places}
    missing = []
    for dotted, places in sources.items():
        try:
            _resolve(dotted)
        except (ImportError, AttributeError):
            missing.append(f"{dotted} ({', '.join(places)})")
    assert missing == []
    with pytest.raises(AttributeError):
        _resolve("diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img.no_such_function")


def test_the_public_face_lists_the_api_and_imports_no_torch():
    """`dir(img2img_lab)` names the whole lazy API (tab completion), every name resolves, and importing the package
    imports neither torch nor diffusers (issue #32's public face, in part)."""
    import subprocess
    import sys

    import img2img_lab

    names = dir(img2img_lab)
    for name in ("SweepPlan", "load_pipeline", "run_sweep", "measure_run", "calibrate", "CalibrationResult",
                 "calibrate_modes", "write_report", "measure_pairs", "ModelHandle", "load_model", "load_config",
                 "strength_map", "translate", "GridExplorer"):
        assert name in names and getattr(img2img_lab, name) is not None, name
    printed = subprocess.run([sys.executable, "-c", "import sys, img2img_lab; print('torch' in sys.modules, "
                              "'diffusers' in sys.modules)"], capture_output=True, text=True, check=True).stdout
    assert printed.split() == ["False", "False"]


def test_readme_architecture_table_is_generated_from_the_layers():
    """README's architecture table is what ``benchmarks/code_shape.py --readme`` prints from the layer table and the
    subpackages' docstrings: a new subpackage, a moved layer or a changed docstring fails here until regenerated."""
    import subprocess
    import sys

    readme = (REPO / "README.md").read_text()
    start = readme.index("<!-- architecture: generated by")
    block = readme[readme.index("\n", start) + 1:readme.index("<!-- /architecture -->")].strip()
    generated = subprocess.run([sys.executable, str(REPO / "benchmarks" / "code_shape.py"), "--readme"],
                               capture_output=True, text=True, check=True).stdout.strip()
    assert block == generated
    assert [line.split("|")[2].strip(" `/").removesuffix(".py") for line in generated.splitlines()[2:]] == [
        name for names in reversed(LAYERS) for name in names]
