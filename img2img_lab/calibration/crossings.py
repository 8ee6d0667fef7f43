"""Crossings: the highest strength that keeps a fidelity target, the lowest that reaches a prompt target (each with a
bootstrap CI), where refinement bisects next, and the knee of a fidelity curve.

>>> strength_for_steps(20, 6)
0.3
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from img2img_lab.errors import Img2ImgLabError
from img2img_lab.plan.sweep_plan import strength_steps
from img2img_lab.calibration.settings import RULES, Target
from img2img_lab.calibration.stats import quantiles, quiet_numpy_warnings, bootstrap_means, value_cube


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


def target_holds(target: Target, mean, low, high, rule: str) -> np.ndarray:
    """Where ``target`` holds: on the mean (``rule="mean"``) or on the CI's worse end (``"confident"``).

    >>> target_holds(Target("ssim", at_least=0.7), [0.8, 0.8], [0.75, 0.6], [0.9, 0.9], "confident").tolist()
    [True, False]
    """
    value = mean if rule == "mean" else target.worse_end(np.asarray(low), np.asarray(high))
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

    >>> crossing = find_crossing(table, Target("ssim", at_least=0.4), kind="keep", n_resamples=200)
    >>> crossing.strength, crossing.strength_ci  # the highest tested strength whose CI's worse end keeps it
    (0.5, (0.5, 0.5))
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
    low, high = quantiles(replicates, confidence)
    with quiet_numpy_warnings():
        mean = np.nanmean(cube.reshape(len(strengths), -1), axis=1)
    holds = target_holds(target, mean, low, high, rule)
    index = _crossing_index(holds, kind)
    # Crossing strength per replicate (its own mean curve).
    replicate_holds = target_holds(target, replicates, replicates, replicates, "mean")
    found = [_crossing_index(row, kind) for row in replicate_holds]
    values = np.array([strengths[i] if i is not None else np.nan for i in found])
    unreached = float(np.isnan(values).mean())
    strength_ci = tuple(float(v) for v in quantiles(values, confidence)) if unreached < 1 else (math.nan, math.nan)
    if kind == "keep":
        bracket = (index, index + 1 if index is not None and index + 1 < len(strengths) else None) \
            if index is not None else (None, 0)
    else:
        bracket = (index - 1 if index is not None and index > 0 else None, index) if index is not None \
            else (len(strengths) - 1, None)
    finite = np.where(np.isnan(mean), -np.inf if target.higher_is_better else np.inf, mean)
    best = int(np.argmax(finite) if target.higher_is_better else np.argmin(finite))
    # Where the mean meets the target, the best strength is the highest that keeps it / the lowest that reaches it.
    meeting = np.flatnonzero(target_holds(target, mean, mean, mean, "mean"))
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
