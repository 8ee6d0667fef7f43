"""Fidelity inside and outside a region: "keep the product, change the background" measured with a subject mask.

A region metric is named ``<metric>@<region>``: ``ssim@subject``, ``delta_e@background``, ``pie_psnr@background``.
The mask is ``True`` on the subject (:mod:`img2img_lab.metrics.masks` makes and stores it); ``subject`` is the mask,
``background`` everything else.

**How (the default).** Only the region's changes count: the output is first composited onto the source outside the
region (``where(region, output, source)``), then

==================  ===================================================================================
``ssim@R``          the SSIM map (paper settings, as :func:`img2img_lab.metrics.measure.ssim`) averaged over R's pixels
``psnr@R``, ``mse@R``  over R's pixels (PSNR on 0..255, MSE on [0, 1] intensities)
``delta_e@R``       mean CIEDE2000 over R's pixels
``lpips@R``         LPIPS (AlexNet) of the crop of R's bounding box (sides at least 32 px)
==================  ===================================================================================

so a region the output leaves untouched scores exactly as identical images do (SSIM 1, ΔE 0, PSNR inf), whatever
happened elsewhere.

**PIE-Bench mode** (``pie_*``, for comparison with image-editing papers; Ju et al. 2024, PnPInversion's
``evaluation/matrics_calculator.py``): both images multiplied by the region's mask (zero-filled, not cropped) on
[0, 1] intensities, then the whole-image torchmetrics scores: ``pie_psnr`` (data range 1), ``pie_mse``, ``pie_ssim``
(Gaussian 11x11, sigma 1.5, data range 1) and ``pie_lpips`` (SqueezeNet, inputs in [-1, 1]). Zero-filling makes
images look more alike as the region shrinks: use it to compare with published numbers, not to calibrate.

A region with no pixels scores NaN.

>>> import numpy as np
>>> source = np.zeros((32, 32, 3), np.uint8); output = source.copy(); output[:, 16:] = 255
>>> mask = np.zeros((32, 32), bool); mask[:, :16] = True  # the subject: the left half
>>> scores = region_scores(source, output, mask, ["ssim@subject", "delta_e@subject", "delta_e@background"])
>>> {name: round(value, 3) for name, value in scores.items()}  # black to white: ΔE 100
{'ssim@subject': 1.0, 'delta_e@subject': 0.0, 'delta_e@background': 100.0}
"""

from __future__ import annotations

import math

import numpy as np

from img2img_lab.errors import Img2ImgLabError

REGIONS = ("subject", "background")
#: Base metrics a region metric can use, and how each is computed (see the module doc).
REGION_BASES = ("ssim", "psnr", "mse", "delta_e", "lpips", "pie_psnr", "pie_mse", "pie_ssim", "pie_lpips")
#: The border skimage's mean SSIM leaves out: half the 11x11 Gaussian window.
SSIM_PAD = 5
#: Smallest side of the crop LPIPS sees (AlexNet's receptive field needs some context).
MIN_LPIPS_CROP = 32


def split_name(name: str) -> tuple[str, str] | None:
    """``("ssim", "subject")`` for ``"ssim@subject"``; ``None`` for a name without ``@``; a one-line error for a bad one.

    >>> split_name("delta_e@background"), split_name("ssim")
    (('delta_e', 'background'), None)
    """
    if "@" not in name:
        return None
    base, _, region = name.partition("@")
    if region not in REGIONS:
        raise Img2ImgLabError(f"unknown region {region!r} in metric {name!r}. Fix: use {base}@subject or "
                              f"{base}@background.")
    if base not in REGION_BASES:
        raise Img2ImgLabError(f"metric {base!r} has no region form ({name!r}). Fix: use one of "
                              f"{', '.join(f'{b}@{region}' for b in REGION_BASES)}.")
    return base, region


def region_mask(mask, region: str) -> np.ndarray:
    """The boolean pixels of ``region`` (``subject``: the mask, ``background``: the rest)."""
    mask = np.asarray(mask).astype(bool)
    return mask if region == "subject" else ~mask


def _arrays(source, output):
    from img2img_lab.images.arrays import metric_pair

    return metric_pair(source, output)


def masked_scores(source, output, region: np.ndarray, bases) -> dict[str, float]:
    """The default region scores (see the module doc) of the pixels ``region`` for each base metric in ``bases``."""
    a, b = _arrays(source, output)
    if region.shape != a.shape[:2]:
        raise Img2ImgLabError(f"the mask is {region.shape[1]}x{region.shape[0]} but the image is "
                              f"{a.shape[1]}x{a.shape[0]}. Fix: give a mask of the image's size.")
    if not region.any():
        return {base: math.nan for base in bases}
    composite = np.where(region[..., None], b, a)
    scores = {}
    for base in bases:
        if base == "ssim":
            scores[base] = _masked_ssim(a, composite, region)
        elif base in ("psnr", "mse"):
            error = ((a[region].astype(np.float64) - composite[region].astype(np.float64)) / 255.0) ** 2
            mse = float(error.mean())
            scores[base] = mse if base == "mse" else (math.inf if mse == 0 else 10 * math.log10(1.0 / mse))
        elif base == "delta_e":
            scores[base] = _masked_delta_e(a, composite, region)
        elif base == "lpips":
            scores[base] = _cropped_lpips(a, composite, region)
    return scores


def _masked_ssim(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    _, full = structural_similarity(a, b, data_range=255, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, full=True)
    # like skimage's mean SSIM, leave out the 5-px image border (windows that hang over the edge), so that a region
    # of the whole image scores exactly the whole-image SSIM; a region only at the border keeps its pixels
    inner = np.zeros_like(region)
    inner[SSIM_PAD:-SSIM_PAD, SSIM_PAD:-SSIM_PAD] = True
    pixels = region & inner if (region & inner).any() else region
    return float(full.mean(axis=2)[pixels].mean())


def _masked_delta_e(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    from skimage.color import deltaE_ciede2000, rgb2lab

    return float(deltaE_ciede2000(rgb2lab(a[region][None]), rgb2lab(b[region][None])).mean())


def _cropped_lpips(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    from img2img_lab.errors import MetricUnavailable
    from img2img_lab.metrics.lpips_metric import lpips_distances

    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    top, bottom = _span(rows[0], rows[-1] + 1, a.shape[0])
    left, right = _span(cols[0], cols[-1] + 1, a.shape[1])
    try:
        return float(lpips_distances([a[top:bottom, left:right]], [b[top:bottom, left:right]])[0])
    except MetricUnavailable:
        return math.nan


def _span(start: int, stop: int, size: int) -> tuple[int, int]:
    """``[start, stop)`` widened to at least :data:`MIN_LPIPS_CROP` (or the whole side), inside ``[0, size)``."""
    width = min(size, max(MIN_LPIPS_CROP, stop - start))
    start = max(0, min(start - (width - (stop - start)) // 2, size - width))
    return start, start + width


def pie_bench_scores(source, output, region: np.ndarray, bases) -> dict[str, float]:
    """PIE-Bench's region scores (zero-filled outside ``region``, whole-image torchmetrics scores on [0, 1]).

    >>> source = np.full((16, 16, 3), 100, np.uint8); output = source.copy(); output[:8] = 200
    >>> region = np.zeros((16, 16), bool); region[8:] = True
    >>> pie_bench_scores(source, output, region, ["pie_mse", "pie_psnr"])
    {'pie_mse': 0.0, 'pie_psnr': inf}
    """
    import torch

    a, b = _arrays(source, output)
    if not region.any():
        return {base: math.nan for base in bases}
    weight = region.astype(np.float32)[..., None]
    x = torch.from_numpy(a.astype(np.float32) / 255 * weight).permute(2, 0, 1)[None]
    y = torch.from_numpy(b.astype(np.float32) / 255 * weight).permute(2, 0, 1)[None]
    scores = {}
    for base in bases:
        if base in ("pie_mse", "pie_psnr"):
            mse = float(((y - x) ** 2).mean())
            scores[base] = mse if base == "pie_mse" else (math.inf if mse == 0 else 10 * math.log10(1.0 / mse))
        elif base == "pie_ssim":
            from torchmetrics.functional.image import structural_similarity_index_measure

            scores[base] = float(structural_similarity_index_measure(y, x, data_range=1.0))
        elif base == "pie_lpips":
            scores[base] = _pie_lpips(x, y)
    return scores


def _pie_lpips(x, y) -> float:
    from img2img_lab.errors import MetricUnavailable
    from img2img_lab.metrics.lpips_metric import lpips_distances

    def image(tensor):
        return (tensor[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)

    try:
        return float(lpips_distances([image(x)], [image(y)], net="squeeze")[0])
    except MetricUnavailable:
        return math.nan


def region_scores(source, output, mask, names) -> dict[str, float]:
    """Every region metric in ``names`` for one pair and its subject mask (and ``seam``: :mod:`img2img_lab.metrics.seams`).

    >>> scores = region_scores(image, output, np.ones((64, 64), bool), ["psnr@background", "ssim@subject"])
    >>> scores["psnr@background"], round(scores["ssim@subject"], 3)  # no background: NaN; the subject: whole-image SSIM
    (nan, 0.559)
    """
    scores: dict[str, float] = {}
    if "seam" in names:
        from img2img_lab.metrics.seams import seam

        scores["seam"] = seam(source, output, mask)
    regional = [name for name in names if name != "seam"]
    for region in REGIONS:
        wanted = [split_name(name)[0] for name in regional if split_name(name)[1] == region]
        if not wanted:
            continue
        pixels = region_mask(mask, region)
        default = masked_scores(source, output, pixels, [base for base in wanted if not base.startswith("pie_")])
        pie = pie_bench_scores(source, output, pixels, [base for base in wanted if base.startswith("pie_")])
        scores.update({f"{base}@{region}": value for base, value in {**default, **pie}.items()})
    return {name: scores[name] for name in names}

