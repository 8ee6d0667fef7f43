"""First-run friction found by trying img2img-lab as a new user (issue #15): doctor, --version, every command's help,
bundled configs by name, bad demo options, a missing source before the model loads, a missing run folder, notebook
04 without a run, notebooks copied out, and the thread count for small models."""

from __future__ import annotations

import argparse
import json
import time

import pytest

from img2img_lab import __version__
from img2img_lab.cli.main import EXAMPLES, build_parser, main
from img2img_lab.errors import Img2ImgLabError, StoreError
from img2img_lab.models.threads import threads_for


def test_version_and_doctor(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"img2img-lab {__version__}"
    monkeypatch.chdir(tmp_path)
    assert main(["doctor"]) == 0
    screen = capsys.readouterr().out
    for line in ("img2img-lab " + __version__, "packages:    torch", "device:      cpu", "threads:", "torchvision: shim",
                 "offline:     yes", "model:       embedded:shapes-world at", "(present)", "caches:      Hugging Face",
                 "run folder:  runs is writable"):
        assert line in screen, line
    metric_lines = screen.split("metrics:\n", 1)[1].splitlines()
    columns = {len(line) - len(line.lstrip()[len(line.split()[0]):].lstrip()) for line in metric_lines}
    assert len(columns) == 1, metric_lines  # one column, the longest name (oracle_background_match) included
    states = {line.split()[0]: line.split()[1] for line in metric_lines}
    assert states["ssim"] == states["lpips"] == "available" and states["lpips_squeeze"] == "UNAVAILABLE"
    assert "weights fetch lpips-squeeze" in screen  # an unavailable metric comes with its fix
    assert main(["doctor", "--json", "--run-dir", "/proc/no-such/runs"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["run_folder"]["writable"] is False and report["metrics"]["ssim"]["available"] is True
    assert not (tmp_path / "runs").exists()  # doctor writes nothing


def test_every_command_has_an_example_and_every_argument_has_help():
    parser = build_parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    assert set(commands.choices) == set(EXAMPLES)
    for name, sub in commands.choices.items():
        assert sub.epilog == f"example:\n  {EXAMPLES[name]}" and EXAMPLES[name].startswith(f"img2img-lab {name}")
        for action in sub._actions:
            assert action.help and action.help.strip(), f"{name} {action.dest}: no help text"
        sub.parse_args(EXAMPLES[name].split(">")[0].split()[2:])  # the example itself parses (before a redirect)
    assert all(action.help for action in parser._actions)


def test_bundled_configs_by_name_and_bad_demo_options(capsys):
    assert main(["sweep", "no-such-config", "--out", "x"]) == 2
    assert "config file no-such-config does not exist. Fix: give the path of a YAML config, or the name of a " \
           "bundled example (calibrate, demo, guidance, inpaint, lora, modes, quick)" in capsys.readouterr().err
    for argv, message in ((["demo", "--seeds", "0"], "--seeds 0: the number of seeds must be one whole number >= 1"),
                          (["demo", "--seeds", "two"], "--seeds two: 'two' is not a whole number"),
                          (["demo", "--strengths", "0.2,abc"], "--strengths 0.2,abc: 'abc' is not a number"),
                          (["demo", "--strengths", "0.2,1.5"], "1.5"),
                          (["--threads", "0", "doctor"], "--threads 0: need at least 1 thread")):
        assert main(argv) == 2, argv
        error = capsys.readouterr().err
        assert error.startswith("error: ") and message in error and "Traceback" not in error, (argv, error)


def test_a_missing_source_is_reported_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import img2img_lab.sweep.run as sweep

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the sources were checked")

    monkeypatch.setattr(sweep, "load_model", no_model)
    config = tmp_path / "c.yaml"
    config.write_text("images: [missing.png]\nprompts: [a cat]\nstrengths: [0.5]\n")
    assert main(["sweep", str(config), "--out", str(tmp_path / "run")]) == 2  # no_model: no load before the check
    assert "missing.png: no such file" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    monkeypatch.setattr("img2img_lab.models.loading.load_pipeline", no_model)
    monkeypatch.setattr("img2img_lab.models.loading.load_model", no_model)
    calibration = tmp_path / "cal.yaml"
    calibration.write_text("images: [missing.png]\nprompts: [a cat]\nstrengths: [0.5]\ncalibration: {}\n")
    assert main(["calibrate", str(calibration), "--out", str(tmp_path / "cal")]) == 2
    assert "missing.png: no such file" in capsys.readouterr().err


def test_a_missing_run_folder_is_said_to_not_exist(tmp_path, capsys):
    for command in (["report"], ["verify"], ["measure"], ["export", "--csv", "x.csv"]):
        assert main([command[0], str(tmp_path / "nope"), *command[1:]]) == 2
        error = capsys.readouterr().err
        assert f"run folder '{tmp_path / 'nope'}' does not exist" in error, (command, error)
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "is not an img2img-lab run folder" in capsys.readouterr().err


def test_notebook_04_opens_the_newest_run_or_says_what_to_run(tmp_path, monkeypatch):
    from img2img_lab.figures.report import find_run_folder
    from img2img_lab.store.run_store import RunStore

    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError, match=r"no run folder yet in runs or \.\./runs\. Fix: run `img2img-lab demo`"):
        find_run_folder()
    older, newer = RunStore.create("runs/a", {"plan": {}}), RunStore.create("runs/b", {"plan": {}})
    import os

    os.utime(older.manifest_path, (time.time() - 60, time.time() - 60))
    assert find_run_folder().name == "b"
    os.utime(newer.manifest_path, (time.time() - 120, time.time() - 120))
    assert find_run_folder().name == "a" and find_run_folder("elsewhere").name == "elsewhere"
    # in Jupyter a library error shows as its one line, not a traceback
    error = StoreError("no run folder yet. Fix: run `img2img-lab demo`.")
    assert error._render_traceback_() == ["StoreError: no run folder yet. Fix: run `img2img-lab demo`."]


@pytest.mark.slow
def test_notebook_04_without_a_run_shows_one_line(tmp_path):
    papermill = pytest.importorskip("papermill")
    from img2img_lab.resources import copy_notebooks

    notebook = next(path for path in copy_notebooks(tmp_path / "nb") if path.name == "04_report.ipynb")
    with pytest.raises(papermill.PapermillExecutionError) as failure:
        papermill.execute_notebook(str(notebook), str(tmp_path / "out.ipynb"), cwd=str(notebook.parent),
                                   kernel_name="python3", progress_bar=False)
    assert "no run folder yet" in str(failure.value) and "img2img-lab demo" in str(failure.value)
    executed = json.loads((tmp_path / "out.ipynb").read_text())
    errors = [output for cell in executed["cells"] for output in cell.get("outputs", [])
              if output["output_type"] == "error"]
    assert len(errors) == 1 and errors[0]["traceback"] == [
        "StoreError: no run folder yet in runs or ../runs. Fix: run `img2img-lab demo` (or `make demo` in a checkout) "
        "first, or set RUN_DIR to a run folder."]


def test_notebooks_are_copied_out_and_never_overwritten_silently(tmp_path, capsys):
    assert main(["notebooks", str(tmp_path / "nb")]) == 0
    assert sorted(path.name for path in (tmp_path / "nb").iterdir())[0] == "01_quickstart.ipynb"
    (tmp_path / "nb" / "01_quickstart.ipynb").write_text("mine")
    assert main(["notebooks", str(tmp_path / "nb")]) == 2
    assert "01_quickstart.ipynb already exists (and 3 more). Fix:" in capsys.readouterr().err
    assert (tmp_path / "nb" / "01_quickstart.ipynb").read_text() == "mine"
    assert main(["notebooks", str(tmp_path / "nb"), "--force"]) == 0
    assert json.loads((tmp_path / "nb" / "01_quickstart.ipynb").read_text())["nbformat"] == 4
    # the copied notebooks reach the bundled data through the package, not ../data
    sources = "".join(path.read_text() for path in (tmp_path / "nb").glob("*.ipynb"))
    assert "../data" not in sources


def test_thread_count_for_small_models(monkeypatch):
    assert threads_for(parameters=3_000_000, cores=2, environ={}) == (1, "small model (3 M parameters): half of 2 cores")
    assert threads_for(parameters=3_000_000, cores=16, environ={})[0] == 4
    assert threads_for(parameters=3_000_000, cores=1, environ={})[0] == 1
    assert threads_for(parameters=900_000_000, cores=16, environ={})[0] is None
    assert threads_for(parameters=3_000_000, cores=2, environ={"IMG2IMG_LAB_THREADS": "3"})[0] == 3
    with pytest.raises(Img2ImgLabError, match="IMG2IMG_LAB_THREADS='x' must be a whole number"):
        threads_for(parameters=1, environ={"IMG2IMG_LAB_THREADS": "x"})
    import torch

    from img2img_lab.models.loading import load_pipeline
    from img2img_lab.models.handle import as_model

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("IMG2IMG_LAB_THREADS", "1")
        pipe = load_pipeline(device="cpu")
        assert torch.get_num_threads() == 1 and as_model(pipe).threads_reason == "IMG2IMG_LAB_THREADS=1"
        load_pipeline(device="cpu", threads=None)
        assert torch.get_num_threads() == 1  # left alone
    finally:
        torch.set_num_threads(before)
