"""The pieces :class:`img2img_lab.widgets.grid_explorer.GridExplorer` draws: a cell (image, frame, metrics, details button), a
column header (with the calibration's mean and CI), the border scale in words, the bands table, the detail picture
and a cell's row.

>>> scale_note("ssim")
"<span class='i2i-scale'>border: <b style='color:#a50026'>red</b> at ssim ≤ 0.3 → <b style='color:#006837'>green</b> at ≥ 0.9 (a fixed scale: the same value is the same colour in every grid)</span>"
"""

from __future__ import annotations

import html

import numpy as np
from PIL import Image

from img2img_lab.figures.style import format_value
from img2img_lab.figures.metric_scales import border_position, border_scale, direction_text

#: Ends of the border colour map (matplotlib's RdYlGn), as CSS.
RED, GREEN = "#a50026", "#006837"


def border_css(metric: str, value: float) -> str:
    """The CSS colour of a value on the metric's fixed border scale (as :func:`img2img_lab.figures.grids.comparison_grid`).

    >>> border_css("ssim", 0.175), border_css("ssim", 0.95)
    ('rgb(165,0,38)', 'rgb(0,104,55)')
    """
    from matplotlib import colormaps

    red, green, blue = (int(255 * channel) for channel in colormaps["RdYlGn"](border_position(metric, value))[:3])
    return f"rgb({red},{green},{blue})"


def scale_note(metric: str | None) -> str:
    """The border metric's fixed scale in words (empty without a border metric)."""
    if not metric:
        return "<span class='i2i-scale'>no border metric</span>"
    bad, good = border_scale(metric)
    red_side, green_side = ("≤", "≥") if good > bad else ("≥", "≤")
    return (f"<span class='i2i-scale'>border: <b style='color:{RED}'>red</b> at {metric} {red_side} "
            f"{format_value(float(bad))} → <b style='color:{GREEN}'>green</b> at {green_side} "
            f"{format_value(float(good))} (a fixed scale: the same value is the same colour in every grid)</span>")


def cell_widget(widgets, explorer, row, size: int, *, border: str | None, annotate, source: bool = False):
    """One grid cell: the image centred in a ``size`` px box, framed by ``border``'s colour, the ``annotate`` metrics
    under it and a **details** button that opens the cell in the explorer's detail view."""
    layout = widgets.Layout
    value = None if source or not border else float(row[border])
    frame = "4px solid transparent" if value is None or np.isnan(value) else f"4px solid {border_css(border, value)}"
    image = widgets.Image(value=explorer.cell_image(row, size, source=source), format="png",
                          layout=layout(border=frame, object_fit="contain"))
    image.add_class("i2i-cell-image")
    box = widgets.Box([image], layout=layout(width=f"{size + 8}px", height=f"{size + 8}px", align_items="center",
                                             justify_content="center"))
    if source:
        return box
    lines = "<br>".join(f"{html.escape(metric)} <b>{format_value(row[metric])}</b>" for metric in annotate)
    text = widgets.HTML(f"<div style='font-size:13px;line-height:1.3'>{lines}</div>")
    button = widgets.Button(description="details", icon="search", layout=layout(width=f"{min(size, 110)}px"),
                            tooltip=f"seed {row['seed']} · strength {row['strength']:g}: open beside its source")
    button.add_class("i2i-cell")
    button.on_click(lambda _, key=row["cell_key"]: explorer.open_cell(key))
    return widgets.VBox([box, text, button])


def column_header(axis: str, value, shown, calibration, guidance: float | None, metrics=()) -> str:
    """A column's header: the value; for strength its executed steps and, in a calibration, the mean with its 95% CI
    over every source, prompt and seed of each of ``metrics`` that was calibrated (default: the first three)."""
    lines = [f"<b>{html.escape(axis)} {html.escape(format_value(value))}</b>"]
    if axis == "strength":
        steps = sorted({int(step) for step in shown.loc[np.isclose(shown["strength"], value), "executed_steps"]})
        lines.append(f"{steps[0]} step{'s' * (steps[0] != 1)}" if len(steps) == 1 else f"{steps[0]}–{steps[-1]} steps")
        if calibration is not None and guidance is not None:
            statistics = calibration.strength_statistics(guidance, value)
            chosen = [metric for metric in metrics if metric in statistics] or list(statistics)[:3]
            for metric in chosen:
                mean, low, high = statistics[metric]
                lines.append(f"{html.escape(metric)} {format_value(mean)} <span style='color:#666;font-size:11px'>"
                             f"CI {format_value(low)}–{format_value(high)}</span>")
    return ("<div class='i2i-column-header' style='font-size:13px;line-height:1.3' title='means and 95% CIs over "
            "every source, prompt and seed of the calibration'>" + "<br>".join(lines) + "</div>")


def band_table_html(calibration, guidance: float, selected: int) -> str:
    """The reference table's bands at one guidance, compact (each metric's range of means, its CI below in small
    type), the selected band highlighted."""
    bands = calibration.bands(guidance)
    head = "".join(f"<th>{html.escape(name)}</th>" for name in ("band", "strengths", "steps", "verdict", "goal",
                                                                 *calibration.metrics))
    rows = []
    for index, band in bands.iterrows():
        style = " style='background:#fff1b8'" if index == selected else ""
        cells = [f"{index + 1}", _range(band["strength_min"], band["strength_max"]),
                 _range(band["executed_steps_min"], band["executed_steps_max"]), band["verdict"], band["goal"]]
        parts = [f"<td>{html.escape(str(cell))}</td>" for cell in cells[:3]]
        parts += [f"<td class='i2i-text' title='{html.escape(str(cell), quote=True)}'>{html.escape(str(cell))}</td>"
                  for cell in cells[3:]]  # verdict and goal: one line, the whole text on hover
        for metric in calibration.metrics:
            parts.append(f"<td style='white-space:nowrap'>{_range(band[f'{metric}_min'], band[f'{metric}_max'])}"
                         f"<div style='font-size:10px;color:#666'>CI {_range(band[f'{metric}_ci_low'], band[f'{metric}_ci_high'])}"
                         f"</div></td>")
        rows.append(f"<tr class='i2i-band-row'{style}>{''.join(parts)}</tr>")
    return (f"<style>.i2i-bands td, .i2i-bands th {{padding: 2px 8px; text-align: left}}"
            f".i2i-bands .i2i-text {{white-space: nowrap; max-width: 14em; overflow: hidden; text-overflow: ellipsis}}"
            f".i2i-bands td:first-child, .i2i-bands th:first-child {{position: sticky; left: 0; background: inherit}}"
            f"</style><div class='i2i-scroll' style='overflow-x:auto;max-width:100%'>"
            f"<table class='i2i-bands' style='border-collapse:collapse;font-size:12px;background:white'><tr>{head}</tr>"
            + "".join(rows) + "</table></div>")


def detail_picture(store, row: dict, *, zoom: int = 0) -> Image.Image:
    """The source, the output and their difference map side by side (``zoom`` screen px per pixel; 0 fits 256 px),
    with the difference map's colour bar under it."""
    from img2img_lab.figures.grids import difference_panel

    source, output = store.load_source(row["source_hash"]), store.load_output(row)
    title = f"strength {row['strength']:g}, seed {row['seed']}\n{row['executed_steps']} of {row['num_inference_steps']} steps"
    return difference_panel(source, output, ["source", title, "difference"],
                            scale=zoom or max(1, 256 // max(output.size)))


def row_html(table, row: dict) -> str:
    """A cell's table row, one field per line: varying parameters and metrics first, hashes last."""
    from img2img_lab.figures.report import readable_table

    columns = readable_table(table, max_rows=1)[0].columns
    lines = "".join(f"<tr><th>{html.escape(column)}</th><td>{html.escape(format_value(row.get(column)))}</td></tr>"
                    for column in columns if column in row)
    directions = "".join(f"<li>{html.escape(metric)}: {html.escape(direction_text(metric))}</li>"
                         for metric in _metric_columns(table) if metric in row)
    return (f"<div class='i2i-detail-text' style='max-height:420px;overflow:auto;font-size:12px'>"
            f"<table class='i2i-row'>{lines}</table><ul style='margin:4px 0'>{directions}</ul></div>")


def _metric_columns(table) -> list[str]:
    from img2img_lab.plan.schema import COLUMNS

    return [column for column in table.columns if column not in COLUMNS]


def _range(low, high) -> str:
    low, high = format_value(low), format_value(high)
    return low if low == high else f"{low}–{high}"
