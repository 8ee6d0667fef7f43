"""Edge maps for the edge F1: scikit-image's Canny on the CPU (:func:`edge_map`), the same bits in torch on a GPU.

On the CPU :func:`canny_stack` runs scikit-image's Canny on a stack of channel images at once, bit for bit (tens of
milliseconds for a 512 px image: most of what the fidelity metrics cost once the rest runs on a GPU).
:func:`canny_edges` does the same arithmetic on a batch in torch, in float64 and in scipy's order of operations, so
that its edge maps are the reference's bit for bit (``tests/test_fidelity.py`` compares them):

1. Gaussian smoothing, ``mode="constant"`` (zeros past the border), truncated at 4 sigma, rows then columns, each
   tap pair summed outermost first as scipy's symmetric 1-D correlation does; divided by the smoothed all-ones
   image plus float64 epsilon (scikit-image's bleed-over correction).
2. Sobel gradients (``[-1, 0, 1]`` along the axis, ``[1, 2, 1]`` across; borders reflected) and their magnitude.
3. Non-maximum suppression with bilinear interpolation between the two neighbours along the gradient, inside the
   1-pixel border, at or above the low threshold (which scikit-image hands to C as a float32).
4. Hysteresis: weak edge pixels are kept where their 8-connected component holds a strong one, grown from the
   strong pixels by 3x3 dilations inside the weak mask until nothing changes.

On the CPU the stack is faster (the dilations in step 4 are many small passes), so :mod:`img2img_lab.metrics.fidelity`
uses torch for the edges only on :data:`TORCH_EDGE_DEVICES`.

>>> import torch
>>> image = torch.zeros(1, 32, 32, dtype=torch.float64); image[0, 8:24, 8:24] = 1.0
>>> edges = canny_edges(image)
>>> from skimage.feature import canny
>>> bool((edges[0].numpy() == canny(image[0].numpy())).all()), int(edges.sum())
(True, 72)
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["TORCH_EDGE_DEVICES", "canny_edges", "canny_stack", "dilate", "edge_f1_from_counts", "edge_map", "edge_maps",
           "edge_maps_cpu", "grow"]

#: Device types whose edge maps :func:`edge_maps` computes in torch (float64 arithmetic; MPS has none).
TORCH_EDGE_DEVICES = frozenset({"cuda"})
#: Images per torch Canny call (three channel images each): bounds its float64 temporaries (about 100 MB at 1024 px).
CANNY_IMAGES = 4
#: Channel pixels per CPU Canny stack (:func:`canny_stack`): its float64 temporaries stay near 32 MB each (85 images
#: of 128 px in one stack, 5 of 512 px, one 1024 px image).
CANNY_STACK_PIXELS = 1 << 22
#: scikit-image's defaults for float images in [0, 1]: the low threshold as the float32 its C code receives.
LOW_THRESHOLD, HIGH_THRESHOLD = float(np.float32(0.1)), 0.2


@lru_cache(maxsize=8)
def gaussian_taps(sigma: float, truncate: float = 4.0) -> tuple[float, ...]:
    """scipy's ``gaussian_filter1d`` weights, centre first: ``(w0, w1, ..., wr)`` (symmetric).

    >>> [round(w, 4) for w in gaussian_taps(1.0)]
    [0.3989, 0.242, 0.054, 0.0044, 0.0001]
    """
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x**2)
    phi = phi / phi.sum()
    return tuple(float(value) for value in phi[radius:])


def _along(images, axis: int, pad: int, mode: str):
    """``shifted(d)``: ``images`` moved by ``d`` pixels along ``axis`` (1 rows, 2 columns) of an NxHxW batch, with
    ``pad`` pixels of zeros (``constant``) or of the edge pixel (``replicate``, scipy's reflect for one pixel)."""
    import torch.nn.functional as F

    padding = (pad, pad, 0, 0) if axis == 2 else (0, 0, pad, pad)
    padded = F.pad(images.unsqueeze(1), padding, mode=mode).squeeze(1)
    size = images.shape[axis]
    return lambda d: padded.narrow(axis, pad + d, size)


def _gaussian_1d(images, taps, axis: int):
    """scipy's symmetric correlation: ``x*w0``, then ``+= (x[-d] + x[+d]) * wd`` for d from the radius down."""
    shifted = _along(images, axis, len(taps) - 1, "constant")
    out = images * taps[0]
    for d in range(len(taps) - 1, 0, -1):
        out = out + (shifted(-d) + shifted(d)) * taps[d]
    return out


def _sobel(images, axis: int):
    """scipy's ``ndimage.sobel``: ``next - prev`` along ``axis``, then ``2x + (prev + next)`` across it."""
    shifted = _along(images, axis, 1, "replicate")
    difference = shifted(1) - shifted(-1)
    across = _along(difference, 3 - axis, 1, "replicate")
    return difference * 2.0 + (across(-1) + across(1))


def _smoothed(images, sigma: float):
    import torch

    taps = gaussian_taps(sigma)
    ones = torch.ones_like(images[:1])
    bleed_over = _gaussian_1d(_gaussian_1d(ones, taps, 1), taps, 2) + np.finfo(np.float64).eps
    return _gaussian_1d(_gaussian_1d(images, taps, 1), taps, 2) / bleed_over


def _suppressed(isobel, jsobel, magnitude):
    """Magnitudes kept by non-maximum suppression (bilinear, scikit-image's four cases) and the low threshold."""
    import torch

    rows = _along(magnitude, 1, 1, "constant")

    def at(dx: int, dy: int):  # magnitude[x + dx, y + dy]
        return _along(rows(dx), 2, 1, "constant")(dy)

    abs_i, abs_j = isobel.abs(), jsobel.abs()
    same_sign = (isobel <= 0) == (jsobel <= 0)  # scikit-image's cond1 (else cond2)
    steep = torch.where(same_sign, abs_i > abs_j, abs_i >= abs_j)  # interpolate between rows (else columns)
    w = torch.where(steep, abs_j / abs_i, abs_i / abs_j)
    n1_1 = torch.where(steep, torch.where(same_sign, at(1, 0), at(-1, 0)), at(0, 1))
    n1_2 = torch.where(same_sign, at(1, 1), at(-1, 1))
    n2_1 = torch.where(steep, torch.where(same_sign, at(-1, 0), at(1, 0)), at(0, -1))
    n2_2 = torch.where(same_sign, at(-1, -1), at(1, -1))
    keep = (n1_2 * w + n1_1 * (1.0 - w) <= magnitude) & (n2_2 * w + n2_1 * (1.0 - w) <= magnitude)
    keep &= magnitude >= LOW_THRESHOLD
    keep[:, :1], keep[:, -1:], keep[:, :, :1], keep[:, :, -1:] = False, False, False, False  # the eroded mask
    return torch.where(keep, magnitude, torch.zeros_like(magnitude))


def dilate(masks, radius: int = 1):
    """Binary dilation of an NxHxW bool batch by a (2r+1)-square, zeros past the border (scipy's
    ``binary_dilation`` with ``np.ones((2r+1, 2r+1))``).

    >>> import torch
    >>> int(dilate(torch.eye(4, dtype=torch.bool)[None]).sum())
    14
    """
    import torch.nn.functional as F

    grown = F.max_pool2d(masks.unsqueeze(1).float(), 2 * radius + 1, stride=1, padding=radius)
    return grown.squeeze(1) > 0


def _hysteresis(weak, strong, *, check_every: int = 8):
    """The weak pixels 8-connected to a strong one, by growing ``strong`` inside ``weak`` until it is stable."""
    import torch

    edges = strong & weak
    while True:
        for _ in range(check_every - 1):
            edges = dilate(edges) & weak
        grown = dilate(edges) & weak
        if torch.equal(grown, edges):
            return edges
        edges = grown


def canny_edges(images, *, sigma: float = 1.0):
    """Canny edges of an NxHxW batch of float images in [0, 1] (float64 for the reference's bits), as
    ``skimage.feature.canny(image, sigma)`` with its default thresholds (0.1 and 0.2); returns NxHxW bool.

    >>> import torch
    >>> canny_edges(torch.zeros(2, 16, 16, dtype=torch.float64)).any().item()
    False
    """
    smoothed = _smoothed(images, sigma)
    isobel, jsobel = _sobel(smoothed, 1), _sobel(smoothed, 2)
    magnitude = (isobel * isobel + jsobel * jsobel).sqrt()
    kept = _suppressed(isobel, jsobel, magnitude)
    return _hysteresis(kept > 0, kept >= HIGH_THRESHOLD)


# Adapted from skimage.feature._canny.canny and _preprocess (scikit-image 0.26: no mask, mode "constant"), a stack
def canny_stack(images: np.ndarray, *, sigma: float = 1.0) -> np.ndarray:
    """``skimage.feature.canny(image, sigma)`` of each KxHxW float64 image of a stack at once, bit for bit: scipy's
    filters run along rows and columns only (never across images), scikit-image's non-maximum suppression per image,
    and the hysteresis labels each image's components apart. On the CPU a sweep's outputs take 1.5–2.2x less time
    than one ``canny`` call per channel (64 to 128 px).

    >>> from skimage.feature import canny
    >>> image = np.zeros((32, 32)); image[8:24, 8:24] = 1.0
    >>> stack = np.stack([image, image.T * 0.5, np.zeros((32, 32))])
    >>> [bool((edges == canny(one)).all()) for edges, one in zip(canny_stack(stack), stack)]
    [True, True, True]
    """
    from scipy import ndimage

    suppress = _suppression()
    if suppress is None:  # a scikit-image without the private kernel this stack borrows: one call per image
        from skimage.feature import canny

        return np.stack([canny(image, sigma=sigma) for image in images])
    height, width = images.shape[1:]
    sigmas = (0.0, sigma, sigma)  # scipy skips an axis of sigma 0: rows, then columns, as for one image
    bleed_over = ndimage.gaussian_filter(np.ones((1, height, width)), sigmas, mode="constant") + np.finfo(float).eps
    smoothed = ndimage.gaussian_filter(images, sigmas, mode="constant") / bleed_over
    jsobel, isobel = _sobel_stack(smoothed, 2), _sobel_stack(smoothed, 1)
    magnitude = isobel * isobel
    magnitude += jsobel * jsobel
    np.sqrt(magnitude, out=magnitude)
    eroded = np.zeros((height, width), bool)
    eroded[1:-1, 1:-1] = True
    low = np.stack([suppress(isobel[k], jsobel[k], magnitude[k], eroded, 0.1) for k in range(len(images))])
    low_mask = low > 0
    within_image = np.zeros((3, 3, 3), bool)
    within_image[1] = True  # 8-connected inside one image, never across two
    labels, count = ndimage.label(low_mask, within_image)
    kept = np.zeros(count + 1, bool)
    kept[np.unique(labels[low_mask & (low >= HIGH_THRESHOLD)])] = True
    kept[0] = False
    return kept[labels]


def _suppression():
    """scikit-image's non-maximum suppression kernel (private: ``skimage.feature._canny_cy``, as in 0.26, the locked
    version), or ``None`` where a version lacks it."""
    try:
        from skimage.feature._canny_cy import _nonmaximum_suppression_bilinear
    except ImportError:
        return None
    return _nonmaximum_suppression_bilinear


def _sobel_stack(images: np.ndarray, axis: int) -> np.ndarray:
    """scipy's ``ndimage.sobel`` of each image of a KxHxW stack along ``axis`` (1 rows, 2 columns)."""
    from scipy import ndimage

    output = ndimage.correlate1d(images, [-1, 0, 1], axis, mode="reflect")
    return ndimage.correlate1d(output, [1, 2, 1], 3 - axis, output, mode="reflect")


def edge_map(image, *, sigma: float = 1.0) -> np.ndarray:
    """Canny edges of an RGB image (boolean HxW): the union of each channel's edges (scikit-image's Canny, CPU).

    Per-channel edges catch colour boundaries that luminance misses (yellow on white, blue on black).

    >>> square = np.zeros((32, 32, 3), np.uint8); square[8:24, 8:24] = (0, 0, 255)
    >>> bool(edge_map(square).any())
    True
    """
    from img2img_lab.images.arrays import metric_array

    return edge_maps_cpu([metric_array(image)], sigma=sigma)[0]


def edge_maps_cpu(arrays, *, sigma: float = 1.0) -> np.ndarray:
    """:func:`edge_map` of HxWx3 uint8 arrays of one size (NxHxW bool), in stacks of :data:`CANNY_STACK_PIXELS`.

    >>> square = np.zeros((32, 32, 3), np.uint8); square[8:24, 8:24] = (0, 0, 255)
    >>> edge_maps_cpu([square, square[::-1]]).shape, edge_maps_cpu([]).shape
    ((2, 32, 32), (0, 0, 0))
    """
    arrays = list(arrays)
    if not arrays:
        return np.zeros((0, 0, 0), bool)
    per_stack = max(1, CANNY_STACK_PIXELS // (3 * arrays[0].shape[0] * arrays[0].shape[1]))
    parts = []
    for start in range(0, len(arrays), per_stack):
        chunk = np.stack(arrays[start:start + per_stack])
        count, height, width = chunk.shape[:3]
        channels = chunk.transpose(0, 3, 1, 2).reshape(-1, height, width).astype(np.float64) / 255.0
        parts.append(canny_stack(channels, sigma=sigma).reshape(count, 3, height, width).any(axis=1))
    return np.concatenate(parts)


def edge_maps(pixels, *, sigma: float = 1.0):
    """:func:`edge_map` of an NxHxWx3 uint8 tensor in torch, on its device: NxHxW bool, the same pixels.

    >>> import torch
    >>> square = np.zeros((32, 32, 3), np.uint8); square[8:24, 8:24] = (0, 0, 255)
    >>> bool((edge_maps(torch.from_numpy(square)[None])[0].numpy() == edge_map(square)).all())
    True
    """
    import torch

    count, height, width = pixels.shape[:3]
    parts = []
    for start in range(0, count, CANNY_IMAGES):
        chunk = pixels[start:start + CANNY_IMAGES]
        channels = chunk.permute(0, 3, 1, 2).reshape(-1, height, width).double() / 255.0
        parts.append(canny_edges(channels, sigma=sigma).view(-1, 3, height, width).any(dim=1))
    return torch.cat(parts) if parts else torch.zeros(0, height, width, dtype=torch.bool, device=pixels.device)


def grow(edges: np.ndarray, tolerance: int) -> np.ndarray:
    """Edges dilated by ``tolerance`` pixels (a square; scipy's ``binary_dilation``), for matching within it.

    >>> int(grow(np.eye(4, dtype=bool), 1).sum())
    14
    """
    from scipy.ndimage import binary_dilation

    return binary_dilation(edges, np.ones((2 * tolerance + 1, 2 * tolerance + 1), bool))


def edge_f1_from_counts(source_count: int, count: int, precise: int, recalled: int) -> float:
    """The edge F1 from pixel counts: the source's and the output's edges, the output's edges near a source edge
    (precision's numerator) and the source's near an output edge (recall's). Two edge-free images score 1.

    >>> edge_f1_from_counts(10, 10, 10, 10), edge_f1_from_counts(0, 0, 0, 0), edge_f1_from_counts(4, 0, 0, 0)
    (1.0, 1.0, 0.0)
    """
    if not source_count and not count:
        return 1.0
    if not source_count or not count:
        return 0.0
    precision, recall = float(precise / count), float(recalled / source_count)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
