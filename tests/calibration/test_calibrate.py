"""Calibration: bootstrap CIs against known answers, crossings on synthetic curves, adaptive refinement,
the reference table and its renderings, config errors, and the CLI on the tiny pipeline."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from img2img_lab.calibration.procedure import (
    CalibrationSettings,
    Target,
    bootstrap_ci,
    bootstrap_means,
    calibrate,
    find_crossing,
    knee,
    load_config,
    strength_for_steps,
    strength_summary,
)
from img2img_lab.errors import Img2ImgLabError, PlanError
from img2img_lab.plan.sweep_plan import SweepPlan, strength_steps

STEPS = 20


@pytest.fixture(autouse=True, scope="module")
def synthetic_metrics():
    """The synthetic runner's metric names, registered as plugin metrics for this module only."""
    from img2img_lab.metrics import registry as metrics

    for name, higher in (("fidelity", True), ("rate", False)):
        metrics.register_pair_metric(name, lambda source, output: 0.0, higher_is_better=higher)
    yield
    for name in ("fidelity", "rate"):
        metrics.unregister_metric(name)


def synthetic_runner(curves, *, pairs: int = 6, noise: float = 0.02, calls=None):
    """A runner that 'generates' rows whose metrics are known functions of the executed steps k / STEPS,
    plus deterministic per-(pair, seed, k) noise: crossings have a known answer."""

    def run(plan: SweepPlan):
        rows = []
        for cell in plan.cells():
            for pair in range(pairs):
                k = cell.init_steps
                rng = np.random.default_rng(hash((pair, cell.seed, k, cell.guidance_scale)) % 2**32)
                row = {"cell_key": f"{pair}-{cell.seed}-{cell.strength}-{cell.guidance_scale}",
                       "source_hash": f"src{pair}", "source_name": f"src{pair}", "prompt": cell.prompt,
                       "negative_prompt": "", "seed": cell.seed, "strength": cell.strength,
                       "guidance_scale": cell.guidance_scale, "num_inference_steps": STEPS,
                       "scheduler": cell.scheduler, "executed_steps": k, "sigma": k / STEPS * 10,
                       "sqrt_alpha_bar": 1 - k / STEPS, "output_path": f"images/{pair}.png"}
                for metric, curve in curves.items():
                    value = curve(k / STEPS, cell.guidance_scale) + rng.normal(0, noise)
                    row[metric] = float(np.clip(value, 0, 1)) if metric.startswith("rate") else float(value)
                rows.append(row)
        if calls is not None:
            calls.append(sorted(set(plan.strengths)))
        return pd.DataFrame(rows)

    return run


def _plan(strengths, guidance=(3.0,), seeds=(0, 1, 2)):
    return SweepPlan(images=["unused.png"], prompts=["p"], strengths=list(strengths), seeds=list(seeds),
                     guidance_scales=list(guidance), steps=[STEPS], schedulers=["ddim"])


# ----------------------------------------------------------------------------------------------- bootstrap
def test_bootstrap_ci_covers_the_true_mean_at_the_nominal_rate():
    rng = np.random.default_rng(7)
    covered, widths = 0, []
    for trial in range(300):
        values = rng.normal(3.0, 2.0, size=40)
        mean, low, high = bootstrap_ci(values, n_resamples=1000, seed=trial)
        covered += low <= 3.0 <= high
        widths.append(high - low)
        assert mean == pytest.approx(values.mean())
    assert 0.90 <= covered / 300 <= 0.98
    # The half-width matches the normal theory 1.96 * sigma / sqrt(n) within 10%.
    assert np.mean(widths) / 2 == pytest.approx(1.96 * 2.0 / math.sqrt(40), rel=0.10)


def test_two_stage_bootstrap_respects_clustering_where_a_row_bootstrap_does_not():
    """Seeds of one pair share the pair's offset; the true mean is the population mean 0."""
    rng = np.random.default_rng(11)
    two_stage, naive = 0, 0
    trials = 200
    for trial in range(trials):
        offsets = rng.normal(0, 1.0, size=8)  # between-pair spread dominates
        values = (offsets[:, None] + rng.normal(0, 0.2, size=(8, 6))).ravel()
        groups = np.repeat(np.arange(8), 6)
        _, low, high = bootstrap_ci(values, groups=groups, n_resamples=800, seed=trial)
        two_stage += low <= 0 <= high
        _, low, high = bootstrap_ci(values, n_resamples=800, seed=trial)
        naive += low <= 0 <= high
    assert two_stage / trials >= 0.85
    assert naive / trials <= 0.70  # rows treated as independent: far too narrow


def test_bootstrap_ci_with_text_group_labels():
    """Group labels are arbitrary text (even ending in NUL, which numpy strings would strip)."""
    values = np.array([1, 0, 1, 1, 1, 0, 1, 1, 1.0])
    groups = np.array(["a\x00", "a\x00", "a\x00", "b | x", "b | x", "b | x", "c", "c", "c"], dtype=object)
    mean, low, high = bootstrap_ci(values, groups=groups, n_resamples=500)
    assert mean == pytest.approx(7 / 9) and 0 < low < mean < high <= 1


def test_bootstrap_means_are_paired_across_strengths():
    cube = np.stack([np.arange(12.0).reshape(3, 4), np.arange(12.0).reshape(3, 4) + 5])
    replicates = bootstrap_means(cube, n_resamples=300, seed=1)
    assert replicates.shape == (300, 2)
    np.testing.assert_allclose(replicates[:, 1] - replicates[:, 0], 5.0)


# ----------------------------------------------------------------------------------------------- crossings
def test_strength_for_steps_executes_exactly_those_steps():
    for steps in (7, 20, 30, 50):
        for k in range(steps + 1):
            strength = strength_for_steps(steps, k)
            assert strength_steps(steps, strength)[0] == k
            assert k / steps - 1e-9 <= strength < (k + 1) / steps or k == steps


@pytest.mark.parametrize("threshold", [0.35, 0.5, 0.62, 0.8])
def test_keep_crossing_on_a_monotone_curve_is_within_one_step(threshold):
    curve = {"fidelity": lambda x, g: 1 - x**2}
    dense = [strength_for_steps(STEPS, k) for k in range(STEPS + 1)]
    table = synthetic_runner(curve, noise=0.01)(_plan(dense))
    crossing = find_crossing(table, Target("fidelity", at_least=threshold), kind="keep", rule="mean")
    true_strength = math.sqrt(1 - threshold)  # 1 - x^2 = threshold
    assert abs(crossing.strength - true_strength) <= 1 / STEPS + 1e-9
    low, high = crossing.strength_ci
    assert low <= crossing.strength <= high


def test_reach_crossing_and_unreachable_target():
    curve = {"rate": lambda x, g: min(1.0, x * 1.1)}
    dense = [strength_for_steps(STEPS, k) for k in range(STEPS + 1)]
    table = synthetic_runner(curve, noise=0.0)(_plan(dense))
    crossing = find_crossing(table, Target("rate", at_least=0.5), kind="reach", rule="mean")
    assert abs(crossing.strength - 0.5 / 1.1) <= 1 / STEPS
    never = find_crossing(table, Target("rate", at_least=1.5), kind="reach", rule="mean")
    assert not never.reached and never.best_value == pytest.approx(1.0) and "no strength" in never.describe()


def test_confident_rule_is_more_conservative_than_the_mean():
    curve = {"fidelity": lambda x, g: 1 - x}
    table = synthetic_runner(curve, noise=0.15)(_plan([strength_for_steps(STEPS, k) for k in range(STEPS + 1)]))
    target = Target("fidelity", at_least=0.5)
    by_mean = find_crossing(table, target, kind="keep", rule="mean")
    confident = find_crossing(table, target, kind="keep", rule="confident")
    assert confident.strength < by_mean.strength
    assert confident.value_ci[0] >= 0.5


def test_knee_of_a_known_curve():
    x = np.linspace(0, 1, 21)
    y = np.where(x < 0.6, 1 - 0.1 * x, 0.94 - 2.0 * (x - 0.6))
    assert knee(x, y) == pytest.approx(0.6)
    assert knee([0, 1], [1, 0]) is None


# ----------------------------------------------------------------------------------------------- refinement
def test_adaptive_refinement_finds_the_dense_grid_crossing_with_at_most_half_the_cells():
    curves = {"fidelity": lambda x, g: 1 - x**1.5 * (0.8 + 0.1 * g), "rate": lambda x, g: x * (0.7 + 0.15 * g)}
    settings = CalibrationSettings(keep=[Target("fidelity", at_least=0.6)], follow=[Target("rate", at_least=0.6)],
                                   metrics=[], rule="mean", refine_rounds=4, n_resamples=500)
    calls = []
    coarse = _plan([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], guidance=(2.0, 3.0))
    adaptive = calibrate(coarse, settings=settings, runner=synthetic_runner(curves, calls=calls), save=False)
    dense = calibrate(_plan([strength_for_steps(STEPS, k) for k in range(STEPS + 1)], guidance=(2.0, 3.0)),
                      settings=CalibrationSettings(**{**settings.__dict__, "refine_rounds": 0}),
                      runner=synthetic_runner(curves), save=False)
    for found, reference in zip(adaptive.crossings, dense.crossings):
        assert (found.kind, found.guidance_scale) == (reference.kind, reference.guidance_scale)
        assert found.strength == reference.strength, (found.describe(), reference.describe())
    assert adaptive.counts["cells"] <= 0.5 * dense.counts["cells"], (adaptive.counts, dense.counts)
    assert adaptive.counts["refinement_rounds"] >= 2
    # Added strengths never repeat an executed-step count.
    for strengths in calls[1:]:
        assert len({strength_steps(STEPS, s)[0] for s in strengths}) == len(strengths)


# ----------------------------------------------------------------------------------------------- tables
@pytest.fixture(scope="module")
def synthetic_result():
    curves = {"fidelity": lambda x, g: 1 - x**2, "rate": lambda x, g: min(1, 1.3 * x**2 * g / 3)}
    settings = CalibrationSettings(keep=[Target("fidelity", at_least=0.8)], follow=[Target("rate", at_least=0.7)],
                                   metrics=[], rule="mean", refine_rounds=3, n_resamples=500)
    return calibrate(_plan([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], guidance=(2.0, 3.0)), settings=settings,
                     runner=synthetic_runner(curves), save=False)


def test_summary_has_means_cis_spread_steps_and_noise(synthetic_result):
    summary = synthetic_result.summary
    for column in ("strength", "executed_steps", "sigma", "sqrt_alpha_bar", "images", "fidelity", "fidelity_ci_low",
                   "fidelity_ci_high", "fidelity_seed_sd"):
        assert column in summary.columns
    assert (summary["fidelity_ci_low"] <= summary["fidelity"]).all()
    assert (summary["fidelity"] <= summary["fidelity_ci_high"]).all()
    assert (summary["images"] == 18).all()  # 6 pairs x 3 seeds


def test_reference_table_bands_verdicts_and_goals(synthetic_result):
    table = synthetic_result.reference_table(3.0)
    assert table["verdict"].iloc[0] == "keeps composition" and table["verdict"].iloc[-1] == "≈ text-to-image"
    assert list(table["strength_min"]) == sorted(table["strength_min"])
    assert table["strength_min"].iloc[0] == 0.0 and table["strength_max"].iloc[-1] == 1.0
    assert table["goal"].str.len().min() > 10
    # Numbers only: every band's mean range lies inside its CI extremes; the text form is for reading.
    assert (table["fidelity_ci_low"] <= table["fidelity_min"]).all()
    assert (table["fidelity_min"] <= table["fidelity_max"]).all()
    assert (table["fidelity_max"] <= table["fidelity_ci_high"]).all()
    assert table["executed_steps_min"].iloc[0] == 0 and table["executed_steps_max"].iloc[-1] == 20
    text = synthetic_result.reference_table_text(3.0)
    assert text["fidelity"].iloc[0] == (f"{table['fidelity_min'].iloc[0]:.3f}–{table['fidelity_max'].iloc[0]:.3f} "
                                        f"[CI {table['fidelity_ci_low'].iloc[0]:.3f}, "
                                        f"{table['fidelity_ci_high'].iloc[0]:.3f}]")
    # Bands tile the tested strengths: consecutive, non-overlapping.
    assert (table["strength_min"].iloc[1:].to_numpy() > table["strength_max"].iloc[:-1].to_numpy()).all()


def test_recommendations_and_renderings(synthetic_result):
    keep, follow = synthetic_result.recommendations["keep"], synthetic_result.recommendations["follow"]
    assert keep.strength is not None and 0.3 <= keep.strength <= 0.5  # 1 - x^2 >= 0.8  ->  x <= 0.447
    assert follow.guidance_scale == 3.0  # guidance 3 reaches the rate at a lower strength than 2
    markdown = synthetic_result.to_markdown()
    assert "## Strength reference table — guidance 2" in markdown and "| verdict | goal |" in markdown
    assert "Folklore vs measured" in markdown
    folklore = synthetic_result.folklore_comparison(3.0).set_index("folklore strengths")
    assert len(folklore) == 6
    # fidelity 1 - x^2 keeps the source at 0.1-0.2 and 1.0 reaches the text-to-image end: the folklore holds there
    assert folklore.loc["1", ["measured", "agrees"]].tolist() == ["≈ text-to-image", "yes"]
    assert folklore.loc["0.1–0.2", "agrees"] == "yes"
    # a band with no tested strength says which strength its verdict comes from
    assert folklore.loc["1", "measured at"] == "1"
    summary = synthetic_result.summary
    tested = summary.loc[summary["guidance_scale"] == 3.0, "strength"].unique()
    for band, measured_at in folklore["measured at"].items():
        low, high = (float(value) for value in (band.split("–") * 2)[:2])
        inside = [s for s in tested if low - 1e-9 <= s <= high + 1e-9]
        if inside:
            assert measured_at == ", ".join(f"{s:g}" for s in sorted(inside)), band
        else:
            assert measured_at.startswith("nearest: "), band
    html = synthetic_result.to_html(embed_images=False)
    assert html.count("<table") >= 4
    figure = synthetic_result.figure()
    heatmap = synthetic_result.heatmap("fidelity")
    assert [axis.get_xlabel() for axis in figure.axes] == ["strength", "strength"]
    three = synthetic_result.figure(["fidelity", "fidelity", "fidelity"])  # two panels to a row: 10.4 in, not 15.6
    assert tuple(three.get_size_inches()) == (10.4, 8.0) and [axis.get_visible() for axis in three.axes] == \
        [True, True, True, False]
    strengths = synthetic_result.summary["strength"].nunique()  # guidance x every strength tested at either guidance
    assert heatmap.axes[0].get_images()[0].get_array().shape == (2, strengths)
    untested = int(synthetic_result.summary.pivot_table(index="guidance_scale", columns="strength",
                                                        values="fidelity").isna().to_numpy().sum())
    hatched = [patch for patch in heatmap.axes[0].patches if patch.get_hatch() == "///"]
    assert untested > 0 and len(hatched) == untested  # strengths tested at the other guidance only: hatched
    assert [text.get_text() for text in heatmap.axes[0].get_legend().get_texts()] == ["not tested"]
    assert {line.get_linestyle() for line in figure.axes[0].get_lines() if line.get_label().startswith("guidance")} \
        == {"-", "--"}  # one line style per guidance
    import matplotlib.pyplot as plt

    plt.close("all")


def test_no_reachable_target_is_said_honestly():
    curves = {"fidelity": lambda x, g: 1 - x, "rate": lambda x, g: 0.3 * x}
    settings = CalibrationSettings(keep=[Target("fidelity", at_least=0.5)], follow=[Target("rate", at_least=0.8)],
                                   metrics=[], rule="mean", refine_rounds=1, n_resamples=300)
    result = calibrate(_plan([0.0, 0.5, 1.0]), settings=settings, runner=synthetic_runner(curves), save=False)
    follow = result.recommendations["follow"]
    assert follow.strength is None and "no calibrated strength reaches" in follow.message
    assert follow.expected == pytest.approx(0.3, abs=0.02) and "at strength 1," in follow.message  # the best rate


# ----------------------------------------------------------------------------------------------- config
def test_target_and_settings_validation():
    with pytest.raises(PlanError, match="exactly one of"):
        Target("ssim")
    with pytest.raises(PlanError, match="exactly one of"):
        Target("ssim", at_least=0.5, at_most=0.7)
    with pytest.raises(PlanError, match="finite"):
        Target("ssim", at_least=float("nan"))
    with pytest.raises(PlanError, match="unknown calibration key"):
        CalibrationSettings.from_dict({"keeep": []})
    with pytest.raises(PlanError, match="rule"):
        CalibrationSettings(rule="median")
    with pytest.raises(Img2ImgLabError, match=r"unknown metric 'sharpness'\. Fix: use one of ssim, ms_ssim"):
        CalibrationSettings(keep=[Target("sharpness", at_least=1)])


def test_config_file_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("images: a.png\nprompts: p\nstrengths: [0.5]\ncalibration:\n  keep: [{metric: ssim, above: 1}]\n")
    with pytest.raises(PlanError, match="unknown target key"):
        load_config(path)
    with pytest.raises(PlanError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    path.write_text("images: a.png\nprompts: p\nstrengths: [0.5]\nsteps: [10, 20]\n")
    with pytest.raises(PlanError, match="one steps value"):
        calibrate(path, tmp_path / "run", runner=lambda plan: None)


def test_example_config_loads():
    plan, settings = load_config("data/configs/calibrate.yaml")
    assert settings.keep[0] == Target("oracle_kept", at_least=0.9)
    assert settings.follow[0] == Target("oracle_match", at_least=0.8)
    assert len(plan.images) == 4 and 1.0 in plan.strengths


# ----------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_calibrate_cli_on_the_tiny_pipeline(tiny_model_dir, sources_dir, tmp_path, capsys):
    from img2img_lab.cli.main import main

    config = tmp_path / "calibrate.yaml"
    config.write_text(
        f"model: {tiny_model_dir}\nimages: [{sources_dir / 'source0.png'}, {sources_dir / 'source1.png'}]\n"
        "prompts: [a red disc]\nstrengths: [0.0, 0.5, 1.0]\nseeds: [0, 1]\nguidance_scales: [1.0, 3.0]\nsteps: 8\n"
        "scheduler: ddim\ncalibration:\n  metrics: [ssim, delta_e]\n  keep: [{metric: ssim, at_least: 0.3}]\n"
        "  refine_rounds: 2\n  n_resamples: 300\n  rule: mean\n")
    out = tmp_path / "run"
    assert main(["calibrate", str(config), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "Strength reference table" in printed and "keep the subject" in printed
    saved = out / "calibration"
    for name in ("summary.csv", "reference_table.csv", "folklore.csv", "calibration.json", "calibration.md",
                 "calibration.html", "curves.png", "heatmap.png"):
        assert (saved / name).is_file(), name
    document = json.loads((saved / "calibration.json").read_text())
    assert document["counts"]["coarse_cells"] == 2 * 3 * 2 * 2
    assert "data:image/png;base64," in (saved / "calibration.html").read_text()
    summary = pd.read_csv(saved / "summary.csv")
    assert set(summary["guidance_scale"]) == {1.0, 3.0} and "ssim_floor" in summary.columns
    # Rerunning reuses every cell (the run folder is a cache).
    assert main(["calibrate", str(config), "--out", str(out), "--no-progress"]) == 0
    from img2img_lab.store.run_store import RunStore

    assert RunStore.open(out).read_manifest()["counts"]["generated"] == 0


def test_strength_summary_handles_missing_metric_columns():
    table = synthetic_runner({"fidelity": lambda x, g: 1 - x})(_plan([0.2, 0.6]))
    summary = strength_summary(table, ["fidelity", "absent"], n_resamples=200)
    assert "absent" not in summary.columns and len(summary) == 2


def test_a_goal_without_a_target_says_so_without_empty_brackets():
    curves = {"fidelity": lambda x, g: 1 - x**2}
    settings = CalibrationSettings(keep=[Target("fidelity", at_least=0.8)], metrics=[], rule="mean", refine_rounds=0,
                                   n_resamples=200)
    result = calibrate(_plan([0.0, 0.5, 1.0], guidance=(2.0,)), settings=settings, runner=synthetic_runner(curves),
                       save=False)
    follow = result.recommendations["follow"]
    assert follow.strength is None and "no follow target (add one under calibration: follow:" in follow.message
    for text in (result.to_markdown(), result.to_html(embed_images=False)):
        assert "follow the prompt" in text and "()" not in text


def test_both_goals_at_once_is_the_lowest_strength_where_most_images_meet_every_target(synthetic_result):
    from img2img_lab.calibration.procedure import JOINT, JOINT_RATE, joint_indicator

    table = synthetic_result.table
    expected = ((table["fidelity"] >= 0.8) & (table["rate"] >= 0.7)).astype(float).to_numpy()
    assert (joint_indicator(table, synthetic_result.settings.keep + synthetic_result.settings.follow)
            == expected).all()
    both = synthetic_result.recommendations["both"]
    summary = synthetic_result.summary
    holding = summary[summary[JOINT] >= JOINT_RATE]  # the synthetic calibration decides on the mean
    if holding.empty:
        assert both.strength is None and "no calibrated strength meets" in both.message
    else:
        assert both.strength == holding["strength"].min() and both.expected >= JOINT_RATE
    assert "fidelity ≥ 0.8 and rate ≥ 0.7" in both.target
