"""Labelled comparison grids, metric-vs-strength curves and difference maps, from a run folder alone.

>>> grid = comparison_grid("runs/demo", rows="seed", cols="strength", annotate=["ssim"])
>>> save_png(grid, "runs/demo/grid.png")
PosixPath('runs/demo/grid.png')
>>> figure = strength_curves("runs/demo", "ssim", hue="prompt")
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from img2img_lab.errors import Img2ImgLabError
from img2img_lab.store import RunStore, atomic_write
from img2img_lab.schema import AXIS_COLUMNS

#: Columns a grid's rows/cols may use, and which must be pinned (filtered) when they vary.


@dataclass(frozen=True)
class GridLayout:
    """Pixel geometry of a comparison grid (everything a test or a caller needs to locate a cell)."""

    n_rows: int
    n_cols: int  # including the source column
    cell_width: int
    cell_height: int
    scale: int
    margin: int
    gap: int
    label_width: int
    header_height: int
    annotation_height: int

    @property
    def width(self) -> int:
        return 2 * self.margin + self.label_width + self.gap + self.n_cols * (self.cell_width + self.gap) - self.gap

    @property
    def height(self) -> int:
        row = self.cell_height + self.annotation_height + self.gap
        return 2 * self.margin + self.header_height + self.gap + self.n_rows * row - self.gap

    def cell_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the image in grid cell (row, col); col 0 is the source."""
        left = self.margin + self.label_width + self.gap + col * (self.cell_width + self.gap)
        top = self.margin + self.header_height + self.gap + row * (self.cell_height + self.annotation_height + self.gap)
        return left, top, left + self.cell_width, top + self.cell_height


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _format_value(value) -> str:
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "inf"
        if float(value).is_integer() and abs(value) < 1e6:
            return f"{value:g}"
        if abs(value) < 10:
            return f"{value:.3f}".rstrip("0").rstrip(".") if abs(value) >= 0.001 else f"{value:.1e}"
        return f"{value:.1f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _axis_label(axis: str, value) -> str:
    return f"{axis}: {_format_value(value)}"


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _load_table(run):
    store = run if isinstance(run, RunStore) else RunStore.open(run)
    return store, store.read_table()


def select_rows(table, where: dict | None):
    """Filter a results table by ``{column: value}`` (floats compared with a tolerance)."""
    if not where:
        return table
    for column, value in where.items():
        if column not in table.columns:
            raise Img2ImgLabError(f"cannot filter on {column!r}: no such column. Fix: use one of {', '.join(table.columns)}.")
        series = table[column]
        if series.dtype.kind in "fi":
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise Img2ImgLabError(f"filter {column}={value!r}: {column} is numeric. Fix: give a number.") from None
            table = table[np.isclose(series.astype(float), number)]
        else:
            table = table[series.astype(str) == str(value)]
    if table.empty:
        raise Img2ImgLabError(f"no cells match {where}. Fix: check the values (see results.parquet).")
    return table


def _check_unique(table, rows: str, cols: str) -> None:
    if table.duplicated([rows, cols]).any():
        varying = [column for column in AXIS_COLUMNS
                   if column not in (rows, cols) and column in table.columns and table[column].nunique() > 1]
        details = ", ".join(f"{column} ({table[column].nunique()} values, e.g. {table[column].iloc[0]!r})"
                            for column in varying)
        raise Img2ImgLabError(
            f"a grid of {rows} x {cols} is ambiguous: {details or 'several cells share a position'} also vary. "
            f"Fix: pick one value of each with where={{...}} (CLI: --where {varying[0] if varying else 'column'}=VALUE), "
            f"or use one of them as rows."
        )


def comparison_grid(run, *, rows: str = "seed", cols: str = "strength", annotate=(), border: str | None = None,
                    where: dict | None = None, scale: int | None = None, font_size: int = 14,
                    include_source: bool = True) -> Image.Image:
    """A labelled grid: the source, then one column per value of ``cols``; one row per value of ``rows``.

    Parameters
    ----------
    run : str, Path or RunStore
        A run folder (no model needed).
    rows, cols : str
        Table columns; labels read ``"axis: value"``. With ``cols="strength"`` each header also shows the
        executed steps. Other axes that vary must be pinned with ``where``.
    annotate : list of str
        Metric columns printed under each image, one per line.
    border : str, optional
        Metric that colours each image's border (red = far from the source, green = close).
    scale : int, optional
        Integer nearest-neighbour upscaling (pixels stay exact); default makes cells >= 160 px.

    Returns the grid as a PIL image; :func:`grid_layout` gives its geometry.

    >>> grid = comparison_grid("runs/demo", rows="prompt", where={"seed": 0})
    >>> grid.size  # the source, then 3 strengths, upscaled to >= 160 px cells with their labels
    (1064, 260)
    """
    # 1. The table, checked and pinned to one value of every other varying axis.
    store, table = _load_table(run)
    annotate = [annotate] if isinstance(annotate, str) else list(annotate)
    _check_grid_request(store, table, rows, cols, annotate + ([border] if border else []))
    table = select_rows(table, where)
    _check_unique(table, rows, cols)
    row_values = sorted(table[rows].unique(), key=lambda v: (str(type(v)), v))
    col_values = sorted(table[cols].unique(), key=lambda v: (str(type(v)), v))
    # 2. The layout and a blank canvas.
    layout = grid_layout(len(row_values), len(col_values) + int(include_source), store.load_output(table.iloc[0]).size,
                         annotate=annotate, scale=scale, font_size=font_size,
                         row_labels=[_axis_label(rows, v) for v in row_values])
    canvas = Image.new("RGB", (layout.width, layout.height), "white")
    painter = _GridPainter(ImageDraw.Draw(canvas), layout, font_size, _border_colours(table, border))
    # 3. Column headers, then 4. one row at a time: its label, its source, its cells.
    painter.headers(table, cols, col_values, include_source)
    for r, row_value in enumerate(row_values):
        row_table = table[table[rows] == row_value]
        painter.row_label(r, _axis_label(rows, row_value))
        if include_source:
            canvas.paste(_scaled(store.load_source(row_table["source_hash"].iloc[0]), layout),
                         layout.cell_box(r, 0)[:2])
        for c, col_value in enumerate(col_values):
            match = row_table[row_table[cols] == col_value]
            box = layout.cell_box(r, c + int(include_source))
            if match.empty:
                painter.missing(box)
                continue
            cell = match.iloc[0]
            canvas.paste(_scaled(store.load_output(cell), layout), box[:2])
            painter.decorate(box, cell, border, annotate)
    return canvas


def _check_grid_request(store, table, rows: str, cols: str, metrics: list[str]) -> None:
    if table.empty:
        raise Img2ImgLabError(f"{store.root}: the run has no finished cells yet. Fix: run the sweep first.")
    for axis in (rows, cols):
        if axis not in table.columns:
            raise Img2ImgLabError(f"unknown grid axis {axis!r}. Fix: use one of {', '.join(AXIS_COLUMNS)}.")
    for metric in metrics:
        if metric not in table.columns:
            raise Img2ImgLabError(
                f"metric {metric!r} is not in the run's table. Fix: `img2img-lab measure {store.root} --metrics {metric}`."
            )


def _border_colours(table, border: str | None):
    """``colour(value) -> RGB`` for the border metric (red = far from the source, green = close), or ``None``."""
    if not border:
        return None
    from matplotlib import colormaps

    colormap = colormaps["RdYlGn"]
    values = table[border].astype(float)
    low, high, higher_is_better = np.nanmin(values), np.nanmax(values), _higher_is_better(border)

    def colour(value: float):
        position = 0.5 if high == low else (value - low) / (high - low)
        return tuple(int(255 * channel) for channel in colormap(position if higher_is_better else 1 - position)[:3])

    return colour


class _GridPainter:
    """Draws a grid's text and frames on its canvas (the images are pasted by :func:`comparison_grid`)."""

    def __init__(self, draw, layout, font_size: int, border_colour):
        self.draw, self.layout, self.border_colour = draw, layout, border_colour
        self.font, self.small = _font(font_size), _font(max(8, font_size - 2))
        self.text_height = font_size + 4

    def headers(self, table, cols: str, col_values, include_source: bool) -> None:
        headers = (["source"] if include_source else []) + [_axis_label(cols, v) for v in col_values]
        for index, header in enumerate(headers):
            left, _, right, _ = self.layout.cell_box(0, index)
            top = self.layout.margin
            self.draw.text((left, top), _fit_text(self.draw, header, self.font, right - left), fill="black",
                           font=self.font)
            if cols == "strength" and index >= int(include_source):
                strength = col_values[index - int(include_source)]
                steps = table[np.isclose(table["strength"], strength)]["executed_steps"]
                counts = sorted({int(value) for value in steps})  # rows of several models may run different steps
                text = f"{counts[0]} steps" if len(counts) == 1 else f"{counts[0]}-{counts[-1]} steps"
                self.draw.text((left, top + self.text_height), text, fill="dimgray", font=self.small)

    def row_label(self, r: int, text: str) -> None:
        _, top, _, bottom = self.layout.cell_box(r, 0)
        label = _fit_text(self.draw, text, self.font, self.layout.label_width)
        self.draw.text((self.layout.margin, (top + bottom) // 2 - self.text_height // 2), label, fill="black",
                       font=self.font)

    def missing(self, box) -> None:
        self.draw.rectangle(box, outline="lightgray")
        self.draw.text((box[0] + 4, box[1] + 4), "missing", fill="gray", font=self.small)

    def decorate(self, box, cell, border: str | None, annotate: list[str]) -> None:
        if self.border_colour is not None and not math.isnan(float(cell[border])):
            width = max(2, self.layout.gap // 2)
            self.draw.rectangle((box[0] - width, box[1] - width, box[2] + width - 1, box[3] + width - 1),
                                outline=self.border_colour(float(cell[border])), width=width)
        for line, metric in enumerate(annotate):
            self.draw.text((box[0], box[3] + 2 + line * self.text_height), f"{metric} {_format_value(cell[metric])}",
                           fill="black", font=self.small)


def _higher_is_better(metric: str) -> bool:
    from img2img_lab.metric_registry import METRICS, load_plugins

    load_plugins()
    return METRICS[metric].higher_is_better if metric in METRICS else True


def _scaled(image: Image.Image, layout: GridLayout) -> Image.Image:
    if layout.scale == 1:
        return image
    return image.resize((image.width * layout.scale, image.height * layout.scale), Image.Resampling.NEAREST)


def grid_layout(n_rows: int, n_cols: int, image_size: tuple[int, int], *, annotate=(), scale: int | None = None,
                font_size: int = 14, row_labels=()) -> GridLayout:
    """The geometry :func:`comparison_grid` uses for ``n_rows`` x ``n_cols`` images of ``image_size``.

    >>> grid_layout(3, 6, (64, 64)).cell_width
    192
    """
    if scale is None:
        scale = max(1, math.ceil(160 / max(image_size)))
    if scale < 1:
        raise Img2ImgLabError(f"scale must be a positive integer, got {scale}.")
    font = _font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = min(240, max([int(probe.textlength(label, font=font)) + 8 for label in row_labels] or [60]))
    text_height = font_size + 4
    return GridLayout(
        n_rows=n_rows, n_cols=n_cols, cell_width=image_size[0] * scale, cell_height=image_size[1] * scale,
        scale=scale, margin=12, gap=8, label_width=label_width, header_height=2 * text_height,
        annotation_height=len(list(annotate)) * text_height + (4 if annotate else 0),
    )


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """Save an image as PNG atomically (never a half-written file).

    >>> save_png(grid, "grid.png")
    PosixPath('grid.png')
    """
    return atomic_write(path, lambda stream: image.save(stream, format="PNG"))


def grid_figure(grid: Image.Image, *, dpi: int = 100):
    """Show a grid image in a matplotlib figure at native resolution (one image pixel per screen pixel).

    >>> figure = grid_figure(comparison_grid("runs/demo"))
    >>> figure.get_size_inches().round(2).tolist()
    [8.78, 4.6]
    """
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=(grid.width / dpi, grid.height / dpi), dpi=dpi)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.imshow(np.asarray(grid), interpolation="nearest")
    axes.axis("off")
    return figure


#: Alternative x axes for :func:`strength_curves`.
X_AXES = {"strength": "strength", "executed_steps": "executed denoising steps",
          "sqrt_alpha_bar": "signal kept at start (sqrt alpha-bar)", "sigma": "noise level at start (sigma)",
          "log_snr": "log-SNR of the start latent, any family (axis reversed: noisier to the right)"}


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
    max) or ``"none"``; bands are clipped to the values observed. The source's VAE round trip (the floor no
    output can beat) is drawn dashed when measured and ``show_floor``. ``label`` names the line when ``hue``
    is None (default: the metric).
    Infinite PSNR values (identical images) are left out of the mean.

    >>> figure = strength_curves("runs/demo", "ssim", hue="guidance_scale")
    >>> figure.axes[0].get_ylabel()
    'ssim'
    """
    import matplotlib.pyplot as plt

    store, table = _load_table(run)
    table = select_rows(table, where)
    data = curve_data(table, metric, x=x, hue=hue)
    if ax is None:
        figure, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    else:
        figure = ax.figure
    if spread not in ("sd", "range", "none"):
        raise Img2ImgLabError(f"unknown spread {spread!r}. Fix: use 'sd', 'range' or 'none'.")
    groups = data.groupby(hue) if hue else [(None, data)]
    for value, group in groups:
        line_label = _axis_label(hue, value) if hue else (label or metric)
        ax.plot(group[x], group["mean"], marker="o", label=line_label)
        if spread == "none":
            continue
        low, high = ((group["mean"] - group["std"].fillna(0), group["mean"] + group["std"].fillna(0))
                     if spread == "sd" else (group["min"], group["max"]))
        ax.fill_between(group[x], low.clip(lower=group["min"].min()), high.clip(upper=group["max"].max()), alpha=0.2)
    floor = store.read_floor_of(table)
    if show_floor and metric in floor.columns and floor[metric].notna().any():
        level = floor[metric].replace([np.inf], np.nan).mean()
        if not math.isnan(level):
            ax.axhline(level, color="gray", linestyle="--", linewidth=1, label="VAE round-trip floor")
    direction = "higher = closer to source" if _higher_is_better(metric) else "lower = closer to source"
    ax.set_xlabel(X_AXES[x])
    if x == "log_snr":
        ax.invert_xaxis()
    ax.set_ylabel(metric)
    band = {"sd": "band: ±1 sd", "range": "band: min-max", "none": "mean"}[spread]
    ax.set_title(f"{metric} vs {X_AXES[x]} ({direction}; {band})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    return figure


def difference_array(source, output, *, kind: str = "abs") -> np.ndarray:
    """Per-pixel difference map of two RGB images, HxW floats.

    ``kind="abs"``: mean over channels of ``|output - source|`` in [0, 1].
    ``kind="ssim"``: ``1 - local SSIM`` (0 = structure kept, up to 2).

    >>> black, white = np.zeros((16, 16, 3), np.uint8), np.full((16, 16, 3), 255, np.uint8)
    >>> float(difference_array(black, black).max()), float(difference_array(black, white).min())
    (0.0, 1.0)
    """
    from img2img_lab.images import metric_pair

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

    store, table = _load_table(run)
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


def side_by_side(images, labels, *, scale: int | None = None, font_size: int = 14) -> Image.Image:
    """Images in one row, each upscaled by the same integer factor (nearest) and titled by its label
    (up to two lines, separated by ``"\\n"``).

    >>> side_by_side([Image.new("RGB", (64, 64))] * 2, ["source", "output"]).height > 128
    True
    """
    images = [image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image)) for image in images]
    if not images or len(images) != len(labels):
        raise Img2ImgLabError(f"side_by_side needs one label per image, got {len(images)} images and "
                              f"{len(labels)} labels. Fix: pass matching lists.")
    layout = grid_layout(1, len(images), images[0].size, scale=scale, font_size=font_size, row_labels=[""])
    layout = GridLayout(**{**layout.__dict__, "label_width": 0, "gap": layout.gap})
    canvas = Image.new("RGB", (layout.width - layout.gap, layout.height), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font(font_size)
    for index, (image, label) in enumerate(zip(images, labels)):
        left, top, right, _ = layout.cell_box(0, index)
        left -= layout.gap
        for line_index, line in enumerate(str(label).split("\n")[:2]):
            draw.text((left, layout.margin + line_index * (font_size + 4)), _fit_text(draw, line, font, right - left),
                      fill="black", font=font)
        scaled = image.resize((image.width * layout.scale, image.height * layout.scale), Image.Resampling.NEAREST)
        canvas.paste(scaled, (left, top))
    return canvas
