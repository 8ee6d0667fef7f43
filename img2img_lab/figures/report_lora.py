"""The report's LoRA × strength section: for a study that swept adapter settings (the ``loras`` axis), a heatmap per
measured metric of its mean over sources, prompts and seeds — one row per adapter setting, one column per strength —
with the number of images behind each cell (:mod:`img2img_lab.plan.lora_settings`).
"""

from __future__ import annotations

import html

#: Metrics drawn, in order, when measured (the oracle's style and subject readings first).
LORA_METRICS = ("oracle_outlined", "oracle_subject_kept", "ssim", "lpips", "clip_score", "oracle_adherence",
                "delta_e", "psnr")


def lora_heatmap(table, metric: str):
    """A matplotlib figure: ``metric``'s mean per (adapter setting, strength), annotated; rows in the order of the
    adapters' scales.

    >>> import pandas as pd
    >>> table = pd.DataFrame({"lora": ["none", "none", "s 1", "s 1"], "strength": [0.5, 1.0, 0.5, 1.0],
    ...                       "ssim": [0.9, 0.5, 0.7, 0.3]})
    >>> figure = lora_heatmap(table, "ssim")
    >>> [text.get_text() for text in figure.axes[0].get_yticklabels()]
    ['none', 's 1']
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = table.pivot_table(index="lora", columns="strength", values=metric, aggfunc="mean")
    counts = table.pivot_table(index="lora", columns="strength", values=metric, aggfunc="count")
    order = sorted(grid.index, key=lambda name: (name != "none", _scale_of(name), name))
    grid, counts = grid.loc[order], counts.loc[order]
    figure, axes = plt.subplots(figsize=(1.4 + 1.1 * len(grid.columns), 0.9 + 0.45 * len(grid.index)))
    image = axes.imshow(grid.to_numpy(dtype=float), cmap="viridis", aspect="auto")
    for row in range(grid.shape[0]):
        for column in range(grid.shape[1]):
            value = grid.iat[row, column]
            light = value == value and image.norm(value) > 0.6  # dark text on viridis' light end
            axes.text(column, row, "–" if value != value else f"{value:.2f}\n(n={int(counts.iat[row, column])})",
                      ha="center", va="center", fontsize=7, color="black" if light else "white")
    axes.set_xticks(range(grid.shape[1]), [f"{value:g}" for value in grid.columns])
    axes.set_yticks(range(grid.shape[0]), list(grid.index))
    axes.set_xlabel("strength")
    axes.set_ylabel("LoRA setting")
    axes.set_title(f"{metric}: mean per LoRA setting and strength", fontsize=9)
    figure.colorbar(image, ax=axes, fraction=0.05)
    figure.tight_layout()
    return figure


def _scale_of(name: str) -> float:
    """The last scale a setting's words give (``outline 0.5`` -> 0.5), for ordering rows."""
    try:
        return float(str(name).rsplit(" ", 1)[-1])
    except ValueError:
        return 0.0


def lora_section_body(table) -> str | None:
    """The section's HTML, or ``None`` when the study ran one adapter setting (or none) or measured nothing."""
    from img2img_lab.figures.style import png_tag

    if "lora" not in table.columns or table["lora"].nunique() < 2:
        return None
    metrics = [metric for metric in LORA_METRICS if metric in table.columns and table[metric].notna().any()]
    if not metrics:
        return ("<p class='muted'>Several LoRA settings, no metric measured yet: <code>img2img-lab measure "
                "RUN_DIR</code>.</p>")
    parts = [f"<p>{table['lora'].nunique()} LoRA settings × {table['strength'].nunique()} strengths; each cell is the "
             f"mean over sources, prompts and seeds (n images). The calibration splits by adapter setting: "
             f"<code>img2img-lab calibrate</code> gives each its own reference table.</p>"]
    parts += [png_tag(lora_heatmap(table, metric), alt=f"{html.escape(metric)} per LoRA setting and strength")
              for metric in metrics]
    return "\n".join(parts)
