"""The grid explorer: an ipywidgets app over any run folder (sweep, demo or calibration), no model needed.

* **The grid**: pick the row and column axes; every other axis that varies is pinned with a dropdown. Each cell is
  the output at display size, framed in the border metric's colour on its fixed scale
  (:mod:`img2img_lab.figures.metric_scales`: the same value is the same colour in every grid) with the chosen metrics
  printed under it in page text (readable at any zoom); ``cell px`` zooms the grid.
* **The detail**: a cell's **details** button shows the output at full size beside its source, their difference map
  with its colour bar (``zoom`` scales all three, nearest-neighbour) and the cell's table row.
* **The reference table** (a calibration's run folder): pick a guidance and a band; the grid shows that band's
  tested strengths, each column headed by its mean and 95% CI over every source, prompt and seed. The
  recommendations are buttons that open the cell they recommend.

Displayed outside a live kernel (nbconvert, a saved notebook) it renders as the static grid of the same selection.

>>> explorer = GridExplorer("runs/calibrate", annotate=["ssim"], border="ssim")
>>> explorer.band.options[0][0], explorer.grid_columns()
('1. strength 0–0.5: keeps composition', [0.0, 0.5])
>>> explorer.band.value = 1; explorer.grid_columns()
[1.0]
>>> explorer.open_cell(explorer.cell_keys()[0])["strength"]
1.0
"""

from __future__ import annotations

import html
import math

import numpy as np

from img2img_lab.errors import Img2ImgLabError, StoreError
from img2img_lab.figures.style import format_value, select_rows
from img2img_lab.widgets.grid_modes import ModeControls, read_mode_table
from img2img_lab.calibration.saved import read_saved_calibration
from img2img_lab.calibration.modes import variant_values
from img2img_lab.plan.axes import section_axes
from img2img_lab.plan.schema import AXIS_COLUMNS, COLUMNS
from img2img_lab.store.run_store import RunStore
from img2img_lab.widgets.common import png_bytes, require_ipywidgets

NO_BORDER = "(none)"


def grid_axes(table) -> list[str]:
    """The axes a grid of ``table`` can use: those that vary, and always seed and strength.

    >>> grid_axes(table)
    ['seed', 'strength']
    """
    return [axis for axis in AXIS_COLUMNS if axis in table.columns
            and (table[axis].astype(str).nunique() > 1 or axis in ("seed", "strength"))]


def measured_metrics(table) -> list[str]:
    """The metric columns with at least one measured value, in table order.

    >>> measured_metrics(table)
    ['ssim', 'psnr']
    """
    return [column for column in table.columns if column not in COLUMNS and table[column].dtype.kind in "fi"
            and table[column].notna().any()]


def fit_image(image, box_px: int):
    """``image`` sized to fit a ``box_px`` square: integer nearest-neighbour upscaling (pixels stay exact) or a
    Lanczos reduction for images larger than the box.

    >>> from PIL import Image
    >>> fit_image(Image.new("RGB", (64, 40)), 128).size, fit_image(Image.new("RGB", (512, 256)), 128).size
    ((128, 80), (128, 64))
    """
    from PIL import Image

    side = max(image.size)
    if side <= box_px:
        factor = max(1, box_px // side)
        return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    ratio = box_px / side
    size = (max(1, round(image.width * ratio)), max(1, round(image.height * ratio)))
    return image.resize(size, Image.Resampling.LANCZOS)


class GridExplorer:
    """Comparison grids of a run folder as a widget; for a calibration, its reference table drives the grid.

    Parameters
    ----------
    run : str, Path or RunStore
        A run folder; nothing is generated.
    rows, cols : str
        The grid's axes (:func:`grid_axes`); the other varying axes get a pin dropdown each.
    annotate : list of str, optional
        Metrics printed under each cell (default: the first two measured).
    border : str, optional
        The metric that colours each cell's frame on its fixed scale (default: SSIM when measured).
    where : dict, optional
        Initial pin values, ``{axis: value}``.
    cell_px : int
        Display size of a grid cell (the ``cell px`` slider changes it).

    The controls are attributes (``rows``, ``cols``, ``pins``, ``annotate``, ``border``, ``cell_px``, ``zoom``,
    ``grid``, ``header``, ``status``, ``detail_image``, ``detail_row``; with a calibration ``guidance``, ``band``,
    ``band_table``, ``recommendations``); ``ui`` is the app.
    """

    def __init__(self, run, *, rows: str = "seed", cols: str = "strength", annotate=None, border: str | None = None,
                 where: dict | None = None, cell_px: int = 128):
        widgets = require_ipywidgets()
        self.store = run if isinstance(run, RunStore) else RunStore.open(run)
        self.table = self.store.read_table()
        if self.table.empty:
            raise StoreError(f"{self.store.root}: the run has no finished cells yet. Fix: run the sweep first.")
        self.calibration = read_saved_calibration(self.store)
        self.mode_controls = None  # a mode calibration's goal and mode buttons (grid_modes.py)
        mode_table = read_mode_table(self.store)
        if mode_table is not None and self.calibration is not None:
            self.mode_controls = ModeControls(self, widgets, mode_table)
        self.axes, self.metrics = grid_axes(self.table), measured_metrics(self.table)
        for axis in (rows, cols):
            if axis not in self.axes:
                raise Img2ImgLabError(f"cannot use {axis!r} as a grid axis here. Fix: use one of "
                                      f"{', '.join(self.axes)}.")
        annotate = self.metrics[:2] if annotate is None else [annotate] if isinstance(annotate, str) else list(annotate)
        border = border or ("ssim" if "ssim" in self.metrics else None)
        for metric in annotate + ([border] if border else []):
            if metric not in self.metrics:
                raise Img2ImgLabError(f"metric {metric!r} is not measured in {self.store.root}. Fix: use one of "
                                      f"{', '.join(self.metrics) or '(none: run img2img-lab measure first)'}.")
        self.selected: dict | None = None
        self._images: dict = {}
        self._drawing = False
        self._make_controls(widgets, rows, cols, annotate, border, cell_px)
        self._make_pins(widgets, where or {})
        if self.calibration is not None:
            self._make_reference(widgets)
        self._wire_and_lay_out(widgets)
        self.draw()

    # ------------------------------------------------------------------ controls
    def _make_controls(self, widgets, rows, cols, annotate, border, cell_px) -> None:
        layout = widgets.Layout
        self.rows = widgets.Dropdown(options=self.axes, value=rows, description="rows", layout=layout(width="220px"))
        self.cols = widgets.Dropdown(options=self.axes, value=cols, description="columns",
                                     layout=layout(width="220px"))
        self.annotate = widgets.SelectMultiple(options=self.metrics, value=annotate, rows=min(6, len(self.metrics) or 1),
                                               description="annotate", layout=layout(width="240px"))
        self.border = widgets.Dropdown(options=[NO_BORDER, *self.metrics], value=border or NO_BORDER,
                                       description="border", layout=layout(width="220px"))
        self.scale_note = widgets.HTML()
        self.cell_px = widgets.IntSlider(value=cell_px, min=64, max=320, step=16, description="cell px")
        self.zoom = widgets.SelectionSlider(options=[("fit", 0)] + [(f"{n}×", n) for n in range(1, 9)], value=0,
                                            description="zoom", tooltip="screen pixels per image pixel in the detail")
        self.pin_box = widgets.HBox(layout=layout(flex_flow="row wrap"))
        self.pins: dict = {}
        self.header = widgets.HTML()
        self.status = widgets.HTML()
        self.grid = widgets.GridBox(layout=layout(grid_gap="6px", align_items="flex-start"))
        self.detail_image = widgets.Image(format="png", layout=layout(max_width="none", display="none"))  # shown
        #                                  with its first picture: an empty image draws a broken-image icon
        self.detail_row = widgets.HTML("<i>Press <b>details</b> under a cell to see it here.</i>")
        for widget, name in ((self.rows, "i2i-rows"), (self.cols, "i2i-cols"), (self.header, "i2i-grid-header"),
                             (self.grid, "i2i-grid"), (self.detail_image, "i2i-detail-image"),
                             (self.detail_row, "i2i-detail-row"), (self.status, "i2i-grid-status"),
                             (self.zoom, "i2i-zoom")):
            widget.add_class(name)

    def _make_pins(self, widgets, where: dict) -> None:
        """One dropdown per varying axis that is neither rows nor columns (kept values survive a rebuild)."""
        kept = {axis: pin.value for axis, pin in self.pins.items()}
        for pin in self.pins.values():
            pin.close()
        self.pins = {}
        for axis in self.axes:
            values = sorted(self.table[axis].unique(), key=lambda value: (str(type(value)), value))
            if axis in (self.rows.value, self.cols.value) or len(values) < 2:
                continue
            if axis == "guidance_scale" and self.calibration is not None:
                continue  # the reference table's guidance dropdown pins it
            if (axis == "mode" or axis in section_axes("inpaint")) and self.mode_controls is not None:
                continue  # the mode buttons pin it
            value = where.get(axis, kept.get(axis, self.table[axis].iloc[0]))  # the first cell's: a combination
            #                                                                     that exists (held-out pairs do not cross)
            value = min(values, key=lambda v: _distance(v, value))
            self.pins[axis] = widgets.Dropdown(options=[(format_value(v), v) for v in values], value=value,
                                               description=axis, style={"description_width": "initial"},
                                               layout=widgets.Layout(width="340px"))
            self.pins[axis].add_class("i2i-pin")
            self.pins[axis].observe(lambda change: self.draw(), names="value")
        self.pin_box.children = tuple(self.pins.values())

    def _make_reference(self, widgets) -> None:
        """The reference-table widget: guidance, band (one toggle per band), the bands table, the recommendations."""
        saved = self.calibration
        self.guidance = widgets.Dropdown(options=[(f"{value:g}", value) for value in saved.guidance_values],
                                         description="guidance", layout=widgets.Layout(width="200px"))
        self.band = widgets.ToggleButtons(options=[("", 0)], description="band", style={"button_width": "auto"})
        self.band_table = widgets.HTML()
        self.recommendation_box = widgets.HBox(layout=widgets.Layout(flex_flow="row wrap"))
        self.refresh_recommendations()
        for widget, name in ((self.guidance, "i2i-guidance"), (self.band, "i2i-band"),
                             (self.band_table, "i2i-reference-table")):
            widget.add_class(name)
        self._set_band_options()

    def refresh_recommendations(self) -> None:
        """One button per recommendation of the current calibration (opens its cell)."""
        widgets = require_ipywidgets()
        self.recommendations = []
        for key, recommendation in self.calibration.recommendations.items():
            if recommendation.get("strength") is None:
                continue
            button = widgets.Button(description=(f"{recommendation['goal']}: strength {recommendation['strength']:g} "
                                                 f"(guidance {recommendation['guidance_scale']:g})"),
                                    tooltip=recommendation.get("message", ""), layout=widgets.Layout(width="auto"))
            button.add_class("i2i-recommendation")
            button.on_click(lambda _, key=key: self.show_recommendation(key))
            self.recommendations.append(button)
        self.recommendation_box.children = tuple(self.recommendations)

    def _set_band_options(self) -> None:
        bands = self.calibration.bands(self.guidance.value)
        options = [(f"{index + 1}. strength {_strength_range(row)}: {row['verdict']}", index)
                   for index, row in bands.iterrows()]
        self._drawing = True  # one redraw for the guidance change, not one per option or pin
        try:
            self.band.options = options
            self.band.value = 0
        finally:
            self._drawing = False

    def _wire_and_lay_out(self, widgets) -> None:
        for control in (self.rows, self.cols):
            control.observe(self._on_axes_change, names="value")
        for control in (self.annotate, self.border, self.cell_px):
            control.observe(lambda change: self.draw(), names="value")
        self.zoom.observe(lambda change: self._draw_detail(), names="value")
        parts = []
        if self.calibration is not None:
            self.guidance.observe(lambda change: (self._set_band_options(), self.draw()), names="value")
            self.band.observe(lambda change: self.draw(), names="value")
            parts.append(widgets.VBox([
                widgets.HTML("<b>The strength reference table</b> — pick a guidance and a band; the grid shows the "
                             "band's strengths"), widgets.HBox([self.guidance]), self.band, self.band_table,
                widgets.HTML("<b>Recommended</b> (opens the cell):"), self.recommendation_box]))
        if self.mode_controls is not None:
            self.mode_controls.wire()
            parts.insert(0, self.mode_controls.ui)
        controls = widgets.VBox([widgets.HBox([self.rows, self.cols, self.border, self.cell_px]),
                                 widgets.HBox([self.annotate, self.scale_note]), self.pin_box])
        scroller = widgets.Box([self.grid], layout=widgets.Layout(overflow="auto", max_width="100%"))
        detail = widgets.VBox([widgets.HTML("<b>Detail</b>"), self.zoom,
                               widgets.HBox([self.detail_image, self.detail_row],
                                            layout=widgets.Layout(flex_flow="row wrap"))])
        self.ui = widgets.VBox(parts + [controls, self.header, self.status, scroller, detail])

    def _on_axes_change(self, change) -> None:
        if self.rows.value == self.cols.value:
            self.status.value = "<span style='color:#b00'>rows and columns are the same axis: pick two.</span>"
            return
        self._make_pins(require_ipywidgets(), {})
        self.draw()

    # ------------------------------------------------------------------ selection
    def selection(self) -> dict:
        """The pins as ``where`` (plus the selected band's strengths when strength is an axis of the grid)."""
        where = {axis: pin.value for axis, pin in self.pins.items()}
        if self.mode_controls is not None and "mode" not in (self.rows.value, self.cols.value):
            # a row of the mode table: its mode and inpainting options (``inpaint+composite+blur4``)
            where.update({column: value for column, value in variant_values(self.mode_controls.mode.value).items()
                          if column in self.table.columns and value is not None})
        if self.calibration is not None:
            if "guidance_scale" not in (self.rows.value, self.cols.value):
                where["guidance_scale"] = self.guidance.value
            if "strength" in (self.rows.value, self.cols.value):
                where["strength"] = self.calibration.band_strengths(self.guidance.value, self.band.value)
        return where

    def _shown(self):
        shown = select_rows(self.table, self.selection())
        if self.mode_controls is not None and "padding_mask_crop" in shown.columns and \
                variant_values(self.mode_controls.mode.value).get("padding_mask_crop", 0) is None:
            shown = shown[shown["padding_mask_crop"].isna()]  # a row without "only masked"
        return shown

    def grid_columns(self) -> list:
        """The values of the column axis the grid shows."""
        return _sorted_values(self._shown()[self.cols.value])

    def cell_keys(self) -> list[str]:
        """The cells the grid shows, row by row."""
        shown = self._shown().sort_values([self.rows.value, self.cols.value])
        return shown["cell_key"].tolist()

    # ------------------------------------------------------------------ drawing
    def draw(self) -> None:
        """Redraw the header, the grid and (for a calibration) the bands table."""
        if self._drawing or self.rows.value == self.cols.value:
            return
        from img2img_lab.widgets.grid_html import band_table_html, cell_widget, column_header, scale_note

        widgets = require_ipywidgets()
        try:
            shown = self._shown()
        except Img2ImgLabError as error:
            self.status.value = f"<span style='color:#b00'>{html.escape(str(error))}</span>"
            self.grid.children = ()
            return
        self.status.value = ""
        border = None if self.border.value == NO_BORDER else self.border.value
        self.scale_note.value = scale_note(border)
        rows, cols, size = self.rows.value, self.cols.value, int(self.cell_px.value)
        row_values, col_values = _sorted_values(shown[rows]), _sorted_values(shown[cols])
        guidance = self.guidance.value if self.calibration is not None else None
        headers = [column_header(cols, value, shown, self.calibration, guidance, self.annotate.value)
                   for value in col_values]
        children = [widgets.HTML(""), widgets.HTML("<b>source</b>")] + [widgets.HTML(text) for text in headers]
        for row_value in row_values:
            part = shown[shown[rows].astype(str) == str(row_value)]
            children.append(widgets.HTML(f"<div style='font-size:13px;overflow-wrap:anywhere'><b>{html.escape(rows)}"
                                         f"</b>: {html.escape(format_value(row_value))}</div>"))
            children.append(cell_widget(widgets, self, part.iloc[0], size, border=None, annotate=(), source=True))
            for col_value in col_values:
                match = part[part[cols].astype(str) == str(col_value)]
                children.append(widgets.HTML("<i>missing</i>") if match.empty else
                                cell_widget(widgets, self, match.iloc[0], size, border=border,
                                            annotate=list(self.annotate.value)))
        old = self.grid.children
        self.grid.layout.grid_template_columns = f"minmax(90px, 160px) repeat({len(col_values) + 1}, {size + 12}px)"
        self.grid.children = tuple(children)
        for widget in old:
            _close_tree(widget)
        pinned = ", ".join(f"{axis} = {format_value(value)}" for axis, value in self.selection().items()
                           if axis != "strength" or axis in self.pins)
        self.header.value = (f"<div class='i2i-header-text'>{len(shown)} images · rows: <b>{rows}</b> · columns: "
                             f"<b>{cols}</b> ({', '.join(format_value(v) for v in col_values)})"
                             + (f" · pinned: {html.escape(pinned)}" if pinned else "") + "</div>")
        if self.calibration is not None:
            self.band_table.value = band_table_html(self.calibration, self.guidance.value, self.band.value)

    def cell_image(self, row, size: int, *, source: bool = False) -> bytes:
        """PNG bytes of a cell's output (or its source) fitted to ``size`` px (cached)."""
        key = (row["source_hash"] if source else row["cell_key"], size, source)
        if key not in self._images:
            image = self.store.load_source(row["source_hash"]) if source else self.store.load_output(row)
            self._images[key] = png_bytes(fit_image(image, size))
        return self._images[key]

    def open_cell(self, cell_key: str) -> dict:
        """Show one cell in the detail view (output beside its source, the difference map, its row); return the row."""
        match = self.table[self.table["cell_key"] == cell_key]
        if match.empty:
            raise Img2ImgLabError(f"no cell {cell_key!r} in {self.store.root}. Fix: pick one from cell_keys().")
        self.selected = match.iloc[0].to_dict()
        self._draw_detail()
        return self.selected

    def _draw_detail(self) -> None:
        if self.selected is None:
            return
        from img2img_lab.widgets.grid_html import detail_picture, row_html

        self.detail_image.value = png_bytes(detail_picture(self.store, self.selected, zoom=int(self.zoom.value)))
        self.detail_image.layout.display = None
        self.detail_row.value = row_html(self.table, self.selected)

    def show_recommendation(self, key: str) -> dict:
        """Select a recommendation's guidance and band and open the cell it recommends (under the current pins when
        they hold it, else its first source, prompt and seed); return the cell's row."""
        recommendation = self.calibration.recommendations[key]
        guidance, strength = float(recommendation["guidance_scale"]), float(recommendation["strength"])
        self.guidance.value = guidance
        self.band.value = self.calibration.band_of(guidance, strength)
        shown = self._shown()
        match = shown[np.isclose(shown["strength"].astype(float), strength)]
        if match.empty:
            match = select_rows(self.table, {"guidance_scale": guidance, "strength": strength})
        return self.open_cell(match.sort_values(["source_name", "prompt", "seed"])["cell_key"].iloc[0])

    # ------------------------------------------------------------------ display
    def static_html(self) -> str:
        """The current selection as static HTML: the bands table (calibration) and the comparison grid as an image."""
        from img2img_lab.widgets.grid_html import band_table_html
        from img2img_lab.figures.grids import comparison_grid

        border = None if self.border.value == NO_BORDER else self.border.value
        grid = comparison_grid(self.store, rows=self.rows.value, cols=self.cols.value, annotate=list(self.annotate.value),
                               border=border, where=self.selection())
        body = band_table_html(self.calibration, self.guidance.value, self.band.value) if self.calibration else ""
        return body + self.header.value + f"<img style='max-width:100%' src='data:image/png;base64,{_b64(grid)}'>"

    def _repr_mimebundle_(self, **kwargs):
        bundle = self.ui._repr_mimebundle_(**kwargs)
        bundle["text/html"] = self.static_html()
        return bundle


def _b64(image) -> str:
    import base64

    return base64.b64encode(png_bytes(image)).decode()


def _strength_range(band) -> str:
    low, high = band["strength_min"], band["strength_max"]
    return f"{low:g}" if low == high else f"{low:g}–{high:g}"


def _sorted_values(series) -> list:
    return sorted(series.unique().tolist(), key=lambda value: (str(type(value)), value))


def _distance(value, wanted) -> float:
    if isinstance(value, (int, float)) and isinstance(wanted, (int, float)):
        return abs(float(value) - float(wanted))
    return 0.0 if str(value) == str(wanted) else math.inf


def _close_tree(widget) -> None:
    for child in getattr(widget, "children", ()):
        _close_tree(child)
    widget.close()
