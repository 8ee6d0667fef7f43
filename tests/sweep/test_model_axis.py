"""The model axis (issue #12): `models: [A, B]` compares models in one run folder, side by side on log-SNR."""

from __future__ import annotations

import pytest

from img2img_lab.cli.main import main
from img2img_lab.errors import PlanError
from img2img_lab.plan.sweep_plan import SweepPlan
from img2img_lab.store.run_store import RunStore


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, tiny_model_dir):
    """The tiny SD pipeline and a tiny SDXL pipeline, both 32 px, as model folders."""
    from img2img_lab.testing import save_tiny_family

    return str(tiny_model_dir), str(save_tiny_family("sdxl", tmp_path_factory.mktemp("axis") / "sdxl"))


def test_plan_models_axis_validation():
    with pytest.raises(PlanError, match="both 'model' and 'models'"):
        SweepPlan(images=["a.png"], prompts=["p"], strengths=[0.5], model="x", models=["a", "b"])
    with pytest.raises(PlanError, match="'models' list is empty"):
        SweepPlan(images=["a.png"], prompts=["p"], strengths=[0.5], models=[])
    with pytest.raises(PlanError, match="lists 'a' twice"):
        SweepPlan(images=["a.png"], prompts=["p"], strengths=[0.5], models=["a", "a"])
    plan = SweepPlan(images=["a.png"], prompts=["p"], strengths=[0.5, 1.0], models=["embedded", "b"])
    assert [sub.model for sub in plan.model_plans()] == [None, "b"]
    assert plan.summary().endswith("x 2 models = 4 cells")


def test_cli_sweep_with_two_models_into_one_folder(two_models, source_png, tmp_path, capsys):
    sd, sdxl = two_models
    config = tmp_path / "compare.yaml"
    config.write_text(f"images: [{source_png}]\nprompts: [a red disc]\nstrengths: [0.0, 0.5, 1.0]\nseeds: [0, 1]\n"
                      f"guidance: 3.0\nsteps: 4\nmax_side: null\nmodels: [{sd}, {sdxl}]\n")
    out = tmp_path / "run"
    assert main(["sweep", str(config), "--out", str(out), "--no-progress", "--metrics", "ssim"]) == 0
    store = RunStore.open(out)
    table = store.read_table()
    manifest = store.read_manifest()
    assert len(table) == 12 and table["model"].nunique() == 2 and table["cell_key"].is_unique
    assert sorted(table["model_family"].unique()) == ["sd", "sdxl"]
    assert len(manifest["models"]) == 2 and manifest["plan"]["models"] == [sd, sdxl]
    floor = store.read_floor()
    assert floor["model_fingerprint"].nunique() == 2 and len(floor) == 2  # each model's own VAE round trip
    # A rerun of the finished comparison answers from the folder; one model of it may be swept again alone.
    assert main(["sweep", str(config), "--out", str(out), "--no-progress", "--metrics", "ssim"]) == 0
    assert "cells (0 generated" in capsys.readouterr().out
    assert main(["verify", str(out), "--sample", "4"]) == 0
    assert "verify: OK" in capsys.readouterr().out
    assert main(["grid", str(out), "--rows", "model", "--where", "seed=0", "--annotate", "ssim",
                 "--out", str(tmp_path / "grid.png")]) == 0
    assert main(["curves", str(out), "--metric", "ssim", "--x", "log_snr", "--hue", "model",
                 "--out", str(tmp_path / "curves.png")]) == 0
    from img2img_lab.figures.grids import strength_curves

    lines = strength_curves(out, "ssim", hue="model").axes[0].get_lines()  # each model's own floor, not their mean
    drawn = {line.get_label(): line.get_ydata()[0] for line in lines if "floor" in line.get_label()}
    names = dict(zip(table["model_fingerprint"], table["model"]))
    assert drawn == pytest.approx({f"VAE round-trip floor · {names[fingerprint]}": level for fingerprint, level
                                   in floor.groupby("model_fingerprint")["ssim"].mean().items()}, abs=1e-12)
    single = tmp_path / "single.yaml"
    single.write_text(config.read_text().replace(f"models: [{sd}, {sdxl}]", f"model: {sdxl}"))
    assert main(["sweep", str(single), "--out", str(out), "--no-progress"]) == 0
    assert main(["sweep", str(single), "--out", str(out), "--model", "data/models/shapes-world"]) == 2
    assert "holds a run of another model" in capsys.readouterr().err
    assert main(["sweep", str(config), "--out", str(tmp_path / "x"), "--model", sd]) == 2
    assert "--model" in capsys.readouterr().err


def test_calibrate_models_side_by_side_on_log_snr(two_models, source_png, tmp_path):
    from img2img_lab.calibration.procedure import CalibrationSettings, Target
    from img2img_lab.calibration.compare import calibrate_models, model_summary

    sd, sdxl = two_models
    plan = SweepPlan(images=[str(source_png)], prompts=["a red disc"], strengths=[0.0, 0.25, 0.5, 1.0],
                     seeds=[0, 1], guidance_scales=[3.0], steps=[4], max_side=None, models=[sd, sdxl])
    settings = CalibrationSettings(metrics=["ssim"], keep=[Target("ssim", at_least=0.5)], follow=[],
                                   refine_rounds=1, n_resamples=200)
    results = calibrate_models((plan, settings), tmp_path / "run", progress=False)
    assert len(results) == 2
    summary = model_summary(results)
    assert summary["model"].nunique() == 2 and "log_snr" in summary.columns
    assert (tmp_path / "run" / "calibration" / "models.csv").is_file()
    assert (tmp_path / "run" / "calibration" / "models.png").stat().st_size > 1000
    assert len(list((tmp_path / "run" / "calibration").glob("*/calibration.json"))) == 2
    from img2img_lab.calibration.procedure import load_config
    from img2img_lab.store.run_store import RunStore

    recorded = RunStore.open(tmp_path / "run").read_manifest()["calibration"]  # provenance of the whole comparison
    assert {item["model"] for item in recorded["rounds"]} == set(results)
    assert load_config(tmp_path / "run" / recorded["config"])[0].models == [sd, sdxl]
    from img2img_lab.figures.report import write_report

    report = write_report(tmp_path / "run", tmp_path / "report.html").read_text()
    assert "per model" in report and "one row per model" in report and "ssim vs log_snr" in report
