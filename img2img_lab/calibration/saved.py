"""A calibration as :meth:`img2img_lab.calibration.result.CalibrationResult.save` left it in a run folder, read back
without a model or a recomputation: the per-strength summary, the reference table (bands per guidance) and the
recommendations. The grid explorer's reference-table widget reads it.

>>> saved = read_saved_calibration("runs/calibrate")
>>> saved.guidance_values, saved.bands(2.0)[["strength_min", "strength_max", "verdict"]].values.tolist()
([2.0], [[0.0, 0.5, 'keeps composition'], [1.0, 1.0, '≈ text-to-image']])
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from img2img_lab.errors import StoreError
from img2img_lab.store.run_store import RunStore


@dataclass
class SavedCalibration:
    """The files of one saved calibration: ``summary`` (one row per guidance x strength with each metric's mean and
    CI), ``reference`` (one row per band), ``recommendations`` (goal key -> dict) and ``metrics`` (calibrated)."""

    folder: Path
    summary: object
    reference: object
    recommendations: dict
    metrics: list

    @property
    def guidance_values(self) -> list[float]:
        return sorted(float(value) for value in self.reference["guidance_scale"].unique())

    def bands(self, guidance_scale: float):
        """The reference table's bands at one guidance, lowest strengths first."""
        bands = self.reference[np.isclose(self.reference["guidance_scale"], float(guidance_scale))]
        if bands.empty:
            raise StoreError(f"no calibration at guidance {guidance_scale:g} in {self.folder}. Fix: use one of "
                             f"{', '.join(f'{value:g}' for value in self.guidance_values)}.")
        return bands.sort_values("strength_min").reset_index(drop=True)

    def band_strengths(self, guidance_scale: float, band: int) -> list[float]:
        """The tested strengths inside one band (from the summary, so refinement strengths are included)."""
        row = self.bands(guidance_scale).iloc[band]
        summary = self.at_guidance(guidance_scale)
        inside = (summary["strength"] >= row["strength_min"] - 1e-9) & (summary["strength"] <= row["strength_max"] + 1e-9)
        return sorted(float(value) for value in summary.loc[inside, "strength"])

    def band_of(self, guidance_scale: float, strength: float) -> int:
        """The index of the band holding ``strength`` (the nearest band when none does)."""
        bands = self.bands(guidance_scale)
        centres = (bands["strength_min"] + bands["strength_max"]) / 2
        inside = (bands["strength_min"] <= strength + 1e-9) & (bands["strength_max"] >= strength - 1e-9)
        return int(np.flatnonzero(inside.to_numpy())[0]) if inside.any() else int(np.argmin(np.abs(centres - strength)))

    def at_guidance(self, guidance_scale: float):
        return self.summary[np.isclose(self.summary["guidance_scale"], float(guidance_scale))]

    def strength_statistics(self, guidance_scale: float, strength: float) -> dict:
        """``{metric: (mean, ci_low, ci_high)}`` at one guidance and strength (over every source, prompt and seed)."""
        summary = self.at_guidance(guidance_scale)
        match = summary[np.isclose(summary["strength"], float(strength))]
        if match.empty:
            return {}
        row = match.iloc[0]
        return {metric: (float(row[metric]), float(row[f"{metric}_ci_low"]), float(row[f"{metric}_ci_high"]))
                for metric in self.metrics if f"{metric}_ci_low" in row.index}


def read_saved_calibration(run, *, subfolder: str | None = None) -> SavedCalibration | None:
    """The calibration saved in a run folder, or ``None`` when it holds none. With a models comparison
    (``calibration/<model>/``) ``subfolder`` names the model (default: the first)."""
    import pandas as pd

    store = run if isinstance(run, RunStore) else RunStore.open(run)
    folder = store.calibration_dir(subfolder)
    if not (folder / "calibration.json").is_file() and subfolder is None:
        nested = sorted(path.parent for path in folder.glob("*/calibration.json"))
        folder = nested[0] if nested else folder
    needed = [folder / name for name in ("calibration.json", "summary.csv", "reference_table.csv")]
    if not all(path.is_file() for path in needed):
        return None
    try:
        document = json.loads(needed[0].read_text())
        summary, reference = pd.read_csv(needed[1]), pd.read_csv(needed[2])
    except (OSError, ValueError) as error:
        raise StoreError(f"{folder}: the saved calibration cannot be read ({error}). Fix: run "
                         f"`img2img-lab calibrate` on this folder again (it rewrites the files, computing nothing "
                         f"new).") from None
    metrics = [metric for metric in document.get("settings", {}).get("metrics", []) if metric in summary.columns]
    return SavedCalibration(Path(folder), summary, reference, document.get("recommendations", {}), metrics)

