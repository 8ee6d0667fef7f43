"""The result of a calibration: the summary, crossings and recommendations, the strength reference table and the
folklore comparison, and their renderings (Markdown, HTML, figures) and files.

>>> FOLKLORE[0]  # the folklore band a measured table is compared with
(0.1, 0.2, 'subtle texture changes', 'keeps composition')
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import img2img_lab  # noqa: F401  - torchvision shim first
from img2img_lab.errors import Img2ImgLabError
from img2img_lab.calibration_settings import CalibrationSettings
from img2img_lab.crossings import target_holds

#: The folklore table every guide prints (strength range, what it supposedly does, the verdict it implies).
FOLKLORE = (
    (0.1, 0.2, "subtle texture changes", "keeps composition"),
    (0.3, 0.45, "style emerges, structure preserved", "keeps composition"),
    (0.5, 0.6, "balanced", "balanced"),
    (0.65, 0.75, "significant changes", "prompt dominates"),
    (0.8, 0.9, "original barely visible", "prompt dominates"),
    (1.0, 1.0, "≈ text-to-image", "≈ text-to-image"),
)

VERDICTS = {
    "keeps composition": "keep the subject (retouch, light restyle)",
    "keeps composition, follows prompt": "keep the subject and follow the prompt (best of both)",
    "balanced": "restyle (mix the source and the prompt)",
    "prompt dominates": "follow the prompt (the source only seeds layout and colours)",
    "≈ text-to-image": "replace (the source hardly matters: text-to-image would do)",
}


# --------------------------------------------------------------------------------------------- result
@dataclass
class Recommendation:
    """A recommended (strength, guidance) for one goal, with the evidence and an honest message."""

    goal: str
    target: str
    strength: float | None
    guidance_scale: float | None
    executed_steps: int | None
    expected: float | None
    expected_ci: tuple[float, float] | None
    confident: bool
    message: str


@dataclass
class CalibrationResult:
    """Everything a calibration measured; render with :meth:`reference_table`, :meth:`to_markdown`,
    :meth:`to_html`, :meth:`figure`, :meth:`heatmap`; :meth:`save` writes it into the run folder."""

    table: object  # pandas DataFrame, one row per image
    summary: object  # pandas DataFrame, one row per (condition, strength)
    crossings: list
    knees: dict
    recommendations: dict
    settings: CalibrationSettings
    counts: dict
    run_dir: str | None = None
    floor: object = None

    # ------------------------------------------------------------------ views
    def recommendations_table(self):
        """The recommendations as a DataFrame: goal, target, strength, guidance, executed steps, expected value
        with its CI, whether the rule's confidence holds, and the message."""
        import pandas as pd

        rows = []
        for recommendation in self.recommendations.values():
            low, high = recommendation.expected_ci or (math.nan, math.nan)
            rows.append({"goal": recommendation.goal, "target": recommendation.target,
                         "strength": recommendation.strength, "guidance_scale": recommendation.guidance_scale,
                         "executed_steps": recommendation.executed_steps, "expected": recommendation.expected,
                         "ci_low": low, "ci_high": high, "confident": recommendation.confident,
                         "message": recommendation.message})
        return pd.DataFrame(rows)

    def _repr_html_(self) -> str:
        return self.to_html()

    @property
    def guidance_values(self) -> list[float]:
        return sorted(float(value) for value in self.summary["guidance_scale"].unique())

    def _verdicts(self, summary) -> list[str]:
        rule = self.settings.rule
        keeps = np.ones(len(summary), dtype=bool)
        follows = np.ones(len(summary), dtype=bool) if self.settings.follow else np.zeros(len(summary), dtype=bool)
        for target in self.settings.keep:
            keeps &= target_holds(target, summary[target.metric], summary[f"{target.metric}_ci_low"],
                            summary[f"{target.metric}_ci_high"], rule)
        for target in self.settings.follow:
            follows &= target_holds(target, summary[target.metric], summary[f"{target.metric}_ci_low"],
                              summary[f"{target.metric}_ci_high"], rule)
        t2i = self._like_text_to_image(summary)
        verdicts = []
        for keep, follow, like in zip(keeps, follows, t2i):
            if keep and follow:
                verdicts.append("keeps composition, follows prompt")
            elif keep:
                verdicts.append("keeps composition")
            elif like:
                verdicts.append("≈ text-to-image")
            elif follow:
                verdicts.append("prompt dominates")
            else:
                verdicts.append("balanced")
        return verdicts

    def _like_text_to_image(self, summary) -> np.ndarray:
        """Strengths whose primary fidelity metric is within the CI of strength 1.0 (full denoising)."""
        metric = self.primary_fidelity_metric
        like = np.zeros(len(summary), dtype=bool)
        if metric is None or not np.isclose(summary["strength"].max(), 1.0):
            return like
        full = summary[np.isclose(summary["strength"], 1.0)].iloc[0]
        low, high = full[f"{metric}_ci_low"], full[f"{metric}_ci_high"]
        values = summary[metric].to_numpy(dtype=np.float64)
        like = (values >= low) & (values <= high) | np.isclose(summary["strength"].to_numpy(), 1.0)
        # ``summary`` is sorted by strength: once a strength is like full denoising, so is every higher one.
        return np.maximum.accumulate(like)

    @property
    def primary_fidelity_metric(self) -> str | None:
        """The continuous fidelity metric used for the knee and the text-to-image test (first keep target
        that is not a 0/1 rate, else SSIM if measured)."""
        from img2img_lab.metrics import METRICS, load_plugins

        load_plugins()
        for target in self.settings.keep:
            if not target.metric.startswith("oracle"):
                return target.metric
        for name in ("lpips", "ssim", "ms_ssim", "delta_e", "oracle_preservation"):
            if name in self.summary.columns and name in METRICS:
                return name
        return None

    def reference_table(self, guidance_scale: float | None = None):
        """The strength reference table for one guidance (default: the first calibrated), numbers only: one row per
        band of consecutive strengths with the same verdict; per band its strength, executed-step and noise ranges
        and, per metric, the range of its means (``<metric>_min``, ``<metric>_max``) and the CI extremes
        (``<metric>_ci_low``, ``<metric>_ci_high``); the verdict, the goal it serves, and a representative image
        (``thumbnail``: path in the run folder). :meth:`reference_table_text` is the same table as people read it.

        >>> result.reference_table(2.0).columns[:4].tolist()  # doctest: +SKIP
        ['guidance_scale', 'strength_min', 'strength_max', 'executed_steps_min']
        """
        import pandas as pd

        guidance = self.guidance_values[0] if guidance_scale is None else float(guidance_scale)
        summary = self.summary[np.isclose(self.summary["guidance_scale"], guidance)].sort_values("strength")
        if summary.empty:
            raise Img2ImgLabError(f"no calibration at guidance {guidance:g}. Fix: use one of {self.guidance_values}.")
        summary = summary.reset_index(drop=True)
        verdicts = self._verdicts(summary)
        metrics = [m for m in self.settings.metrics if m in summary.columns]
        rows, start = [], 0
        for index in range(1, len(summary) + 1):
            if index < len(summary) and verdicts[index] == verdicts[start]:
                continue
            band = summary.iloc[start:index]
            row = {"guidance_scale": guidance, "strength_min": float(band["strength"].min()),
                   "strength_max": float(band["strength"].max()),
                   "executed_steps_min": int(band["executed_steps"].min()),
                   "executed_steps_max": int(band["executed_steps"].max()),
                   "sigma_min": float(band["sigma"].min()), "sigma_max": float(band["sigma"].max())}
            for metric in metrics:
                row.update({f"{metric}_min": float(band[metric].min()), f"{metric}_max": float(band[metric].max()),
                            f"{metric}_ci_low": float(band[f"{metric}_ci_low"].min()),
                            f"{metric}_ci_high": float(band[f"{metric}_ci_high"].max())})
            row["verdict"] = verdicts[start]
            row["goal"] = VERDICTS[verdicts[start]]
            row["thumbnail"] = self._thumbnail(guidance, float(band["strength"].iloc[len(band) // 2]))
            rows.append(row)
            start = index
        return pd.DataFrame(rows)

    def reference_table_text(self, guidance_scale: float | None = None):
        """:meth:`reference_table` as people read it: ranges as ``0.2–0.4``, each metric as ``0.812–0.903 [CI 0.790,
        0.921]`` (what the Markdown and HTML renderings show).

        >>> result.reference_table_text(2.0)["strengths"].tolist()  # doctest: +SKIP
        ['0–0.2', '0.3–0.5', '0.6–0.9', '1']
        """
        import pandas as pd

        table = self.reference_table(guidance_scale)
        metrics = [m for m in self.settings.metrics if f"{m}_min" in table.columns]
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

    def _thumbnail(self, guidance: float, strength: float) -> str | None:
        table = self.table
        match = table[np.isclose(table["guidance_scale"], guidance) & np.isclose(table["strength"], strength)]
        if match.empty:
            return None
        match = match.sort_values(["source_name", "prompt", "seed"])
        return str(match["output_path"].iloc[0])

    def folklore_comparison(self, guidance_scale: float | None = None):
        """The folklore bands next to what was measured at those strengths, and whether they agree.

        >>> result.folklore_comparison()  # doctest: +SKIP
        """
        import pandas as pd

        guidance = self.guidance_values[0] if guidance_scale is None else float(guidance_scale)
        summary = self.summary[np.isclose(self.summary["guidance_scale"], guidance)].sort_values("strength")
        summary = summary.reset_index(drop=True)
        verdicts = np.array(self._verdicts(summary))
        rows = []
        for low, high, claim, implied in FOLKLORE:
            inside = (summary["strength"] >= low - 1e-9) & (summary["strength"] <= high + 1e-9)
            measured = list(dict.fromkeys(verdicts[inside.to_numpy()]))
            if not measured:  # no tested strength in the band: the nearest one
                nearest = int(np.argmin(np.abs(summary["strength"].to_numpy() - (low + high) / 2)))
                measured = [verdicts[nearest]]
            agrees = measured == [implied] or (implied == "keeps composition" and
                                               set(measured) <= {"keeps composition", "keeps composition, follows prompt"})
            rows.append({"guidance_scale": guidance, "folklore strengths": f"{low:g}" if low == high else f"{low:g}–{high:g}",
                         "folklore says": claim, "implies": implied, "measured": " / ".join(measured),
                         "agrees": "yes" if agrees else "no"})
        return pd.DataFrame(rows)

    # ------------------------------------------------------------------ renderings
    def to_markdown(self) -> str:
        """The reference table(s), recommendations, crossings and folklore comparison as Markdown."""
        lines = [f"# Strength calibration ({len(self.table)} images; {self.counts.get('summary', '')})", ""]
        lines += ["## Recommendations", ""]
        for recommendation in self.recommendations.values():
            lines.append(f"* **{recommendation.goal}** ({recommendation.target}): {recommendation.message}")
        for guidance in self.guidance_values:
            table = self.reference_table_text(guidance).drop(columns=["guidance_scale", "thumbnail"])
            lines += ["", f"## Strength reference table — guidance {guidance:g}", "", _markdown_table(table)]
        lines += ["", "## Crossings", ""]
        lines += [f"* {crossing.describe()}" for crossing in self.crossings]
        for metric, per_guidance in self.knees.items():
            knees = ", ".join(f"guidance {g}: {value:g}" if value is not None else f"guidance {g}: none"
                              for g, value in per_guidance.items())
            lines.append(f"* knee of the {metric} curve: {knees}")
        for guidance in self.guidance_values:
            lines += ["", f"## Folklore vs measured — guidance {guidance:g}", "",
                      _markdown_table(self.folklore_comparison(guidance).drop(columns=["guidance_scale"]))]
        return "\n".join(lines) + "\n"

    def to_html(self, *, embed_images: bool = True) -> str:
        """A self-contained HTML fragment: recommendations, reference tables with thumbnails, folklore table."""
        parts = ["<h2>Recommendations</h2><ul>"]
        for recommendation in self.recommendations.values():
            parts.append(f"<li><b>{html.escape(recommendation.goal)}</b> ({html.escape(recommendation.target)}): "
                         f"{html.escape(recommendation.message)}</li>")
        parts.append("</ul>")
        for guidance in self.guidance_values:
            table = self.reference_table_text(guidance)
            parts.append(f"<h2>Strength reference table — guidance {guidance:g}</h2><table class='calibration'><tr>")
            columns = [c for c in table.columns if c != "guidance_scale"]
            parts += [f"<th>{html.escape(c)}</th>" for c in columns] + ["</tr>"]
            for _, row in table.iterrows():
                parts.append("<tr>")
                for column in columns:
                    value = row[column]
                    if column == "thumbnail":
                        parts.append(f"<td>{self._image_tag(value) if embed_images else html.escape(str(value))}</td>")
                    else:
                        parts.append(f"<td>{html.escape(str(value))}</td>")
                parts.append("</tr>")
            parts.append("</table>")
            parts.append(f"<h3>Folklore vs measured — guidance {guidance:g}</h3>")
            parts.append(self.folklore_comparison(guidance).to_html(index=False, border=0))
        parts.append("<h3>Crossings</h3><ul>" + "".join(f"<li>{html.escape(c.describe())}</li>" for c in self.crossings)
                     + "</ul>")
        return "\n".join(parts)

    def _image_tag(self, relative: str | None) -> str:
        if not relative or self.run_dir is None:
            return ""
        path = Path(self.run_dir) / relative
        if not path.is_file():
            return ""
        data = base64.b64encode(path.read_bytes()).decode()
        return f"<img src='data:image/png;base64,{data}' width='96' style='image-rendering:pixelated'>"

    def figure(self, metrics=None, *, x: str = "strength"):
        """Curves with CI bands per guidance, one panel per metric, crossings marked, verdict bands shaded.

        ``x="log_snr"`` puts the start latent's log signal-to-noise ratio on the x axis, the family-independent
        noise axis (see :class:`img2img_lab.models.StepPlan`); strengths without a finite log-SNR (strength 0,
        pure-noise starts) are left out of that view.
        """
        import matplotlib.pyplot as plt

        if x not in ("strength", "log_snr") or x not in self.summary.columns:
            raise Img2ImgLabError(f"calibration curves x={x!r} is not available. Fix: use 'strength' or 'log_snr' "
                                  f"(log_snr needs a run recorded by img2img-lab 0.2 or later).")
        metrics = list(metrics or [t.metric for t in self.settings.keep + self.settings.follow])
        figure, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4), dpi=100, squeeze=False)
        for axis, metric in zip(axes[0], metrics):
            for guidance in self.guidance_values:
                part = self.summary[np.isclose(self.summary["guidance_scale"], guidance)].sort_values("strength")
                part = part[np.isfinite(part[x])]
                line, = axis.plot(part[x], part[metric], marker="o", markersize=3, label=f"guidance {guidance:g}")
                axis.fill_between(part[x], part[f"{metric}_ci_low"], part[f"{metric}_ci_high"],
                                  color=line.get_color(), alpha=0.18)
                for crossing in self.crossings:
                    if crossing.target.metric == metric and crossing.guidance_scale == guidance and crossing.reached:
                        at = part.loc[np.isclose(part["strength"], crossing.strength), x]
                        if len(at):
                            axis.axvline(float(at.iloc[0]), color=line.get_color(), linestyle=":", linewidth=1.2)
            for target in self.settings.keep + self.settings.follow:
                if target.metric == metric:
                    axis.axhline(target.threshold, color="gray", linestyle="--", linewidth=1,
                                 label=f"target {target.describe()}")
            floor_column = f"{metric}_floor"
            if floor_column in self.summary.columns and self.summary[floor_column].notna().any():
                axis.axhline(self.summary[floor_column].iloc[0], color="black", linestyle="-.", linewidth=0.8,
                             label="VAE round-trip floor")
            axis.set_xlabel("strength" if x == "strength"
                            else "log-SNR of the start latent (axis reversed: noisier to the right)")
            if x == "log_snr":
                axis.invert_xaxis()
            axis.set_ylabel(metric)
            axis.set_title(f"{metric}: mean and {self.settings.confidence:.0%} CI", fontsize=10)
            axis.grid(alpha=0.3)
            axis.legend(fontsize=7)
        figure.tight_layout()
        return figure

    def heatmap(self, metric: str | None = None):
        """Strength x guidance heatmap of a metric's mean (cells annotated), crossings marked per guidance row."""
        import matplotlib.pyplot as plt

        metric = metric or (self.settings.keep + self.settings.follow)[0].metric
        pivot = self.summary.pivot_table(index="guidance_scale", columns="strength", values=metric)
        figure, axis = plt.subplots(figsize=(max(6, 0.55 * pivot.shape[1] + 2), 0.7 * pivot.shape[0] + 1.8), dpi=100)
        shown = axis.imshow(pivot.to_numpy(), aspect="auto", cmap="viridis", origin="lower")
        axis.set_xticks(range(pivot.shape[1]), [f"{v:g}" for v in pivot.columns], rotation=90, fontsize=8)
        axis.set_yticks(range(pivot.shape[0]), [f"{v:g}" for v in pivot.index])
        for (row, col), value in np.ndenumerate(pivot.to_numpy()):
            if np.isfinite(value):
                axis.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=6,
                          color="white" if value < np.nanmean(pivot.to_numpy()) else "black")
        columns = list(pivot.columns)
        for crossing in self.crossings:
            if crossing.target.metric == metric and crossing.reached:
                row = list(pivot.index).index(crossing.guidance_scale)
                col = columns.index(crossing.strength)
                axis.add_patch(plt.Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
        axis.set_xlabel("strength")
        axis.set_ylabel("guidance scale")
        axis.set_title(f"{metric} (mean) over strength × guidance; red: crossing of {metric} targets", fontsize=10)
        figure.colorbar(shown, ax=axis, fraction=0.03)
        figure.tight_layout()
        return figure

    # ------------------------------------------------------------------ persistence
    def save(self, run_dir: str | os.PathLike | None = None, *, subfolder: str | None = None) -> Path:
        """Write ``calibration/`` (or ``calibration/<subfolder>/``, one per model of a comparison) into the run
        folder: summary.csv, reference_table.csv (all guidance values), folklore.csv, calibration.json (crossings,
        recommendations, settings, counts), calibration.md, calibration.html, curves.png and heatmap.png. Every
        file is written atomically."""
        import matplotlib.pyplot as plt
        import pandas as pd

        from img2img_lab.store import atomic_write

        from img2img_lab.store import RunStore

        folder = RunStore(run_dir or self.run_dir).calibration_dir(subfolder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / "summary.csv", lambda s: self.summary.to_csv(s, index=False), binary=False)
        reference = pd.concat([self.reference_table(g) for g in self.guidance_values], ignore_index=True)
        atomic_write(folder / "reference_table.csv", lambda s: reference.to_csv(s, index=False), binary=False)
        folklore = pd.concat([self.folklore_comparison(g) for g in self.guidance_values], ignore_index=True)
        atomic_write(folder / "folklore.csv", lambda s: folklore.to_csv(s, index=False), binary=False)
        document = {
            "settings": {**asdict(self.settings), "keep": [t.describe() for t in self.settings.keep],
                         "follow": [t.describe() for t in self.settings.follow]},
            "counts": self.counts,
            "crossings": [crossing.to_dict() for crossing in self.crossings],
            "knees": self.knees,
            "recommendations": {key: asdict(value) for key, value in self.recommendations.items()},
        }
        atomic_write(folder / "calibration.json", lambda s: s.write(json.dumps(document, indent=2, default=_json)),
                     binary=False)
        atomic_write(folder / "calibration.md", lambda s: s.write(self.to_markdown()), binary=False)
        atomic_write(folder / "calibration.html", lambda s: s.write(self.to_html()), binary=False)
        for name, figure in (("curves.png", self.figure()), ("heatmap.png", self.heatmap())):
            atomic_write(folder / name, lambda s: figure.savefig(s, format="png"))
            plt.close(figure)
        return folder


def _json(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


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
