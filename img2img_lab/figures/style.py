"""What every figure of a run folder shares: fonts, value and axis labels, text that fits or wraps, and the table
pinned to the rows a figure shows (used by :mod:`img2img_lab.figures.grids` and :mod:`img2img_lab.figures.curves`).

>>> format_value(0.81234), axis_label("strength", 0.5)
('0.812', 'strength: 0.5')
"""

from __future__ import annotations

import base64
import html
import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from img2img_lab.errors import Img2ImgLabError
from img2img_lab.store.run_store import RunStore


def label_font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def format_value(value) -> str:
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


def axis_label(axis: str, value) -> str:
    return f"{axis}: {format_value(value)}"


def wrap_text(draw: ImageDraw.ImageDraw, text: str, font, width: int, *, max_lines: int = 3) -> list[str]:
    """``text`` broken into lines that fit ``width`` (at spaces; a word longer than the width is cut with "…"), at
    most ``max_lines`` (the last one ends in "…" when text is left over).

    >>> wrap_text(ImageDraw.Draw(Image.new("RGB", (1, 1))), "prompt: a white square on a green background", label_font(14), 150)
    ['prompt: a white square', 'on a green background']
    """
    lines: list[str] = []
    for word in str(text).split(" "):
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and draw.textlength(candidate, font=font) <= width:
            lines[-1] = candidate
        else:
            lines.append(fit_text(draw, word, font, width))
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + [fit_text(draw, " ".join(lines[max_lines - 1:]), font, width)]
    return lines


def fit_text(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def open_run_table(run):
    store = run if isinstance(run, RunStore) else RunStore.open(run)
    return store, store.read_table()


def select_rows(table, where: dict | None):
    """Filter a results table by ``{column: value}`` (floats compared with a tolerance); a list or tuple of values
    keeps the rows that match any of them.

    >>> select_rows(table, {"strength": [0.0, 1.0], "seed": 0})["strength"].tolist()
    [0.0, 1.0]
    """
    if not where:
        return table
    for column, value in where.items():
        if column not in table.columns:
            raise Img2ImgLabError(f"cannot filter on {column!r}: no such column. Fix: use one of {', '.join(table.columns)}.")
        series, values = table[column], list(value) if isinstance(value, (list, tuple)) else [value]
        if series.dtype.kind in "fi":
            try:
                numbers = [float(item) for item in values]
            except (TypeError, ValueError):
                raise Img2ImgLabError(f"filter {column}={value!r}: {column} is numeric. Fix: give a number.") from None
            keep = np.isclose(series.astype(float).to_numpy()[:, None], np.asarray(numbers)[None, :]).any(axis=1)
            table = table[keep]
        else:
            table = table[series.astype(str).isin([str(item) for item in values])]
    if table.empty:
        raise Img2ImgLabError(f"no cells match {where}. Fix: check the values (see results.parquet).")
    return table


def png_tag(image_or_figure, *, css_class: str = "", alt: str = "") -> str:
    """An ``<img>`` holding a PIL image or a matplotlib figure (closed after) as an inline PNG.

    >>> png_tag(Image.new("RGB", (2, 2)), alt="x")[:40]
    "<img class='' alt='x' src='data:image/pn"
    """
    stream = io.BytesIO()
    if hasattr(image_or_figure, "savefig"):
        import matplotlib.pyplot as plt

        image_or_figure.savefig(stream, format="png")
        plt.close(image_or_figure)
    else:
        image_or_figure.save(stream, format="PNG")
    data = base64.b64encode(stream.getvalue()).decode()
    return f"<img class='{css_class}' alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


#: Text columns that hold a sentence: one line in a table, the whole text on hover.
LONG_TEXT_COLUMNS = ("goal", "message", "prompt", "negative_prompt", "target", "verdict", "image", "path")


def scroll_box(markup: str) -> str:
    """``markup`` in a box of its own that scrolls sideways when it is wider than the page (a notebook's output area
    or the report never does).

    >>> scroll_box("<table></table>")
    "<div class='i2i-scroll' style='overflow-x:auto;max-width:100%'><table></table></div>"
    """
    return f"<div class='i2i-scroll' style='overflow-x:auto;max-width:100%'>{markup}</div>"


def table_html(frame, *, float_format: str = "{:.4g}", long_text=LONG_TEXT_COLUMNS, max_text_em: int = 22) -> str:
    """A DataFrame as an HTML table in a :func:`scroll_box`: numbers formatted, long text columns on one line cut at
    ``max_text_em`` (the whole text on hover), the first column kept in view while the table scrolls.

    >>> import pandas as pd
    >>> markup = table_html(pd.DataFrame({"strength": [0.5], "goal": ["keep the subject (retouch, light restyle)"]}))
    >>> "title='keep the subject (retouch, light restyle)'" in markup, "overflow-x:auto" in markup
    (True, True)
    """
    import html

    import numpy as np

    sticky = "position:sticky;left:0;background:white;"

    def cell(column, value, first: bool) -> str:
        if isinstance(value, (float, np.floating)):
            text = "" if np.isnan(value) else float_format.format(value)
        else:
            text = str(value)
        style = (sticky if first else "") + "white-space:nowrap"
        if column in long_text:
            style += f";max-width:{max_text_em}em;overflow:hidden;text-overflow:ellipsis"
            return f"<td title='{html.escape(text, quote=True)}' style='{style}'>{html.escape(text)}</td>"
        return f"<td style='{style}'>{html.escape(text)}</td>"

    head = "".join(f"<th style='{sticky if index == 0 else ''}text-align:left'>{html.escape(str(column))}</th>"
                   for index, column in enumerate(frame.columns))
    rows = "".join("<tr>" + "".join(cell(column, value, index == 0)
                                    for index, (column, value) in enumerate(zip(frame.columns, row))) + "</tr>"
                   for row in frame.itertuples(index=False))
    return scroll_box(f"<table class='i2i-table' style='border-collapse:collapse;font-size:12px'><thead><tr>{head}"
                      f"</tr></thead><tbody>{rows}</tbody></table>")


class TableView:
    """A DataFrame shown as :func:`table_html` in Jupyter (it scrolls in its own box; long text on hover);
    ``.frame`` is the DataFrame.

    >>> import pandas as pd
    >>> TableView(pd.DataFrame({"a": [1]})).frame.shape
    (1, 1)
    """

    def __init__(self, frame, **options):
        self.frame, self.options = frame, options

    def _repr_html_(self) -> str:
        return table_html(self.frame, **self.options)

    def __repr__(self) -> str:
        return repr(self.frame)


def table_view(frame, **options) -> TableView:
    """Show a DataFrame in a notebook without spilling off the page: ``table_view(result.summary)``.

    >>> import pandas as pd
    >>> "i2i-scroll" in table_view(pd.DataFrame({"a": [1]}))._repr_html_()
    True
    """
    return TableView(frame, **options)
