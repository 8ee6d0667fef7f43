"""Installs and runs anywhere (issue #15): the sdist and wheel carry the embedded model, the sources, the example
configs and the notebooks; a wheel installed into a fresh environment runs from an empty folder.

The fresh venv sees the test environment's packages through a ``.pth`` line (``--no-deps``: nothing is downloaded),
but its own site-packages comes first, so ``img2img_lab`` is imported from the installed wheel, never the checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUNDLED = ["img2img_lab/_bundled/data/models/shapes-world/unet/diffusion_pytorch_model.safetensors",
           "img2img_lab/_bundled/data/models/shapes-world/model_index.json",
           "img2img_lab/_bundled/data/sources/red_circle_on_blue.png",
           "img2img_lab/_bundled/data/configs/demo.yaml", "img2img_lab/_bundled/data/configs/calibrate.yaml",
           "img2img_lab/_bundled/notebooks/01_quickstart.ipynb", "img2img_lab/_bundled/notebooks/04_report.ipynb"]


def _tracked_copy(destination: Path) -> Path:
    """The checkout's files as git sees them (tracked and untracked-not-ignored): no build leftovers."""
    listing = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                             check=True).stdout.decode().split("\0")
    for name in filter(None, listing):
        source, target = REPO / name, destination / name
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    return destination


def _run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{command}: {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The sdist built from a clean copy of the checkout, and the wheel built from that sdist."""
    root = tmp_path_factory.mktemp("build")
    source = _tracked_copy(root / "source")
    dist = root / "dist"
    _run([sys.executable, "-c", f"from setuptools import build_meta as b; b.build_sdist({str(dist)!r})"], cwd=source)
    sdist = next(dist.glob("*.tar.gz"))
    with tarfile.open(sdist) as archive:
        archive.extractall(root / "unpacked", filter="data")
    unpacked = next((root / "unpacked").iterdir())
    _run([sys.executable, "-m", "pip", "wheel", str(unpacked), "--no-deps", "--no-build-isolation", "--no-index",
          "-q", "-w", str(dist)])
    return sdist, next(dist.glob("*.whl"))


def test_the_sdist_and_the_wheel_carry_the_model_data_notebooks_and_license(built, capsys):
    sdist, wheel = built
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"LICENSE", "data/models/shapes-world/model_index.json", "data/configs/quick.yaml",
            "notebooks/01_quickstart.ipynb", "setup.py", "MANIFEST.in"} <= names
    with zipfile.ZipFile(wheel) as archive:
        listed = set(archive.namelist())
    assert set(BUNDLED) <= listed
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in listed)
    assert not any("/runs/" in name or "__pycache__" in name for name in listed)
    with capsys.disabled():
        print(f"\n[install] wheel {wheel.name}: {wheel.stat().st_size / 1e6:.1f} MB, {len(listed)} files "
              f"({sum(name.startswith('img2img_lab/_bundled/') for name in listed)} bundled); sdist "
              f"{sdist.stat().st_size / 1e6:.1f} MB")


@pytest.mark.slow
def test_the_wheel_runs_from_an_empty_folder_in_a_fresh_venv(built, tmp_path, capsys, monkeypatch):
    _, wheel = built
    environment = tmp_path / "venv"
    venv.create(environment, with_pip=False)
    python = environment / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "test-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
          str(wheel)])
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    command = str(environment / "bin" / "img2img-lab")
    where = _run([str(python), "-c", "import img2img_lab; print(img2img_lab.__file__)"], cwd=empty, env=env).stdout
    assert where.startswith(str(site)), where
    info = _run([command, "info"], cwd=empty, env=env).stdout
    assert "embedded:shapes-world" in info and "StableDiffusionImg2ImgPipeline" in info
    demo = _run([command, "demo", "--seeds", "1", "--no-progress"], cwd=empty, env=env).stdout
    assert "32 images" in demo and (empty / "runs" / "demo" / "results.parquet").is_file()
    copied = _run([command, "notebooks", "./nb"], cwd=empty, env=env).stdout
    assert "copied 4 notebooks" in copied and (empty / "nb" / "01_quickstart.ipynb").is_file()
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "kernels"))  # the fresh venv's kernel
    _execute_with(python, empty / "nb" / "01_quickstart.ipynb", tmp_path / "kernels", site)
    assert (empty / "nb" / "runs" / "quickstart" / "results.parquet").is_file()
    with capsys.disabled():
        print(f"\n[install] fresh venv from the wheel: info, demo --seeds 1, notebooks, quickstart notebook: all ran "
              f"from {empty.name}/")


def _execute_with(python: Path, notebook: Path, kernels: Path, site: Path) -> None:
    """Execute ``notebook`` in its folder with a kernel running the fresh venv's python; check it imported the wheel."""
    import json

    import nbclient
    import nbformat

    spec = kernels / "kernels" / "img2img-wheel"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({"argv": [str(python), "-m", "ipykernel_launcher", "-f",
                                                           "{connection_file}"], "display_name": "wheel",
                                                  "language": "python"}))
    document = nbformat.read(notebook, as_version=4)
    document.cells.append(nbformat.v4.new_code_cell("print(img2img_lab.__file__)"))
    nbclient.NotebookClient(document, kernel_name="img2img-wheel", timeout=300,
                            resources={"metadata": {"path": str(notebook.parent)}}).execute()
    printed = "".join(output.get("text", "") for output in document.cells[-1].outputs)
    assert printed.startswith(str(site)), printed
    errors = [output for cell in document.cells if cell.cell_type == "code" for output in cell.outputs
              if output.output_type == "error"]
    assert not errors, errors
