"""A run folder someone else prepared (issue #28): one test per way a tampered folder reached outside itself, each
failing before the fix. A victim folder beside the run must be byte-identical after every command; a hostile entry is
reported by ``verify`` (exit 1, naming it) and refused in one line by every other command.

1. a traversal ``cell_key`` (``verify --repair`` rewrote a JSON file outside the folder, made folders outside it);
2. ``images/`` a symlink to a folder of photos (``verify --repair`` deleted the photos as orphans);
3. an absolute ``output_path`` / 4. ``images/<key>.png`` a symlink (``verify`` said OK, ``grid`` drew it, ``report``
   embedded it);
5. a plan naming a file outside the folder (``verify --repair`` copied it in and generated cells from it);
6. 20,000 plan records (``verify --repair`` swept each one);
7. ``results.parquet`` lost after ``measure`` (every measured value vanished; ``verify`` said OK).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import structured_image
from PIL import Image

from img2img_lab.cli.main import main
from img2img_lab.images.hashes import content_hash
from img2img_lab.store.run_store import RunStore

COMMANDS = {
    "verify": lambda run, out: ["verify", run, "--sample", "1"],
    "verify --repair": lambda run, out: ["verify", run, "--repair", "--sample", "0"],
    "measure": lambda run, out: ["measure", run, "--metrics", "psnr"],
    "grid": lambda run, out: ["grid", run, "--out", f"{out}/grid.png"],
    "curves": lambda run, out: ["curves", run, "--metric", "ssim", "--out", f"{out}/curves.png"],
    "report": lambda run, out: ["report", run, "--out", f"{out}/report.html"],
    "export": lambda run, out: ["export", run, "--csv", f"{out}/table.csv"],
    "consolidate": lambda run, out: ["consolidate", run],
    "sweep": lambda run, out: ["sweep", f"{out}/config.yaml", "--out", run, "--no-progress"],
}


def _digest(folder: Path) -> dict:
    """Every file below ``folder`` (not following links) with its bytes' SHA-256, and every folder."""
    found = {}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        found[name] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture(scope="module")
def template(tiny_model_dir, tmp_path_factory):
    """A finished 2-strength x 1-seed sweep of the tiny model with SSIM measured, and its config."""
    folder = tmp_path_factory.mktemp("hostile-template")
    structured_image(32).save(folder / "source.png")
    config = folder / "config.yaml"
    config.write_text(f"model: {tiny_model_dir}\nimages: [{folder / 'source.png'}]\nprompts: [a cat]\n"
                      f"strengths: [0.5, 1.0]\nseeds: [0]\nsteps: 4\nguidance_scales: [2.0]\n")
    assert main(["sweep", str(config), "--out", str(folder / "run"), "--no-progress", "--metrics", "ssim"]) == 0
    return folder


@pytest.fixture
def world(template, tmp_path):
    """A copy of the template run, a victim folder beside it (settings, photos, a private picture) and an output
    folder for the commands' files."""
    shutil.copytree(template / "run", tmp_path / "run", symlinks=True)
    shutil.copy(template / "config.yaml", tmp_path / "config.yaml")
    victim = tmp_path / "victim"
    (victim / "photos").mkdir(parents=True)
    (victim / "settings.json").write_text('{"theme": "dark"}')
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(victim / "private.png")
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(victim / "photos" / "holiday.png")
    (tmp_path / "out").mkdir()
    store = RunStore.open(tmp_path / "run")
    return {"run": tmp_path / "run", "victim": victim, "out": tmp_path / "out", "store": store,
            "table": store.read_table(), "root": tmp_path}


def _set_results(run: Path, change) -> None:
    """Rewrite results.parquet with ``change(table)`` and make it the table's only record (no row files)."""
    table = pd.read_parquet(run / "results.parquet")
    change(table)
    table.to_parquet(run / "results.parquet", index=False)
    shutil.rmtree(run / "rows")
    (run / "rows").mkdir()


def _run(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _every_command_keeps_the_victim(world, capsys, *, expect: str, may_pass=()) -> None:
    """Run every command over the tampered folder: the victim stays byte-identical, verify fails naming ``expect``,
    every other command fails in one line naming it, except those in ``may_pass``, which never touch the entry (a
    curve reads only the table) and may succeed."""
    before = _digest(world["victim"])
    run, out = str(world["run"]), str(world["out"])
    shutil.copy(world["root"] / "config.yaml", world["out"] / "config.yaml")
    for name, argv in COMMANDS.items():
        code, text = _run(argv(run, out), capsys)
        assert _digest(world["victim"]) == before, f"{name} changed the victim folder"
        assert "Traceback" not in text, (name, text)
        if name.startswith("verify"):
            assert code == 1 and expect in text and "verify: FAILED" in text, (name, text)
        elif not (name in may_pass and code == 0):
            errors = [line for line in text.splitlines() if line.startswith("error")]
            assert code == 2 and len(errors) == 1 and expect in errors[0], (name, text)
    assert not (world["out"] / "report.html").exists() and not (world["out"] / "grid.png").exists()


# ------------------------------------------------------------------------------------------------ 1
def test_a_traversal_key_is_never_a_file_name(world, capsys):
    keys = world["table"]["cell_key"].tolist()

    def traverse(table):
        table.loc[table.cell_key == keys[0], "cell_key"] = "../../victim/settings"
        table.loc[table.cell_key == keys[1], "cell_key"] = "../../newdir/x"

    _set_results(world["run"], traverse)
    _every_command_keeps_the_victim(world, capsys, expect="'../../victim/settings'")
    assert not (world["root"] / "newdir").exists()


# ------------------------------------------------------------------------------------------------ 2
def test_a_symlinked_images_folder_is_never_followed(world, capsys):
    photos = world["victim"] / "photos"
    for image in (world["run"] / "images").glob("*.png"):
        shutil.copy(image, photos / image.name)
    shutil.rmtree(world["run"] / "images")
    (world["run"] / "images").symlink_to(photos)
    _every_command_keeps_the_victim(world, capsys, expect="images is a symlink to",
                                    may_pass=("curves", "export", "consolidate"))
    assert (photos / "holiday.png").is_file()


# ------------------------------------------------------------------------------------------------ 3
def test_an_absolute_output_path_is_never_read(world, capsys):
    private = world["victim"] / "private.png"
    key = world["table"]["cell_key"].iloc[0]
    private_hash = content_hash(Image.open(private))

    def point_outside(table):
        table.loc[table.cell_key == key, "output_path"] = str(private)
        table.loc[table.cell_key == key, "output_hash"] = private_hash

    _set_results(world["run"], point_outside)
    _every_command_keeps_the_victim(world, capsys, expect=f"output_path '{private}' is not its image")


# ------------------------------------------------------------------------------------------------ 4
def test_a_symlinked_image_is_never_read(world, capsys):
    private = world["victim"] / "private.png"
    key = world["table"]["cell_key"].iloc[0]
    image = world["run"] / "images" / f"{key}.png"
    image.unlink()
    image.symlink_to(private)
    private_hash = content_hash(Image.open(private))
    _set_results(world["run"], lambda table: table.__setitem__(
        "output_hash", table["output_hash"].where(table.cell_key != key, private_hash)))
    _every_command_keeps_the_victim(world, capsys, expect=f"images/{key}.png: leads outside the run folder",
                                    may_pass=("curves", "export", "consolidate"))
    from img2img_lab.store.folder_rules import UnsafeEntryError

    with pytest.raises(UnsafeEntryError, match="leads outside the run folder"):
        RunStore.open(world["run"]).load_output({"cell_key": key, "output_path": f"images/{key}.png"})


# ------------------------------------------------------------------------------------------------ 5
def test_repair_sweeps_only_the_sources_the_folder_holds(world, capsys):
    run, private = world["run"], world["victim"] / "private.png"
    manifest = json.loads((run / "manifest.json").read_text())
    outside = json.loads(json.dumps(manifest["plans"][0]))
    outside["plan"]["images"] = [str(private)]
    outside["plan"]["name"] = "outside"
    manifest["plans"].append(outside)
    (run / "manifest.json").write_text(json.dumps(manifest))
    damaged = next((run / "images").glob("*.png"))
    damaged.unlink()  # something to repair
    (world["root"] / "source.png").unlink(missing_ok=True)  # the first plan's own file is not needed either
    before = _digest(world["victim"])
    code, text = _run(["verify", str(run), "--repair", "--sample", "0"], capsys)
    assert _digest(world["victim"]) == before
    assert code == 1 and f"CANNOT REPAIR plan 'outside': source {private}: the run folder keeps no intact copy" in text
    assert damaged.is_file() and "cells regenerated" in text  # the folder's own plan came from sources/
    private_hash = content_hash(Image.open(private))
    assert not (run / "sources" / f"{private_hash}.png").exists()
    assert str(private) not in set(RunStore.open(run).read_table()["source"])


# ------------------------------------------------------------------------------------------------ 6
def test_repair_work_is_bounded(world, capsys):
    run = world["run"]
    manifest = json.loads((run / "manifest.json").read_text())
    record = manifest["plans"][0]
    manifest["plans"] = [record] * 20_000  # identical records: one sweep
    (run / "manifest.json").write_text(json.dumps(manifest))
    next((run / "images").glob("*.png")).unlink()
    code, text = _run(["verify", str(run), "--repair", "--sample", "0"], capsys)
    assert code == 0 and text.count("swept again") == 1, text
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["plans"] = [{**record, "plan": {**record["plan"], "name": f"p{index}"}} for index in range(60)]
    (run / "manifest.json").write_text(json.dumps(manifest))
    next((run / "images").glob("*.png")).unlink()
    code, text = _run(["verify", str(run), "--repair", "--sample", "0"], capsys)
    assert code == 1 and "repair would sweep 60 plans again to regenerate 1 cells" in text and "--yes" in text
    assert "swept again" not in text


# ------------------------------------------------------------------------------------------------ 7
def test_measured_values_survive_a_lost_results_table(world, capsys):
    run = str(world["run"])
    assert _run(["measure", run, "--metrics", "psnr,delta_e"], capsys)[0] == 0
    measured = RunStore.open(run).read_table().set_index("cell_key")[["ssim", "psnr", "delta_e"]]
    assert measured.notna().all().all()
    (world["run"] / "results.parquet").unlink()
    code, text = _run(["consolidate", run], capsys)
    assert code == 0, text
    again = RunStore.open(run).read_table().set_index("cell_key")[["ssim", "psnr", "delta_e"]]
    pd.testing.assert_frame_equal(again.sort_index(), measured.sort_index())
    assert _run(["verify", run, "--sample", "0"], capsys)[0] == 0


def test_a_regenerated_cell_keeps_no_stale_measurement(world, capsys):
    """A measurement belongs to the pixels it measured: a cell regenerated since (another output hash) keeps its own."""
    run = world["run"]
    assert _run(["measure", str(run), "--metrics", "psnr"], capsys)[0] == 0
    table = pd.read_parquet(run / "results.parquet")
    key = table["cell_key"].iloc[0]
    row = json.loads((run / "rows" / f"{key}.json").read_text())
    (run / "rows" / f"{key}.json").write_text(json.dumps({**row, "output_hash": "f" * 64}))
    (run / "results.parquet").unlink()
    rows = RunStore.open(run).read_table().set_index("cell_key")
    assert np.isnan(rows.loc[key, "psnr"])
    assert rows.drop(index=key)["psnr"].notna().all()


def test_a_symlinked_calibration_figure_is_never_embedded(world, capsys):
    """A saved calibration's figure linked to a private picture: the report embedded it (base64); now it is refused."""
    calibration = world["run"] / "calibration"
    calibration.mkdir()
    (calibration / "calibration.html").write_text("<p>a calibration</p>")
    (calibration / "curves.png").symlink_to(world["victim"] / "private.png")
    out = world["out"] / "report.html"
    code, text = _run(["report", str(world["run"]), "--out", str(out)], capsys)
    assert code == 2 and "calibration/curves.png: leads outside the run folder" in text and not out.exists()
    code, text = _run(["verify", str(world["run"]), "--sample", "0"], capsys)
    assert code == 1 and "calibration/curves.png: leads outside the run folder" in text
