"""How visible the boundary of an inpainted region is: the seam metric.

Inpainting repaints one side of a mask; where a tool pastes the source back (A1111's overlay, diffusers'
``apply_overlay``, a ComfyUI composite node) a hard mask edge can leave a seam: a step in colour or brightness that
the source did not have. ``seam`` compares the output's gradient energy with the source's in a thin band around the
mask's edge::

    band  = pixels within SEAM_BAND (2) 4-connected steps of both the mask and the rest (its edge, both sides)
    E(x)  = mean over the band of |Sobel_x(x)|^2 + |Sobel_y(x)|^2, summed over R, G, B on [0, 1] (borders: nearest)
    seam  = (E(output) + eps) / (E(source) + eps),   eps = 1e-6

1 means the boundary is exactly as sharp as in the source; above 1 the output has more edge there than the source
had (a seam, or a new contrast between a kept subject and a new background); below 1 it is softer (a blurred mask
blends it). It needs the subject mask (``measure --metrics seam --masks oracle|auto|FOLDER``), like the region
metrics, and is NaN where the mask has no edge (empty or full).

>>> import numpy as np
>>> source = np.tile(np.linspace(0, 255, 32).astype(np.uint8)[None, :, None], (32, 1, 3))  # a smooth ramp
>>> mask = np.zeros((32, 32), bool); mask[:, :16] = True
>>> seam(source, source, mask)
1.0
>>> stepped = source.copy(); stepped[:, 16:] = np.clip(source[:, 16:].astype(int) + 60, 0, 255)
>>> round(seam(source, stepped, mask), 1)  # a step of 60 levels at the mask's edge
11.1
"""

from __future__ import annotations

import math

import numpy as np

#: Half the width of the band around the mask's edge, in pixels (each side).
SEAM_BAND = 2
#: Added to both energies: a flat band in both images reads 1, not 0/0.
SEAM_EPS = 1e-6


def seam_band(mask, *, width: int = SEAM_BAND) -> np.ndarray:
    """The pixels within ``width`` 4-connected steps (city-block distance) of both ``mask`` and the rest: its edge, on
    both sides.

    >>> mask = np.zeros((8, 8), bool); mask[:, :4] = True
    >>> seam_band(mask, width=1)[0].astype(int).tolist()
    [0, 0, 0, 1, 1, 0, 0, 0]
    """
    from scipy import ndimage

    mask = np.asarray(mask).astype(bool)
    return ndimage.binary_dilation(mask, iterations=width) & ndimage.binary_dilation(~mask, iterations=width)


def gradient_energy(image, band: np.ndarray) -> float:
    """Mean squared Sobel gradient magnitude of ``image`` (RGB on [0, 1], channels summed) over ``band``'s pixels."""
    from scipy import ndimage

    array = np.asarray(image, dtype=np.float64) / 255.0
    energy = sum(ndimage.sobel(array[..., channel], axis=axis, mode="nearest") ** 2
                 for channel in range(array.shape[-1]) for axis in (0, 1))
    return float(energy[band].mean())


def seam(source, output, mask, *, width: int = SEAM_BAND) -> float:
    """The seam metric (see the module doc): the output's gradient energy in the band around the mask's edge over
    the source's; NaN where the mask has no edge."""
    from img2img_lab.images.arrays import metric_pair

    a, b = metric_pair(source, output)
    band = seam_band(mask, width=width)
    if not band.any():
        return math.nan
    return (gradient_energy(b, band) + SEAM_EPS) / (gradient_energy(a, band) + SEAM_EPS)
