"""The world the docstring examples run in (``pytest --doctest-modules img2img_lab``, part of ``make test``).

Every doctest runs in a scratch folder that holds ``data/`` (the repository's sources and configs, linked) and
``runs/demo`` (a finished 6-cell sweep of the embedded model, measured with SSIM and PSNR), with these names
defined: ``pipe`` (the embedded pipeline), ``model`` (its handle), ``plan`` (the plan of ``runs/demo``),
``cells``, ``cell``, ``sources``, ``source`` (the prepared source), ``image`` and ``output`` (the source and a
generated image), ``store``, ``table``, ``key``, ``row``, ``grid`` and ``result`` (a small calibration).
Examples that truly need what this machine lacks (hub weights, LPIPS backbones, a second model) are skipped
with the reason written beside them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The cores shared among pytest-xdist's workers (`make test` runs one per core: one thread each on the two-core CI
# machine; two workers of two threads each spin against each other and ran 10x slower); IMG2IMG_LAB_TEST_THREADS
# overrides. Models loaded by load_pipeline (and CLI subprocesses) take the same count through IMG2IMG_LAB_THREADS,
# which tests/conftest.py reads back. (Only IMG2IMG_LAB_THREADS is exported: the controller's count must not reach
# the workers it starts.)
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
TEST_THREADS = int(os.environ.get("IMG2IMG_LAB_TEST_THREADS", max(1, min(2, os.cpu_count() or 1) // _WORKERS)))
os.environ["IMG2IMG_LAB_THREADS"] = str(TEST_THREADS)
# Subprocesses that set no count themselves (the benchmark scripts a test runs) take it through OpenMP's default.
os.environ["OMP_NUM_THREADS"] = str(TEST_THREADS)
# Kept model descriptions (img2img-lab info) go to a scratch folder, never the user's ~/.cache.
import tempfile  # noqa: E402

os.environ["IMG2IMG_LAB_CACHE_DIR"] = tempfile.mkdtemp(prefix="img2img-lab-test-cache-")
# Exported datasets loaded back (img2img_lab.figures.export) are cached there too, not in ~/.cache/huggingface/datasets.
os.environ["HF_DATASETS_CACHE"] = os.path.join(os.environ["IMG2IMG_LAB_CACHE_DIR"], "datasets")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent


# `make test` gives its two workers whole files, longest first (largest-first scheduling on the seconds each file
# took, tests/durations.json; `pytest --store-durations` measures them again): the last files to start are short,
# so neither worker idles while the other finishes a long one. Files not listed there run after the listed ones.
DURATIONS = REPO / "tests" / "durations.json"


def pytest_addoption(parser):
    parser.addoption("--store-durations", action="store_true",
                     help="write the seconds each test file took to tests/durations.json (files of this run only)")


def pytest_collection_modifyitems(config, items):
    """Order the collected items file by file, the longest file first (stable: a file keeps its own order)."""
    import json

    seconds = json.loads(DURATIONS.read_text()) if DURATIONS.is_file() else {}
    first_seen: dict[str, int] = {}
    for item in items:
        first_seen.setdefault(_file_of(item.nodeid), len(first_seen))
    items.sort(key=lambda item: (-seconds.get(_file_of(item.nodeid), 0.0), first_seen[_file_of(item.nodeid)]))


def _file_of(nodeid: str) -> str:
    return nodeid.split("::")[0]


_measured: dict[str, float] = {}


def pytest_runtest_logreport(report):
    _measured[_file_of(report.nodeid)] = _measured.get(_file_of(report.nodeid), 0.0) + report.duration


def pytest_sessionfinish(session):
    """With ``--store-durations``, on the controlling process: merge this run's seconds per file into DURATIONS."""
    import json

    if not session.config.getoption("store_durations") or hasattr(session.config, "workerinput") or not _measured:
        return
    seconds = json.loads(DURATIONS.read_text()) if DURATIONS.is_file() else {}
    seconds.update({path: round(value, 1) for path, value in _measured.items()})
    seconds = {path: value for path, value in seconds.items() if (REPO / path).is_file()}  # files since removed
    DURATIONS.write_text(json.dumps(dict(sorted(seconds.items())), indent=1) + "\n")


def _is_doctest(item) -> bool:
    from _pytest.doctest import DoctestItem

    return isinstance(item, DoctestItem)


@pytest.fixture(scope="session")
def doctest_world(tmp_path_factory) -> dict:
    """Build the scratch folder and the names once per session (about 15 s on two CPU cores)."""
    import tempfile

    import torch

    from img2img_lab.calibration.procedure import CalibrationSettings, Target, calibrate
    from img2img_lab.figures.grids import comparison_grid
    from img2img_lab.models.loading import load_model
    from img2img_lab.plan.sweep_plan import SweepPlan
    from img2img_lab.store.run_store import RunStore
    from img2img_lab.sweep.run import run_sweep
    from img2img_lab.sweep.sources import prepare_source

    torch.set_num_threads(TEST_THREADS)
    folder = tmp_path_factory.mktemp("doctest-world")
    (folder / "data").symlink_to(REPO / "data")
    model = load_model()
    pipe = model.pipe
    plan = SweepPlan(images=["data/sources/red_circle_on_blue.png"], prompts=["a yellow star on a black background"],
                     strengths=[0.0, 0.5, 1.0], seeds=[0, 1], guidance_scales=[2.0], steps=10)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        table = run_sweep(plan, "runs/demo", pipe=pipe, metrics=["ssim", "psnr"], progress=False)
        settings = CalibrationSettings(metrics=["ssim"], keep=[Target("ssim", at_least=0.4)], refine_rounds=0,
                                       n_resamples=200)
        result = calibrate(plan, "runs/calibrate", settings=settings, pipe=pipe, progress=False)
        source = prepare_source(plan.images[0], model)
    finally:
        os.chdir(cwd)
    store = RunStore.open(folder / "runs/demo")
    row = table.iloc[4].to_dict()
    from img2img_lab.testing import random_lora_file

    lora_file = random_lora_file(pipe, folder / "style.safetensors")
    return {"folder": folder, "pipe": pipe, "model": model, "plan": plan, "cells": plan.cells(),
            "cell": plan.cells()[4], "sources": [source], "source": source, "image": source,
            "output": store.load_output(row), "store": store, "table": table, "key": row["cell_key"],
            "row": row, "grid": comparison_grid(folder / "runs/demo"), "result": result, "tempfile": tempfile,
            "lora_file": lora_file}


@pytest.fixture(autouse=True)
def _doctest_namespace(request):
    """For doctest items only: run in a copy of the world (examples may write) with its names defined."""
    if not _is_doctest(request.node):
        yield
        return
    world = request.getfixturevalue("doctest_world")
    namespace = request.getfixturevalue("doctest_namespace")
    scratch = request.getfixturevalue("tmp_path")
    (scratch / "data").symlink_to(REPO / "data")
    shutil.copytree(world["folder"] / "runs", scratch / "runs", symlinks=True)
    namespace.update({name: value for name, value in world.items() if name != "folder"})
    namespace["store"] = type(world["store"]).open(scratch / "runs/demo")
    monkeypatch = request.getfixturevalue("monkeypatch")
    monkeypatch.chdir(scratch)
    monkeypatch.setenv("TORCH_HOME", str(scratch / "torch-home"))  # no backbone weights: the same on every machine
    yield
