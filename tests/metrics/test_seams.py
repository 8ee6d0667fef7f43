"""The seam metric (issue #41) against a reference implementation written from its definition, on known images."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image, ImageFilter

from img2img_lab.metrics.measure import measure_pairs
from img2img_lab.metrics.registry import metric_spec
from img2img_lab.metrics.seams import seam


def _reference_seam(source, output, mask, width=2):
    """The definition, written out: explicit 3x3 Sobel kernels on edge-padded images, a band from explicit distances."""
    def energy(image, band):
        array = np.pad(np.asarray(image, np.float64) / 255.0, ((1, 1), (1, 1), (0, 0)), mode="edge")
        gx = np.zeros(array.shape[:2])[1:-1, 1:-1][..., None].repeat(3, -1)
        gy = gx.copy()
        kernel = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float64)
        height, width_ = np.asarray(image).shape[:2]
        for dy in range(3):
            for dx in range(3):
                window = array[dy:dy + height, dx:dx + width_]
                gx += kernel[dy, dx] * window
                gy += kernel.T[dy, dx] * window
        return float(((gx ** 2 + gy ** 2).sum(-1))[band].mean())

    mask = np.asarray(mask, bool)
    ys, xs = np.indices(mask.shape)
    inside, outside = np.argwhere(mask), np.argwhere(~mask)

    def near(points):  # within `width` 4-connected steps: city-block distance <= width
        found = np.zeros(mask.shape, bool)
        for y, x in points:
            found |= np.abs(ys - y) + np.abs(xs - x) <= width
        return found

    band = near(inside) & near(outside)
    return (energy(output, band) + 1e-6) / (energy(source, band) + 1e-6)


def _known_images():
    ramp = np.tile(np.linspace(20, 230, 48)[None, :, None], (48, 1, 3))
    ramp[..., 1] = np.linspace(200, 40, 48)[:, None]  # a colour gradient both ways
    source = ramp.round().astype(np.uint8)
    mask = np.zeros((48, 48), bool)
    mask[12:36, 10:30] = True  # the kept subject
    hard = source.copy()
    hard[~mask] = np.clip(source[~mask].astype(int) + np.array([50, -30, 20]), 0, 255)  # repainted, pasted hard
    blurred = Image.fromarray((mask * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(3))
    weight = np.asarray(blurred, np.float64)[..., None] / 255
    soft = (weight * source + (1 - weight) * hard).round().astype(np.uint8)  # the same, through a blurred mask
    return source, mask, hard, soft


def test_seam_equals_its_reference_on_known_images():
    source, mask, hard, soft = _known_images()
    for output in (source, hard, soft):
        assert seam(source, output, mask) == pytest.approx(_reference_seam(source, output, mask), rel=1e-9)
    assert seam(source, source, mask) == 1.0
    # a hard paste leaves a seam; the blurred mask blends it (lower, still above the untouched source)
    assert seam(source, hard, mask) > 1.5 * seam(source, soft, mask) > 3  # measured: 10.16 and 5.30


def test_seam_is_registered_and_needs_the_mask():
    source, mask, hard, _ = _known_images()
    spec = metric_spec("seam")
    assert spec.needs_mask and not spec.higher_is_better
    values = measure_pairs([source], [hard], ["seam", "ssim@subject"], masks=[mask])
    assert values["seam"][0] == pytest.approx(seam(source, hard, mask))
    assert values["ssim@subject"][0] == 1.0
    assert math.isnan(seam(source, hard, np.zeros((48, 48), bool)))  # no edge: NaN
