"""What the widget apps share (:mod:`img2img_lab.widgets.strength_explorer`, :mod:`img2img_lab.widgets.grid_explorer`): the ipywidgets check
with its fix, images and figures as PNG bytes, and a strength's step plan in words.

>>> from PIL import Image
>>> png_bytes(Image.new("RGB", (4, 4)))[:4]
b'\x89PNG'
"""

from __future__ import annotations

import io
from pathlib import Path

from img2img_lab.errors import Img2ImgLabError


def require_ipywidgets():
    """The ipywidgets module, or a one-line error saying how to install it."""
    try:
        import ipywidgets
    except ImportError:
        raise Img2ImgLabError(
            "the widget apps (strength and grid explorers) need ipywidgets. Fix: `make lab`, or `pip install -c constraints.txt "
            "'img2img-lab[lab]'`."
        ) from None
    return ipywidgets


def strength_readout(step) -> str:
    """One line saying what a strength runs: a :class:`~img2img_lab.models.handle.StepPlan` in words.

    >>> from img2img_lab.models.handle import as_model
    >>> from img2img_lab.models.registry import tiny_pipeline
    >>> strength_readout(as_model(tiny_pipeline("sd3")).step_plan("default", 4, 0.3, width=32, height=32))
    'executes 2 of 4 steps · starts at t=602 · noise σ=1.51 (flow σₜ=0.60) · log-SNR -0.83'
    """
    total = step.num_inference_steps
    if step.zero_step:
        return f"executes 0 of {total} steps · no denoising: the output is the VAE round trip of the source"
    evaluations = step.denoiser_evaluations
    calls = "" if evaluations == step.executed_steps else f" ({evaluations} denoiser call{'s' * (evaluations != 1)})"
    kept = (f"(flow σₜ={step.flow_sigma:.2f})" if step.schedule == "flow"
            else f"· signal kept √ᾱ={step.sqrt_alpha_bar:.2f}")
    return (f"executes {step.executed_steps} of {total} steps{calls} · starts at t={step.start_timestep:.0f} · "
            f"noise σ={step.sigma:.2f} {kept} · log-SNR {step.log_snr:.2f}")


def png_bytes(image) -> bytes:
    stream = io.BytesIO()
    image.save(stream, format="PNG")
    return stream.getvalue()


def figure_png(figure) -> bytes:
    stream = io.BytesIO()
    figure.savefig(stream, format="png")
    return stream.getvalue()


def snapshot_html(line: str, caption: str, picture: bytes, curve: bytes, table: str) -> str:
    """A widget app's state as static HTML: a line of text, a picture with its caption, a curve, a table (empty
    pictures are left out, never drawn as broken images).

    >>> snapshot_html("executes 10 of 20 steps", "", b"", b"", "<i>nothing yet</i>")
    '<div class="i2i-snapshot"><p>executes 10 of 20 steps</p><i>nothing yet</i></div>'
    """
    import base64

    def image(data: bytes, width: str) -> str:
        encoded = base64.b64encode(data).decode()
        return f"<img style='max-width:{width}' src='data:image/png;base64,{encoded}'>" if data else ""

    body = [f"<p>{line}</p>", f"<p>{caption}</p>" if picture else "", image(picture, "100%"), image(curve, "640px"),
            table]
    return '<div class="i2i-snapshot">' + "".join(body) + "</div>"


def default_metrics(model) -> list[str]:
    """The metrics the explorer measures: SSIM, MS-SSIM, colour ΔE, edge F1, LPIPS when its weights are
    present, and the shapes-world oracle on the embedded model."""
    from img2img_lab.metrics.availability import metric_status
    from img2img_lab.models.loading import EMBEDDED_MODEL_DIR

    names = ["ssim", "ms_ssim", "delta_e", "edge_f1"]
    if metric_status("lpips")[0]:
        names.append("lpips")
    folder = model.folder
    if folder and Path(folder).resolve() == Path(EMBEDDED_MODEL_DIR).resolve():
        names += ["oracle_kept", "oracle_match"]
    return names
