"""The report's strength-map section: what the study's strength values run on its model under each tool's rule
(diffusers — what the study ran —, AUTOMATIC1111 / Forge, ComfyUI, InvokeAI; :mod:`img2img_lab.strength.mapping`).

The model's scheduler config is read from where the model lives (the embedded model, a local folder, or the local
Hugging Face cache); where it cannot be found the section says so instead of guessing.
"""

from __future__ import annotations

import html


def _model_specs(store) -> list[str]:
    from img2img_lab.models.loading import EMBEDDED_MODEL_DIR

    manifest = store.read_manifest()
    entries = manifest.get("models") or [{"spec": (manifest.get("plan") or {}).get("model"), "model": manifest["model"]}]
    specs = []
    for entry in entries:
        spec = entry.get("spec") if isinstance(entry, dict) else None
        specs.append(str(EMBEDDED_MODEL_DIR) if spec in (None, "embedded") else str(spec))
    return list(dict.fromkeys(specs))


def strength_section_body(store, table) -> str | None:
    """The section's HTML (``None`` when no model's scheduler config can be read here).

    >>> "comfyui (simple)" in strength_section_body(store, table)  # the embedded model's DDIM config, 10 steps
    True
    """
    from img2img_lab.errors import Img2ImgLabError
    from img2img_lab.figures.style import png_tag, scroll_box
    from img2img_lab.strength.mapping import strength_map, strength_map_figure

    steps = int(table["num_inference_steps"].mode().iloc[0])
    size = int(max(table["width"].max(), table["height"].max()))
    strengths = sorted(float(value) for value in table["strength"].unique())
    parts, shown = [], []
    for spec in _model_specs(store):
        try:
            rows = strength_map(spec, steps=steps, strengths=strengths, size=size)
        except Img2ImgLabError as error:
            parts.append(f"<p>{html.escape(spec)}: not drawn ({html.escape(str(error))})</p>")
            continue
        shown.append(spec)
        rows["run"] = [f"{s} / {snr:.2f}" for s, snr in zip(rows.executed_steps, rows.log_snr)]
        rows["tool"] = [f"{tool} ({schedule})" for tool, schedule in zip(rows.tool, rows.schedule)]
        pivot = rows.pivot(index="tool", columns="strength", values="run")
        parts.append(f"<p><b>{html.escape(spec)}</b>, {steps} steps, {size} px — executed steps / start log-SNR of "
                     f"this study's strengths in each tool, on its default schedule (in brackets):</p>"
                     + scroll_box(pivot.to_html(escape=True)))
    if not shown:
        return None
    figure = strength_map_figure(shown, steps=steps, size=size)
    parts.insert(0, png_tag(figure, alt="start log-SNR and executed steps against strength, per tool"))
    return "\n".join(parts)
