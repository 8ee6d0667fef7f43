"""The documentation site builds offline with warnings as errors (MkDocs + Material + mkdocstrings), and README
stays a landing page whose links all lead somewhere."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_doctest_examples_become_fenced_code():
    sys.path.insert(0, str(REPO / "docs"))
    from doctest_blocks import fence_doctests

    text = "An example:\n\n" + ">>> 1 + 1\n2\n\nAfter."
    assert fence_doctests(text) == "An example:\n\n```python\n" + ">>> 1 + 1\n2\n```\n\nAfter.\n"


def test_the_documentation_builds_offline_with_warnings_as_errors(tmp_path):
    """``mkdocs build --strict``: every page, the notebooks and the API reference from the docstrings; a broken link,
    a missing page or an unresolved cross-reference fails it. No network is used (no fonts, no plugins fetching)."""
    mkdocs = Path(sys.executable).parent / "mkdocs"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=REPO,
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    for name in ("run_sweep", "SweepPlan", "load_model", "calibrate", "measure_run", "GridExplorer"):
        assert name in api, name
    assert "language-python" in api or "highlight" in api  # the doctest examples are code blocks
    pictures = {}  # the executed copies' grids, curves, tables and widget snapshots are on the pages
    for name, least in {"01_quickstart": 2, "02_strength_explorer": 1, "03_strength_calibration": 6,
                        "04_report": 4}.items():
        page = (tmp_path / "site" / "notebooks" / name / "index.html").read_text()
        pictures[name] = page.count("data:image/png;base64,")
        assert pictures[name] >= least, (name, pictures[name])
        assert not re.search(r": +0%\|", page) and "<table" in page, name  # no bar left at 0 %; tables rendered
        assert not re.search(r"<(script|img|link|iframe)[^>]+(src|href)=[\"']https?://", page), name  # offline


def test_the_sites_notebooks_are_executed_copies_of_the_current_notebooks():
    """``docs/notebooks/`` holds each notebook of ``notebooks/`` executed (``make docs-notebooks``), made from the
    cells committed now."""
    sys.path.insert(0, str(REPO / "docs"))
    from executed_notebooks import stale_copies

    assert stale_copies() == [], "stale executed notebooks. Fix: run `make docs-notebooks` and commit docs/notebooks/."
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):  # the committed notebooks stay output-free
        assert not any(cell.get("outputs") for cell in json.loads(path.read_text())["cells"]), path.name


def test_readme_is_a_landing_page_whose_links_resolve():
    readme = (REPO / "README.md").read_text()
    assert len(readme.encode()) <= 15_000
    links = re.findall(r"\]\(([^)#]+)\)", readme)
    assert links and all((REPO / link).exists() for link in links if not link.startswith("http")), links
