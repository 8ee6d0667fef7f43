"""The statistics of a calibration: two-stage bootstrap CIs (over source/prompt pairs, then seeds within them) and
the per-strength summary of every metric.

>>> mean, low, high = bootstrap_ci([0.5, 0.7, 0.6, 0.8], n_resamples=500)
>>> bool(low <= mean <= high)
True
"""

from __future__ import annotations

import math

import numpy as np

from img2img_lab.errors import Img2ImgLabError
from img2img_lab.plan.schema import CONDITION_COLUMNS, UNIT_COLUMNS, with_baseline_columns


# --------------------------------------------------------------------------------------------- bootstrap
def quantiles(samples: np.ndarray, confidence: float, axis=0):
    """The ``(low, high)`` percentile bounds of a ``confidence`` interval over ``axis`` (NaN where all are NaN)."""
    alpha = (1 - confidence) / 2
    with quiet_numpy_warnings():  # all-NaN columns (a metric missing at a strength) give NaN bounds
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
        with np.errstate(invalid="ignore"), quiet_numpy_warnings():
            out[:, index] = np.nanmean(picked.reshape(n_resamples, -1), axis=1)
    return out.reshape((n_resamples, *lead))


class quiet_numpy_warnings:
    """A context that silences NumPy's all-NaN and empty-slice warnings (a metric missing at a strength)."""

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
    low, high = quantiles(replicates, confidence)
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
    with quiet_numpy_warnings():
        return np.nanmean(picked.reshape(n_resamples, -1), axis=1)


# --------------------------------------------------------------------------------------------- summaries
def unit_labels(table):
    """The experimental unit of each row (:data:`img2img_lab.plan.schema.UNIT_COLUMNS`: its source, prompt and negative
    prompt), as text."""
    first, *rest = (table[column].astype(str) for column in UNIT_COLUMNS)
    for column in rest:
        first = first + " | " + column
    return first


def value_cube(table, metric: str):
    """``(strengths, values)``: ``values[strength, pair, seed]`` of one metric for one condition (NaN = missing).

    Pairs are (source, prompt, negative prompt) units; infinite values (PSNR of identical images) are NaN.
    """
    data = table.assign(_unit=unit_labels(table))
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


def conditions(table):
    """``[(condition, rows)]`` per guidance, steps and scheduler: what a calibration decides separately."""
    keys = list(CONDITION_COLUMNS)
    return [(dict(zip(keys, key if isinstance(key, tuple) else (key,))), group)
            for key, group in with_baseline_columns(table).groupby(keys, sort=True)]


def strength_summary(table, metrics, *, floor=None, n_resamples: int = 2000, confidence: float = 0.95,
                     seed: int = 0):
    """Per guidance (and steps, scheduler) and strength: executed steps, noise level, images, and for each
    metric its mean, bootstrap CI (``<m>_ci_low``/``<m>_ci_high``), seed-to-seed spread (``<m>_seed_sd``:
    the mean over pairs of the standard deviation over seeds) and the VAE floor (``<m>_floor``).

    >>> summary = strength_summary(table, ["ssim"], n_resamples=200)
    >>> summary[["strength", "executed_steps", "ssim", "ssim_ci_low", "ssim_ci_high"]].round(3)
       strength  executed_steps   ssim  ssim_ci_low  ssim_ci_high
    0       0.0               0  0.894        0.892         0.896
    1       0.5               5  0.619        0.559         0.679
    2       1.0              10  0.320        0.313         0.328
    """
    import pandas as pd

    rows = []
    for condition, group in conditions(table):
        first = group.groupby("strength").first()
        strengths = None
        per_metric = {}
        for metric in metrics:
            if metric not in group.columns:
                continue
            strengths, cube = value_cube(group, metric)
            replicates = bootstrap_means(cube, n_resamples=n_resamples, seed=seed)
            low, high = quantiles(replicates, confidence)
            with quiet_numpy_warnings():
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
