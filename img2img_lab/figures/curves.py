"""Metric-vs-strength curves and difference maps, from a run folder alone (:mod:`img2img_lab.figures.grids` re-exports
them).

>>> figure = strength_curves("runs/demo", "ssim", hue="prompt")
>>> figure.axes[0].get_title()
'ssim vs strength (higher = closer to source; band: ±1 sd)'
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from PIL import Image

from img2img_lab.errors import Img2ImgLabError
from img2img_lab.figures.style import axis_label, open_run_table, select_rows
from img2img_lab.figures.metric_scales import check_metric_values, direction_text
from img2img_lab.plan.schema import CONDITION_COLUMNS


#: Alternative x axes for :func:`strength_curves`.
X_AXES = {"strength": "strength", "executed_steps": "executed denoising steps",
          "sqrt_alpha_bar": "signal kept at start (sqrt alpha-bar)", "sigma": "noise level at start (sigma)",
          "log_snr": "log-SNR of the start latent, any family (axis reversed: noisier to the right)"}
#: What one line of a curve must not mix: a strength means something else for each model, guidance scale, number of
#: steps and scheduler (a calibration decides each apart); seeds, sources and prompts are the line's spread.
CURVE_CONDITIONS = ("model", "mode", "composite", "mask_blur", *CONDITION_COLUMNS)


class CurveWarning(UserWarning):
    """A curve's lines mix conditions a strength means something else in (one line; the CLI prints it once)."""


def pooled_conditions(table, hue: str | None = None) -> dict[str, list]:
    """The :data:`CURVE_CONDITIONS` that take several values within one line of a curve of ``table`` drawn with
    ``hue``, with their values.

    >>> pooled_conditions(table.assign(guidance_scale=[1.0, 2.0] * 3), hue="prompt")
    {'guidance_scale': [1.0, 2.0]}
    >>> pooled_conditions(table.assign(guidance_scale=[1.0, 2.0] * 3), hue="guidance_scale")
    {}
    """
    pooled = {}
    for column in CURVE_CONDITIONS:
        if column == hue or column not in table.columns:
            continue
        counts = table.groupby(hue)[column].nunique() if hue else [table[column].nunique()]
        if max(counts, default=0) > 1:
            pooled[column] = sorted(table[column].dropna().unique().tolist())
    return pooled


def curve_data(table, metric: str, *, x: str = "strength", hue: str | None = "prompt"):
    """Mean, standard deviation, min, max and count of ``metric`` per (hue, x): the numbers behind a curve.

    >>> curve_data(table, "ssim", hue="guidance_scale").round(3)
       guidance_scale  strength   mean    std    min    max  count
    0             2.0       0.0  0.894  0.003  0.892  0.896      2
    1             2.0       0.5  0.619  0.085  0.559  0.679      2
    2             2.0       1.0  0.320  0.010  0.313  0.328      2
    """
    if metric not in table.columns:
        raise Img2ImgLabError(f"metric {metric!r} is not in the table. Fix: run `img2img-lab measure` first.")
    if x not in X_AXES:
        raise Img2ImgLabError(f"unknown x axis {x!r}. Fix: use one of {', '.join(X_AXES)}.")
    if x not in table.columns:
        raise Img2ImgLabError(f"the table has no {x!r} column (recorded by an older img2img-lab). Fix: use "
                              f"--x strength, or rerun the sweep into a new folder.")
    keys = ([hue] if hue else []) + [x]
    data = table.assign(**{metric: table[metric].astype(float).replace([np.inf], np.nan)})
    data = data[np.isfinite(data[x].astype(float))]  # no noise (+inf log-SNR) or pure noise (-inf) has no place
    return data.groupby(keys)[metric].agg(["mean", "std", "min", "max", "count"]).reset_index()


def strength_curves(run, metric: str, *, x: str = "strength", hue: str | None = "prompt", where: dict | None = None,
                    spread: str = "sd", show_floor: bool = True, label: str | None = None, ax=None):
    """Plot a metric against strength (or executed steps / noise level): mean line and spread band per ``hue``.

    ``spread`` is ``"sd"`` (mean +- one standard deviation over seeds and other axes), ``"range"`` (min to
    max) or ``"none"``; bands are clipped to the values observed. The source's VAE round trip (what strength 0
    stores; outputs seldom get closer) is drawn dashed when measured and ``show_floor``. ``label`` names the line
    when ``hue`` is None (default: the metric). A line that would mix models, guidance scales, steps or schedulers
    warns (:class:`CurveWarning`, with the fix); ``where``'s values are printed under the title.
    Infinite PSNR values (identical images) are left out of the mean.

    >>> figure = strength_curves("runs/demo", "ssim", hue="guidance_scale")
    >>> figure.axes[0].get_ylabel()
    'ssim'
    """
    import matplotlib.pyplot as plt

    store, table = open_run_table(run)
    table = select_rows(table, where)
    check_metric_values(table, metric, store.root)
    data = curve_data(table, metric, x=x, hue=hue)
    pooled = pooled_conditions(table, hue)
    if pooled:
        warnings.warn(CurveWarning(_pooled_message(metric, pooled)), stacklevel=2)
    if ax is None:
        figure, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    else:
        figure = ax.figure
    if spread not in ("sd", "range", "none"):
        raise Img2ImgLabError(f"unknown spread {spread!r}. Fix: use 'sd', 'range' or 'none'.")
    groups = data.groupby(hue) if hue else [(None, data)]
    colours = {}
    for value, group in groups:
        line_label = axis_label(hue, value) if hue else (label or metric)
        line, = ax.plot(group[x], group["mean"], marker="o", label=line_label)
        colours[value] = line.get_color()
        if spread == "none":
            continue
        low, high = ((group["mean"] - group["std"].fillna(0), group["mean"] + group["std"].fillna(0))
                     if spread == "sd" else (group["min"], group["max"]))
        ax.fill_between(group[x], low.clip(lower=group["min"].min()), high.clip(upper=group["max"].max()), alpha=0.2)
    if show_floor:
        _draw_floors(ax, store.read_floor_of(table), table, metric, colours=colours if hue == "model" else {})
    direction = direction_text(metric)
    ax.set_xlabel(X_AXES[x])
    if x == "log_snr":
        ax.invert_xaxis()
    ax.set_ylabel(metric)
    band = {"sd": "band: ±1 sd", "range": "band: min-max", "none": "mean"}[spread]
    pinned = ", ".join(f"{column} {value}" for column, value in (where or {}).items())
    ax.set_title(f"{metric} vs {X_AXES[x]} ({direction}; {band})" + (f"\n{pinned}" if pinned else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _draw_floors(ax, floor, table, metric: str, *, colours: dict) -> None:
    """The VAE round-trip floor, dashed: one line per model where the cells come from several (in its curve's
    colour where the lines are the models), never one level averaged over models."""
    if metric not in floor.columns or not floor[metric].notna().any():
        return
    levels = floor[metric].replace([np.inf], np.nan)
    models = {}
    if {"model", "model_fingerprint"} <= set(table.columns) and "model_fingerprint" in floor.columns:
        models = dict(zip(table["model_fingerprint"], table["model"]))
    if len(models) < 2:
        if not math.isnan(levels.mean()):
            ax.axhline(levels.mean(), color="gray", linestyle="--", linewidth=1, label="VAE round-trip floor")
        return
    for fingerprint, level in levels.groupby(floor["model_fingerprint"]).mean().items():
        if fingerprint in models and not math.isnan(level):
            ax.axhline(level, color=colours.get(models[fingerprint], "gray"), linestyle="--", linewidth=1,
                       label=f"VAE round-trip floor · {models[fingerprint]}")


def _pooled_message(metric: str, pooled: dict[str, list]) -> str:
    def text(value) -> str:
        return f"{value:g}" if isinstance(value, float) else str(value)

    mixed = "; ".join(f"{column} {', '.join(map(text, values))}" for column, values in pooled.items())
    column, values = next(iter(pooled.items()))
    return (f"each line of the {metric} curve mixes {mixed} (a strength means something else in each). Fix: one "
            f"line per value (--hue {column}) or one value (--where {column}={text(values[0])}).")


def difference_array(source, output, *, kind: str = "abs") -> np.ndarray:
    """Per-pixel difference map of two RGB images, HxW floats.

    ``kind="abs"``: mean over channels of ``|output - source|`` in [0, 1].
    ``kind="ssim"``: ``1 - local SSIM`` (0 = structure kept, up to 2).

    >>> black, white = np.zeros((16, 16, 3), np.uint8), np.full((16, 16, 3), 255, np.uint8)
    >>> float(difference_array(black, black).max()), float(difference_array(black, white).min())
    (0.0, 1.0)
    """
    from img2img_lab.images.arrays import metric_pair

    a, b = metric_pair(source, output)
    if kind == "abs":
        return np.abs(a.astype(np.float64) - b.astype(np.float64)).mean(axis=2) / 255.0
    if kind == "ssim":
        from skimage.metrics import structural_similarity

        _, full = structural_similarity(a, b, data_range=255, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, full=True)
        return 1.0 - full.mean(axis=2)
    raise Img2ImgLabError(f"unknown difference kind {kind!r}. Fix: use 'abs' or 'ssim'.")


def difference_map(run, cell_key: str, *, kind: str = "abs"):
    """Figure with the source, the output of ``cell_key`` and their difference map (with a colour bar).

    >>> figure = difference_map("runs/demo", table.cell_key[3], kind="ssim")
    >>> [axis.get_title() for axis in figure.axes]
    ['source', 'strength 0, seed 1', '1 - local SSIM', '']
    """
    import matplotlib.pyplot as plt

    store, table = open_run_table(run)
    match = table[table["cell_key"] == cell_key]
    if match.empty:
        raise Img2ImgLabError(f"no cell {cell_key!r} in {store.root}. Fix: take a cell_key from results.parquet.")
    row = match.iloc[0]
    source, output = store.load_source(row["source_hash"]), store.load_output(row)
    difference = difference_array(source, output, kind=kind)
    figure, axes = plt.subplots(1, 3, figsize=(10, 3.6), dpi=100)
    axes[0].imshow(source, interpolation="nearest")
    axes[0].set_title("source")
    axes[1].imshow(output, interpolation="nearest")
    axes[1].set_title(f"strength {row['strength']:g}, seed {row['seed']}")
    shown = axes[2].imshow(difference, cmap="magma", vmin=0, vmax=1 if kind == "abs" else None, interpolation="nearest")
    axes[2].set_title("|output - source|" if kind == "abs" else "1 - local SSIM")
    figure.colorbar(shown, ax=axes[2], fraction=0.046)
    for axis in axes:
        axis.axis("off")
    figure.tight_layout()
    return figure


def difference_image(source, output, *, kind: str = "abs") -> Image.Image:
    """The difference map of two images as a colour image (magma: black = unchanged, yellow = most changed).

    ``kind="abs"`` maps 0..1 of :func:`difference_array`; ``kind="ssim"`` maps 0..1 of ``1 - local SSIM``
    (values above 1, anti-correlated structure, saturate).

    >>> difference_image(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)).size
    (8, 8)
    """
    from matplotlib import colormaps

    difference = np.clip(difference_array(source, output, kind=kind), 0.0, 1.0)
    rgba = colormaps["magma"](difference)
    return Image.fromarray((rgba[..., :3] * 255).round().astype(np.uint8))


def difference_colour_bar(width: int, *, kind: str = "abs", font_size: int = 14) -> Image.Image:
    """The colour bar of :func:`difference_image`: the magma ramp ``width`` px wide with its scale written under it.

    >>> bar = difference_colour_bar(300)
    >>> bar.width, bar.getpixel((1, 4)), bar.getpixel((298, 4))  # black = unchanged ... yellow = most changed
    (300, (0, 0, 4), (252, 253, 191))
    """
    from matplotlib import colormaps
    from PIL import ImageDraw

    from img2img_lab.figures.style import label_font

    ramp = colormaps["magma"](np.linspace(0.0, 1.0, width))[:, :3]
    bar_height, text_height = 12, font_size + 4
    canvas = Image.new("RGB", (width, bar_height + 2 * text_height + 4), "white")
    canvas.paste(Image.fromarray((np.repeat(ramp[None], bar_height, axis=0) * 255).round().astype(np.uint8)), (0, 0))
    draw, font = ImageDraw.Draw(canvas), label_font(font_size)
    high = "1: black vs white" if kind == "abs" else "1+: structure lost"
    for text, x in (("0: unchanged", 0), ("0.5", width // 2), (high, width)):
        length = draw.textlength(text, font=font)
        draw.text((min(max(0, x - length / 2), width - length), bar_height + 2), text, fill="black", font=font)
    title = "|output - source|, mean over R, G, B" if kind == "abs" else "1 - local SSIM"
    draw.text((0, bar_height + 2 + text_height), title, fill="dimgray", font=font)
    return canvas
