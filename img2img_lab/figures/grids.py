"""Labelled comparison grids from a run folder alone (curves and difference maps: :mod:`img2img_lab.figures.curves`, re-exported
here).

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
from PIL import Image, ImageDraw

from img2img_lab.errors import Img2ImgLabError
from img2img_lab.store.run_store import atomic_write
from img2img_lab.figures.style import (axis_label, fit_text, label_font, format_value, open_run_table,  # noqa: F401
                                       wrap_text, select_rows)
from img2img_lab.figures.metric_scales import border_position, check_metric_values
from img2img_lab.figures.curves import (X_AXES, curve_data, difference_array, difference_image,  # noqa: F401 - re-exported
                               difference_map, strength_curves)
from img2img_lab.plan.schema import AXIS_COLUMNS

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
                    include_source: bool = True, display_width: int = 1000, min_text_px: int = 10,
                    title: bool = False) -> Image.Image:
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
    title : bool
        Add a title band (what every shown cell shares: model, source, prompt, guidance, steps, scheduler, seed…)
        and, with ``border``, the border's colour legend: a standalone PNG says what it shows.
    display_width, min_text_px : int
        Text is drawn large enough that a line of it (ascender to descender, the ink) stays ``min_text_px`` tall
        when the grid is shown ``display_width`` px wide (a notebook or the report scales a wide grid down; see
        :func:`readable_layout`). Labels wrap instead of being cut.

    Images of different sizes (sources of other aspect ratios) sit centred in cells as large as the largest.

    Returns the grid as a PIL image; :func:`grid_layout` gives its geometry.

    >>> grid = comparison_grid("runs/demo", rows="prompt", where={"seed": 0})
    >>> grid.size  # the source, then 3 strengths, upscaled to >= 160 px cells with their labels
    (1062, 278)
    """
    # 1. The table, checked and pinned to one value of every other varying axis.
    store, table = open_run_table(run)
    annotate = [annotate] if isinstance(annotate, str) else list(annotate)
    _check_grid_request(store, table, rows, cols, annotate + ([border] if border else []))
    table = select_rows(table, where)
    _check_unique(table, rows, cols)
    row_values = sorted(table[rows].unique(), key=lambda v: (str(type(v)), v))
    col_values = sorted(table[cols].unique(), key=lambda v: (str(type(v)), v))
    # 2. The layout and a blank canvas.
    image_size = ((int(table["width"].max()), int(table["height"].max())) if {"width", "height"} <= set(table.columns)
                  else store.load_output(table.iloc[0]).size)
    labels = [axis_label(rows, v) for v in row_values]
    font_size, layout = readable_layout(len(row_values), len(col_values) + int(include_source), image_size,
                                        annotate=annotate, scale=scale, font_size=font_size, row_labels=labels,
                                        display_width=display_width, min_text_px=min_text_px)
    canvas = Image.new("RGB", (layout.width, layout.height), "white")
    painter = _GridPainter(ImageDraw.Draw(canvas), layout, font_size, _border_colours(table, border))
    # 3. Column headers, then 4. one row at a time: its label, its source, its cells.
    painter.headers(table, cols, col_values, include_source)
    for r, row_value in enumerate(row_values):
        row_table = table[table[rows] == row_value]
        painter.row_label(r, axis_label(rows, row_value))
        if include_source:
            _paste_centred(canvas, _scaled(store.load_source(row_table["source_hash"].iloc[0]), layout),
                           layout.cell_box(r, 0))
        for c, col_value in enumerate(col_values):
            match = row_table[row_table[cols] == col_value]
            box = layout.cell_box(r, c + int(include_source))
            if match.empty:
                painter.missing(box)
                continue
            cell = match.iloc[0]
            image = _scaled(store.load_output(cell), layout)
            painter.decorate(_paste_centred(canvas, image, box), cell, border, annotate, box)
    return _with_title(canvas, grid_title(table), border, font_size) if title else canvas


#: What a grid's title names, when every shown cell shares one value.
TITLE_COLUMNS = ("model", "source_name", "prompt", "negative_prompt", "guidance_scale", "num_inference_steps",
                 "scheduler", "seed", "mode")


def grid_title(table) -> str:
    """The values every row of ``table`` shares, as a grid's title.

    >>> import pandas as pd
    >>> grid_title(pd.DataFrame({"prompt": ["a cat", "a cat"], "seed": [0, 1], "guidance_scale": [2.0, 2.0]}))
    'prompt: a cat · guidance_scale: 2'
    """
    parts = [axis_label(column, table[column].iloc[0]) for column in TITLE_COLUMNS
             if column in table.columns and table[column].astype(str).nunique() == 1 and str(table[column].iloc[0])]
    return " · ".join(parts)


def _with_title(grid: Image.Image, title: str, border: str | None, font_size: int) -> Image.Image:
    """``grid`` under a band holding ``title`` (wrapped) and the border metric's colour legend."""
    from img2img_lab.figures.metric_scales import border_scale

    font, line_height, margin = label_font(font_size), font_size + 6, max(8, font_size // 2)
    draw = ImageDraw.Draw(grid)
    lines = wrap_text(draw, title, font, grid.width - 2 * margin, max_lines=4) if title else []
    legend = None
    if border:
        bad, good = border_scale(border)
        red_side, green_side = ("<=", ">=") if good > bad else (">=", "<=")  # the bitmap font has no ≤ ≥
        legend = (f"border: {border}, red at {red_side} {format_value(float(bad))}, green at {green_side} "
                  f"{format_value(float(good))} (the same scale in every grid)")
    height = margin + line_height * (len(lines) + int(legend is not None))
    canvas = Image.new("RGB", (grid.width, grid.height + height), "white")
    canvas.paste(grid, (0, height))
    draw = ImageDraw.Draw(canvas)
    for index, line in enumerate(lines):
        draw.text((margin, margin + index * line_height), line, fill="black", font=font)
    if legend is not None:
        top, swatch = margin + len(lines) * line_height, font_size
        for offset, colour in ((0, (165, 0, 38)), (swatch + 4, (0, 104, 55))):
            draw.rectangle((margin + offset, top + 2, margin + offset + swatch, top + 2 + swatch), fill=colour,
                           outline=(60, 60, 60))
        draw.text((margin + 2 * swatch + 14, top), legend, fill="black", font=font)
    return canvas


def _check_grid_request(store, table, rows: str, cols: str, metrics: list[str]) -> None:
    if table.empty:
        raise Img2ImgLabError(f"{store.root}: the run has no finished cells yet. Fix: run the sweep first.")
    for axis in (rows, cols):
        if axis not in table.columns:
            raise Img2ImgLabError(f"unknown grid axis {axis!r}. Fix: use one of {', '.join(AXIS_COLUMNS)}.")
    for metric in metrics:
        check_metric_values(table, metric, store.root)


def _border_colours(table, border: str | None):
    """``colour(value) -> RGB`` for the border metric on its fixed scale (:mod:`img2img_lab.figures.metric_scales`: red = far
    from the source, green = close; the same value is the same colour in every grid), or ``None``."""
    if not border:
        return None
    from matplotlib import colormaps

    colormap, observed = colormaps["RdYlGn"], table[border].astype(float).to_numpy()

    def colour(value: float):
        return tuple(int(255 * channel) for channel in colormap(border_position(border, value, observed))[:3])

    return colour


class _GridPainter:
    """Draws a grid's text and frames on its canvas (the images are pasted by :func:`comparison_grid`)."""

    def __init__(self, draw, layout, font_size: int, border_colour):
        self.draw, self.layout, self.border_colour = draw, layout, border_colour
        self.font = self.small = label_font(font_size)  # one size: annotations are as readable as labels
        self.text_height = font_size + 4

    def headers(self, table, cols: str, col_values, include_source: bool) -> None:
        headers = (["source"] if include_source else []) + [axis_label(cols, v) for v in col_values]
        for index, header in enumerate(headers):
            left, _, right, _ = self.layout.cell_box(0, index)
            top = self.layout.margin
            for line, text in enumerate(wrap_text(self.draw, header, self.font, right - left, max_lines=2)):
                self.draw.text((left, top + line * self.text_height), text, fill="black", font=self.font)
            if cols == "strength" and index >= int(include_source):
                strength = col_values[index - int(include_source)]
                steps = table[np.isclose(table["strength"], strength)]["executed_steps"]
                counts = sorted({int(value) for value in steps})  # rows of several models may run different steps
                text = (f"{counts[0]} step{'' if counts[0] == 1 else 's'}" if len(counts) == 1
                        else f"{counts[0]}-{counts[-1]} steps")
                self.draw.text((left, top + 2 * self.text_height), text, fill="dimgray", font=self.small)

    def row_label(self, r: int, text: str) -> None:
        _, top, _, bottom = self.layout.cell_box(r, 0)
        lines = wrap_text(self.draw, text, self.font, self.layout.label_width - 8,
                           max_lines=max(1, (bottom - top) // self.text_height))
        first = (top + bottom) // 2 - len(lines) * self.text_height // 2
        for index, line in enumerate(lines):
            self.draw.text((self.layout.margin, first + index * self.text_height), line, fill="black", font=self.font)

    def missing(self, box) -> None:
        self.draw.rectangle(box, outline="lightgray")
        self.draw.text((box[0] + 4, box[1] + 4), "missing", fill="gray", font=self.small)

    def decorate(self, image_box, cell, border: str | None, annotate: list[str], box) -> None:
        """Frame the image (at ``image_box``) in its border colour and print the annotations under its cell ``box``."""
        box, cell_box = image_box, box
        if self.border_colour is not None and not math.isnan(float(cell[border])):
            width = max(2, self.layout.gap // 2)
            self.draw.rectangle((box[0] - width, box[1] - width, box[2] + width - 1, box[3] + width - 1),
                                outline=self.border_colour(float(cell[border])), width=width)
            for inset in (width + 1, 1):  # dark hairlines outside and inside: a pale frame shows on any image
                self.draw.rectangle((box[0] - inset, box[1] - inset, box[2] + inset - 1, box[3] + inset - 1),
                                    outline=(60, 60, 60), width=1)
        for line, metric in enumerate(annotate):
            self.draw.text((cell_box[0], cell_box[3] + 2 + line * self.text_height),
                           f"{metric} {format_value(cell[metric])}", fill="black", font=self.small)


def _paste_centred(canvas: Image.Image, image: Image.Image, box) -> tuple[int, int, int, int]:
    """Paste ``image`` centred in the cell ``box``; return where it went."""
    left = box[0] + (box[2] - box[0] - image.width) // 2
    top = box[1] + (box[3] - box[1] - image.height) // 2
    canvas.paste(image, (left, top))
    return left, top, left + image.width, top + image.height


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
    font = label_font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = min(17 * font_size, max([int(probe.textlength(label, font=font)) + 8 for label in row_labels] or [60]))
    text_height = font_size + 4
    return GridLayout(
        n_rows=n_rows, n_cols=n_cols, cell_width=image_size[0] * scale, cell_height=image_size[1] * scale,
        scale=scale, margin=12, gap=8, label_width=label_width, header_height=3 * text_height,
        annotation_height=len(list(annotate)) * text_height + (4 if annotate else 0),
    )


def readable_layout(n_rows: int, n_cols: int, image_size, *, annotate, scale, font_size: int, row_labels,
                    display_width: int, min_text_px: int) -> tuple[int, GridLayout]:
    """The smallest font size from ``font_size`` up whose text line (the ink of "Hgy": ascender to descender) is at
    least ``min_text_px`` tall once the grid is scaled to ``display_width`` px, with the layout it needs (a larger
    font widens the labels, hence the search).

    >>> size, layout = readable_layout(1, 11, (64, 64), annotate=["ssim"], scale=None, font_size=14,
    ...                                row_labels=["seed: 0"], display_width=1000, min_text_px=10)
    >>> ink = label_font(size).getbbox("Hgy")
    >>> (ink[3] - ink[1]) * 1000 / layout.width >= 10
    True
    """
    while True:
        layout = grid_layout(n_rows, n_cols, image_size, annotate=annotate, scale=scale, font_size=font_size,
                             row_labels=row_labels)
        ink = label_font(font_size).getbbox("Hgy")
        if (ink[3] - ink[1]) * min(1.0, display_width / layout.width) >= min_text_px or font_size >= 200:
            return font_size, layout
        font_size += 1


def difference_panel(source: Image.Image, output: Image.Image, labels, *, scale: int | None = None) -> Image.Image:
    """The source, the output and their difference map side by side (:func:`side_by_side`), the difference map's
    colour bar under it: a difference view always says what its colours mean.

    >>> from PIL import Image
    >>> panel = difference_panel(Image.new("RGB", (64, 64)), Image.new("RGB", (64, 64), "white"), ["a", "b", "|b - a|"])
    >>> panel.height > side_by_side([Image.new("RGB", (64, 64))] * 3, ["a", "b", "c"]).height
    True
    """
    from img2img_lab.figures.curves import difference_colour_bar

    scale = scale or max(1, math.ceil(160 / max(output.size)))
    pictures = side_by_side([source, output, difference_image(source, output)], labels, scale=scale)
    width = output.width * scale
    bar = difference_colour_bar(max(width, 220))
    canvas = Image.new("RGB", (max(pictures.width, pictures.width - 12 - width + bar.width + 12),
                               pictures.height + bar.height + 4), "white")
    canvas.paste(pictures, (0, 0))
    canvas.paste(bar, (pictures.width - 12 - width, pictures.height + 2))
    return canvas


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
    [8.78, 4.78]
    """
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=(grid.width / dpi, grid.height / dpi), dpi=dpi)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.imshow(np.asarray(grid), interpolation="nearest")
    axes.axis("off")
    return figure


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
    font = label_font(font_size)
    for index, (image, label) in enumerate(zip(images, labels)):
        left, top, right, _ = layout.cell_box(0, index)
        left -= layout.gap
        for line_index, line in enumerate(str(label).split("\n")[:2]):
            draw.text((left, layout.margin + line_index * (font_size + 4)), fit_text(draw, line, font, right - left),
                      fill="black", font=font)
        scaled = image.resize((image.width * layout.scale, image.height * layout.scale), Image.Resampling.NEAREST)
        canvas.paste(scaled, (left, top))
    return canvas
