"""How figures show a metric: a fixed colour scale per metric (the same value gets the same colour in every grid),
the direction in words (fidelity metrics: closer to the source; prompt metrics: follows the prompt), and the one-line
error for a metric with nothing to show.

Border colours run from red (:data:`BORDER_SCALES` ``bad``) through yellow to green (``good``), clamped at the ends;
a metric without an entry uses its registered range when it is finite.

========================  ======  ======  ==========================================
metric                    red at  green   why these anchors
========================  ======  ======  ==========================================
ssim, ms_ssim             0.3     0.9     0.9: a light retouch; 0.3: another picture
psnr (dB)                 15      35      35 dB: hard to tell apart; 15 dB: another picture
delta_e (CIEDE2000)       30      2       2: just noticeable; 30: other colours
lpips                     0.6     0.05    0.05: near-identical; 0.6: unrelated
edge_f1                   0.2     0.9     structure kept / lost
oracle_*, clip_score      range   range   the metric's own range (0..1; clip 0..100)
========================  ======  ======  ==========================================

>>> border_position("ssim", 0.175), border_position("ssim", 0.9), border_position("delta_e", 2.0)
(0.0, 1.0, 1.0)
>>> direction_text("ssim"), direction_text("oracle_match")
('higher = closer to source', 'higher = follows the prompt')
"""

from __future__ import annotations

import math

from img2img_lab.errors import Img2ImgLabError

#: ``metric: (bad, good)``: the values drawn fully red and fully green (see the module doc).
BORDER_SCALES = {
    "ssim": (0.3, 0.9), "ms_ssim": (0.3, 0.9), "psnr": (15.0, 35.0), "delta_e": (30.0, 2.0), "lpips": (0.6, 0.05),
    "lpips_vgg": (0.6, 0.05), "lpips_squeeze": (0.6, 0.05), "edge_f1": (0.2, 0.9),
}


def _spec(metric: str):
    from img2img_lab.metrics.registry import METRICS, load_plugins

    load_plugins()
    return METRICS.get(metric)


def border_scale(metric: str, observed=None) -> tuple[float, float]:
    """``(bad, good)`` of a metric: :data:`BORDER_SCALES`, else its finite registered range oriented by its direction,
    else the ``observed`` values' range (the only scale that depends on the data)."""
    if metric in BORDER_SCALES:
        return BORDER_SCALES[metric]
    spec = _spec(metric)
    if spec is not None and all(math.isfinite(value) for value in spec.value_range):
        low, high = spec.value_range
        return (low, high) if spec.higher_is_better else (high, low)
    values = [float(value) for value in (observed if observed is not None else []) if math.isfinite(float(value))]
    if not values:
        return (0.0, 1.0)
    return (min(values), max(values))


def border_position(metric: str, value: float, observed=None) -> float:
    """Where ``value`` sits between red (0) and green (1) on the metric's fixed scale."""
    bad, good = border_scale(metric, observed)
    if good == bad:
        return 0.5
    return float(min(1.0, max(0.0, (value - bad) / (good - bad))))


def direction_text(metric: str) -> str:
    """Which way is good for a metric, in words (prompt metrics measure following the prompt, not the source)."""
    spec = _spec(metric)
    higher = True if spec is None else spec.higher_is_better
    goal = "follows the prompt" if spec is not None and spec.needs_prompt else "closer to source"
    return f"{'higher' if higher else 'lower'} = {goal}"


def check_metric_values(table, metric: str, run) -> None:
    """A one-line error when ``metric`` has nothing to show in ``table``: not measured, or measured as NaN (its
    weights were missing), with the fix."""
    if metric in table.columns and table[metric].notna().any():
        return
    fix = f"`img2img-lab measure {run} --metrics {metric}`"
    if metric in table.columns:
        from img2img_lab.metrics.availability import metric_status

        available, explanation = metric_status(metric)
        why = "it could not be computed here" if not available else "every value is NaN"
        detail = f" ({explanation})" if not available else ""
        raise Img2ImgLabError(f"metric {metric!r} has no values in {run}: {why}{detail}. Fix: {fix} once it is "
                              f"available.")
    raise Img2ImgLabError(f"metric {metric!r} is not in the run's table. Fix: {fix}.")
