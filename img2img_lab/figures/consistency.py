"""Catalogue consistency: one prompt and strength over many sources — how alike are the outputs' backgrounds?

A brand photographer restyles a catalogue with one prompt and one strength and wants every product on the same
backdrop. Per output, the **background colour** is the mean CIELAB colour of the pixels outside its source's
subject mask (:mod:`img2img_lab.metrics.masks`); per (prompt, guidance, steps, scheduler, strength, seed) the **spread** is
the mean CIEDE2000 distance between the background colours of every pair of sources (0 = one backdrop everywhere;
2–3 just noticeable; the sources' own backgrounds give the spread before any edit, ``source_spread``). Averaged over
seeds: one row per strength, tidy.

>>> table = catalogue_consistency("runs/two-sources", masks="oracle")  # doctest: +SKIP
>>> table[["strength", "sources", "background_spread"]]  # doctest: +SKIP
"""

from __future__ import annotations

import itertools

import numpy as np

from img2img_lab.errors import Img2ImgLabError

#: What one consistency row is about (everything of a catalogue's setting but the source; the model too, where a
#: folder compares models).
GROUP_COLUMNS = ("model", "mode", "prompt", "negative_prompt", "guidance_scale", "num_inference_steps", "scheduler",
                 "strength")


def background_colour(image, mask) -> np.ndarray:
    """The mean CIELAB colour of the pixels outside ``mask`` (NaN without any).

    >>> float(background_colour(np.full((8, 8, 3), 255, np.uint8), np.zeros((8, 8), bool))[0].round(1))  # white: L* 100
    100.0
    """
    from skimage.color import rgb2lab

    from img2img_lab.images.arrays import metric_array

    outside = ~np.asarray(mask, bool)
    if not outside.any():
        return np.full(3, np.nan)
    return rgb2lab(metric_array(image)[outside][None])[0].mean(axis=0)


def colour_spread(colours) -> float:
    """Mean CIEDE2000 distance over every pair of CIELAB colours (NaN for fewer than two).

    >>> colour_spread([[50, 0, 0], [50, 0, 0]]), round(colour_spread([[0, 0, 0], [100, 0, 0]]), 1)
    (0.0, 100.0)
    """
    from skimage.color import deltaE_ciede2000

    colours = [np.asarray(colour, float) for colour in colours if not np.isnan(colour).any()]
    if len(colours) < 2:
        return float("nan")
    return float(np.mean([deltaE_ciede2000(a, b) for a, b in itertools.combinations(colours, 2)]))


def catalogue_consistency(run, *, masks=None):
    """One row per prompt x guidance x steps x scheduler x strength: ``sources``, ``seeds``, ``background_spread``
    (mean over seeds of :func:`colour_spread` of the outputs' background colours), its seed-to-seed ``spread_sd``,
    and ``source_spread`` (the same of the sources themselves). ``masks`` as in
    :func:`img2img_lab.metrics.masks.resolve_masks` (default: the folder's stored masks, else automatic ones)."""
    import pandas as pd

    from img2img_lab.metrics.masks import resolve_masks
    from img2img_lab.store.run_store import RunStore

    store = run if isinstance(run, RunStore) else RunStore.open(run)
    table = store.read_table()
    if table.empty or table["source_hash"].nunique() < 2:
        raise Img2ImgLabError(f"{store.root}: catalogue consistency compares outputs across sources; this run has "
                              f"{table['source_hash'].nunique() if len(table) else 0}. Fix: sweep two or more sources.")
    names = dict(zip(table["source_hash"], table["source_name"]))
    source_masks = resolve_masks(store, names, masks or "auto", remake=masks is not None)
    source_colours = {h: background_colour(store.load_source(h), source_masks[h]) for h in names}
    colours = [background_colour(store.load_output(row), source_masks[row["source_hash"]])
               for row in table.to_dict("records")]
    table = table.assign(_colour=colours)
    keys = [column for column in GROUP_COLUMNS if column in table.columns]  # folders before the model column
    rows = []
    for key, group in table.groupby(keys, sort=True):
        spreads = [colour_spread(list(per_seed["_colour"])) for _, per_seed in group.groupby("seed")]
        rows.append({**dict(zip(keys, key)), "sources": group["source_hash"].nunique(),
                     "seeds": group["seed"].nunique(), "background_spread": float(np.nanmean(spreads)),
                     "spread_sd": float(np.nanstd(spreads)),
                     "source_spread": colour_spread([source_colours[h] for h in group["source_hash"].unique()])})
    return pd.DataFrame(rows)


def consistency_curve(consistency):
    """Background spread against strength, one line per setting (prompt, guidance and whatever else differs: model,
    negative prompt, steps, scheduler), the sources' own spread dashed."""
    import matplotlib.pyplot as plt

    from img2img_lab.figures.style import axis_label

    figure, axis = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    setting = [column for column in GROUP_COLUMNS if column in consistency.columns and column != "strength"]
    shown = [column for column in setting if column in ("prompt", "guidance_scale")
             or consistency[column].nunique() > 1]
    for key, part in consistency.groupby(setting, sort=True):
        values = dict(zip(setting, key if isinstance(key, tuple) else (key,)))
        part = part.sort_values("strength")
        line, = axis.plot(part["strength"], part["background_spread"], marker="o",
                          label=" · ".join(axis_label(column, values[column]) for column in shown))
        axis.fill_between(part["strength"], part["background_spread"] - part["spread_sd"],
                          part["background_spread"] + part["spread_sd"], color=line.get_color(), alpha=0.15)
    axis.axhline(consistency["source_spread"].iloc[0], color="gray", linestyle="--", label="the sources' spread")
    axis.set_xlabel("strength")
    axis.set_ylabel("background spread (mean pairwise ΔE2000)")
    axis.set_title("catalogue consistency (lower = one backdrop for every source; band: ±1 sd over seeds)",
                   fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    return figure

