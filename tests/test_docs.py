"""The documentation site builds offline with warnings as errors (MkDocs + Material + mkdocstrings), and README
stays a landing page whose links all lead somewhere."""

from __future__ import annotations

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
    assert (tmp_path / "site" / "notebooks" / "01_quickstart" / "index.html").is_file()


def test_readme_is_a_landing_page_whose_links_resolve():
    readme = (REPO / "README.md").read_text()
    assert len(readme.encode()) <= 15_000
    links = re.findall(r"\]\(([^)#]+)\)", readme)
    assert links and all((REPO / link).exists() for link in links if not link.startswith("http")), links
