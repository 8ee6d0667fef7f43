"""Calibration: the measured strength reference table, with uncertainty, and a recommended strength per goal.

Every img2img guide prints the same folklore table for strength. :func:`calibrate` measures it for one
model, a set of source images and prompts:

1. It runs (or reuses, the run folder is a cache) a coarse sweep over strengths x seeds x images x prompts
   (x guidance values), measuring every image.
2. Per guidance and strength it summarises each metric: mean with a bootstrap 95% CI, the seed-to-seed
   spread, the VAE round-trip floor, executed steps and noise level (:func:`strength_summary`).
3. It finds the **crossings** (:func:`find_crossing`): the highest strength that keeps each fidelity
   target ("keep", e.g. ``oracle_kept >= 0.9`` or ``ssim >= 0.7``), the lowest strength that reaches each
   prompt-adherence target ("reach", e.g. ``oracle_match >= 0.8``), each with a bootstrap CI, and the
   knee of the fidelity curves (:func:`knee`).
4. **Adaptive refinement**: where a crossing lies between two tested strengths that are more than one
   executed step apart, it adds the strength in the middle of the executed-step interval (bisection;
   never two strengths that run the same steps) and repeats, so it reaches the crossing a dense grid
   would find with a fraction of its cells.
5. The **strength reference table** (:meth:`CalibrationResult.reference_table`): bands of strength with
   the measured effect (metric ranges with CIs), a verdict (keeps composition / balanced / prompt dominates
   / ~ text-to-image), the goal it serves and a representative thumbnail; as a DataFrame, Markdown and
   HTML; plus a comparison with the folklore bands (:meth:`CalibrationResult.folklore_comparison`) and a
   strength x guidance heatmap (:meth:`CalibrationResult.heatmap`).

Decisions use the CI bound, not the mean, by default (``rule="confident"``): a strength "keeps" a target
when the CI's worse end meets it. That is the guarantee a user who must keep the product wants.

Bootstrap: two-stage over the experimental units: resample (source, prompt) pairs with replacement, then
seeds within each chosen pair; the same resampling is applied at every strength (paired), so curves and
crossings have CIs that respect that one pair's images are correlated across strengths and seeds.

>>> result = calibrate("data/configs/calibrate.yaml", "runs/calibrate")  # doctest: +SKIP
>>> print(result.to_markdown())  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

import img2img_lab  # noqa: F401  - torchvision shim first
from img2img_lab.errors import Img2ImgLabError, PlanError
from img2img_lab.plan import SweepPlan, strength_steps

#: The folklore table every guide prints (strength range, what it supposedly does, the verdict it implies).
FOLKLORE = (
    (0.1, 0.2, "subtle texture changes", "keeps composition"),
    (0.3, 0.45, "style emerges, structure preserved", "keeps composition"),
    (0.5, 0.6, "balanced", "balanced"),
    (0.65, 0.75, "significant changes", "prompt dominates"),
    (0.8, 0.9, "original barely visible", "prompt dominates"),
    (1.0, 1.0, "≈ text-to-image", "≈ text-to-image"),
)

VERDICTS = {
    "keeps composition": "keep the subject (retouch, light restyle)",
    "keeps composition, follows prompt": "keep the subject and follow the prompt (best of both)",
    "balanced": "restyle (mix the source and the prompt)",
    "prompt dominates": "follow the prompt (the source only seeds layout and colours)",
    "≈ text-to-image": "replace (the source hardly matters: text-to-image would do)",
}
RULES = ("confident", "mean")


# --------------------------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Target:
    """A threshold on one metric: ``metric >= at_least`` or ``metric <= at_most`` (exactly one of them).

    >>> Target("ssim", at_least=0.7).met(0.75), Target("lpips", at_most=0.3).met(0.4)
    (True, False)
    """

    metric: str
    at_least: float | None = None
    at_most: float | None = None

    def __post_init__(self):
        if (self.at_least is None) == (self.at_most is None):
            raise PlanError(f"target on {self.metric!r} needs exactly one of at_least / at_most. "
                            f"Fix: e.g. {{metric: {self.metric}, at_least: 0.9}}.")
        for value in (self.at_least, self.at_most):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                raise PlanError(f"target on {self.metric!r}: threshold {value!r} is not a finite number.")

    @property
    def threshold(self) -> float:
        return float(self.at_least if self.at_least is not None else self.at_most)

    @property
    def higher_is_better(self) -> bool:
        return self.at_least is not None

    def met(self, value: float) -> bool:
        """Whether ``value`` satisfies the target (NaN never does)."""
        if value is None or not math.isfinite(float(value)):
            return bool(value is not None and float(value) == math.inf and self.higher_is_better)
        return value >= self.threshold if self.higher_is_better else value <= self.threshold

    def worse_end(self, low: float, high: float) -> float:
        """The end of a CI that is worse for this target (the low end for ``at_least``)."""
        return low if self.higher_is_better else high

    def describe(self) -> str:
        return f"{self.metric} {'≥' if self.higher_is_better else '≤'} {self.threshold:g}"

    @classmethod
    def from_dict(cls, data) -> "Target":
        if isinstance(data, Target):
            return data
        if not isinstance(data, dict) or "metric" not in data:
            raise PlanError(f"a target must look like {{metric: ssim, at_least: 0.7}}, got {data!r}.")
        unknown = set(data) - {"metric", "at_least", "at_most"}
        if unknown:
            raise PlanError(f"unknown target key(s) {sorted(unknown)}. Fix: use metric, at_least or at_most.")
        return cls(str(data["metric"]), data.get("at_least"), data.get("at_most"))


@dataclass
class CalibrationSettings:
    """What to measure and decide.

    Parameters
    ----------
    keep : list of Target
        Fidelity targets; a strength "keeps" when all hold. The first names the "keep the subject" goal.
    follow : list of Target
        Prompt-adherence targets; a strength "follows" when all hold. The first names "follow the prompt".
    metrics : list of str
        Metrics measured for every image (targets' metrics are added).
    rule : {"confident", "mean"}
        ``"confident"``: a target holds where the CI's worse end meets it; ``"mean"``: where the mean does.
    refine_rounds : int
        Bisection rounds after the coarse grid (0 disables refinement).
    n_resamples, confidence, seed
        Bootstrap resamples, CI level, and the bootstrap's random seed (results are reproducible).
    """

    keep: list = field(default_factory=lambda: [Target("ssim", at_least=0.7)])
    follow: list = field(default_factory=list)
    metrics: list = field(default_factory=lambda: ["ssim", "ms_ssim", "delta_e"])
    rule: str = "confident"
    refine_rounds: int = 3
    n_resamples: int = 2000
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self):
        self.keep = [Target.from_dict(item) for item in self.keep]
        self.follow = [Target.from_dict(item) for item in self.follow]
        if not self.keep and not self.follow:
            raise PlanError("calibration needs at least one keep or follow target. Fix: add `keep:` targets.")
        if self.rule not in RULES:
            raise PlanError(f"unknown rule {self.rule!r}. Fix: use 'confident' or 'mean'.")
        if not (0.5 < float(self.confidence) < 1):
            raise PlanError(f"confidence {self.confidence!r} must be between 0.5 and 1, e.g. 0.95.")
        if int(self.n_resamples) < 100:
            raise PlanError(f"n_resamples {self.n_resamples!r} is too few for a CI. Fix: use >= 1000.")
        if int(self.refine_rounds) < 0:
            raise PlanError("refine_rounds must be >= 0.")
        names = list(dict.fromkeys(list(self.metrics) + [t.metric for t in self.keep + self.follow]))
        from img2img_lab.metrics import check_metric_names

        self.metrics = check_metric_names(names)

    @classmethod
    def from_dict(cls, data: dict | None) -> "CalibrationSettings":
        data = dict(data or {})
        known = {"keep", "follow", "metrics", "rule", "refine_rounds", "n_resamples", "confidence", "seed"}
        unknown = set(data) - known
        if unknown:
            raise PlanError(f"unknown calibration key(s) {sorted(unknown)}. Fix: use {', '.join(sorted(known))}.")
        return cls(**data)


def load_config(path: str | os.PathLike, *, overrides: dict | None = None) -> tuple[SweepPlan, CalibrationSettings]:
    """Read a calibration config: a sweep config plus a ``calibration:`` block (see data/configs/calibrate.yaml).

    ``overrides`` replaces keys before validation: sweep keys (``seeds``, ``strengths``, ``guidance_scales``,
    ``images``…; image paths relative to the config file) or calibration keys (``refine_rounds``, ``rule``…).

    >>> plan, settings = load_config("data/configs/calibrate.yaml", overrides={"seeds": [0, 1]})  # doctest: +SKIP
    """
    from img2img_lab.configfile import read_config

    path = Path(path)
    data = read_config(path) or {}
    if not isinstance(data, dict):
        raise PlanError(f"{path}: a calibration config must be a mapping. Fix: see data/configs/calibrate.yaml.")
    block = data.pop("calibration", None) or {}
    if not isinstance(block, dict):
        raise PlanError(f"{path}: 'calibration' must be a mapping of settings. Fix: see data/configs/calibrate.yaml.")
    block = dict(block)
    calibration_keys = {item for item in CalibrationSettings.__dataclass_fields__}
    for key, value in (overrides or {}).items():
        (block if key in calibration_keys else data)[key] = value
    try:
        return SweepPlan.from_dict(data, base_dir=path.parent), CalibrationSettings.from_dict(block)
    except PlanError as error:
        raise PlanError(f"{path}: {error}") from None


# --------------------------------------------------------------------------------------------- bootstrap
def _quantiles(samples: np.ndarray, confidence: float, axis=0):
    alpha = (1 - confidence) / 2
    with _quiet():  # all-NaN columns (a metric missing at a strength) give NaN bounds
        return np.nanquantile(samples, alpha, axis=axis), np.nanquantile(samples, 1 - alpha, axis=axis)


def _resample_indices(n_pairs: int, n_seeds: int, n_resamples: int, seed: int, two_stage: bool = True):
    rng = np.random.default_rng(seed)
    pairs = rng.integers(0, n_pairs, size=(n_resamples, n_pairs))
    if two_stage:
        seeds = rng.integers(0, n_seeds, size=(n_resamples, n_pairs, n_seeds))
    else:
        seeds = np.broadcast_to(np.arange(n_seeds), (n_resamples, n_pairs, n_seeds))
    return pairs, seeds


def bootstrap_means(values: np.ndarray, *, n_resamples: int = 2000, seed: int = 0, two_stage: bool = True):
    """Bootstrap replicates of the mean of ``values`` shaped ``(..., pairs, seeds)`` (NaN = missing).

    Resamples pairs with replacement, then seeds within each chosen pair (``two_stage``); the same
    indices are used for every leading index (e.g. every strength), so replicates are paired across them.
    Returns an array ``(n_resamples, ...)``.

    >>> replicates = bootstrap_means(np.ones((3, 4)), n_resamples=200)
    >>> replicates.shape, float(replicates.mean())
    ((200,), 1.0)
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim < 2:
        raise Img2ImgLabError("bootstrap_means needs values shaped (..., pairs, seeds).")
    n_pairs, n_seeds = values.shape[-2:]
    pairs, seeds = _resample_indices(n_pairs, n_seeds, n_resamples, seed, two_stage)
    lead = values.shape[:-2]
    flat = values.reshape((-1, n_pairs, n_seeds))
    out = np.empty((n_resamples, flat.shape[0]))
    for index in range(flat.shape[0]):
        picked = flat[index][pairs[:, :, None], seeds]  # (B, pairs, seeds)
        with np.errstate(invalid="ignore"), _quiet():
            out[:, index] = np.nanmean(picked.reshape(n_resamples, -1), axis=1)
    return out.reshape((n_resamples, *lead))


class _quiet:
    def __enter__(self):
        import warnings

        self._context = warnings.catch_warnings()
        self._context.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._context.__exit__(*exc)


def bootstrap_ci(values, *, groups=None, n_resamples: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``values`` and its percentile bootstrap CI: ``(mean, low, high)``.

    With ``groups`` (one label per value, e.g. the source/prompt pair), the bootstrap is two-stage:
    groups are resampled, then values within each chosen group; without, values are resampled.

    >>> mean, low, high = bootstrap_ci([1.0, 2.0, 3.0, 4.0], seed=0)
    >>> mean, low < mean < high
    (2.5, True)
    """
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return math.nan, math.nan, math.nan
    if groups is None:
        replicates = bootstrap_means(values[finite].reshape(-1, 1), n_resamples=n_resamples, seed=seed)
    else:
        codes: dict = {}
        labels = np.array([codes.setdefault(label, len(codes)) for label in list(groups)])[finite]
        kept = values[finite]
        width = int(np.bincount(labels).max())
        matrix = np.full((len(codes), width), np.nan)
        for code in range(len(codes)):
            members = kept[labels == code]
            matrix[code, :len(members)] = members
        matrix = matrix[np.isfinite(matrix).any(axis=1)]
        replicates = _two_stage_ragged(matrix, n_resamples, seed)
    low, high = _quantiles(replicates, confidence)
    return float(np.nanmean(values[finite])), float(low), float(high)


def _two_stage_ragged(matrix: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Two-stage bootstrap for groups of different sizes (NaN padding): seeds drawn among each group's own."""
    rng = np.random.default_rng(seed)
    counts = np.isfinite(matrix).sum(axis=1)
    n_groups, width = matrix.shape
    pairs = rng.integers(0, n_groups, size=(n_resamples, n_groups))
    within = (rng.random((n_resamples, n_groups, width)) * counts[pairs][:, :, None]).astype(int)
    positions = np.where(np.arange(width)[None, None, :] < counts[pairs][:, :, None], within, -1)
    picked = np.where(positions >= 0, matrix[pairs[:, :, None], np.maximum(positions, 0)], np.nan)
    with _quiet():
        return np.nanmean(picked.reshape(n_resamples, -1), axis=1)


# --------------------------------------------------------------------------------------------- summaries
def _unit_labels(table):
    return table["source_hash"].astype(str) + " | " + table["prompt"].astype(str) + " | " + \
        table["negative_prompt"].astype(str)


def value_cube(table, metric: str):
    """``(strengths, values)``: ``values[strength, pair, seed]`` of one metric for one condition (NaN = missing).

    Pairs are (source, prompt, negative prompt) units; infinite values (PSNR of identical images) are NaN.
    """
    data = table.assign(_unit=_unit_labels(table))
    strengths = np.array(sorted(data["strength"].unique()), dtype=np.float64)
    units = sorted(data["_unit"].unique())
    seeds = sorted(data["seed"].unique())
    cube = np.full((len(strengths), len(units), len(seeds)), np.nan)
    s_index = {value: index for index, value in enumerate(strengths)}
    u_index = {value: index for index, value in enumerate(units)}
    d_index = {value: index for index, value in enumerate(seeds)}
    values = data[metric].astype(float).replace([np.inf, -np.inf], np.nan).to_numpy()
    for (strength, unit, seed), value in zip(data[["strength", "_unit", "seed"]].itertuples(index=False, name=None),
                                             values):
        cube[s_index[strength], u_index[unit], d_index[seed]] = value
    return strengths, cube


def _conditions(table):
    keys = ["guidance_scale", "num_inference_steps", "scheduler"]
    return [(dict(zip(keys, key if isinstance(key, tuple) else (key,))), group)
            for key, group in table.groupby(keys, sort=True)]


def strength_summary(table, metrics, *, floor=None, n_resamples: int = 2000, confidence: float = 0.95,
                     seed: int = 0):
    """Per guidance (and steps, scheduler) and strength: executed steps, noise level, images, and for each
    metric its mean, bootstrap CI (``<m>_ci_low``/``<m>_ci_high``), seed-to-seed spread (``<m>_seed_sd``:
    the mean over pairs of the standard deviation over seeds) and the VAE floor (``<m>_floor``).

    >>> summary = strength_summary(table, ["ssim"])  # doctest: +SKIP
    >>> summary[["strength", "ssim", "ssim_ci_low", "ssim_ci_high"]]  # doctest: +SKIP
    """
    import pandas as pd

    rows = []
    for condition, group in _conditions(table):
        first = group.groupby("strength").first()
        strengths = None
        per_metric = {}
        for metric in metrics:
            if metric not in group.columns:
                continue
            strengths, cube = value_cube(group, metric)
            replicates = bootstrap_means(cube, n_resamples=n_resamples, seed=seed)
            low, high = _quantiles(replicates, confidence)
            with _quiet():
                mean = np.nanmean(cube.reshape(len(strengths), -1), axis=1)
                seed_sd = np.nanmean(np.nanstd(cube, axis=2, ddof=1), axis=1) if cube.shape[2] > 1 else \
                    np.full(len(strengths), np.nan)
            per_metric[metric] = (mean, low, high, seed_sd)
        if strengths is None:
            strengths = np.array(sorted(group["strength"].unique()))
        for index, strength in enumerate(strengths):
            info = first.loc[strength]
            row = {**condition, "strength": float(strength), "executed_steps": int(info["executed_steps"]),
                   "sigma": float(info["sigma"]), "sqrt_alpha_bar": float(info["sqrt_alpha_bar"]),
                   "log_snr": float(info.get("log_snr", np.nan)), "images": int((group["strength"] == strength).sum())}
            for metric, (mean, low, high, seed_sd) in per_metric.items():
                row.update({metric: float(mean[index]), f"{metric}_ci_low": float(low[index]),
                            f"{metric}_ci_high": float(high[index]), f"{metric}_seed_sd": float(seed_sd[index])})
                if floor is not None and metric in getattr(floor, "columns", []):
                    row[f"{metric}_floor"] = float(floor[metric].replace([np.inf], np.nan).mean())
            rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------- crossings
@dataclass
class Crossing:
    """Where a target stops holding ("keep") or starts holding ("reach") along strength, for one condition.

    ``strength`` is the tested strength (None when no strength qualifies); ``bracket`` the two tested
    strengths the boundary lies between (for refinement); ``strength_ci`` the bootstrap CI of the
    crossing strength (NaN-aware: ``unreached_share`` of replicates had none); ``best_*`` the best
    strength and value seen, which matter when the target is never reached.
    """

    kind: str  # "keep" or "reach"
    target: Target
    guidance_scale: float
    strength: float | None
    executed_steps: int | None
    value: float | None
    value_ci: tuple[float, float] | None
    strength_ci: tuple[float, float]
    unreached_share: float
    bracket: tuple[float | None, float | None]
    bracket_steps: tuple[int | None, int | None]
    best_strength: float
    best_value: float
    rule: str

    @property
    def reached(self) -> bool:
        return self.strength is not None

    def describe(self) -> str:
        what = "highest strength keeping" if self.kind == "keep" else "lowest strength reaching"
        if not self.reached:
            return (f"guidance {self.guidance_scale:g}: no strength {'keeps' if self.kind == 'keep' else 'reaches'} "
                    f"{self.target.describe()} ({self.rule}); best {self.target.metric} = {self.best_value:.3f} "
                    f"at strength {self.best_strength:g}")
        low, high = self.strength_ci
        ci = f"CI {low:g}–{high:g}" if math.isfinite(low) else "CI undefined"
        return (f"guidance {self.guidance_scale:g}: {what} {self.target.describe()}: strength {self.strength:g} "
                f"({self.executed_steps} steps; {self.target.metric} {self.value:.3f} "
                f"[{self.value_ci[0]:.3f}, {self.value_ci[1]:.3f}]; crossing {ci})")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["target"] = self.target.describe()
        return data


def _holds(target: Target, mean, low, high, rule: str) -> np.ndarray:
    value = mean if rule == "mean" else (low if target.higher_is_better else high)
    value = np.asarray(value, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.where(np.isnan(value), False, value >= target.threshold if target.higher_is_better
                        else value <= target.threshold)


def _crossing_index(holds: np.ndarray, kind: str) -> int | None:
    """Keep: the last index before the first failure (None if index 0 fails). Reach: the first index that holds."""
    if kind == "keep":
        failing = np.flatnonzero(~holds)
        if len(failing) == 0:
            return len(holds) - 1
        return int(failing[0]) - 1 if failing[0] > 0 else None
    holding = np.flatnonzero(holds)
    return int(holding[0]) if len(holding) else None


def find_crossing(table, target: Target, *, kind: str, rule: str = "confident", n_resamples: int = 2000,
                  confidence: float = 0.95, seed: int = 0) -> Crossing:
    """Find where ``target`` stops holding (``kind="keep"``) or starts holding (``kind="reach"``) along strength.

    ``table`` holds one condition (one guidance, steps and scheduler). Strengths are the tested ones;
    the bootstrap CI of the crossing strength comes from recomputing the crossing on each replicate's
    mean curve.

    >>> crossing = find_crossing(table, Target("ssim", at_least=0.7), kind="keep")  # doctest: +SKIP
    >>> crossing.strength, crossing.strength_ci  # doctest: +SKIP
    """
    if kind not in ("keep", "reach"):
        raise Img2ImgLabError(f"crossing kind {kind!r} must be 'keep' or 'reach'.")
    if rule not in RULES:
        raise Img2ImgLabError(f"unknown rule {rule!r}. Fix: use 'confident' or 'mean'.")
    if target.metric not in table.columns:
        raise Img2ImgLabError(f"metric {target.metric!r} is not in the table. Fix: measure it first.")
    guidance = float(table["guidance_scale"].iloc[0])
    strengths, cube = value_cube(table, target.metric)
    steps_of = table.groupby("strength")["executed_steps"].first()
    replicates = bootstrap_means(cube, n_resamples=n_resamples, seed=seed)
    low, high = _quantiles(replicates, confidence)
    with _quiet():
        mean = np.nanmean(cube.reshape(len(strengths), -1), axis=1)
    holds = _holds(target, mean, low, high, rule)
    index = _crossing_index(holds, kind)
    # Crossing strength per replicate (its own mean curve).
    replicate_holds = _holds(target, replicates, replicates, replicates, "mean")
    found = [_crossing_index(row, kind) for row in replicate_holds]
    values = np.array([strengths[i] if i is not None else np.nan for i in found])
    unreached = float(np.isnan(values).mean())
    strength_ci = tuple(float(v) for v in _quantiles(values, confidence)) if unreached < 1 else (math.nan, math.nan)
    if kind == "keep":
        bracket = (index, index + 1 if index is not None and index + 1 < len(strengths) else None) \
            if index is not None else (None, 0)
    else:
        bracket = (index - 1 if index is not None and index > 0 else None, index) if index is not None \
            else (len(strengths) - 1, None)
    finite = np.where(np.isnan(mean), -np.inf if target.higher_is_better else np.inf, mean)
    best = int(np.argmax(finite) if target.higher_is_better else np.argmin(finite))
    # Where the mean meets the target, the best strength is the highest that keeps it / the lowest that reaches it.
    meeting = np.flatnonzero(_holds(target, mean, mean, mean, "mean"))
    if len(meeting):
        best = int(meeting[-1] if kind == "keep" else meeting[0])

    def strength_at(i):
        return None if i is None else float(strengths[i])

    def steps_at(i):
        return None if i is None else int(steps_of.loc[strengths[i]])

    return Crossing(
        kind=kind, target=target, guidance_scale=guidance, strength=strength_at(index), executed_steps=steps_at(index),
        value=None if index is None else float(mean[index]),
        value_ci=None if index is None else (float(low[index]), float(high[index])),
        strength_ci=strength_ci, unreached_share=unreached,
        bracket=(strength_at(bracket[0]), strength_at(bracket[1])),
        bracket_steps=(steps_at(bracket[0]), steps_at(bracket[1])),
        best_strength=float(strengths[best]), best_value=float(mean[best]), rule=rule,
    )


def _sd_executed(num_inference_steps: int, strength: float) -> int:
    return strength_steps(num_inference_steps, strength)[0]


def strength_for_steps(num_inference_steps: int, executed_steps: int, *, executed: Callable | None = None) -> float:
    """A round strength (fewest decimals, at least ``k / N``) that executes exactly ``k = executed_steps`` of
    ``N = num_inference_steps``. ``executed(N, strength)`` counts a strength's steps on the model (default:
    Stable Diffusion's ``int(N * strength)``; calibrate passes the model handle's, e.g. SD3's ``N - int(N - N*s)``).

    >>> strength_for_steps(20, 7), strength_steps(20, strength_for_steps(20, 7))[0]
    (0.35, 7)
    """
    executed = executed or _sd_executed
    if not 0 <= executed_steps <= num_inference_steps:
        raise Img2ImgLabError(f"executed_steps {executed_steps} is outside 0..{num_inference_steps}.")
    for decimals in (2, 3, 4, 6):
        candidate = round(executed_steps / num_inference_steps, decimals)
        for nudge in (0.0, 10 ** -decimals):
            strength = min(1.0, round(candidate + nudge, decimals))
            if executed(num_inference_steps, strength) == executed_steps:
                return strength
    raise Img2ImgLabError(f"no strength executes {executed_steps} of {num_inference_steps} steps.")


def refinement_strengths(crossing: Crossing, num_inference_steps: int, *, executed: Callable | None = None) -> list[float]:
    """The strength to add to narrow a crossing: the middle of its executed-step bracket, or none when the
    bracket is already adjacent (one executed step apart) or open-ended. ``executed``: see
    :func:`strength_for_steps` (on LCM every strength runs all steps, so nothing is refined).

    >>> from types import SimpleNamespace
    >>> refinement_strengths(SimpleNamespace(bracket_steps=(4, 8)), 20)
    [0.3]
    """
    low, high = crossing.bracket_steps
    if low is None or high is None or high - low <= 1:
        return []
    return [strength_for_steps(num_inference_steps, (low + high) // 2, executed=executed)]


def knee(strengths, values) -> float | None:
    """The knee of a monotone curve: the point farthest from the chord joining its ends (Kneedle).

    >>> knee([0, 0.25, 0.5, 0.75, 1.0], [1.0, 0.95, 0.9, 0.3, 0.2])
    0.5
    """
    x = np.asarray(strengths, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3 or np.ptp(y) == 0:
        return None
    xn = (x - x.min()) / np.ptp(x)
    yn = (y - y.min()) / np.ptp(y)
    start, end = np.array([xn[0], yn[0]]), np.array([xn[-1], yn[-1]])
    chord = (end - start) / np.linalg.norm(end - start)
    offsets = np.stack([xn, yn], axis=1) - start
    distance = np.abs(offsets[:, 0] * chord[1] - offsets[:, 1] * chord[0])
    return float(x[int(np.argmax(distance))])


# --------------------------------------------------------------------------------------------- result
@dataclass
class Recommendation:
    """A recommended (strength, guidance) for one goal, with the evidence and an honest message."""

    goal: str
    target: str
    strength: float | None
    guidance_scale: float | None
    executed_steps: int | None
    expected: float | None
    expected_ci: tuple[float, float] | None
    confident: bool
    message: str


@dataclass
class CalibrationResult:
    """Everything a calibration measured; render with :meth:`reference_table`, :meth:`to_markdown`,
    :meth:`to_html`, :meth:`figure`, :meth:`heatmap`; :meth:`save` writes it into the run folder."""

    table: object  # pandas DataFrame, one row per image
    summary: object  # pandas DataFrame, one row per (condition, strength)
    crossings: list
    knees: dict
    recommendations: dict
    settings: CalibrationSettings
    counts: dict
    run_dir: str | None = None
    floor: object = None

    # ------------------------------------------------------------------ views
    def recommendations_table(self):
        """The recommendations as a DataFrame: goal, target, strength, guidance, executed steps, expected value
        with its CI, whether the rule's confidence holds, and the message."""
        import pandas as pd

        rows = []
        for recommendation in self.recommendations.values():
            low, high = recommendation.expected_ci or (math.nan, math.nan)
            rows.append({"goal": recommendation.goal, "target": recommendation.target,
                         "strength": recommendation.strength, "guidance_scale": recommendation.guidance_scale,
                         "executed_steps": recommendation.executed_steps, "expected": recommendation.expected,
                         "ci_low": low, "ci_high": high, "confident": recommendation.confident,
                         "message": recommendation.message})
        return pd.DataFrame(rows)

    def _repr_html_(self) -> str:
        return self.to_html()

    @property
    def guidance_values(self) -> list[float]:
        return sorted(float(value) for value in self.summary["guidance_scale"].unique())

    def _verdicts(self, summary) -> list[str]:
        rule = self.settings.rule
        keeps = np.ones(len(summary), dtype=bool)
        follows = np.ones(len(summary), dtype=bool) if self.settings.follow else np.zeros(len(summary), dtype=bool)
        for target in self.settings.keep:
            keeps &= _holds(target, summary[target.metric], summary[f"{target.metric}_ci_low"],
                            summary[f"{target.metric}_ci_high"], rule)
        for target in self.settings.follow:
            follows &= _holds(target, summary[target.metric], summary[f"{target.metric}_ci_low"],
                              summary[f"{target.metric}_ci_high"], rule)
        t2i = self._like_text_to_image(summary)
        verdicts = []
        for keep, follow, like in zip(keeps, follows, t2i):
            if keep and follow:
                verdicts.append("keeps composition, follows prompt")
            elif keep:
                verdicts.append("keeps composition")
            elif like:
                verdicts.append("≈ text-to-image")
            elif follow:
                verdicts.append("prompt dominates")
            else:
                verdicts.append("balanced")
        return verdicts

    def _like_text_to_image(self, summary) -> np.ndarray:
        """Strengths whose primary fidelity metric is within the CI of strength 1.0 (full denoising)."""
        metric = self.primary_fidelity_metric
        like = np.zeros(len(summary), dtype=bool)
        if metric is None or not np.isclose(summary["strength"].max(), 1.0):
            return like
        full = summary[np.isclose(summary["strength"], 1.0)].iloc[0]
        low, high = full[f"{metric}_ci_low"], full[f"{metric}_ci_high"]
        values = summary[metric].to_numpy(dtype=np.float64)
        like = (values >= low) & (values <= high) | np.isclose(summary["strength"].to_numpy(), 1.0)
        # ``summary`` is sorted by strength: once a strength is like full denoising, so is every higher one.
        return np.maximum.accumulate(like)

    @property
    def primary_fidelity_metric(self) -> str | None:
        """The continuous fidelity metric used for the knee and the text-to-image test (first keep target
        that is not a 0/1 rate, else SSIM if measured)."""
        from img2img_lab.metrics import METRICS, load_plugins

        load_plugins()
        for target in self.settings.keep:
            if not target.metric.startswith("oracle"):
                return target.metric
        for name in ("lpips", "ssim", "ms_ssim", "delta_e", "oracle_preservation"):
            if name in self.summary.columns and name in METRICS:
                return name
        return None

    def reference_table(self, guidance_scale: float | None = None):
        """The strength reference table for one guidance (default: the first calibrated): one row per band of
        consecutive strengths with the same verdict; metric ranges over the band with the CI extremes; the
        verdict, the goal it serves, and a representative image (``thumbnail``: path in the run folder).

        >>> result.reference_table(2.0)  # doctest: +SKIP
        """
        import pandas as pd

        guidance = self.guidance_values[0] if guidance_scale is None else float(guidance_scale)
        summary = self.summary[np.isclose(self.summary["guidance_scale"], guidance)].sort_values("strength")
        if summary.empty:
            raise Img2ImgLabError(f"no calibration at guidance {guidance:g}. Fix: use one of {self.guidance_values}.")
        summary = summary.reset_index(drop=True)
        verdicts = self._verdicts(summary)
        metrics = [m for m in self.settings.metrics if m in summary.columns]
        rows, start = [], 0
        for index in range(1, len(summary) + 1):
            if index < len(summary) and verdicts[index] == verdicts[start]:
                continue
            band = summary.iloc[start:index]
            low_s, high_s = band["strength"].iloc[0], band["strength"].iloc[-1]
            row = {"guidance_scale": guidance,
                   "strengths": f"{low_s:g}" if low_s == high_s else f"{low_s:g}–{high_s:g}",
                   "strength_min": float(low_s), "strength_max": float(high_s),
                   "executed_steps": _span(band["executed_steps"], "{:d}"),
                   "sigma": _span(band["sigma"], "{:.2f}")}
            for metric in metrics:
                row[metric] = (_span(band[metric], "{:.3f}")
                               + f" [CI {band[f'{metric}_ci_low'].min():.3f}, {band[f'{metric}_ci_high'].max():.3f}]")
            row["verdict"] = verdicts[start]
            row["goal"] = VERDICTS[verdicts[start]]
            row["thumbnail"] = self._thumbnail(guidance, float(band["strength"].iloc[len(band) // 2]))
            rows.append(row)
            start = index
        return pd.DataFrame(rows)

    def _thumbnail(self, guidance: float, strength: float) -> str | None:
        table = self.table
        match = table[np.isclose(table["guidance_scale"], guidance) & np.isclose(table["strength"], strength)]
        if match.empty:
            return None
        match = match.sort_values(["source_name", "prompt", "seed"])
        return str(match["output_path"].iloc[0])

    def folklore_comparison(self, guidance_scale: float | None = None):
        """The folklore bands next to what was measured at those strengths, and whether they agree.

        >>> result.folklore_comparison()  # doctest: +SKIP
        """
        import pandas as pd

        guidance = self.guidance_values[0] if guidance_scale is None else float(guidance_scale)
        summary = self.summary[np.isclose(self.summary["guidance_scale"], guidance)].sort_values("strength")
        summary = summary.reset_index(drop=True)
        verdicts = np.array(self._verdicts(summary))
        rows = []
        for low, high, claim, implied in FOLKLORE:
            inside = (summary["strength"] >= low - 1e-9) & (summary["strength"] <= high + 1e-9)
            measured = list(dict.fromkeys(verdicts[inside.to_numpy()]))
            if not measured:  # no tested strength in the band: the nearest one
                nearest = int(np.argmin(np.abs(summary["strength"].to_numpy() - (low + high) / 2)))
                measured = [verdicts[nearest]]
            agrees = measured == [implied] or (implied == "keeps composition" and
                                               set(measured) <= {"keeps composition", "keeps composition, follows prompt"})
            rows.append({"guidance_scale": guidance, "folklore strengths": f"{low:g}" if low == high else f"{low:g}–{high:g}",
                         "folklore says": claim, "implies": implied, "measured": " / ".join(measured),
                         "agrees": "yes" if agrees else "no"})
        return pd.DataFrame(rows)

    # ------------------------------------------------------------------ renderings
    def to_markdown(self) -> str:
        """The reference table(s), recommendations, crossings and folklore comparison as Markdown."""
        lines = [f"# Strength calibration ({len(self.table)} images; {self.counts.get('summary', '')})", ""]
        lines += ["## Recommendations", ""]
        for recommendation in self.recommendations.values():
            lines.append(f"* **{recommendation.goal}** ({recommendation.target}): {recommendation.message}")
        for guidance in self.guidance_values:
            table = self.reference_table(guidance).drop(columns=["guidance_scale", "strength_min", "strength_max",
                                                                 "thumbnail"])
            lines += ["", f"## Strength reference table — guidance {guidance:g}", "", _markdown_table(table)]
        lines += ["", "## Crossings", ""]
        lines += [f"* {crossing.describe()}" for crossing in self.crossings]
        for metric, per_guidance in self.knees.items():
            knees = ", ".join(f"guidance {g}: {value:g}" if value is not None else f"guidance {g}: none"
                              for g, value in per_guidance.items())
            lines.append(f"* knee of the {metric} curve: {knees}")
        for guidance in self.guidance_values:
            lines += ["", f"## Folklore vs measured — guidance {guidance:g}", "",
                      _markdown_table(self.folklore_comparison(guidance).drop(columns=["guidance_scale"]))]
        return "\n".join(lines) + "\n"

    def to_html(self, *, embed_images: bool = True) -> str:
        """A self-contained HTML fragment: recommendations, reference tables with thumbnails, folklore table."""
        parts = ["<h2>Recommendations</h2><ul>"]
        for recommendation in self.recommendations.values():
            parts.append(f"<li><b>{html.escape(recommendation.goal)}</b> ({html.escape(recommendation.target)}): "
                         f"{html.escape(recommendation.message)}</li>")
        parts.append("</ul>")
        for guidance in self.guidance_values:
            table = self.reference_table(guidance)
            parts.append(f"<h2>Strength reference table — guidance {guidance:g}</h2><table class='calibration'><tr>")
            columns = [c for c in table.columns if c not in ("guidance_scale", "strength_min", "strength_max")]
            parts += [f"<th>{html.escape(c)}</th>" for c in columns] + ["</tr>"]
            for _, row in table.iterrows():
                parts.append("<tr>")
                for column in columns:
                    value = row[column]
                    if column == "thumbnail":
                        parts.append(f"<td>{self._image_tag(value) if embed_images else html.escape(str(value))}</td>")
                    else:
                        parts.append(f"<td>{html.escape(str(value))}</td>")
                parts.append("</tr>")
            parts.append("</table>")
            parts.append(f"<h3>Folklore vs measured — guidance {guidance:g}</h3>")
            parts.append(self.folklore_comparison(guidance).to_html(index=False, border=0))
        parts.append("<h3>Crossings</h3><ul>" + "".join(f"<li>{html.escape(c.describe())}</li>" for c in self.crossings)
                     + "</ul>")
        return "\n".join(parts)

    def _image_tag(self, relative: str | None) -> str:
        if not relative or self.run_dir is None:
            return ""
        path = Path(self.run_dir) / relative
        if not path.is_file():
            return ""
        data = base64.b64encode(path.read_bytes()).decode()
        return f"<img src='data:image/png;base64,{data}' width='96' style='image-rendering:pixelated'>"

    def figure(self, metrics=None, *, x: str = "strength"):
        """Curves with CI bands per guidance, one panel per metric, crossings marked, verdict bands shaded.

        ``x="log_snr"`` puts the start latent's log signal-to-noise ratio on the x axis, the family-independent
        noise axis (see :class:`img2img_lab.models.StepPlan`); strengths without a finite log-SNR (strength 0,
        pure-noise starts) are left out of that view.
        """
        import matplotlib.pyplot as plt

        if x not in ("strength", "log_snr") or x not in self.summary.columns:
            raise Img2ImgLabError(f"calibration curves x={x!r} is not available. Fix: use 'strength' or 'log_snr' "
                                  f"(log_snr needs a run recorded by img2img-lab 0.2 or later).")
        metrics = list(metrics or [t.metric for t in self.settings.keep + self.settings.follow])
        figure, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4), dpi=100, squeeze=False)
        for axis, metric in zip(axes[0], metrics):
            for guidance in self.guidance_values:
                part = self.summary[np.isclose(self.summary["guidance_scale"], guidance)].sort_values("strength")
                part = part[np.isfinite(part[x])]
                line, = axis.plot(part[x], part[metric], marker="o", markersize=3, label=f"guidance {guidance:g}")
                axis.fill_between(part[x], part[f"{metric}_ci_low"], part[f"{metric}_ci_high"],
                                  color=line.get_color(), alpha=0.18)
                for crossing in self.crossings:
                    if crossing.target.metric == metric and crossing.guidance_scale == guidance and crossing.reached:
                        at = part.loc[np.isclose(part["strength"], crossing.strength), x]
                        if len(at):
                            axis.axvline(float(at.iloc[0]), color=line.get_color(), linestyle=":", linewidth=1.2)
            for target in self.settings.keep + self.settings.follow:
                if target.metric == metric:
                    axis.axhline(target.threshold, color="gray", linestyle="--", linewidth=1,
                                 label=f"target {target.describe()}")
            floor_column = f"{metric}_floor"
            if floor_column in self.summary.columns and self.summary[floor_column].notna().any():
                axis.axhline(self.summary[floor_column].iloc[0], color="black", linestyle="-.", linewidth=0.8,
                             label="VAE round-trip floor")
            axis.set_xlabel("strength" if x == "strength"
                            else "log-SNR of the start latent (axis reversed: noisier to the right)")
            if x == "log_snr":
                axis.invert_xaxis()
            axis.set_ylabel(metric)
            axis.set_title(f"{metric}: mean and {self.settings.confidence:.0%} CI", fontsize=10)
            axis.grid(alpha=0.3)
            axis.legend(fontsize=7)
        figure.tight_layout()
        return figure

    def heatmap(self, metric: str | None = None):
        """Strength x guidance heatmap of a metric's mean (cells annotated), crossings marked per guidance row."""
        import matplotlib.pyplot as plt

        metric = metric or (self.settings.keep + self.settings.follow)[0].metric
        pivot = self.summary.pivot_table(index="guidance_scale", columns="strength", values=metric)
        figure, axis = plt.subplots(figsize=(max(6, 0.55 * pivot.shape[1] + 2), 0.7 * pivot.shape[0] + 1.8), dpi=100)
        shown = axis.imshow(pivot.to_numpy(), aspect="auto", cmap="viridis", origin="lower")
        axis.set_xticks(range(pivot.shape[1]), [f"{v:g}" for v in pivot.columns], rotation=90, fontsize=8)
        axis.set_yticks(range(pivot.shape[0]), [f"{v:g}" for v in pivot.index])
        for (row, col), value in np.ndenumerate(pivot.to_numpy()):
            if np.isfinite(value):
                axis.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=6,
                          color="white" if value < np.nanmean(pivot.to_numpy()) else "black")
        columns = list(pivot.columns)
        for crossing in self.crossings:
            if crossing.target.metric == metric and crossing.reached:
                row = list(pivot.index).index(crossing.guidance_scale)
                col = columns.index(crossing.strength)
                axis.add_patch(plt.Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
        axis.set_xlabel("strength")
        axis.set_ylabel("guidance scale")
        axis.set_title(f"{metric} (mean) over strength × guidance; red: crossing of {metric} targets", fontsize=10)
        figure.colorbar(shown, ax=axis, fraction=0.03)
        figure.tight_layout()
        return figure

    # ------------------------------------------------------------------ persistence
    def save(self, run_dir: str | os.PathLike | None = None, *, subfolder: str | None = None) -> Path:
        """Write ``calibration/`` (or ``calibration/<subfolder>/``, one per model of a comparison) into the run
        folder: summary.csv, reference_table.csv (all guidance values), folklore.csv, calibration.json (crossings,
        recommendations, settings, counts), calibration.md, calibration.html, curves.png and heatmap.png. Every
        file is written atomically."""
        import matplotlib.pyplot as plt
        import pandas as pd

        from img2img_lab.store import atomic_write

        folder = Path(run_dir or self.run_dir) / "calibration" / (subfolder or "")
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / "summary.csv", lambda s: self.summary.to_csv(s, index=False), binary=False)
        reference = pd.concat([self.reference_table(g) for g in self.guidance_values], ignore_index=True)
        atomic_write(folder / "reference_table.csv", lambda s: reference.to_csv(s, index=False), binary=False)
        folklore = pd.concat([self.folklore_comparison(g) for g in self.guidance_values], ignore_index=True)
        atomic_write(folder / "folklore.csv", lambda s: folklore.to_csv(s, index=False), binary=False)
        document = {
            "settings": {**asdict(self.settings), "keep": [t.describe() for t in self.settings.keep],
                         "follow": [t.describe() for t in self.settings.follow]},
            "counts": self.counts,
            "crossings": [crossing.to_dict() for crossing in self.crossings],
            "knees": self.knees,
            "recommendations": {key: asdict(value) for key, value in self.recommendations.items()},
        }
        atomic_write(folder / "calibration.json", lambda s: s.write(json.dumps(document, indent=2, default=_json)),
                     binary=False)
        atomic_write(folder / "calibration.md", lambda s: s.write(self.to_markdown()), binary=False)
        atomic_write(folder / "calibration.html", lambda s: s.write(self.to_html()), binary=False)
        for name, figure in (("curves.png", self.figure()), ("heatmap.png", self.heatmap())):
            atomic_write(folder / name, lambda s: figure.savefig(s, format="png"))
            plt.close(figure)
        return folder


def _json(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def _span(values, fmt: str) -> str:
    low, high = values.min(), values.max()
    if isinstance(low, (np.integer,)):
        low, high = int(low), int(high)
    return fmt.format(low) if low == high else f"{fmt.format(low)}–{fmt.format(high)}"


def _markdown_table(frame) -> str:
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |"
            for row in frame.itertuples(index=False, name=None)]
    return "\n".join([header, rule, *body])


# --------------------------------------------------------------------------------------------- driver
def _recommend(goal: str, crossings: list[Crossing], kind: str, preferred_guidance: float | None) -> Recommendation:
    candidates = [c for c in crossings if c.kind == kind]
    if not candidates:
        return Recommendation(goal, "", None, None, None, None, None, False, "no target given for this goal")
    target = candidates[0].target.describe()
    reached = [c for c in candidates if c.reached]
    if reached:
        # keep: the guidance that allows the most change (highest strength); reach: the least (lowest).
        def order(c):
            preferred = 0 if preferred_guidance is not None and np.isclose(c.guidance_scale, preferred_guidance) else 1
            return (-c.strength if kind == "keep" else c.strength, preferred, c.guidance_scale)

        best = sorted(reached, key=order)[0]
        low, high = best.strength_ci
        message = (f"strength {best.strength:g} at guidance {best.guidance_scale:g} ({best.executed_steps} steps): "
                   f"{best.target.metric} {best.value:.3f} [{best.value_ci[0]:.3f}, {best.value_ci[1]:.3f}]"
                   + (f"; the crossing's CI spans strength {low:g}–{high:g}" if math.isfinite(low) else ""))
        return Recommendation(goal, target, best.strength, best.guidance_scale, best.executed_steps, best.value,
                              best.value_ci, best.rule == "confident", message)
    on_average = [c for c in candidates if c.target.met(c.best_value)]
    if on_average:  # the mean meets the target somewhere, but not with the rule's confidence
        best = sorted(on_average, key=lambda c: (-c.best_strength if kind == "keep" else c.best_strength,
                                                 c.guidance_scale))[0]
        message = (f"strength {best.best_strength:g} at guidance {best.guidance_scale:g}: {best.target.metric} "
                   f"{best.best_value:.3f} meets {target} on average but not with {best.rule} confidence "
                   f"(too few images or too close to the threshold: add seeds or sources)")
        return Recommendation(goal, target, best.best_strength, best.guidance_scale, None, best.best_value, None, False, message)
    better = max if candidates[0].target.higher_is_better else min
    best = better(candidates, key=lambda c: c.best_value)
    verb = "keeps" if kind == "keep" else "reaches"
    message = (f"no calibrated strength {verb} {target} at any guidance, even on average; the best is "
               f"{best.target.metric} {best.best_value:.3f} at strength {best.best_strength:g}, guidance "
               f"{best.guidance_scale:g}")
    return Recommendation(goal, target, None, None, None, best.best_value, None, False, message)


def _model_step_counter(pipe, plan) -> Callable:
    """``executed(N, strength)`` on the plan's model, scheduler and first source (the pipeline's own count)."""
    from img2img_lab.models import as_model
    from img2img_lab.sweep import prepare_source

    model = as_model(pipe)
    source = prepare_source(plan.images[0], pipe, max_side=plan.max_side, resize_policy=plan.resize_policy)

    def executed(num_inference_steps: int, strength: float) -> int:
        return model.step_plan(plan.schedulers[0], num_inference_steps, strength, width=source.width,
                               height=source.height).executed_steps

    return executed


def calibrate(config, out_dir: str | os.PathLike | None = None, *, settings: CalibrationSettings | None = None,
              pipe=None, runner: Callable | None = None, progress: bool = True, save: bool = True,
              record: bool = True) -> CalibrationResult:
    """Calibrate strength for a model, sources and prompts; return (and save) a :class:`CalibrationResult`.

    Parameters
    ----------
    config : str, Path, SweepPlan or (SweepPlan, CalibrationSettings)
        A calibration YAML (:func:`load_config`) or a plan (then ``settings`` applies).
    out_dir : str or Path
        The run folder (a cache: cells already there are not generated again).
    runner : callable, optional
        ``runner(plan) -> table``; default: :func:`img2img_lab.sweep.run_sweep` into ``out_dir`` measuring
        the settings' metrics. Tests pass a synthetic runner.

    The plan must have one ``steps`` and one ``scheduler`` value (the executed-step arithmetic is per
    steps value); strength 1.0 is always added (the text-to-image reference). With ``record`` (default) the
    run folder records the calibration's provenance (:func:`record_calibration`); ``counts["rounds"]`` lists every
    round's strengths.

    >>> result = calibrate("data/configs/calibrate.yaml", "runs/calibrate")  # doctest: +SKIP
    """
    import pandas as pd

    if isinstance(config, (str, os.PathLike)):
        plan, file_settings = load_config(config)
        settings = settings or file_settings
    elif isinstance(config, tuple):
        plan, settings = config
    else:
        plan = config
    settings = settings or CalibrationSettings()
    if len(plan.steps) != 1 or len(plan.schedulers) != 1:
        raise PlanError(f"calibration needs one steps value and one scheduler (got steps {plan.steps}, "
                        f"schedulers {plan.schedulers}). Fix: calibrate each steps/scheduler separately.")
    if 1.0 not in plan.strengths:
        plan = SweepPlan.from_dict({**plan.to_dict(), "strengths": sorted(plan.strengths + [1.0])})
    steps = plan.steps[0]
    if runner is None:
        if out_dir is None:
            raise PlanError("calibrate needs an out_dir (the run folder). Fix: pass out_dir='runs/calibrate'.")
        from img2img_lab.pipelines import load_pipeline
        from img2img_lab.sweep import run_sweep

        pipe = pipe if pipe is not None else load_pipeline(plan.model)

        def runner(sub_plan):
            return run_sweep(sub_plan, out_dir, pipe=pipe, metrics=settings.metrics, progress=progress)
    executed = _model_step_counter(pipe, plan) if pipe is not None else None

    table = runner(plan)
    coarse_cells = len(table)
    extra: dict[float, list[float]] = {}
    rounds = [{"round": 0, "strengths": list(plan.strengths), "guidance_scales": list(plan.guidance_scales),
               "cells": coarse_cells}]
    rounds_run = 0
    bootstrap = dict(n_resamples=int(settings.n_resamples), confidence=float(settings.confidence),
                     seed=int(settings.seed))

    def all_crossings(frame):
        found = []
        for condition, group in _conditions(frame):
            for target in settings.keep:
                found.append(find_crossing(group, target, kind="keep", rule=settings.rule, **bootstrap))
            for target in settings.follow:
                found.append(find_crossing(group, target, kind="reach", rule=settings.rule, **bootstrap))
        return found

    crossings = all_crossings(table)
    for _ in range(int(settings.refine_rounds)):
        wanted: dict[float, set[float]] = {}
        for crossing in crossings:
            tested = set(table.loc[np.isclose(table["guidance_scale"], crossing.guidance_scale), "strength"])
            for strength in refinement_strengths(crossing, steps, executed=executed):
                if strength not in tested:
                    wanted.setdefault(crossing.guidance_scale, set()).add(strength)
        if not wanted:
            break
        rounds_run += 1
        for guidance, strengths in sorted(wanted.items()):
            sub_plan = SweepPlan.from_dict({**plan.to_dict(), "strengths": sorted(strengths),
                                            "guidance_scales": [guidance]})
            part = runner(sub_plan)
            table = pd.concat([table, part], ignore_index=True)
            extra.setdefault(guidance, []).extend(sorted(strengths))
            rounds.append({"round": rounds_run, "strengths": sorted(strengths), "guidance_scales": [guidance],
                           "cells": len(part)})
        table = table.drop_duplicates("cell_key", keep="last").reset_index(drop=True)
        crossings = all_crossings(table)

    floor = None
    if out_dir is not None and (Path(out_dir) / "manifest.json").is_file():
        from img2img_lab.store import RunStore

        floor = RunStore.open(out_dir).read_floor_of(table)
    summary = strength_summary(table, settings.metrics, floor=floor, **bootstrap)
    counts = {"coarse_cells": coarse_cells, "refinement_cells": len(table) - coarse_cells, "cells": len(table),
              "refinement_rounds": rounds_run, "added_strengths": {f"{g:g}": s for g, s in extra.items()},
              "rounds": rounds,
              "summary": f"{table['source_hash'].nunique()} sources × {table['prompt'].nunique()} prompts × "
                         f"{table['seed'].nunique()} seeds × {table['guidance_scale'].nunique()} guidance values; "
                         f"{coarse_cells} coarse + {len(table) - coarse_cells} refinement cells"}
    result = CalibrationResult(table=table, summary=summary, crossings=crossings, knees={}, recommendations={},
                               settings=settings, counts=counts, run_dir=str(out_dir) if out_dir else None,
                               floor=floor)
    metric = result.primary_fidelity_metric
    if metric is not None:
        result.knees[metric] = {
            f"{g:g}": knee(part["strength"], part[metric])
            for g, part in ((g, summary[np.isclose(summary["guidance_scale"], g)].sort_values("strength"))
                            for g in result.guidance_values)
        }
    preferred = None
    if pipe is not None:
        from img2img_lab.pipelines import recommended_guidance

        preferred = recommended_guidance(pipe)
    result.recommendations = {
        "keep": _recommend("keep the subject", [c for c in crossings if c.target == settings.keep[0]]
                           if settings.keep else [], "keep", preferred),
        "follow": _recommend("follow the prompt", [c for c in crossings if c.target == settings.follow[0]]
                             if settings.follow else [], "reach", preferred),
    }
    if out_dir is not None and (Path(out_dir) / "manifest.json").is_file():
        if record:
            record_calibration(out_dir, plan, settings, rounds)
        if save:
            result.save(out_dir)
    return result


def record_calibration(out_dir, plan: SweepPlan, settings: CalibrationSettings, rounds: list[dict]) -> str:
    """Record a calibration's provenance in its run folder: the full config (``configs/calibration.yaml``: the plan
    and the calibration block) and, in the manifest, every round's strengths and the command that reproduces the
    folder; returns that command. (Every round's sweep plan is also in ``manifest["plans"]``.)

    >>> record_calibration("runs/calibrate", plan, settings, rounds)  # doctest: +SKIP
    'img2img-lab calibrate runs/calibrate/configs/calibration.yaml --out NEW_RUN_DIR'
    """
    from img2img_lab.manifest import plan_config
    from img2img_lab.store import RunStore

    store = RunStore.open(out_dir)
    block = asdict(settings)
    for name in ("keep", "follow"):
        block[name] = [{key: value for key, value in target.items() if value is not None} for target in block[name]]
    path = store.write_config("calibration", {**plan_config(plan.to_dict()), "calibration": block})
    relative = str(path.relative_to(store.root))
    command = f"img2img-lab calibrate {store.root}/{relative} --out NEW_RUN_DIR"
    store.update_manifest(lambda manifest: {**manifest, "calibration": {
        "config": relative, "command": command, "settings": block, "rounds": rounds}})
    return command


def validate(result: CalibrationResult, *, pairs, seeds, out_dir, pipe=None, progress: bool = False):
    """Check the recommendations on held-out (source image, prompt) pairs: run each goal's recommended
    (strength, guidance) on every pair x seed and measure the goal's metric.

    Returns a DataFrame per goal: recommended strength and guidance, the target, the held-out mean with its
    bootstrap CI (two-stage over pairs and seeds), the number of runs, and whether the target holds.

    >>> validate(result, pairs=[("held_out.png", "a white square on a green background")], seeds=[0, 1],
    ...          out_dir="runs/held-out")  # doctest: +SKIP
    """
    import pandas as pd

    from img2img_lab.sweep import run_sweep

    steps = [int(result.table["num_inference_steps"].iloc[0])]
    schedulers = [str(result.table["scheduler"].iloc[0])]
    rows = []
    for key, targets in (("keep", result.settings.keep), ("follow", result.settings.follow)):
        recommendation = result.recommendations.get(key)
        if recommendation is None or recommendation.strength is None or not targets:
            continue
        target = targets[0]
        tables = []
        for image, prompt in pairs:
            plan = SweepPlan.from_dict({"images": [str(image)], "prompts": [prompt], "seeds": list(seeds),
                                        "strengths": [recommendation.strength], "steps": steps,
                                        "schedulers": schedulers, "guidance_scales": [recommendation.guidance_scale],
                                        "name": f"validate-{key}"})
            tables.append(run_sweep(plan, out_dir, pipe=pipe, metrics=[target.metric], progress=progress))
        table = pd.concat(tables, ignore_index=True)
        mean, low, high = bootstrap_ci(table[target.metric].to_numpy(), groups=_unit_labels(table).to_numpy(),
                                       n_resamples=result.settings.n_resamples, seed=result.settings.seed)
        rows.append({"goal": recommendation.goal, "strength": recommendation.strength,
                     "guidance_scale": recommendation.guidance_scale, "target": target.describe(),
                     "held_out_mean": mean, "ci_low": low, "ci_high": high, "runs": len(table),
                     "holds": target.met(mean)})
    return pd.DataFrame(rows)
