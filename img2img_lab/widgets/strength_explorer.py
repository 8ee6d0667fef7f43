"""The strength explorer: an ipywidgets app over one model, cached in a run folder.

Pick a bundled source or upload one, edit the prompt and negative prompt, move the strength slider
(its readout shows how many denoising steps that strength executes and how much noise it starts
from), set seed, guidance, steps and scheduler, and press **Generate**. Every image is a cell of an
ordinary run folder (:mod:`img2img_lab.store.run_store`), measured as it is made, so

* returning to a setting is instant (it is looked up, not generated again), also after a restart;
* the views show the source and the output side by side, their difference map, or the grid of all
  seeds x strengths generated so far for the current setting, with metrics;
* a curve plots the chosen metric against strength for the current setting, one point per image;
* the table lists every image generated so far.

Generation runs in the kernel: while it runs, the Generate button is disabled, a progress bar counts
the denoising steps and the status line says what is happening; errors appear in the status line.

>>> from img2img_lab.widgets.strength_explorer import StrengthExplorer
>>> explorer = StrengthExplorer(pipe, run_dir="runs/explorer")  # no pipe: loads the embedded model
>>> explorer  # in JupyterLab this displays the app  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import html
import time
import warnings
from pathlib import Path

from img2img_lab.errors import Img2ImgLabError, ImageError, PlanError, StoreError
from img2img_lab.figures.style import table_html
from img2img_lab.plan.sweep_plan import SweepPlan
from img2img_lab.resources import bundled_sources  # noqa: F401 - re-exported
from img2img_lab.plan.schema import SETTING_COLUMNS, row_identity
from img2img_lab.plan.schema import is_missing
from img2img_lab.widgets.common import (default_metrics, figure_png, png_bytes, require_ipywidgets,  # noqa: F401
                                        snapshot_html, strength_readout)

VIEWS = ("side by side", "difference", "grid")
#: Axes that, with the source, define a "setting family": all seeds x strengths of one configuration.
TABLE_COLUMNS = ("source_name", "prompt", "negative_prompt", "strength", "executed_steps", "seed", "guidance_scale",
                 "num_inference_steps", "scheduler")


class StrengthExplorer:
    """An interactive strength explorer for one pipeline; every image is cached in ``run_dir``.

    Parameters
    ----------
    pipe : diffusers img2img pipeline or model handle, optional
        Default: :func:`img2img_lab.models.loading.load_pipeline` of ``model``.
    model : str, optional
        Hub id or folder when ``pipe`` is not given; ``None`` is the embedded model.
    run_dir : str or Path
        The run folder that caches every generated image and its metrics.
    sources : dict of {name: path}, optional
        Sources offered in the dropdown (default: :func:`bundled_sources`); uploads are added to it.
    source : str, optional
        The name of the source selected first (default: ``red_circle_on_blue`` when offered).
    metrics : list of str, optional
        Metrics measured for every image (default: :func:`~img2img_lab.widgets.common.default_metrics`).
    prompt, negative_prompt, strength, seed, guidance_scale, steps, scheduler
        Initial settings; ``guidance_scale=None`` takes the model's recommended guidance.
    max_side, resize_policy
        How sources are sized for the model, as in :class:`img2img_lab.plan.sweep_plan.SweepPlan`.

    The controls are attributes (``source``, ``upload``, ``prompt``, ``negative_prompt``, ``strength``,
    ``steps_label``, ``seed``, ``guidance_scale``, ``steps``, ``scheduler``, ``generate_button``,
    ``progress``, ``status``, ``view``, ``image``, ``curve_metric``, ``curve``, ``table``); ``ui`` is the app.

    >>> explorer = StrengthExplorer(pipe, prompt="a yellow star on a black background", metrics=["ssim"])
    >>> explorer.strength.value = 0.6; row = explorer.generate()
    >>> row["executed_steps"], round(row["ssim"], 2)  # 20 steps x 0.6
    (12, 0.56)
    """

    def __init__(self, pipe=None, *, model: str | None = None, run_dir: str | Path = "runs/explorer",
                 sources: dict[str, str] | None = None, source: str | None = None, metrics=None, prompt: str = "", negative_prompt: str = "",
                 strength: float = 0.5, seed: int = 0, guidance_scale: float | None = None, steps: int = 20,
                 scheduler: str = "default", max_side="native", resize_policy: str = "crop"):
        widgets = require_ipywidgets()
        from img2img_lab.metrics.registry import check_metric_names
        from img2img_lab.models.handle import as_model
        from img2img_lab.models.loading import load_model

        self.model = as_model(pipe) if pipe is not None else load_model(model)  # the loaded model's handle
        self.run_dir = Path(run_dir)
        self.metrics = check_metric_names(default_metrics(self.model) if metrics is None else metrics)
        self.max_side = max_side
        self.resize_policy = resize_policy
        sources = dict(bundled_sources() if sources is None else sources)
        if not sources:
            raise ImageError("the explorer has no source images. Fix: pass sources={'name': 'path.png'}.")
        self._sources: dict[str, tuple] = {}  # path -> (prepared image, content hash)
        self._memo: dict[tuple, dict] = {}
        self.current: dict | None = None
        self.last_seconds: float | None = None
        self.generated = 0
        self.advisories: list[str] = []  # the last generation's one-line warnings (advisories.py)
        self._load_existing()

        if source is not None and source not in sources:
            raise ImageError(f"unknown source {source!r}. Fix: use one of {', '.join(sources)}.")
        first = source or ("red_circle_on_blue" if "red_circle_on_blue" in sources else next(iter(sources)))
        self._make_controls(widgets, sources, first, prompt=prompt, negative_prompt=negative_prompt,
                            strength=strength, seed=seed, guidance_scale=guidance_scale, steps=steps,
                            scheduler=scheduler)
        self._wire_and_lay_out(widgets)

    def _make_controls(self, widgets, sources: dict, first: str, *, prompt: str, negative_prompt: str,
                       strength: float, seed: int, guidance_scale: float | None, steps: int, scheduler: str) -> None:
        """The explorer's controls and outputs (each output with a CSS class the browser test finds)."""
        from img2img_lab.schedulers import scheduler_names

        layout = widgets.Layout
        self.source = widgets.Dropdown(options=list(sources.items()), value=sources[first], description="source",
                                       layout=layout(width="320px"))
        self.upload = widgets.FileUpload(accept="image/*", multiple=False, description="upload source")
        self.prompt = widgets.Text(value=prompt, description="prompt", placeholder="what the output should show",
                                   layout=layout(width="440px"))
        self.negative_prompt = widgets.Text(value=negative_prompt, description="negative",
                                            placeholder="(none)", layout=layout(width="440px"))
        self.strength = widgets.FloatSlider(value=strength, min=0.0, max=1.0, step=0.01, description="strength",
                                            continuous_update=True, readout_format=".2f",
                                            layout=layout(width="440px"))
        self.steps_label = widgets.HTML()
        self.seed = widgets.BoundedIntText(value=seed, min=0, max=2**63 - 1, description="seed",
                                           style={"description_width": "initial"}, layout=layout(width="150px"))
        self.guidance_scale = widgets.BoundedFloatText(
            value=self.model.recommended_guidance() if guidance_scale is None else guidance_scale, min=0.0, max=50.0,
            step=0.5, description="guidance", style={"description_width": "initial"}, layout=layout(width="150px"))
        self.steps = widgets.BoundedIntText(value=steps, min=1, max=1000, description="steps",
                                            style={"description_width": "initial"}, layout=layout(width="140px"))
        self.scheduler = widgets.Dropdown(options=scheduler_names(), value=scheduler, description="scheduler",
                                          layout=layout(width="260px"))
        self.generate_button = widgets.Button(description="Generate", button_style="primary", icon="play",
                                              tooltip="generate (or recall) the image for these settings")
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="progress",
                                            layout=layout(width="320px"))
        self.status = widgets.HTML(value="Set the controls and press <b>Generate</b>.")
        self.view = widgets.ToggleButtons(options=list(VIEWS), value=VIEWS[0], description="view",
                                          style={"button_width": "auto"})
        self.image = widgets.Image(format="png", layout=layout(max_width="100%", display="none"))  # shown with a
        #                                                         picture: an empty image draws a broken-image icon
        self.image_caption = widgets.HTML("<i>no image yet: press <b>Generate</b></i>")
        self.curve_metric = widgets.Dropdown(options=self.metrics, value=self.metrics[0], description="curve",
                                             layout=layout(width="260px"))
        self.curve = widgets.Image(format="png", layout=layout(max_width="640px", display="none"))
        self.table = widgets.HTML()
        for widget, name in ((self.strength, "i2i-strength"), (self.steps_label, "i2i-steps-label"),
                             (self.generate_button, "i2i-generate"), (self.status, "i2i-status"),
                             (self.image, "i2i-image"), (self.curve, "i2i-curve"), (self.table, "i2i-table"),
                             (self.progress, "i2i-progress"), (self.image_caption, "i2i-image-caption")):
            widget.add_class(name)

    def _wire_and_lay_out(self, widgets) -> None:
        """Connect the controls to their handlers and arrange everything in :attr:`ui`."""
        for control in (self.strength, self.steps, self.scheduler, self.source):
            control.observe(self._on_schedule_change, names="value")
        self.view.observe(self._on_view_change, names="value")
        self.curve_metric.observe(lambda change: self._draw_curve(), names="value")
        self.upload.observe(self._on_upload, names="value")
        self.generate_button.on_click(self._on_generate_click)
        self._on_schedule_change()

        controls = widgets.VBox([
            widgets.HBox([self.source, self.upload]), self.prompt, self.negative_prompt, self.strength,
            self.steps_label, widgets.HBox([self.seed, self.guidance_scale, self.steps]), self.scheduler,
            widgets.HBox([self.generate_button, self.progress]), self.status,
        ])
        picture = widgets.VBox([self.view, self.image_caption, self.image], layout=widgets.Layout(min_width="320px",
                                                                                                 flex="1 1 360px"))
        controls.layout = widgets.Layout(flex="0 0 auto", width="460px")
        # controls and the picture side by side (the picture wraps below on a narrow page)
        self.ui = widgets.VBox([widgets.HBox([controls, picture], layout=widgets.Layout(flex_flow="row wrap")),
                                self.curve_metric, self.curve, widgets.HTML("<b>Generated so far</b>"), self.table])
        if self._memo:
            self._draw_table()

    # ------------------------------------------------------------------ display
    def _repr_mimebundle_(self, **kwargs):
        return {**self.ui._repr_mimebundle_(**kwargs), "text/html": self.static_html()}

    def static_html(self) -> str:
        """What the app shows now, as static HTML (a saved notebook, GitHub, the docs site): the step line, the
        picture with its caption, the curve and the table."""
        return snapshot_html(self.steps_label.value, self.image_caption.value, self.image.value, self.curve.value,
                             self.table.value)

    # ------------------------------------------------------------------ state
    def _load_existing(self) -> None:
        """Remember the cells an earlier session left in ``run_dir`` (same model only)."""
        from img2img_lab.store.run_store import RunStore

        if not RunStore.is_run_folder(self.run_dir):
            return
        store = RunStore.open(self.run_dir)
        fingerprint = self.model.fingerprint()["fingerprint"]
        previous = store.read_manifest().get("model_fingerprint", {}).get("fingerprint")
        if previous and previous != fingerprint:
            raise StoreError(f"'{self.run_dir}' caches another model's images (fingerprint {previous[:12]}). "
                             f"Fix: pass a new run_dir for this model.")
        for row in store.read_table().to_dict("records"):
            self._memo[row_identity(row)] = row

    def _prepared(self, path: str):
        from img2img_lab.images.hashes import content_hash
        from img2img_lab.sweep.run import prepare_source

        if path not in self._sources:
            image = prepare_source(path, self.model, max_side=self.max_side, resize_policy=self.resize_policy)
            self._sources[path] = (image, content_hash(image))
        return self._sources[path]

    def settings(self) -> dict:
        """The current control values as a validated one-cell sweep config.

        Raises :class:`img2img_lab.errors.PlanError` (naming the control and the fix) on bad values.
        """
        data = {"images": [self.source.value], "prompts": [self.prompt.value],
                "negative_prompts": [self.negative_prompt.value], "strengths": [round(self.strength.value, 6)],
                "seeds": [int(self.seed.value)], "guidance_scales": [float(self.guidance_scale.value)],
                "steps": [int(self.steps.value)], "schedulers": [self.scheduler.value],
                "max_side": self.max_side, "resize_policy": self.resize_policy, "name": "explorer"}
        SweepPlan.from_dict(data)  # validates
        return data

    def _settings_key(self, settings: dict) -> tuple:
        _, source_hash = self._prepared(settings["images"][0])
        return row_identity({"source_hash": source_hash, "prompt": settings["prompts"][0],
                             "negative_prompt": settings["negative_prompts"][0], "strength": settings["strengths"][0],
                             "seed": settings["seeds"][0], "guidance_scale": settings["guidance_scales"][0],
                             "num_inference_steps": settings["steps"][0], "scheduler": settings["schedulers"][0]})

    def rows(self):
        """Every image generated so far (this session and earlier ones in ``run_dir``), as a tidy table."""
        import pandas as pd

        return pd.DataFrame(list(self._memo.values()))

    # ------------------------------------------------------------------ actions
    def generate(self) -> dict:
        """Generate (or recall from the cache) the image for the current settings; update every view.

        Returns the image's table row (a dict with the run's columns and the metrics).
        """
        settings = self.settings()
        key = self._settings_key(settings)
        started = time.perf_counter()
        row = self._memo.get(key)
        if row is None:
            from img2img_lab.sweep.run import run_sweep

            self.generate_button.disabled = True
            self.progress.value, self.progress.max = 0, max(1, int(settings["steps"][0] * settings["strengths"][0]))
            self.status.value = (f"Generating strength {settings['strengths'][0]:g}, seed {settings['seeds'][0]}… "
                                 f"(the controls respond again when this image is done: a view picked meanwhile "
                                 f"shows then)")
            try:
                with warnings.catch_warnings(record=True) as caught:  # said in the status line, once, in words
                    warnings.simplefilter("always")
                    table = run_sweep(SweepPlan.from_dict(settings), self.run_dir, pipe=self.model, progress=False,
                                      metrics=self.metrics, on_step=self._on_step)
            finally:
                self.generate_button.disabled = False
            self.advisories = list(dict.fromkeys(str(item.message) for item in caught
                                                 if item.category.__module__.startswith("img2img_lab")))
            row = table.iloc[0].to_dict()
            self._memo[row_identity(row)] = row
            self.generated += 1
            how = "generated"
        else:
            how = "recalled from the cache"
        self.last_seconds = time.perf_counter() - started
        self.progress.value = self.progress.max
        self.current = row
        self.status.value = (f"{how} in {self.last_seconds:.2f} s · {row['executed_steps']} denoising steps · "
                             f"{len(self._memo)} image{'' if len(self._memo) == 1 else 's'} cached in <code>{html.escape(str(self.run_dir))}</code>"
                             + "".join(f"<br><span class='i2i-advisory' style='color:#9a6700'>⚠ {html.escape(text)}"
                                       f"</span>" for text in self.advisories))
        self.refresh()
        return row

    def refresh(self) -> None:
        """Redraw the image view, the curve and the table for the current image."""
        if self.current is None:
            return
        self._draw_view()
        self._draw_curve()
        self._draw_table()

    # ------------------------------------------------------------------ callbacks
    def _on_view_change(self, change) -> None:
        if self.generate_button.disabled:  # a generation runs: its end draws the new view
            self.image_caption.value = (f"<span class='i2i-caption-text'><b>{html.escape(change['new'])}</b> shows when "
                                        f"this image is done</span>")
            return
        self.refresh()

    def _on_step(self, done: int, total: int) -> None:
        self.progress.max = max(1, total)
        self.progress.value = min(done, total)

    def _on_schedule_change(self, change=None) -> None:
        try:
            source, _ = self._prepared(self.source.value)
            step = self.model.step_plan(self.scheduler.value, int(self.steps.value),
                                                 float(self.strength.value), width=source.width, height=source.height)
            text = strength_readout(step)
        except Img2ImgLabError as error:
            text = f"<span style='color:#b00'>{html.escape(str(error))}</span>"
        self.steps_label.value = f"<span class='i2i-steps-text'>{text}</span>"

    def _on_generate_click(self, button=None) -> None:
        try:
            self.generate()
        except Img2ImgLabError as error:
            self.status.value = f"<span style='color:#b00'>error: {html.escape(str(error))}</span>"
        except Exception as error:  # shown, never swallowed silently: the kernel log has the traceback
            self.status.value = (f"<span style='color:#b00'>unexpected {type(error).__name__}: "
                                 f"{html.escape(str(error))}</span>")
            raise

    def _on_upload(self, change) -> None:
        uploads = change["new"]
        if not uploads:
            return
        upload = uploads[0]
        content = bytes(upload["content"])
        name = Path(upload.get("name") or "upload.png").name
        from img2img_lab.store.run_store import UPLOADS

        from img2img_lab.store.folder_rules import inside

        try:  # uploads/ (or a file in it) linked outside the run folder is refused, never written through
            path = inside(self.run_dir, Path(UPLOADS) / hashlib.sha256(content).hexdigest()[:16] / name)
            if not path.is_file():
                from img2img_lab.store.run_store import atomic_write

                atomic_write(path, lambda stream: stream.write(content))
            self._prepared(str(path))  # refuses unreadable files with the reason
        except (ImageError, PlanError, StoreError) as error:
            self.status.value = f"<span style='color:#b00'>upload refused: {html.escape(str(error))}</span>"
            return
        options = dict(self.source.options)
        options[f"{Path(name).stem} (uploaded)"] = str(path)
        self.source.options = list(options.items())
        self.source.value = str(path)
        self.status.value = f"uploaded {html.escape(name)}: press <b>Generate</b>."

    # ------------------------------------------------------------------ drawing
    def _family(self) -> dict:
        return {column: self.current[column] for column in SETTING_COLUMNS}

    def _draw_view(self) -> None:
        from img2img_lab.figures.grids import comparison_grid, difference_panel, side_by_side
        from img2img_lab.store.run_store import RunStore

        store = RunStore.open(self.run_dir)
        row = self.current
        source, output = store.load_source(row["source_hash"]), store.load_output(row)
        title = (f"strength {row['strength']:g}, seed {row['seed']}\n"
                 f"{row['executed_steps']} of {row['num_inference_steps']} steps")
        if self.view.value == "side by side":
            picture = side_by_side([source, output], ["source", title])
        elif self.view.value == "difference":
            picture = difference_panel(source, output, ["source", title, "|output - source|"])
        else:
            picture = comparison_grid(store, rows="seed", cols="strength", annotate=self.metrics[:3],
                                      where=self._family())
        self.image.value, self.image.layout.display = png_bytes(picture), None
        self.image_caption.value = (f"<span class='i2i-caption-text'>showing <b>{html.escape(self.view.value)}</b> · "
                                    f"strength {row['strength']:g}, seed {row['seed']} · "
                                    f"{html.escape(str(row['source_name']))}</span>")

    def _draw_curve(self) -> None:
        if self.current is None:
            return
        from matplotlib.figure import Figure  # a figure object needs no backend: the notebook's stays as it is

        from img2img_lab.figures.grids import curve_data, select_rows

        metric = self.curve_metric.value
        family = select_rows(self.rows(), self._family())
        figure = Figure(figsize=(6.4, 3.4), dpi=90)
        axis = figure.subplots()
        values = family[metric].astype(float)
        axis.scatter(family["strength"], values, s=18, alpha=0.6, label="one image")
        if len(family) > 1 and values.notna().any():
            data = curve_data(family, metric, hue=None)
            axis.plot(data["strength"], data["mean"], marker="o", label="mean over seeds")
        current = float(self.current[metric]) if not is_missing(self.current.get(metric)) else None
        if current is not None:
            axis.scatter([self.current["strength"]], [current], s=90, facecolors="none", edgecolors="red",
                         label="current")
        axis.set_xlim(-0.02, 1.02)
        axis.set_xlabel("strength")
        axis.set_ylabel(metric)
        axis.set_title(f"{metric} vs strength for this setting ({len(family)} images)", fontsize=10)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        figure.tight_layout()
        self.curve.value, self.curve.layout.display = figure_png(figure), None

    def _draw_table(self) -> None:
        table = self.rows()
        if table.empty:
            self.table.value = "<i>nothing generated yet</i>"
            return
        columns = [column for column in TABLE_COLUMNS if column in table.columns]
        columns += [metric for metric in self.metrics if metric in table.columns]
        shown = table[columns].sort_values(["source_name", "prompt", "seed", "strength"]).reset_index(drop=True)
        self.table.value = ("<div style='max-height:420px;overflow-y:auto'>"
                            + table_html(shown, float_format="{:.3f}") + "</div>")
