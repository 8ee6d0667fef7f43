"""The mode reference table (issue #31): a config with modes: [img2img, inpaint] is calibrated once per mode into one
run folder; the table puts each goal's recommendation per mode side by side, validates them on held-out pairs, states
the folklore rows, and the grid explorer switches mode by goal."""

from __future__ import annotations

import pytest

from img2img_lab.errors import PlanError

from conftest import SMALL_MODES_CONFIG as CONFIG  # shared with the browser test


@pytest.fixture(scope="module")
def mode_run(tmp_path_factory):
    from pathlib import Path

    from img2img_lab.cli.main import main

    folder = tmp_path_factory.mktemp("modes")
    config = folder / "modes.yaml"
    config.write_text(CONFIG.format(root=Path(__file__).resolve().parents[2]))
    assert main(["calibrate", str(config), "--out", str(folder / "run"), "--no-progress"]) == 0
    return folder / "run", config


def test_the_mode_table_has_every_goal_per_mode_validation_and_folklore(mode_run, capsys):
    import pandas as pd

    run, _ = mode_run
    table = pd.read_csv(run / "calibration" / "modes.csv")
    assert sorted(set(zip(table.goal, table["mode"]))) == sorted(
        (goal, mode) for goal in ("keep", "follow", "both") for mode in ("img2img", "inpaint"))
    assert table.groupby("goal").best.sum().le(1).all()  # at most one best mode per goal
    for goal, part in table[table.holds].groupby("goal"):
        best = part[part.best].iloc[0]
        assert best.strength == (part.strength.max() if goal == "keep" else part.strength.min())
    assert (run / "calibration" / "img2img" / "calibration.json").is_file()
    assert (run / "calibration" / "modes.png").stat().st_size > 10_000
    assert (run / "calibration" / "inpaint" / "calibration.json").is_file()
    validation = pd.read_csv(run / "calibration" / "modes_validation.csv")
    assert set(validation["mode"]) <= {"img2img", "inpaint"} and (validation.runs == 3).all()  # 1 pair x 3 seeds
    text = (run / "calibration" / "modes.md").read_text()
    assert "text-to-image" in text and "swap the background only" in text and "restyle" in text
    rows = pd.read_parquet(run / "results.parquet")
    assert set(rows["mode"]) == {"img2img", "inpaint"}


def test_one_calibration_refuses_several_modes(mode_run):
    from img2img_lab.calibration.procedure import calibrate, load_config

    plan, settings = load_config(mode_run[1])
    with pytest.raises(PlanError, match="one calibration covers one mode.*Fix: run `img2img-lab calibrate`"):
        calibrate((plan, settings), mode_run[0], progress=False)


def test_the_explorer_switches_mode_by_goal(mode_run):
    pytest.importorskip("ipywidgets")
    import pandas as pd

    from img2img_lab.widgets.grid_explorer import GridExplorer

    run, _ = mode_run
    table = pd.read_csv(run / "calibration" / "modes.csv")
    explorer = GridExplorer(run)
    controls = explorer.mode_controls
    assert controls is not None and "mode" not in explorer.pins
    before = explorer.cell_keys()
    controls.mode.value = "inpaint"
    assert explorer.selection()["mode"] == "inpaint" and explorer.cell_keys() != before
    for goal in ("follow", "both", "keep"):
        if controls.goal.value == goal:
            continue
        controls.goal.value = goal
        part = table[table.goal == goal]
        expected = (part[part.best] if part.best.any() else part).iloc[0]["mode"]
        assert controls.mode.value == expected and explorer.selection()["mode"] == expected
        assert goal in controls.mode_table.value or expected in controls.mode_table.value


def test_each_inpainting_setting_is_a_row_of_the_mode_table():
    """composite x mask_blur x padding_mask_crop: one calibration per setting (a crop composites by itself), named by
    its options; one calibration alone refuses several settings."""
    from img2img_lab.calibration.modes import mode_plans
    from img2img_lab.calibration.procedure import plan_and_settings
    from img2img_lab.plan.sweep_plan import SweepPlan

    plan = SweepPlan(images=["a.png"], prompts=["p"], strengths=[0.5], modes=["img2img", "inpaint"],
                     inpaint={"mask": "oracle", "composite": [False, True], "mask_blur": [0, 4],
                              "padding_mask_crop": [None, 16]})
    plans = mode_plans(plan)
    assert list(plans) == ["img2img", "inpaint", "inpaint+crop16", "inpaint+blur4", "inpaint+crop16+blur4",
                           "inpaint+composite", "inpaint+composite+blur4"]
    assert plans["img2img"].inpaint is None
    assert plans["inpaint+composite+blur4"].inpaint == {"mask": "oracle", "repaint": "background",
                                                        "composite": [True], "mask_blur": [4],
                                                        "padding_mask_crop": [None]}
    assert [len(sub.cells()) for sub in plans.values()] == [1] * 7
    with pytest.raises(PlanError, match="one calibration covers one inpainting setting, and this plan has several "
                                        "composite values"):
        plan_and_settings(SweepPlan.from_dict({**plan.to_dict(), "modes": ["inpaint"]}), None)
