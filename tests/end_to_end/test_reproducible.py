"""Reproducible studies: resume after SIGKILL, concurrent writers, determinism, verify, the HTML report,
the report notebook and export."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from conftest import cli_in_this_process
from img2img_lab.cli.main import main
from img2img_lab.images.hashes import content_hash
from img2img_lab.store.run_store import RunStore

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _config(tmp_path, tiny_model_dir, sources_dir, *, name="sweep.yaml", strengths="[0.2, 0.4, 0.6, 0.8, 1.0]",
            seeds="[0, 1, 2]", metrics=False):
    path = tmp_path / name
    path.write_text(textwrap.dedent(f"""
        model: {tiny_model_dir}
        images: [{sources_dir / 'source0.png'}, {sources_dir / 'source1.png'}]
        prompts: [a red circle, a blue square]
        strengths: {strengths}
        seeds: {seeds}
        guidance_scales: [2.0]
        steps: [20]
        schedulers: [euler_a]
    """))
    return path


def _sweep_process(config, out, *extra):
    return subprocess.Popen([sys.executable, "-m", "img2img_lab.cli.main", "sweep", str(config), "--out", str(out),
                             "--no-progress", "--device", "cpu", *extra], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def _hashes(run) -> dict:
    table = RunStore.open(run).read_table()
    return dict(zip(table["cell_key"], table["output_hash"]))


def _assert_consistent(run) -> pd.DataFrame:
    """Every row's image exists, decodes and has the row's hash; keys unique; no temp file visible."""
    store = RunStore.open(run)
    table = store.read_table()
    assert table["cell_key"].is_unique
    for row in table.itertuples():
        with Image.open(run / row.output_path) as image:
            image.load()
            assert content_hash(image) == row.output_hash
    for folder, suffix in (("images", ".png"), ("rows", ".json")):  # only final files, each one complete
        for path in (run / folder).iterdir():
            assert path.suffix == suffix and not path.name.startswith("."), path
            if suffix == ".json":
                json.loads(path.read_text())
            else:
                with Image.open(path) as image:
                    image.load()
    return table


@pytest.mark.slow
def test_sigkill_three_times_then_complete_equals_an_uninterrupted_run(tiny_model_dir, sources_dir, tmp_path,
                                                                      capsys):
    config = _config(tmp_path, tiny_model_dir, sources_dir)
    reference = tmp_path / "reference"  # in this process, at the killed runs' thread count: bit-identical
    assert cli_in_this_process("sweep", str(config), "--out", str(reference), "--no-progress", "--device", "cpu",
                               threads=int(ENV["IMG2IMG_LAB_THREADS"]))[0] == 0
    expected = _hashes(reference)
    assert len(expected) == 60

    run = tmp_path / "killed"
    rng = random.Random(2026)
    thresholds = sorted(rng.sample(range(1, 58), 3))
    kills = []
    for threshold in thresholds:
        process = _sweep_process(config, run)
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None:
            rows = len(list((run / "rows").glob("*.json"))) if (run / "rows").is_dir() else 0
            if rows >= threshold:
                break
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        kills.append((threshold, process.returncode))
        _assert_consistent(run)  # after every kill: only complete files, rows match images
    assert sum(code == -signal.SIGKILL for _, code in kills) >= 2, kills
    done_before = len(RunStore.open(run).read_table())
    assert _sweep_process(config, run).wait(timeout=300) == 0
    table = _assert_consistent(run)
    assert len(table) == 60
    assert _hashes(run) == expected  # bit-identical to the uninterrupted run, cell by cell
    counts = RunStore.open(run).read_manifest()["counts"]
    assert counts["already_done"] == done_before and counts["generated"] + counts["reused"] == 60 - done_before
    with capsys.disabled():
        print(f"\n[resume] killed at >= {thresholds} finished cells ({kills}); {done_before} kept, "
              f"{60 - done_before} completed; all 60 hashes equal the uninterrupted run")


@pytest.mark.slow
def test_two_concurrent_sweeps_into_one_folder_stay_consistent(tiny_model_dir, sources_dir, tmp_path):
    first = _config(tmp_path, tiny_model_dir, sources_dir, name="a.yaml", strengths="[0.2, 0.4, 0.6]")
    second = _config(tmp_path, tiny_model_dir, sources_dir, name="b.yaml", strengths="[0.4, 0.6, 0.8]")
    run = tmp_path / "shared"
    processes = [_sweep_process(first, run), _sweep_process(second, run)]
    outputs = [process.communicate(timeout=300)[0].decode() for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    table = _assert_consistent(run)
    assert sorted(table["strength"].unique()) == [0.2, 0.4, 0.6, 0.8]
    assert len(table) == 2 * 2 * 3 * 4  # every cell exactly once (sources x prompts x seeds x strengths)
    assert len(list((run / "images").glob("*.png"))) == len(table)
    parquet = pd.read_parquet(run / "results.parquet")
    assert set(parquet["cell_key"]) == set(table["cell_key"])  # the consolidated table lost no row
    # A third run over the union generates nothing.
    union = _config(tmp_path, tiny_model_dir, sources_dir, name="c.yaml", strengths="[0.2, 0.4, 0.6, 0.8]")
    assert main(["sweep", str(union), "--out", str(run), "--no-progress", "--device", "cpu"]) == 0
    assert RunStore.open(run).read_manifest()["counts"]["generated"] == 0


def test_save_cell_first_writer_wins(tmp_path):
    store = RunStore.create(tmp_path / "run", {"format": "test"})
    key = "0123456789abcdef0123"
    red, blue = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")
    row = {"cell_key": key, "output_path": f"images/{key}.png", "output_hash": content_hash(red)}
    assert store.save_cell(key, red, row)
    other = RunStore.open(tmp_path / "run")
    assert not other.save_cell(key, blue, {**row, "output_hash": content_hash(blue)})
    assert content_hash(Image.open(store.image_path(key))) == content_hash(red)
    assert other.row(key)["output_hash"] == content_hash(red)
    # Rows are durable before any flush; flush consolidates them into results.parquet.
    assert not (tmp_path / "run" / "results.parquet").exists()
    assert len(RunStore.open(tmp_path / "run").read_table()) == 1
    store.flush()
    assert list(pd.read_parquet(tmp_path / "run" / "results.parquet")["cell_key"]) == [key]


def test_same_config_twice_gives_identical_images_and_metrics_and_verify(tiny_model_dir, sources_dir, tmp_path,
                                                                         capsys):
    config = _config(tmp_path, tiny_model_dir, sources_dir, strengths="[0.0, 0.3, 0.34, 0.7]", seeds="[0, 1]")
    tables = []
    for name in ("one", "two"):
        assert main(["sweep", str(config), "--out", str(tmp_path / name), "--no-progress", "--device", "cpu",
                     "--metrics", "ssim,delta_e,edge_f1"]) == 0
        tables.append(RunStore.open(tmp_path / name).read_table().set_index("cell_key").sort_index())
    one, two = tables
    assert list(one.index) == list(two.index)
    assert (one["output_hash"] == two["output_hash"]).all()
    for metric in ("ssim", "delta_e", "edge_f1"):
        assert one[metric].tolist() == two[metric].tolist()  # exactly equal, not approximately

    capsys.readouterr()
    assert main(["verify", str(tmp_path / "one"), "--sample", "3"]) == 0
    printed = capsys.readouterr().out
    assert "verify: OK" in printed and "0 differ" in printed
    # Alter one image by one pixel: verify fails and names the file.
    victim = tmp_path / "one" / one["output_path"].iloc[2]
    image = Image.open(victim).convert("RGB")
    image.putpixel((0, 0), tuple((value + 1) % 256 for value in image.getpixel((0, 0))))
    image.save(victim)
    assert main(["verify", str(tmp_path / "one"), "--sample", "0"]) == 1
    printed = capsys.readouterr().out
    assert "verify: FAILED" in printed and victim.name in printed and "was changed" in printed


def test_verify_detects_a_regeneration_mismatch(tiny_pipe, sources_dir, tmp_path):
    from img2img_lab.plan.sweep_plan import SweepPlan
    from img2img_lab.sweep.run import run_sweep
    from img2img_lab.sweep.verify import verify_run

    plan = SweepPlan(images=[str(sources_dir / "source0.png")], prompts=["a cat"], strengths=[0.5, 1.0], seeds=[0],
                     guidance_scales=[2.0], steps=[10], schedulers=["ddim"])
    run_sweep(plan, tmp_path / "run", pipe=tiny_pipe, progress=False, engine="per-cell")
    assert verify_run(tmp_path / "run", sample=2, pipe=tiny_pipe).ok
    # Forge a row: pretend the image (and its hash) came from another seed. Files agree, regeneration does not.
    store = RunStore.open(tmp_path / "run")
    table = store.read_table()
    forged = Image.new("RGB", (32, 32), "green")
    key = table["cell_key"].iloc[0]
    forged.save(store.image_path(key))
    table.loc[table["cell_key"] == key, "output_hash"] = content_hash(forged)
    store.replace_table(table)
    path = store.row_path(key)
    path.write_text(json.dumps({**json.loads(path.read_text()), "output_hash": content_hash(forged)}))
    report = verify_run(tmp_path / "run", sample=2, pipe=tiny_pipe)
    assert not report.ok and not report.file_failures and len(report.mismatches) == 1


def test_rerun_of_a_finished_sweep_answers_from_the_run_folder(tiny_model_dir, sources_dir, tmp_path, capsys):
    config = _config(tmp_path, tiny_model_dir, sources_dir, strengths="[0.25, 0.5, 0.75, 1.0]",
                     seeds="[0, 1, 2, 3, 4]")  # 2 x 2 x 4 x 5 = 80 cells
    run = tmp_path / "run"
    assert main(["sweep", str(config), "--out", str(run), "--no-progress", "--device", "cpu"]) == 0
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "img2img_lab.cli.main", "sweep", str(config), "--out", str(run),
                             "--no-progress", "--device", "cpu"], env=ENV, capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    assert "(0 generated, 0 duplicate strengths reused, 80 already done)" in result.stdout
    counts = RunStore.open(run).read_manifest()["counts"]
    assert counts["answered_from_run_folder"] is True and counts["generated"] == 0
    with capsys.disabled():
        print(f"\n[rerun] finished 80-cell sweep rerun as a new process: {seconds:.2f} s, nothing generated")
    # Touching the model folder (a changed file) disables the shortcut: the sweep re-checks with the model.
    os.utime(tiny_model_dir / "model_index.json")
    assert main(["sweep", str(config), "--out", str(run), "--no-progress", "--device", "cpu"]) == 0
    counts = RunStore.open(run).read_manifest()["counts"]
    assert "answered_from_run_folder" not in counts and counts["already_done"] == 80


@pytest.fixture(scope="module")
def reported_run(tmp_path_factory, tiny_model_dir):
    from conftest import structured_image

    folder = tmp_path_factory.mktemp("report")
    for index in range(2):
        structured_image(32, seed=index).save(folder / f"source{index}.png")
    config = _config(folder, tiny_model_dir, folder, strengths="[0.3, 0.6, 1.0]", seeds="[0, 1]")
    run = folder / "run"
    assert main(["sweep", str(config), "--out", str(run), "--no-progress", "--device", "cpu",
                 "--metrics", "ssim,delta_e"]) == 0
    return run


def test_report_is_one_self_contained_file(reported_run, tmp_path):
    out = tmp_path / "report.html"
    assert main(["report", str(reported_run), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.count("<img") == text.count("src='data:image/png;base64,")  # every image embedded
    assert "http://" not in text and "https://" not in text and "<script" not in text and "<link" not in text
    for title in ("Manifest", "Comparison grids", "Metrics against strength", "The tidy table"):
        assert title in text
    assert text.count("class='grid'") == 4  # 2 sources x 2 prompts
    table = RunStore.open(reported_run).read_table()
    assert all(key in text for key in table["cell_key"])


@pytest.mark.slow
def test_report_opens_in_chromium_without_network_requests(reported_run, tmp_path, chromium, capsys):
    sync_api = pytest.importorskip("playwright.sync_api")
    out = tmp_path / "report.html"
    assert main(["report", str(reported_run), "--out", str(out)]) == 0
    requests = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(**chromium)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1400})
            page.on("request", lambda request: requests.append(request.url))
            page.goto(out.as_uri())
            page.wait_for_load_state("load")
            shown = page.evaluate("() => Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
            rows = page.evaluate("() => document.querySelectorAll('#table tbody tr').length")
            page.screenshot(path=str(REPO / "test-artifacts" / "report.png"), full_page=False)
        finally:
            browser.close()
    outside = [url for url in requests if not url.startswith(("file://", "data:"))]
    assert not outside, outside
    assert shown and all(complete and width > 0 for complete, width in shown)
    assert rows == len(RunStore.open(reported_run).read_table())
    with capsys.disabled():
        print(f"\n[report] {len(shown)} embedded images rendered, {rows} table rows, {len(requests)} requests "
              f"(all file:/data:)")


@pytest.mark.slow
def test_report_notebook_runs_with_papermill_and_converts_without_input(reported_run, tmp_path):
    papermill = pytest.importorskip("papermill")
    executed = tmp_path / "report.ipynb"
    papermill.execute_notebook(str(REPO / "notebooks" / "04_report.ipynb"), str(executed),
                               parameters={"RUN_DIR": str(reported_run), "OUT": str(tmp_path / "nb-report.html")},
                               cwd=str(REPO / "notebooks"), kernel_name="python3", progress_bar=False)
    assert (tmp_path / "nb-report.html").is_file()
    result = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", "--no-input",
                             str(executed), "--output-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    converted = (tmp_path / "report.html").read_text()
    assert "Comparison grids" in converted and "The tidy table" in converted
    assert "report_sections(run_dir)" not in converted  # --no-input: no code
    assert "i2i-header-text" in converted  # the grid explorer as its static grid


def test_export_csv_and_parquet(reported_run, tmp_path):
    assert main(["export", str(reported_run), "--csv", str(tmp_path / "t.csv"),
                 "--parquet", str(tmp_path / "t.parquet")]) == 0
    table = RunStore.open(reported_run).read_table()
    assert len(pd.read_csv(tmp_path / "t.csv")) == len(table)
    assert list(pd.read_parquet(tmp_path / "t.parquet")["cell_key"]) == list(table["cell_key"])
    assert main(["export", str(reported_run)]) == 2  # nothing asked: a clear error


def test_a_shared_cache_folder_serves_other_run_folders(tiny_pipe, sources_dir, tmp_path):
    from img2img_lab.plan.sweep_plan import SweepPlan
    from img2img_lab.sweep.run import run_sweep
    from img2img_lab.sweep.verify import verify_run

    cache = tmp_path / "cache"
    plan = SweepPlan(images=[str(sources_dir / "source0.png")], prompts=["a cat"], strengths=[0.3, 0.34, 0.7],
                     seeds=[0, 1], guidance_scales=[2.0], steps=[10], schedulers=["ddim"])
    first = run_sweep(plan, tmp_path / "first", pipe=tiny_pipe, progress=False, cache=cache, metrics=["ssim"])
    assert len(list((cache / "images").glob("*.png"))) == 6 and len(list((cache / "rows").glob("*.json"))) == 6
    extended = SweepPlan.from_dict({**plan.to_dict(), "strengths": [0.3, 0.34, 0.7, 0.9]})
    second = run_sweep(extended, tmp_path / "second", pipe=tiny_pipe, progress=False, cache=cache, metrics=["ssim"])
    counts = RunStore.open(tmp_path / "second").read_manifest()["counts"]
    assert counts["from_cache"] == 6 and counts["generated"] == 2  # only strength 0.9 (2 seeds) is new
    shared = second[second["strength"] < 0.8]
    assert list(shared["output_hash"]) == list(first["output_hash"]) and shared["ssim"].notna().all()
    assert all((tmp_path / "second" / path).is_file() for path in second["output_path"])
    assert len(list((cache / "rows").glob("*.json"))) == 8
    assert verify_run(tmp_path / "second", sample=0).ok


def test_sigterm_ends_like_ctrl_c_and_a_signal_at_exit_prints_one_line(tiny_model_dir, sources_dir, tmp_path):
    """SIGTERM (a scheduler's stop, `kill`) mid-sweep ends with the "terminated" line and exit 143, the finished cells
    kept; a Ctrl-C that lands while the interpreter exits prints one line, no traceback (issue #28)."""
    config = _config(tmp_path, tiny_model_dir, sources_dir)
    run = tmp_path / "run"
    process = _sweep_process(config, run)
    deadline = time.monotonic() + 120  # a bound on waiting for the first rows, not a timing assertion
    while time.monotonic() < deadline and process.poll() is None:
        if (run / "rows").is_dir() and len(list((run / "rows").glob("*.json"))) >= 2:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=60)[0].decode()
    print(f"sweep ended with {process.returncode}")
    if process.returncode != 0:  # the sweep may finish before the signal lands on a fast machine
        assert process.returncode == 143 and "terminated (SIGTERM): finished cells are saved" in output, output
    assert "Traceback" not in output
    _assert_consistent(run)
    at_exit = ("import atexit, os, signal, sys\n"
               "from img2img_lab.cli.main import run\n"
               "atexit.register(lambda: os.kill(os.getpid(), signal.SIGINT))\n"
               f"run(['verify', {str(run)!r}, '--sample', '0'])\n")
    result = subprocess.run([sys.executable, "-c", at_exit], env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 130 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == ("interrupted while exiting: the command had finished; "
                                                      "everything is saved.")
