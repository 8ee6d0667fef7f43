"""The documentation site's notebooks, executed: ``make docs-notebooks`` runs each committed (output-free) notebook of
``notebooks/`` on the embedded model, offline, and writes the executed copy to ``docs/notebooks/``, which the site
renders (``mkdocs-jupyter`` with ``execute: false``). Each copy records the digest of the cells it was executed from,
so ``tests/test_docs.py`` fails when a notebook changed and its copy was not made again.

    python docs/executed_notebooks.py [NAME ...]     # all four by default; about 2 minutes on 2 CPU cores

Each notebook runs in a scratch folder (its ``runs/`` stay out of the repository); 04 runs in 01's and reports its
sweep (:data:`RUNS_IN`: asking for 04 runs 01 first). A sweep's progress bar leaves its final line in the saved
notebook (:mod:`img2img_lab._utils.progress`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCES = REPO / "notebooks"
EXECUTED = REPO / "docs" / "notebooks"
KEY = "img2img_lab_docs"
#: A notebook that reads another's run folder runs in that notebook's scratch folder: 04 reports 01's sweep.
RUNS_IN = {"04_report.ipynb": "01_quickstart.ipynb"}


def source_digest(notebook: dict) -> str:
    """SHA-256 of a notebook's cells (type and source): what an executed copy was made from.

    >>> source_digest({"cells": [{"cell_type": "code", "source": ["1 + 1"]}]})[:12]
    'a5d4b63e6a4c'
    """
    cells = [[cell["cell_type"], "".join(cell["source"])] for cell in notebook["cells"]]
    return hashlib.sha256(json.dumps(cells, ensure_ascii=False).encode()).hexdigest()


def stale_copies() -> list[str]:
    """The notebooks whose executed copy is missing or was made from other cells (empty: every copy is current)."""
    stale = []
    for source in sorted(SOURCES.glob("*.ipynb")):
        copy = EXECUTED / source.name
        made_from = json.loads(copy.read_text())["metadata"].get(KEY, {}).get("source_digest") if copy.is_file() \
            else None
        if made_from != source_digest(json.loads(source.read_text())):
            stale.append(source.name)
    return stale


def execute(source: Path, scratch: Path, *, timeout: int = 1800) -> dict:
    """Run ``source`` in the ``scratch`` folder and return the executed notebook (as JSON) with its digest
    recorded."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(source, as_version=4)
    shutil.copy(source, scratch / source.name)
    os.environ.update(HF_HUB_OFFLINE="1")
    started = time.perf_counter()
    NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(scratch)}}).execute()
    seconds = time.perf_counter() - started
    notebook.metadata[KEY] = {"executed_from": f"notebooks/{source.name}", "source_digest": source_digest(notebook),
                              "seconds": round(seconds, 1)}
    notebook.metadata.pop("widgets", None)  # live widget state: the site shows each widget's static HTML instead
    for cell in notebook.cells:  # execution times change every run; the outputs are what the site shows
        cell.get("metadata", {}).pop("execution", None)
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "text/plain" in data and ({"text/html", "image/png"} & set(data)):
                del data["text/plain"]  # the site renders the HTML or the picture; the text repr only doubles it
    return json.loads(nbformat.writes(notebook))


def main(names: list[str]) -> int:
    wanted = [name if name.endswith(".ipynb") else f"{name}.ipynb" for name in names] or \
        [path.name for path in sorted(SOURCES.glob("*.ipynb"))]
    ordered = [first for name in wanted for first in (RUNS_IN.get(name), name) if first]  # 01 before 04
    sources = [SOURCES / name for name in dict.fromkeys(ordered)]
    for source in sources:
        if not source.is_file():
            print(f"error: no notebook {source.name} in notebooks/. Fix: use one of "
                  f"{', '.join(path.name for path in sorted(SOURCES.glob('*.ipynb')))}.", file=sys.stderr)
            return 2
    EXECUTED.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="img2img-lab-docs-") as scratch:
        for source in sources:
            folder = Path(scratch) / RUNS_IN.get(source.name, source.name).removesuffix(".ipynb")
            folder.mkdir(exist_ok=True)
            _write(source, execute(source, folder))
    return 0


def _write(source: Path, executed: dict) -> None:
    """The executed copy, replacing the old one whole."""
    target = EXECUTED / source.name
    partial = target.with_suffix(".ipynb.partial")
    partial.write_text(json.dumps(executed, indent=1, ensure_ascii=False) + "\n")
    partial.replace(target)  # never a half-written copy
    print(f"{source.name}: executed in {executed['metadata'][KEY]['seconds']} s -> {target.relative_to(REPO)} "
          f"({target.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
