"""The shape of the code: subpackages in layer order (nothing climbs: not an import statement, a relative import, a
module path written as text, an import in a docstring example, nor a use of the package's face from below), no
private name imported across subpackages, no import cycle (even through imports inside functions), adapted diffusers
code marked with a source that still exists, and a public face that lists the API without importing torch. Each
check is shown to fail on a wrong use planted in a copy of the package."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from img2img_lab._utils.layout import (FACE, LAYERS, SHARED_PRIVATE_ROOMS, import_graph, layer_violations, module_name,
                                       package_edges, room)

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "img2img_lab"


def _modules(package: Path) -> set[str]:
    return {module_name(path, package) for path in package.rglob("*.py")}


def violations(package: Path = PACKAGE) -> list[str]:
    """Every climbing use in ``package`` (see :func:`img2img_lab._utils.layout.layer_violations`)."""
    return layer_violations(package_edges(package), _modules(package))


def graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    return import_graph(package_edges(package), _modules(package))


def private_imports(package: Path = PACKAGE) -> list[str]:
    """Every private name (``_x``) imported from another subpackage, and every private module reached from
    outside its room (``_utils`` excepted: the package's shared helpers); relative imports resolved."""
    found = []
    for edge in package_edges(package):
        if edge.importer in FACE or edge.kind == "doctest" or edge.target.count(".") == 0:
            continue
        parts = edge.target.split(".")[1:] + ([edge.name] if edge.name else [])
        private = [part for part in parts if part.startswith("_") and not part.startswith("__")
                   and part not in SHARED_PRIVATE_ROOMS]
        if room(edge.target) != room(edge.importer) and private:
            found.append(f"{edge.importer} imports {edge.target}" + (f".{edge.name}" if edge.name else "") +
                         f": {private[0]} is private to {room(edge.target)}")
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
    modules = graph()
    assert len(modules) > 30 and "img2img_lab.shapes.oracle" in modules
    assert find_cycle(modules) is None, " -> ".join(find_cycle(modules))


def test_every_room_has_a_layer_and_nothing_climbs():
    rooms = {room(module) for module in _modules(PACKAGE) if module.count(".") >= 1} - {"__init__", "__main__"}
    assert rooms == {name for names in LAYERS for name in names}
    assert violations() == []


def test_no_private_name_crosses_a_subpackage():
    assert private_imports() == []


@pytest.fixture
def package_copy(tmp_path):
    copy = tmp_path / "img2img_lab"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


PLANTED = {
    "import": ("\n\ndef _wrong():\n    from img2img_lab.sweep.run import run_sweep\n",
               "img2img_lab.plan.values uses img2img_lab.sweep.run (import): sweep (layer 7) is not below plan "
               "(layer 3)"),
    "the lazy face": ("\n\ndef _wrong():\n    from img2img_lab import run_sweep\n",
                      "img2img_lab.plan.values uses the package's face (import: from img2img_lab import run_sweep): "
                      "the face sits above every layer; import the module that defines the name"),
    "a relative import": ("\n\ndef _wrong():\n    from ..sweep import run\n",
                          "img2img_lab.plan.values uses img2img_lab.sweep.run (relative): sweep (layer 7) is not "
                          "below plan (layer 3)"),
    "an importlib string": ("\n\ndef _wrong():\n    import importlib\n\n"
                            "    return importlib.import_module('img2img_lab.shapes.oracle')\n",
                            "img2img_lab.plan.values uses img2img_lab.shapes.oracle (string): shapes (layer 7) is not "
                            "below plan (layer 3)"),
    "a doctest": ('\n\ndef _wrong():\n    """\n    >>> from img2img_lab.sweep.run import run_sweep\n    """\n',
                  "img2img_lab.plan.values uses img2img_lab.sweep.run (doctest): sweep (layer 7) is not below plan "
                  "(layer 3)"),
}


@pytest.mark.parametrize("kind", PLANTED)
def test_the_layer_check_fails_on_each_planted_climb(kind, package_copy):
    """A wrong use planted in plan/values.py (the plan reaching up into the sweep or the shapes world) is caught,
    naming both rooms and how it was used."""
    planted, message = PLANTED[kind]
    values = package_copy / "plan" / "values.py"
    values.write_text(values.read_text() + planted)
    assert violations(package_copy) == [message]


def test_the_private_check_fails_on_a_private_name_from_another_subpackage(package_copy):
    grids = package_copy / "figures" / "grids.py"
    grids.write_text(grids.read_text() + "\n\nfrom img2img_lab.store.run_store import _json_value  # noqa\n"
                     "from ..store.table_log import _add_row_files  # noqa\n")
    assert private_imports(package_copy) == [
        "img2img_lab.figures.grids imports img2img_lab.store.run_store._json_value: _json_value is private to store",
        "img2img_lab.figures.grids imports img2img_lab.store.table_log._add_row_files: _add_row_files is private to "
        "store"]


def _written_layers(text: str) -> list[list[str]]:
    """The layers a text writes as ``a → b / c → ...`` after "subpackages, in layers:"."""
    written = re.search(r"subpackages,? in layers: \**(.+?)\**\.", " ".join(text.split())).group(1)
    return [[name.strip(" `*") for name in part.split("/")] for part in written.split("→")]


def test_the_written_order_of_the_layers_is_the_layer_table():
    """``img2img_lab/__init__.py``, README and the docs' development page name the layers in data-flow order as the
    layer table has them (the two bottom layers, ``errors`` and the shared modules, aside)."""
    for page in (PACKAGE / "__init__.py", REPO / "README.md", REPO / "docs" / "development.md"):
        assert _written_layers(page.read_text()) == [list(names) for names in LAYERS[2:]], page


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
    """The architecture table of README and of the docs' development page is what ``benchmarks/code_shape.py
    --readme`` prints from the layer table and the subpackages' docstrings: a new subpackage, a moved layer or a
    changed docstring fails here until regenerated."""
    import subprocess
    import sys

    generated = subprocess.run([sys.executable, str(REPO / "benchmarks" / "code_shape.py"), "--readme"],
                               capture_output=True, text=True, check=True).stdout.strip()
    for page in (REPO / "README.md", REPO / "docs" / "development.md"):
        text = page.read_text()
        start = text.index("<!-- architecture: generated by")
        assert text[text.index("\n", start) + 1:text.index("<!-- /architecture -->")].strip() == generated, page
    assert [line.split("|")[2].strip(" `/").removesuffix(".py") for line in generated.splitlines()[2:]] == [
        name for names in reversed(LAYERS) for name in names]
