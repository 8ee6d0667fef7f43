"""The result of a calibration: the summary, crossings and recommendations, the strength reference table and the
folklore comparison (numbers and verdicts), and its files; :mod:`img2img_lab.calibration.render` draws and writes it
out as people read it (Markdown, HTML, figures).

>>> FOLKLORE[0]  # the folklore band a measured table is compared with
(0.1, 0.2, 'subtle texture changes', 'keeps composition')
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from img2img_lab.errors import Img2ImgLabError
from img2img_lab.calibration.settings import CalibrationSettings
from img2img_lab.calibration.crossings import target_holds

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
        from img2img_lab.metrics.registry import METRICS, load_plugins

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

        >>> result.reference_table().columns[:4].tolist()
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
        """:meth:`reference_table` as people read it (:func:`img2img_lab.calibration.render.reference_table_text`).

        >>> result.reference_table_text()["strengths"].tolist()
        ['0–0.5', '1']
        """
        from img2img_lab.calibration.render import reference_table_text

        return reference_table_text(self, guidance_scale)


    def _thumbnail(self, guidance: float, strength: float) -> str | None:
        table = self.table
        match = table[np.isclose(table["guidance_scale"], guidance) & np.isclose(table["strength"], strength)]
        if match.empty:
            return None
        match = match.sort_values(["source_name", "prompt", "seed"])
        return str(match["output_path"].iloc[0])

    def folklore_comparison(self, guidance_scale: float | None = None):
        """The folklore bands next to what was measured at those strengths, and whether they agree.

        ``measured at`` names the tested strengths the verdict comes from: those inside the band, else the nearest
        tested strength (marked ``nearest``), so a coarse grid never passes for a measurement inside the band.

        >>> result.folklore_comparison()[["folklore strengths", "measured", "measured at"]].head(2)
          folklore strengths           measured  measured at
        0            0.1–0.2  keeps composition   nearest: 0
        1           0.3–0.45  keeps composition  nearest: 0.5
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
            measured_at = ", ".join(f"{value:g}" for value in summary["strength"][inside])
            if not measured:  # no tested strength in the band: the nearest one, said as such
                nearest = int(np.argmin(np.abs(summary["strength"].to_numpy() - (low + high) / 2)))
                measured = [verdicts[nearest]]
                measured_at = f"nearest: {summary['strength'].iloc[nearest]:g}"
            agrees = measured == [implied] or (implied == "keeps composition" and
                                               set(measured) <= {"keeps composition", "keeps composition, follows prompt"})
            rows.append({"guidance_scale": guidance, "folklore strengths": f"{low:g}" if low == high else f"{low:g}–{high:g}",
                         "folklore says": claim, "implies": implied, "measured": " / ".join(measured),
                         "measured at": measured_at,
                         "agrees": "yes" if agrees else "no"})
        return pd.DataFrame(rows)

    # ------------------------------------------------------------------ renderings
    def to_markdown(self) -> str:
        """The reference table(s), recommendations, crossings and folklore comparison as Markdown
        (:func:`img2img_lab.calibration.render.calibration_markdown`)."""
        from img2img_lab.calibration.render import calibration_markdown

        return calibration_markdown(self)


    def to_html(self, *, embed_images: bool = True, link_from=None) -> str:
        """A self-contained HTML fragment (:func:`img2img_lab.calibration.render.calibration_html`); its thumbnails
        link to their full-size images relative to the folder ``link_from`` (default: the current one)."""
        from img2img_lab.calibration.render import calibration_html

        return calibration_html(self, embed_images=embed_images, link_from=link_from)



    def figure(self, metrics=None, *, x: str = "strength"):
        """Curves with CI bands per guidance (:func:`img2img_lab.calibration.render.calibration_curves`)."""
        from img2img_lab.calibration.render import calibration_curves

        return calibration_curves(self, metrics, x=x)


    def heatmap(self, metric: str | None = None):
        """Strength x guidance heatmap of a metric (:func:`img2img_lab.calibration.render.calibration_heatmap`)."""
        from img2img_lab.calibration.render import calibration_heatmap

        return calibration_heatmap(self, metric)


    # ------------------------------------------------------------------ persistence
    def save(self, run_dir: str | os.PathLike | None = None, *, subfolder: str | None = None) -> Path:
        """Write ``calibration/`` (or ``calibration/<subfolder>/``, one per model of a comparison) into the run
        folder: summary.csv, reference_table.csv (all guidance values), folklore.csv, calibration.json (crossings,
        recommendations, settings, counts), calibration.md, calibration.html, curves.png and heatmap.png. Every
        file is written atomically."""
        import matplotlib.pyplot as plt
        import pandas as pd

        from img2img_lab.store.run_store import atomic_write

        from img2img_lab.store.run_store import RunStore

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
        atomic_write(folder / "calibration.html", lambda s: s.write(self.to_html(link_from=folder)), binary=False)
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
