"""What a calibration measures and decides: :class:`Target` thresholds, :class:`CalibrationSettings`, and
:func:`load_config` (a sweep config plus a ``calibration:`` block).

>>> Target("ssim", at_least=0.7).describe()
'ssim ≥ 0.7'
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path


from img2img_lab.errors import PlanError
from img2img_lab.plan.sweep_plan import SweepPlan


#: How a target is decided: on the CI's worse end ("confident") or on the mean.
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
    held_out : list of {image, prompt}
        Pairs not used for calibrating, on which a mode table validates each recommendation
        (:mod:`img2img_lab.calibration.modes`); image paths are relative to the config file.
    """

    keep: list = field(default_factory=lambda: [Target("ssim", at_least=0.7)])
    follow: list = field(default_factory=list)
    metrics: list = field(default_factory=lambda: ["ssim", "ms_ssim", "delta_e"])
    rule: str = "confident"
    refine_rounds: int = 3
    n_resamples: int = 2000
    confidence: float = 0.95
    seed: int = 0
    held_out: list = field(default_factory=list)

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
        for pair in self.held_out:
            if not isinstance(pair, dict) or set(pair) != {"image", "prompt"}:
                raise PlanError(f"held_out entry {pair!r} must be {{image: FILE, prompt: TEXT}}.")
        names = list(dict.fromkeys(list(self.metrics) + [t.metric for t in self.keep + self.follow]))
        from img2img_lab.metrics.registry import check_metric_names

        self.metrics = check_metric_names(names)

    @classmethod
    def from_dict(cls, data: dict | None) -> "CalibrationSettings":
        data = dict(data or {})
        known = {"keep", "follow", "metrics", "rule", "refine_rounds", "n_resamples", "confidence", "seed", "held_out"}
        unknown = set(data) - known
        if unknown:
            raise PlanError(f"unknown calibration key(s) {sorted(unknown)}. Fix: use {', '.join(sorted(known))}.")
        return cls(**data)


def load_config(path: str | os.PathLike, *, overrides: dict | None = None) -> tuple[SweepPlan, CalibrationSettings]:
    """Read a calibration config: a sweep config plus a ``calibration:`` block (see data/configs/calibrate.yaml).

    ``overrides`` replaces keys before validation: sweep keys (``seeds``, ``strengths``, ``guidance_scales``,
    ``images``…; image paths relative to the config file) or calibration keys (``refine_rounds``, ``rule``…).

    >>> plan, settings = load_config("data/configs/calibrate.yaml", overrides={"seeds": [0, 1]})
    >>> plan.seeds, settings.rule, settings.keep[0].metric
    ([0, 1], 'confident', 'oracle_kept')
    """
    from img2img_lab._utils.configfile import read_config

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
    if isinstance(block.get("held_out"), list):  # held-out images are relative to the config, like its sources
        block["held_out"] = [{**pair, "image": str(path.parent / pair["image"])}
                             if isinstance(pair, dict) and isinstance(pair.get("image"), str)
                             and not Path(pair["image"]).is_absolute() else pair for pair in block["held_out"]]
    try:
        return SweepPlan.from_dict(data, base_dir=path.parent), CalibrationSettings.from_dict(block)
    except PlanError as error:
        raise PlanError(f"{path}: {error}") from None
