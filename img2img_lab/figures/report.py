"""The HTML report of a run folder: one self-contained file (images embedded), no model needed.

``img2img-lab report RUN_DIR --out report.html`` writes it; ``notebooks/04_report.ipynb`` shows the same
sections (each section object renders itself in Jupyter). Sections:

* **manifest** — model and fingerprint, device, dtype, engine, package versions, plan axes, counts, notes;
* **calibration** — the strength reference tables, recommendations and folklore comparison, curves and heatmap,
  when the folder holds a calibration (``calibration/``);
* **grids** — a labelled comparison grid (seeds x strengths) per source x prompt x guidance x steps x scheduler;
* **curves** — every measured metric against strength, one line per prompt, with spread and the VAE floor;
* **table** — the tidy table, one row per image.

The file loads nothing from outside itself (no scripts, fonts, stylesheets or images to fetch); the calibration's
thumbnails are embedded at display size and link to their full-size images, relative to the run folder.

>>> write_report("runs/demo", "runs/demo/report.html")
PosixPath('runs/demo/report.html')
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path

from img2img_lab.errors import StoreError
from img2img_lab.figures.style import png_tag, scroll_box, table_html
from img2img_lab.store.run_store import RunStore
from img2img_lab.plan.schema import AXIS_COLUMNS, COLUMNS, SETTING_LABEL_COLUMNS

#: Metrics drawn as curves when the table has them, in this order.
CURVE_METRICS = ("ssim", "ms_ssim", "lpips", "psnr", "delta_e", "edge_f1", "clip_score", "oracle_kept",
                 "oracle_match", "oracle_preservation", "oracle_adherence", "seam")
#: Most grids one report draws (one per source x prompt x guidance x steps x scheduler family).
MAX_GRIDS = 24
#: Grids are embedded at most this many px wide (:func:`img2img_lab.figures.grids.comparison_grid` draws their text readable
#: at this width); the report stays small for models of any resolution.
DISPLAY_WIDTH_PX = 1000
#: Bytes of embedded grids per report: past it the other families are listed with the command that draws each.
GRID_BUDGET_BYTES = 2_500_000
STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 24px; color: #222; }
h1 { margin-bottom: 4px; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 4px; margin-top: 32px; }
table { border-collapse: collapse; font-size: 12px; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; position: sticky; top: 0; }
img { max-width: 100%; } .grid img { image-rendering: pixelated; }
.muted { color: #666; } .scroll { max-height: 520px; overflow: auto; }
"""


@dataclass
class Section:
    """One report section: a title and its HTML (renders itself in Jupyter)."""

    key: str
    title: str
    body: str

    def to_html(self) -> str:
        return f"<section id='{self.key}'><h2>{html.escape(self.title)}</h2>\n{self.body}\n</section>"

    def _repr_html_(self) -> str:
        return self.to_html()


def display_image_tag(image, *, alt: str = "", css_class: str = "", max_width: int = DISPLAY_WIDTH_PX) -> str:
    """``image`` embedded at display size: at most ``max_width`` px wide (Lanczos), as PNG or as JPEG (quality 90),
    whichever is smaller (pixel-art grids stay PNG, photographs become JPEG).

    >>> from PIL import Image
    >>> display_image_tag(Image.effect_noise((3000, 600), 60).convert("RGB"))[:55]
    "<img class='' alt='' width='1000' src='data:image/jpeg;"
    """
    from PIL import Image

    image = image.convert("RGB")
    if image.width > max_width:
        image = image.resize((max_width, max(1, round(image.height * max_width / image.width))),
                             Image.Resampling.LANCZOS)
    encoded = []
    for kind, options in (("png", {"optimize": True}), ("jpeg", {"quality": 90})):
        stream = io.BytesIO()
        image.save(stream, format=kind.upper(), **options)
        encoded.append((len(stream.getvalue()), kind, stream.getvalue()))
    _, kind, data = min(encoded)
    return (f"<img class='{css_class}' alt='{html.escape(alt)}' width='{image.width}' "
            f"src='data:image/{kind};base64,{base64.b64encode(data).decode()}'>")


def _file_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def manifest_section(store: RunStore, table) -> Section:
    import pandas as pd

    manifest = store.read_manifest()
    fingerprint = manifest.get("model_fingerprint", {}).get("fingerprint", "")
    engine = manifest.get("engine") or {}
    packages = manifest.get("packages", {})
    items = [
        ("model", manifest.get("model")), ("fingerprint", fingerprint[:16]),
        ("created / finished", f"{manifest.get('created', '?')} / {manifest.get('finished', '?')}"),
        ("device / dtype", f"{manifest.get('device')} / {manifest.get('dtype')}"),
        ("engine", f"{engine.get('name', 'per-cell')} ({engine.get('reason', '')})"
                   + (f"; chunks: {engine['streams_reason']}" if engine.get("streams_reason") else "")),
        ("packages", ", ".join(f"{name} {packages[name]}" for name in ("torch", "diffusers", "transformers",
                                                                        "img2img_lab") if name in packages)),
        ("platform", manifest.get("platform")),
        ("images in the table", len(table)),
    ]
    for axis, values in swept_values(manifest).items():
        items.append((f"swept {axis}", ", ".join(values)))
    rows = "".join(f"<tr><th>{html.escape(str(name))}</th><td>{html.escape(str(value))}</td></tr>"
                   for name, value in items)
    notes = "".join(f"<li>{html.escape(note)}</li>" for note in manifest.get("notes", []))
    counts = {name: value for name, value in (manifest.get("counts") or {}).items() if not isinstance(value, dict)}
    body = scroll_box(f"<table>{rows}</table>") + (f"<p>Notes:</p><ul>{notes}</ul>" if notes else "")
    if counts:
        body += "<p>Counts of the last sweep into the folder:</p>" + table_html(pd.DataFrame([counts]))
    body += _provenance(manifest, store.root)
    return Section("manifest", "Manifest", body)


def swept_values(manifest: dict) -> dict[str, list[str]]:
    """Every value of each axis swept into the folder, over all its plans (a calibration's rounds included), in the
    order first swept; image paths normalised (``configs/../sources/x.png`` → ``sources/x.png``).

    >>> swept_values({"plans": [{"plan": {"strengths": [0.0, 1.0], "images": ["a/configs/../s.png"]}},
    ...                         {"plan": {"strengths": [0.5]}}]})
    {'images': ['a/s.png'], 'strengths': ['0.0', '1.0', '0.5']}
    """
    import os

    plans = [record.get("plan") or {} for record in manifest.get("plans") or []] or [manifest.get("plan") or {}]
    swept: dict[str, list[str]] = {}
    for axis in ("images", "prompts", "negative_prompts", "strengths", "seeds", "guidance_scales", "steps",
                 "schedulers", "modes"):
        values = [os.path.normpath(str(value)) if axis == "images" else str(value)
                  for plan in plans for value in plan.get(axis) or []]
        if values:
            swept[axis] = list(dict.fromkeys(values))
    return swept


def _provenance(manifest: dict, root) -> str:
    """Every plan swept into the folder with the command that sweeps it again, and the calibration's command."""
    from img2img_lab.store.manifest import rerun_command

    plans = manifest.get("plans") or []
    calibration = manifest.get("calibration") or {}
    body = ""
    if calibration.get("command"):
        rounds = calibration.get("rounds") or []
        listed = "".join(f"<li>round {entry.get('round', index)}: strengths "
                         f"{', '.join(f'{value:g}' for value in entry.get('strengths', []))} at guidance "
                         f"{', '.join(f'{value:g}' for value in entry.get('guidance_scales', []))} "
                         f"({entry.get('cells', '?')} cells)</li>" for index, entry in enumerate(rounds))
        body += (f"<p>This folder is a calibration ({len(rounds)} sweeps: the coarse grid and each refinement "
                 f"round):</p><ul>{listed}</ul><p>"
                 f"Reproduce it: <code>{html.escape(calibration['command'])}</code> "
                 f"(the full config is <code>{html.escape(calibration.get('config', ''))}</code>).</p>")
    if plans:
        commands = "".join(
            f"<li>{html.escape(str(record['plan'].get('name')))}: {len(record['plan'].get('strengths', []))} "
            f"strengths × {len(record['plan'].get('seeds', []))} seeds × "
            f"{len(record['plan'].get('guidance_scales', []))} guidance — "
            f"<code>{html.escape(rerun_command(record, str(root)))}</code></li>" for record in plans)
        body += f"<p>Every plan swept into this folder ({len(plans)}), each with the command that reruns it:</p>"
        body += f"<ul>{commands}</ul>"
    body += (f"<p class='muted'><code>img2img-lab verify {html.escape(str(root))}</code> checks every planned cell "
             f"and regenerates a sample; <code>--repair</code> reruns the plans above into the folder.</p>")
    return body


def _rebase_links(text: str, from_dir, to_dir) -> str:
    """Relative ``href``s written for a file in ``from_dir``, rewritten for a page in ``to_dir``."""
    import os
    import re

    def rebase(match):
        target = Path(from_dir) / match.group(1)
        return f"href='{Path(os.path.relpath(target, to_dir)).as_posix()}'"

    return re.sub(r"href='(?![a-z]+:|#|/)([^']+)'", rebase, text)


def _calibration_body(store: RunStore, folder, out_dir) -> str:
    """A saved calibration's page and figures, each file checked to stay inside the run folder (a symlinked figure
    is refused in one line, never embedded)."""
    page = store.entry((folder / "calibration.html").relative_to(store.root))
    body = _rebase_links(page.read_text(), folder, out_dir)
    for name, alt in (("curves.png", "calibration curves with CI bands"), ("heatmap.png", "strength x guidance")):
        if (folder / name).is_file():
            body += f"<p>{_file_tag(store.entry((folder / name).relative_to(store.root)), alt)}</p>"
    return body


def calibration_section(store: RunStore, out_dir=".") -> Section | None:
    """The calibration, or with a ``models`` comparison the side-by-side figure and each model's calibration (links
    to full-size images relative to ``out_dir``, where the page is shown)."""
    folder = store.calibration_dir()
    title = "Calibration: the measured strength reference table"
    if (folder / "calibration.html").is_file():
        return Section("calibration", title, _calibration_body(store, folder, out_dir))
    per_model = sorted(path.parent for path in folder.glob("*/calibration.html"))
    if not per_model:
        return None
    body = ""
    if (folder / "models.png").is_file():
        models = store.entry((folder / "models.png").relative_to(store.root))
        body += f"<p>{_file_tag(models, 'the models side by side on log-SNR')}</p>"
    body += "".join(f"<h3>{html.escape(path.name)}</h3>{_calibration_body(store, path, out_dir)}"
                    for path in per_model)
    return Section("calibration", title + " — per model", body)


def _annotations(table) -> list[str]:
    return [metric for metric in ("ssim", "lpips", "delta_e", "oracle_kept", "oracle_match")
            if metric in table.columns and table[metric].notna().any()][:3]


def _grid_command(store: RunStore, family: dict, *, rows: str = "seed") -> str:
    """The command that draws one family's grid at full size."""
    import shlex

    pins = " ".join(f"--where {shlex.quote(f'{column}={value}')}" for column, value in family.items())
    return f"img2img-lab grid {shlex.quote(str(store.root))} --rows {rows} {pins} --out grid.png"


def grids_section(store: RunStore, table) -> Section:
    from img2img_lab.figures.grids import comparison_grid

    family_columns = list(SETTING_LABEL_COLUMNS) + (["mode"] if "mode" in table.columns and table["mode"].nunique() > 1
                                                    else [])  # one grid per mode: a strength means another thing
    families = table.drop_duplicates(family_columns)[family_columns].to_dict("records")
    several_models = "model" in table.columns and table["model"].nunique() > 1
    rows = "model" if several_models else "seed"
    parts, used, drawn = [], 0, 0
    for family in families[:MAX_GRIDS]:
        if used > GRID_BUDGET_BYTES:
            break
        where = dict(family)
        title = (f"{family['source_name']} · “{family['prompt']}”"
                 + (f" · negative “{family['negative_prompt']}”" if family["negative_prompt"] else "")
                 + f" · guidance {family['guidance_scale']:g} · {family['num_inference_steps']} steps · "
                   f"{family['scheduler']}" + (f" · {family['mode']}" if "mode" in family else ""))
        if several_models:  # a models comparison: one row per model, at the first seed
            where["seed"] = int(table["seed"].min())
            title += f" · seed {where['seed']}, one row per model"
        grid = comparison_grid(store, rows=rows, cols="strength", annotate=_annotations(table), where=where)
        tag = display_image_tag(grid, alt=title)
        used, drawn = used + len(tag), drawn + 1
        parts.append(f"<h3>{html.escape(title)}</h3><div class='grid'>{tag}</div>")
    if len(families) > drawn:
        first_seed = {"seed": int(table["seed"].min())} if several_models else {}
        commands = "".join(f"<li><code>{html.escape(_grid_command(store, {**family, **first_seed}, rows=rows))}"
                           f"</code></li>" for family in families[drawn:drawn + 50])
        parts.append(f"<p class='muted'>{len(families) - drawn} more families are not drawn, so the report stays "
                     f"small; each command draws one:</p><ul class='muted'>{commands}</ul>"
                     + ("<p class='muted'>…</p>" if len(families) > drawn + 50 else ""))
    return Section("grids", "Comparison grids", "\n".join(parts))


#: The most curve figures per metric and axis a report draws (one per combination of the conditions that differ).
MAX_CURVE_VIEWS = 4


def curve_views(table) -> list[tuple[str | None, dict]]:
    """The report's curves as ``(hue, where)`` pairs, so that no line mixes conditions: one line per value of the
    first condition that differs (model, guidance, steps, scheduler; else per prompt), one figure per combination of
    the other conditions that differ.

    >>> curve_views(table.assign(guidance_scale=[1.0, 2.0] * 3, scheduler=["ddim"] * 3 + ["euler"] * 3))
    [('guidance_scale', {'scheduler': 'ddim'}), ('guidance_scale', {'scheduler': 'euler'})]
    """
    from img2img_lab.figures.curves import pooled_conditions

    varying = list(pooled_conditions(table))  # what one line over the whole table would mix
    hue = varying[0] if varying else ("prompt" if table["prompt"].nunique() > 1 else None)
    if len(varying) < 2:
        return [(hue, {})]
    others = varying[1:]
    return [(hue, where) for where in table[others].drop_duplicates().sort_values(others).to_dict("records")]


def curves_section(store: RunStore, table) -> Section:
    from img2img_lab.figures.grids import strength_curves

    parts = []
    several_models = "model" in table.columns and table["model"].nunique() > 1
    axes = ("strength", "log_snr") if several_models and "log_snr" in table.columns else ("strength",)
    views = curve_views(table)
    for metric in CURVE_METRICS:
        if metric in table.columns and table[metric].notna().any():
            for x in axes:  # models compare on the family-independent noise axis too
                for hue, where in views[:MAX_CURVE_VIEWS]:
                    figure = strength_curves(store, metric, x=x, hue=hue, where=where or None)
                    parts.append(png_tag(figure, alt=f"{metric} vs {x}"))
    if len(views) > MAX_CURVE_VIEWS and parts:
        parts.append(f"<p class='muted'>{len(views) - MAX_CURVE_VIEWS} more combinations of conditions are not drawn; "
                     f"<code>img2img-lab curves RUN_DIR --metric METRIC --hue {html.escape(str(views[0][0]))} --where "
                     f"COLUMN=VALUE</code> draws any one.</p>")
    if not parts:
        parts.append("<p class='muted'>No metric measured yet: <code>img2img-lab measure RUN_DIR</code>.</p>")
    return Section("curves", "Metrics against strength", "\n".join(parts))


#: Identifiers people do not read first: shown last.
HASH_COLUMNS = ("source", "output_path", "cell_key", "source_hash", "output_hash", "model_fingerprint", "batch_id")


def readable_table(table, *, max_rows: int = 200):
    """The tidy table as people read it: the parameters that vary, executed steps and the metrics first, constant
    columns next, paths and hashes last; at most ``max_rows`` rows. Returns ``(shown, rows left out)``.

    >>> shown, left_out = readable_table(table, max_rows=4)
    >>> shown.columns[:5].tolist(), left_out
    (['strength', 'seed', 'executed_steps', 'ssim', 'psnr'], 2)
    """
    metrics = [column for column in table.columns if column not in COLUMNS]
    varying = [column for column in dict.fromkeys(("strength", *AXIS_COLUMNS)) if column in table.columns
               and table[column].astype(str).nunique() > 1]
    lead = list(dict.fromkeys([*varying, "executed_steps", *metrics]))
    lead = [column for column in lead if column in table.columns]
    tail = [column for column in HASH_COLUMNS if column in table.columns]
    rest = [column for column in table.columns if column not in lead and column not in tail]
    return table[lead + rest + tail].head(max_rows), max(0, len(table) - max_rows)


def table_section(table) -> Section:
    shown, left_out = readable_table(table)
    more = (f" The first {len(shown)} of {len(table)} rows are shown; <code>img2img-lab export RUN_DIR --csv "
            f"table.csv</code> has them all." if left_out else "")
    body = ("<p class='muted'>One row per generated image (results.parquet; "
            f"<code>img2img-lab export RUN_DIR --csv table.csv</code>).{more}</p>" + table_html(shown))
    return Section("table", "The tidy table", body)


def find_run_folder(run_dir=None, *, search=("runs", "../runs")) -> Path:
    """``run_dir`` if given, else the newest run folder (by its manifest's time) inside the ``search`` folders;
    notebook 04 opens what the user ran last. None found: a one-line error saying what to run first.

    >>> find_run_folder().as_posix(), find_run_folder("runs/demo").as_posix()  # the calibration ran last
    ('runs/calibrate', 'runs/demo')
    """
    if run_dir is not None:
        return Path(run_dir)
    found = [folder for root in map(Path, search) if root.is_dir() for folder in root.iterdir()
             if RunStore.is_run_folder(folder)]
    if not found:
        raise StoreError(f"no run folder yet in {' or '.join(search)}. Fix: run `img2img-lab demo` (or `make demo` in "
                         f"a checkout) first, or set RUN_DIR to a run folder.")
    return max(found, key=lambda folder: RunStore(folder).manifest_path.stat().st_mtime)


def report_sections(run_dir, *, out_dir=".") -> dict[str, Section]:
    """The report's sections for a run folder, in order (``manifest``, ``calibration`` when present, ``grids``,
    ``curves``, ``lora`` when adapter settings were swept, ``strength``, ``table``); links to full-size images are
    relative to ``out_dir``, where they are shown.

    >>> list(report_sections("runs/demo"))
    ['manifest', 'grids', 'curves', 'strength', 'table']
    """
    store = run_dir if isinstance(run_dir, RunStore) else RunStore.open(run_dir)
    table = store.read_table()
    if table.empty:
        raise StoreError(f"{store.root}: the run has no finished cells yet. Fix: run the sweep first.")
    sections = {"manifest": manifest_section(store, table)}
    calibration = calibration_section(store, out_dir)
    if calibration is not None:
        sections["calibration"] = calibration
    sections["grids"] = grids_section(store, table)
    sections["curves"] = curves_section(store, table)
    from img2img_lab.figures.report_lora import lora_section_body
    from img2img_lab.figures.report_strength import strength_section_body

    lora = lora_section_body(table)
    if lora is not None:  # a study that swept adapter settings
        sections["lora"] = Section("lora", "LoRA × strength", lora)

    strength = strength_section_body(store, table)
    if strength is not None:
        sections["strength"] = Section("strength", "What the strength dial runs, per tool", strength)
    sections["table"] = table_section(table)
    return sections


def render_report(run_dir, *, out_dir=None) -> str:
    """The whole report as one self-contained HTML document (a string) to be saved in ``out_dir`` (default: the run
    folder; links to full-size images are relative to it)."""
    store = run_dir if isinstance(run_dir, RunStore) else RunStore.open(run_dir)
    sections = report_sections(store, out_dir=store.root if out_dir is None else out_dir)
    name = store.read_manifest().get("plan", {}).get("name", store.root.name)
    contents = "".join(f"<li><a href='#{key}'>{html.escape(section.title)}</a></li>"
                       for key, section in sections.items())
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>img2img-lab report: {html.escape(str(name))}</title><style>{STYLE}</style></head><body>"
            f"<h1>img2img-lab report: {html.escape(str(name))}</h1>"
            f"<p class='muted'>{html.escape(str(store.root))}</p><ul>{contents}</ul>"
            + "\n".join(section.to_html() for section in sections.values()) + "</body></html>")


def write_report(run_dir, out=None) -> Path:
    """Write :func:`render_report` to ``out`` (default ``RUN_DIR/report.html``) atomically; return the path.

    >>> write_report("runs/demo")
    PosixPath('runs/demo/report.html')
    """
    from img2img_lab.store.run_store import atomic_write

    store = RunStore.open(run_dir)
    out = Path(out) if out is not None else store.root / "report.html"
    document = render_report(store, out_dir=out.parent)
    atomic_write(out, lambda stream: stream.write(document), binary=False)
    return out


def export_table(run_dir, *, csv=None, parquet=None) -> list[Path]:
    """Write the tidy table as CSV and/or Parquet (atomically); return the paths written.

    >>> export_table("runs/demo", csv="demo.csv")
    [PosixPath('demo.csv')]
    """
    from img2img_lab.store.run_store import atomic_write

    if csv is None and parquet is None:
        raise StoreError("nothing to export. Fix: give --csv PATH and/or --parquet PATH.")
    table = RunStore.open(run_dir).read_table()
    written = []
    if csv is not None:
        written.append(atomic_write(csv, lambda stream: table.to_csv(stream, index=False), binary=False))
    if parquet is not None:
        written.append(atomic_write(parquet, lambda stream: table.to_parquet(stream, index=False)))
    return written
