"""A run folder written before issue #13 (tests/fixtures/run-format-v1, made by commit cf918fa's `img2img-lab sweep`
on the embedded model: no `plans`, `planned` or `torch_threads`) is still read, verified and extended."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from img2img_lab.cli.main import main
from img2img_lab.store.run_store import RunStore
from img2img_lab.sweep.verify import verify_run

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "run-format-v1"
REPO = FIXTURE.parents[2]


@pytest.fixture
def old_run(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    return run


def test_an_old_run_folder_is_measured_drawn_reported_and_verified(old_run, tmp_path, capsys):
    assert "planned" not in RunStore.open(old_run).read_manifest()
    assert main(["measure", str(old_run), "--metrics", "psnr,ssim", "--no-progress"]) == 0
    assert RunStore.open(old_run).read_table()["psnr"].notna().all()
    assert main(["grid", str(old_run), "--out", str(tmp_path / "grid.png")]) == 0
    assert main(["report", str(old_run)]) == 0 and (old_run / "report.html").stat().st_size > 10_000
    report = verify_run(old_run, sample=0)
    assert report.ok and report.files_checked == 8 + 8 + 1, report.summary()  # rows, images, the source


def test_an_old_run_folder_is_extended_by_the_new_writer(old_run, tmp_path, capsys):
    config = tmp_path / "old.yaml"
    config.write_text((FIXTURE.parent / "run-format-v1.yaml").read_text().replace("REPO", str(REPO)))
    assert main(["sweep", str(config), "--out", str(old_run), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "8 cells (4 generated" in printed and "4 already done" in printed, printed
    manifest = RunStore.open(old_run).read_manifest()
    assert len(manifest["planned"]) == 8 and len(manifest["history"]) == 1
    assert verify_run(old_run, sample=0).ok
