"""Renderings of a :class:`~img2img_lab.calibration.result.CalibrationResult`, beside the other figures
(:mod:`img2img_lab.figures.grids`): the reference table as people read it, Markdown, an HTML fragment, the curves with CI
bands and the strength x guidance heatmap. The result itself holds numbers only; its ``to_markdown``, ``to_html``,
``figure``, ``heatmap`` and ``reference_table_text`` methods call these.

>>> print(calibration_markdown(result).splitlines()[0])
# Strength calibration (6 images; 1 sources × 1 prompts × 2 seeds × 1 guidance values; 6 coarse + 0 refinement cells)
>>> [axis.get_xlabel() for axis in calibration_curves(result, ["ssim"]).axes]
['strength']
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from img2img_lab.errors import Img2ImgLabError
from img2img_lab.figures.style import table_html


def reference_table_text(result, guidance_scale: float | None = None):
    """:meth:`reference_table` as people read it: ranges as ``0.2–0.4``, each metric as ``0.812–0.903 [CI 0.790,
    0.921]`` (what the Markdown and HTML renderings show).

    >>> reference_table_text(result)[["strengths", "ssim", "verdict"]].iloc[0].tolist()
    ['0–0.5', '0.619–0.894 [CI 0.559, 0.896]', 'keeps composition']
    """
    import pandas as pd

    table = result.reference_table(guidance_scale)
    metrics = [m for m in result.settings.metrics if f"{m}_min" in table.columns]
    rows = []
    for row in table.to_dict("records"):
        text = {"guidance_scale": row["guidance_scale"],
                "strengths": _range_text(row["strength_min"], row["strength_max"], "{:g}"),
                "executed_steps": _range_text(row["executed_steps_min"], row["executed_steps_max"], "{:d}"),
                "sigma": _range_text(row["sigma_min"], row["sigma_max"], "{:.2f}")}
        for metric in metrics:
            text[metric] = (_range_text(row[f"{metric}_min"], row[f"{metric}_max"], "{:.3f}")
                            + f" [CI {row[f'{metric}_ci_low']:.3f}, {row[f'{metric}_ci_high']:.3f}]")
        rows.append({**text, "verdict": row["verdict"], "goal": row["goal"], "thumbnail": row["thumbnail"]})
    return pd.DataFrame(rows)


def calibration_markdown(result) -> str:
    """The reference table(s), recommendations, crossings and folklore comparison as Markdown."""
    lines = [f"# Strength calibration ({len(result.table)} images; {result.counts.get('summary', '')})", ""]
    lines += ["## Recommendations", ""]
    for recommendation in result.recommendations.values():
        target = f" ({recommendation.target})" if recommendation.target else ""
        lines.append(f"* **{recommendation.goal}**{target}: {recommendation.message}")
    for guidance in result.guidance_values:
        table = reference_table_text(result, guidance).drop(columns=["guidance_scale", "thumbnail"])
        lines += ["", f"## Strength reference table — guidance {guidance:g}", "", _markdown_table(table)]
    lines += ["", "## Crossings", ""]
    lines += [f"* {crossing.describe()}" for crossing in result.crossings]
    for metric, per_guidance in result.knees.items():
        knees = ", ".join(f"guidance {g}: {value:g}" if value is not None else f"guidance {g}: none"
                          for g, value in per_guidance.items())
        lines.append(f"* knee of the {metric} curve: {knees}")
    for guidance in result.guidance_values:
        lines += ["", f"## Folklore vs measured — guidance {guidance:g}", "",
                  _markdown_table(result.folklore_comparison(guidance).drop(columns=["guidance_scale"]))]
    return "\n".join(lines) + "\n"


def calibration_html(result, *, embed_images: bool = True, link_from=None) -> str:
    """A self-contained HTML fragment: recommendations, reference tables (each metric's range on one line, its CI
    below in small type; thumbnails captioned with their source, prompt and seed, each linking to its full-size image
    relative to the folder ``link_from``, default the current one), folklore table.

    >>> "<figcaption" in calibration_html(result) and "class='ci'" in calibration_html(result)
    True
    """
    parts = ["<h2>Recommendations</h2><ul>"]
    for recommendation in result.recommendations.values():
        target = f" ({html.escape(recommendation.target)})" if recommendation.target else ""
        parts.append(f"<li><b>{html.escape(recommendation.goal)}</b>{target}: "
                     f"{html.escape(recommendation.message)}</li>")
    parts.append("</ul>")
    for guidance in result.guidance_values:
        table = reference_table_text(result, guidance)
        parts.append(f"<h2>Strength reference table — guidance {guidance:g}</h2><div class='i2i-scroll' "
                     f"style='overflow-x:auto;max-width:100%'><table class='calibration'><tr>")
        lead = ["strengths", "thumbnail", "verdict", "goal"]  # what a reader looks for first, never cut off the right
        columns = lead + [c for c in table.columns if c not in lead and c != "guidance_scale"]
        parts += [f"<th>{html.escape(c)}</th>" for c in columns] + ["</tr>"]
        for _, row in table.iterrows():
            parts.append("<tr>")
            for column in columns:
                value = row[column]
                if column == "thumbnail":
                    parts.append(f"<td>{_thumbnail_figure(result, value, link_from) if embed_images else html.escape(str(value))}"
                                 f"</td>")
                elif " [CI " in str(value):
                    means, ci = str(value).split(" [CI ", 1)
                    parts.append(f"<td><div style='white-space:nowrap'>{html.escape(means)}</div><div class='ci' "
                                 f"style='font-size:10px;color:#666;white-space:nowrap'>CI {html.escape(ci[:-1])}</div></td>")
                elif column == "goal":
                    parts.append(f"<td style='min-width:150px;max-width:220px'>{html.escape(str(value))}</td>")
                else:
                    parts.append(f"<td style='white-space:nowrap'>{html.escape(str(value))}</td>")
            parts.append("</tr>")
        parts.append("</table></div>")
        parts.append(f"<h3>Folklore vs measured — guidance {guidance:g}</h3>")
        parts.append(table_html(result.folklore_comparison(guidance)))
    parts.append("<h3>Crossings</h3><ul>" + "".join(f"<li>{html.escape(c.describe())}</li>" for c in result.crossings)
                 + "</ul>")
    return "\n".join(parts)


def _thumbnail_figure(result, relative: str | None, link_from=None) -> str:
    """The thumbnail with a caption naming the source, prompt and seed it shows."""
    image = _image_tag(result, relative, link_from)
    if not image:
        return ""
    match = result.table[result.table["output_path"] == relative]
    caption = "" if match.empty else (f"{match['source_name'].iloc[0]} · “{match['prompt'].iloc[0]}” · seed "
                                      f"{int(match['seed'].iloc[0])}")
    return (f"<figure style='margin:0;width:{THUMBNAIL_PX + 24}px'>{image}<figcaption style='font-size:10px'>"
            f"{html.escape(caption)}</figcaption></figure>")


#: Thumbnails are embedded at this size (the HTML stays small for any model's resolution); each links to its
#: full-size image, relative to the run folder.
THUMBNAIL_PX = 96


def _image_tag(result, relative: str | None, link_from=None) -> str:
    import io
    import os

    from PIL import Image

    from img2img_lab.store.folder_rules import inside

    if not relative or result.run_dir is None:
        return ""
    path = inside(result.run_dir, relative)  # an image that leads outside the run folder is refused, never embedded
    if not path.is_file():
        return ""
    with Image.open(path) as image:
        image = image.convert("RGB")
        if max(image.size) > THUMBNAIL_PX:
            image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode()
    href = Path(os.path.relpath(path, link_from if link_from is not None else os.curdir)).as_posix()
    return (f"<a href='{html.escape(href)}'><img src='data:image/png;base64,{data}' width='{THUMBNAIL_PX}' "
            f"style='image-rendering:pixelated' alt='{html.escape(relative)}'></a>")


def calibration_curves(result, metrics=None, *, x: str = "strength"):
    """Curves with CI bands per guidance, one panel per metric, crossings marked, verdict bands shaded.

    ``x="log_snr"`` puts the start latent's log signal-to-noise ratio on the x axis, the family-independent
    noise axis (see :class:`img2img_lab.models.handle.StepPlan`); strengths without a finite log-SNR (strength 0,
    pure-noise starts) are left out of that view. Two panels to a row (10.4 in at most): a notebook cell shows
    the figure at its size, not shrunk to fit.
    """
    import matplotlib.pyplot as plt

    if x not in ("strength", "log_snr") or x not in result.summary.columns:
        raise Img2ImgLabError(f"calibration curves x={x!r} is not available. Fix: use 'strength' or 'log_snr' "
                              f"(log_snr needs a run recorded by img2img-lab 0.2 or later).")
    metrics = list(metrics or [t.metric for t in result.settings.keep + result.settings.follow])
    columns = min(len(metrics), 2)
    rows = -(-len(metrics) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 4 * rows), dpi=100, squeeze=False)
    for axis in axes.flat[len(metrics):]:
        axis.set_visible(False)
    for axis, metric in zip(axes.flat, metrics):
        for guidance in result.guidance_values:
            part = result.summary[np.isclose(result.summary["guidance_scale"], guidance)].sort_values("strength")
            part = part[np.isfinite(part[x])]
            style = ["-", "--", ":", "-."][result.guidance_values.index(guidance) % 4]  # one style per guidance
            line, = axis.plot(part[x], part[metric], marker="o", markersize=3, linestyle=style,
                              label=f"guidance {guidance:g} ({len(part)} strengths)")
            axis.fill_between(part[x], part[f"{metric}_ci_low"], part[f"{metric}_ci_high"],
                              color=line.get_color(), alpha=0.18)
            for crossing in result.crossings:
                if crossing.target.metric == metric and crossing.guidance_scale == guidance and crossing.reached:
                    at = part.loc[np.isclose(part["strength"], crossing.strength), x]
                    if len(at):
                        axis.axvline(float(at.iloc[0]), color=line.get_color(), linestyle=":", linewidth=1.2)
        for target in result.settings.keep + result.settings.follow:
            if target.metric == metric:
                axis.axhline(target.threshold, color="gray", linestyle="--", linewidth=1,
                             label=f"target {target.describe()}")
        floor_column = f"{metric}_floor"
        if floor_column in result.summary.columns and result.summary[floor_column].notna().any():
            axis.axhline(result.summary[floor_column].iloc[0], color="black", linestyle="-.", linewidth=0.8,
                         label="VAE round-trip floor")
        axis.set_xlabel("strength" if x == "strength"
                        else "log-SNR of the start latent (axis reversed: noisier to the right)")
        if x == "log_snr":
            axis.invert_xaxis()
        axis.set_ylabel(metric)
        axis.set_title(f"{metric}: mean and {result.settings.confidence:.0%} CI", fontsize=10)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=9)
    figure.tight_layout()
    return figure


def calibration_heatmap(result, metric: str | None = None):
    """Strength x guidance heatmap of a metric's mean (cells annotated), crossings marked per guidance row."""
    import matplotlib.pyplot as plt

    metric = metric or (result.settings.keep + result.settings.follow)[0].metric
    pivot = result.summary.pivot_table(index="guidance_scale", columns="strength", values=metric)
    figure, axis = plt.subplots(figsize=(max(6, 0.55 * pivot.shape[1] + 2), 0.7 * pivot.shape[0] + 1.8), dpi=100)
    shown = axis.imshow(pivot.to_numpy(), aspect="auto", cmap="viridis", origin="lower")
    axis.set_xticks(range(pivot.shape[1]), [f"{v:g}" for v in pivot.columns], rotation=90, fontsize=9)
    axis.set_yticks(range(pivot.shape[0]), [f"{v:g}" for v in pivot.index])
    untested = False
    for (row, col), value in np.ndenumerate(pivot.to_numpy()):
        if np.isfinite(value):
            axis.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=9,
                      color="white" if value < np.nanmean(pivot.to_numpy()) else "black")
        else:  # a strength tested at another guidance only: hatched, said in the legend
            untested = True
            axis.add_patch(plt.Rectangle((col - 0.5, row - 0.5), 1, 1, facecolor="none", edgecolor="gray",
                                         hatch="///", linewidth=0, label="not tested"))
    columns = list(pivot.columns)
    for crossing in result.crossings:
        if crossing.target.metric == metric and crossing.reached:
            row = list(pivot.index).index(crossing.guidance_scale)
            col = columns.index(crossing.strength)
            axis.add_patch(plt.Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    axis.set_xlabel("strength")
    axis.set_ylabel("guidance scale")
    crossed = any(crossing.target.metric == metric and crossing.reached for crossing in result.crossings)
    axis.set_title(f"{metric} (mean) over strength × guidance"
                   + (f"; red frame: where a {metric} target is crossed" if crossed else ""), fontsize=10)
    if untested:
        handles, labels = axis.get_legend_handles_labels()
        axis.legend(handles[:1], labels[:1], loc="upper left", bbox_to_anchor=(1.12, 1), fontsize=9, frameon=False)
    figure.colorbar(shown, ax=axis, fraction=0.03)
    figure.tight_layout()
    return figure


def _range_text(low, high, fmt: str) -> str:
    """``low–high`` (one value when they are equal).

    >>> _range_text(0.2, 0.4, "{:g}"), _range_text(3, 3, "{:d}")
    ('0.2–0.4', '3')
    """
    return fmt.format(low) if low == high else f"{fmt.format(low)}–{fmt.format(high)}"


def _markdown_table(frame) -> str:
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |"
            for row in frame.itertuples(index=False, name=None)]
    return "\n".join([header, rule, *body])
