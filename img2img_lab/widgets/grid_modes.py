"""The mode controls of the grid explorer: a mode calibration's goals and modes side by side (issue #31).

A run folder calibrated with several modes (:mod:`img2img_lab.calibration.modes`) holds ``calibration/modes.csv`` and one
saved calibration per mode (``calibration/<mode>/``). :class:`ModeControls` adds to a
:class:`~img2img_lab.widgets.grid_explorer.GridExplorer`: **goal** buttons (keep / follow / both), **mode** buttons, and the
mode table of the chosen goal (each mode's recommended strength, value with CI, whether it holds, the best mode).
Picking a goal switches to that goal's best mode and opens its recommended cell; picking a mode switches the reference
table, the bands and the grid to that mode.
"""

from __future__ import annotations

import html

from img2img_lab.calibration.saved import read_saved_calibration
from img2img_lab.plan.schema import is_missing

GOAL_LABELS = {"keep": "keep the subject", "follow": "follow the prompt", "both": "both at once"}


def read_mode_table(store):
    """``calibration/modes.csv`` as a DataFrame, or ``None`` when the folder holds no mode calibration."""
    import pandas as pd

    path = store.calibration_dir(None) / "modes.csv"
    return pd.read_csv(path) if path.is_file() else None


class ModeControls:
    """Goal and mode buttons and the mode table of one explorer (``explorer.calibration`` follows the mode)."""

    def __init__(self, explorer, widgets, table):
        self.explorer, self.table = explorer, table
        self.calibrations = {mode: read_saved_calibration(explorer.store, subfolder=mode)
                             for mode in dict.fromkeys(table["mode"])}
        goals = [goal for goal in GOAL_LABELS if goal in set(table["goal"])]
        self.goal = widgets.ToggleButtons(options=[(GOAL_LABELS[goal], goal) for goal in goals], value=goals[0],
                                          description="goal", style={"button_width": "auto"})
        self.mode = widgets.ToggleButtons(options=list(self.calibrations), description="mode",
                                          style={"button_width": "auto"})
        self.mode_table = widgets.HTML()
        for widget, name in ((self.goal, "i2i-goal"), (self.mode, "i2i-mode"), (self.mode_table, "i2i-mode-table")):
            widget.add_class(name)
        explorer.calibration = self.calibrations[self.mode.value]

    def wire(self) -> None:
        self.goal.observe(lambda change: self.pick_goal(change["new"]), names="value")
        self.mode.observe(lambda change: self.switch_mode(change["new"]), names="value")
        self.render_table()

    @property
    def ui(self):
        from img2img_lab.widgets.common import require_ipywidgets

        widgets = require_ipywidgets()
        return widgets.VBox([widgets.HTML("<b>Which mode?</b> — pick a goal: each mode's best strength; the grid shows "
                                          "the best mode's"), self.goal, self.mode_table, self.mode])

    def render_table(self) -> None:
        """The chosen goal's row per mode: recommended strength, value [CI], holds, best."""
        part = self.table[self.table["goal"] == self.goal.value]
        rows = "".join(
            f"<tr style='{'font-weight:bold' if row['best'] else ''}'><td>{html.escape(str(row['mode']))}</td>"
            f"<td>{_number(row['strength'])}</td><td>{_number(row['value'], 2)}{_ci(row)}</td>"
            f"<td>{'yes' if row['holds'] else 'no'}</td><td>{'best' if row['best'] else ''}</td></tr>"
            for row in part.to_dict("records"))
        self.mode_table.value = ("<table style='border-collapse:collapse'><tr><th>mode</th><th>strength</th>"
                                 f"<th>value [95% CI]</th><th>holds</th><th></th></tr>{rows}</table>")

    def pick_goal(self, goal: str) -> None:
        """Show the goal's table, switch to its best mode (else the first) and open that mode's recommended cell."""
        self.render_table()
        part = self.table[self.table["goal"] == goal]
        best = part[part["best"]]
        mode = (best if len(best) else part).iloc[0]["mode"]
        if self.mode.value != mode:
            self.mode.value = mode  # switch_mode runs
        else:
            self.switch_mode(mode)

    def switch_mode(self, mode: str) -> None:
        """Point the reference table, bands, recommendation buttons and grid at ``mode``'s calibration."""
        explorer = self.explorer
        explorer.calibration = self.calibrations[mode]
        explorer._drawing = True
        try:
            values = explorer.calibration.guidance_values
            explorer.guidance.options = [(f"{value:g}", value) for value in values]
            explorer.guidance.value = values[0]
        finally:
            explorer._drawing = False
        explorer._set_band_options()
        explorer.refresh_recommendations()
        key = self.goal.value
        recommendation = explorer.calibration.recommendations.get(key) or {}
        if recommendation.get("strength") is not None:
            explorer.show_recommendation(key)
        explorer.draw()


def _number(value, digits: int | None = None) -> str:
    if is_missing(value):
        return "–"
    return f"{value:.{digits}f}" if digits is not None else f"{value:g}"


def _ci(row) -> str:
    low, high = row.get("ci_low"), row.get("ci_high")
    if is_missing(low):
        return ""
    return f" [{low:.2f}, {high:.2f}]"
