"""Fidelity of an output to its source (SSIM, MS-SSIM, PSNR, MSE, CIEDE2000, Canny-edge F1), many outputs at once.

The work that depends on the source alone (its blurred moments per MS-SSIM scale, its CIELAB values, its Canny edges)
is done once per source by a :class:`SourceReference`; :func:`fidelity_values` then measures a batch of that
source's outputs in torch on any device (the pipeline's GPU during a sweep); Canny edges are scikit-image's on the
CPU (a batch's outputs in stacks) and the same bits in torch on a GPU (:mod:`img2img_lab.metrics.edges`). The
arithmetic is float32: intensities are shifted by half the data range before the blurred second moments are taken
(which keeps the variances' cancellation error small), and the 2x2 averages of the MS-SSIM pyramid are exact.
Measured against the reference implementations (``tests/test_fidelity.py``): SSIM, MS-SSIM and CIEDE2000 agree
with scikit-image / the float64 paper transcription within 1e-5, PSNR and edge F1 within 1e-9.

>>> import numpy as np
>>> source = np.zeros((32, 32, 3), np.uint8); source[8:24, 8:24] = (200, 40, 40)
>>> outputs = [source, 255 - source]
>>> values = fidelity_values(source, outputs, ["ssim", "psnr", "edge_f1"])
>>> values["ssim"].round(3).tolist(), values["psnr"].tolist()[0], values["edge_f1"].tolist()
([1.0, -0.147], inf, [1.0, 1.0])
"""

from __future__ import annotations

import math
from collections import OrderedDict
from functools import cached_property, lru_cache

import numpy as np

from img2img_lab.metrics.ciede2000 import ciede2000_means, lab_from_pixels, per_image_means
from img2img_lab.metrics.edges import (TORCH_EDGE_DEVICES, dilate, edge_f1_from_counts, edge_map, edge_maps,
                                      edge_maps_cpu, grow)
from img2img_lab.errors import Img2ImgLabError
from img2img_lab.images.arrays import metric_array, metric_pair

__all__ = ["FIDELITY_METRICS", "MS_SSIM_WEIGHTS", "ReferenceCache", "SourceReference", "delta_e", "edge_f1",
           "edge_map", "fidelity_values", "ms_ssim", "mse", "psnr", "ssim"]

#: The metrics :func:`fidelity_values` computes.
FIDELITY_METRICS = ("ssim", "ms_ssim", "psnr", "mse", "delta_e", "edge_f1")
#: MS-SSIM scale weights from Wang, Simoncelli & Bovik (2003).
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: The SSIM window: Gaussian, sigma 1.5, 11 taps (Wang et al. 2004; scipy's truncate=3.5).
WINDOW_SIGMA, WINDOW_RADIUS = 1.5, 5
#: Pixels per batch: 16 images of 512x512 on an accelerator; on the CPU one (smaller batches stay in its caches:
#: 8 images of 512x512 in one batch take 40 % longer each).
BATCH_PIXELS = {"cpu": 512 * 512, "accelerator": 16 * 512 * 512}


class SourceReference:
    """What every output of one source is compared with, computed once, lazily, per metric family.

    ``levels(n)``: the shifted source and its blurred first and second moments at MS-SSIM scales 0..n-1; ``lab``:
    CIELAB values; ``edges`` and ``edges_grown``: Canny edges and their ``tolerance`` dilation (numpy), and
    ``edge_tensors``: the same two on the device (where :data:`~img2img_lab.metrics.edges.TORCH_EDGE_DEVICES` computes
    edges in torch).

    >>> reference = SourceReference(np.zeros((16, 16, 3), np.uint8))
    >>> bool(reference.edges.any()), len(reference.levels(1)), reference.nbytes > 0
    (False, 1, True)
    """

    def __init__(self, source, *, device=None, data_range: float = 255.0, sigma: float = 1.0, tolerance: int = 1):
        import torch

        self.array = metric_array(source)
        self.device = torch.device(device or "cpu")
        self.data_range, self.sigma, self.tolerance = data_range, sigma, tolerance
        self._levels: list = []

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.array.shape

    def levels(self, count: int) -> list[dict]:
        """The source's SSIM terms at scales 0..count-1: ``x`` (1x3xHxW, shifted by half the data range), ``mu``
        (its local mean), ``variance_c2`` (local variance + C2), ``twice_mean`` and ``mean_square_c1`` (of the
        unshifted local mean: 2 mu and mu^2 + C1)."""
        c1, c2 = (0.01 * self.data_range) ** 2, (0.03 * self.data_range) ** 2
        while len(self._levels) < count:
            if not self._levels:
                x = _as_images([self.array], self.device) - self.data_range / 2
            else:
                x = _halve(self._levels[-1]["x"])
            mu, square = _blur(x), _blur(x * x)
            mean = mu + self.data_range / 2
            self._levels.append({"x": x, "mu": mu, "variance_c2": square - mu * mu + c2, "twice_mean": 2 * mean,
                                 "mean_square_c1": mean * mean + c1})
        return self._levels[:count]

    @cached_property
    def lab(self):
        return lab_from_pixels(_as_pixels([self.array], self.device))

    @cached_property
    def edges(self) -> np.ndarray:
        return edge_map(self.array, sigma=self.sigma)

    @cached_property
    def edges_grown(self) -> np.ndarray:
        return grow(self.edges, self.tolerance)

    @cached_property
    def edge_tensors(self) -> tuple:
        edges = edge_maps(_as_pixels([self.array], self.device), sigma=self.sigma)
        return edges, dilate(edges, self.tolerance)

    @property
    def nbytes(self) -> int:
        """Memory held now (what :class:`ReferenceCache` budgets)."""
        tensors = [tensor for level in self._levels for tensor in level.values()]
        tensors += [self.lab] if "lab" in self.__dict__ else []  # cached_property: computed already?
        edge_maps = 2 * self.array[..., 0].size  # edges and edges_grown, one byte a pixel
        return self.array.nbytes + sum(t.numel() * t.element_size() for t in tensors) + edge_maps


class ReferenceCache:
    """Source references by source object, least recently used first out past ``max_bytes``.

    A source is looked up by identity (the cache keeps it alive, so its id stays its own): hand it images that are
    not modified in place, as a sweep's prepared sources and a run folder's loaded sources are.

    >>> cache = ReferenceCache()
    >>> source = np.zeros((16, 16, 3), np.uint8)
    >>> cache.get(source) is cache.get(source)
    True
    """

    def __init__(self, *, max_bytes: int = 512 * 2**20, device=None):
        self.max_bytes, self.device = max_bytes, device
        self._entries: OrderedDict[int, tuple[object, SourceReference]] = OrderedDict()

    def get(self, source) -> SourceReference:
        if isinstance(source, SourceReference):
            return source
        entry = self._entries.get(id(source))
        if entry is None or entry[0] is not source:
            entry = (source, SourceReference(source, device=self.device))
            self._entries[id(source)] = entry
        self._entries.move_to_end(id(source))
        return entry[1]

    def trim(self) -> None:
        """Drop the least recently used references until the rest fit ``max_bytes`` (the newest always stays)."""
        while len(self._entries) > 1 and sum(ref.nbytes for _, ref in self._entries.values()) > self.max_bytes:
            self._entries.popitem(last=False)


def fidelity_values(source, outputs, names, *, device=None) -> dict[str, np.ndarray]:
    """``{name: values}`` for fidelity metrics (:data:`FIDELITY_METRICS`) of many outputs of one source.

    ``source`` is an image or a :class:`SourceReference` (whose device is then used). Outputs go through the device
    in batches of :data:`BATCH_PIXELS`; SSIM and MS-SSIM share their full-size scale.

    >>> source = np.zeros((16, 16, 3), np.uint8)
    >>> fidelity_values(source, [source], ["mse", "delta_e"])
    {'mse': array([0.]), 'delta_e': array([0.])}
    """
    unknown = [name for name in names if name not in FIDELITY_METRICS]
    if unknown:
        raise Img2ImgLabError(f"not a fidelity metric: {unknown[0]!r}. Fix: use one of {', '.join(FIDELITY_METRICS)}.")
    reference = source if isinstance(source, SourceReference) else SourceReference(source, device=device)
    arrays = [metric_pair(reference.array, output)[1] for output in outputs]
    budget = BATCH_PIXELS["cpu" if reference.device.type == "cpu" else "accelerator"]
    per_image = max(1, budget // max(1, reference.shape[0] * reference.shape[1]))
    parts = [_batch_values(reference, arrays[start:start + per_image], names)
             for start in range(0, len(arrays), per_image)]
    return {name: np.concatenate([part[name] for part in parts]) if parts else np.zeros(0) for name in names}


def _batch_values(reference: SourceReference, arrays: list, names) -> dict[str, np.ndarray]:
    """The metrics of one batch of outputs (same shape as the source)."""
    values: dict[str, np.ndarray] = {}
    identical = _identical(reference, arrays)  # exactly 1 (SSIM) and 0 (delta E) for these, whatever the batch
    if "ssim" in names or "ms_ssim" in names:
        values.update(_structural(reference, arrays, want_ssim="ssim" in names, want_ms="ms_ssim" in names,
                                  identical=identical))
    if "mse" in names or "psnr" in names:
        error = _mse(reference, arrays)
        values["mse"] = error
        values["psnr"] = np.where(error == 0, math.inf, 10.0 * np.log10(1.0 / np.maximum(error, 1e-300)))
    if "delta_e" in names:
        differences = ciede2000_means(reference.lab, lab_from_pixels(_as_pixels(arrays, reference.device)))
        values["delta_e"] = np.where(identical, 0.0, differences)
    if "edge_f1" in names and reference.device.type in TORCH_EDGE_DEVICES:
        values["edge_f1"] = _edge_f1_on_device(reference, arrays)
    elif "edge_f1" in names:
        values["edge_f1"] = _edge_f1(reference, arrays)
    return {name: values[name] for name in names}


# --------------------------------------------------------------------------- the per-pair functions


def ssim(source, output, *, data_range: float = 255.0) -> float:
    """Structural similarity (Wang et al. 2004) over RGB, mean over channels; in [-1, 1], 1 = identical.

    Gaussian 11x11 window (sigma 1.5), population covariances, K1 = 0.01, K2 = 0.03: the paper's settings, as
    ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``
    (within 1e-5). Images need sides of at least 11 px.

    >>> black, white = np.zeros((16, 16, 3), np.uint8), np.full((16, 16, 3), 255, np.uint8)
    >>> ssim(black, black), round(ssim(black, white), 4)
    (1.0, 0.0001)
    """
    reference = SourceReference(source, data_range=data_range)
    return float(_structural(reference, [metric_pair(reference.array, output)[1]], want_ssim=True,
                             want_ms=False)["ssim"][0])


def ms_ssim(source, output, *, data_range: float = 255.0, scales: int | None = None) -> float:
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003); in [0, 1], 1 = identical.

    Uses as many of the paper's five scales as the image allows (each scale halves the image by 2x2 averaging; the
    coarsest must keep sides >= 11 px) and renormalises the weights of the scales used: a 64 px image uses 3 scales,
    256 px and larger all 5. Negative contrast-structure terms are clamped at 0 so the product stays defined.

    >>> ms_ssim(np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64, 3), np.uint8))
    1.0
    """
    reference = SourceReference(source, data_range=data_range)
    return float(_structural(reference, [metric_pair(reference.array, output)[1]], want_ssim=False, want_ms=True,
                             scales=scales)["ms_ssim"][0])


def mse(source, output) -> float:
    """Mean squared error of intensities scaled to [0, 1]; in [0, 1], 0 = identical.

    >>> mse(np.zeros((2, 2, 3), np.uint8), np.full((2, 2, 3), 255, np.uint8))
    1.0
    """
    return float(fidelity_values(source, [output], ["mse"])["mse"][0])


def psnr(source, output) -> float:
    """Peak signal-to-noise ratio in dB for 8-bit images: ``10 log10(255^2 / MSE)``.

    Identical images give ``inf`` (documented, not an error): aggregate PSNR with care, e.g. cap it.

    >>> round(psnr(np.zeros((2, 2, 3), np.uint8), np.full((2, 2, 3), 255, np.uint8)), 6)
    0.0
    """
    return float(fidelity_values(source, [output], ["psnr"])["psnr"][0])


def delta_e(source, output) -> float:
    """Mean CIEDE2000 colour difference (Sharma, Wu & Dalal 2005) in CIELAB (D65); 0 = identical.

    Rules of thumb: < 1 invisible, 2-3 just noticeable side by side, > 10 clearly different colours. This is the
    "keep the product colour" measure; it equals ``deltaE_ciede2000(rgb2lab(source), rgb2lab(output)).mean()`` of
    scikit-image within 1e-5.

    >>> delta_e(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2, 3), np.uint8))
    0.0
    """
    return float(fidelity_values(source, [output], ["delta_e"])["delta_e"][0])


def edge_f1(source, output, *, sigma: float = 1.0, tolerance: int = 1) -> float:
    """F1 score of the output's Canny edges against the source's, matching within ``tolerance`` pixels.

    In [0, 1], 1 = every source edge kept and no new edge drawn: the "keep the composition" measure.
    Two edge-free images score 1.

    >>> edge_f1(np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32, 3), np.uint8))
    1.0
    """
    reference = SourceReference(source, sigma=sigma, tolerance=tolerance)
    return float(_edge_f1(reference, [metric_pair(reference.array, output)[1]])[0])


# --------------------------------------------------------------------------- kernels


def _as_pixels(arrays, device):
    """uint8 HxWx3 arrays as one uint8 NxHxWx3 tensor on ``device``."""
    import torch

    return torch.from_numpy(np.stack(arrays)).to(device)


def _as_images(arrays, device):
    """uint8 HxWx3 arrays as one float32 Nx3xHxW tensor on ``device``, in channels-last memory (what the SSIM
    blurs want)."""
    import torch

    return _as_pixels(arrays, device).permute(0, 3, 1, 2).float().contiguous(memory_format=torch.channels_last)


@lru_cache(maxsize=16)
def _windows(channels: int, device) -> tuple:
    """The SSIM window as contiguous row and column kernels for ``channels`` groups (expanded, i.e. strided,
    kernels make conv2d three times slower on the CPU)."""
    import torch

    taps = torch.arange(-WINDOW_RADIUS, WINDOW_RADIUS + 1, dtype=torch.float64)
    window = torch.exp(-0.5 * taps**2 / WINDOW_SIGMA**2)
    window = (window / window.sum()).float().to(device)
    return (window.view(1, 1, 1, -1).repeat(channels, 1, 1, 1).contiguous(),
            window.view(1, 1, -1, 1).repeat(channels, 1, 1, 1).contiguous())


def _blur(images):
    """The SSIM window over each channel, valid region only (what skimage keeps after cropping 5 px each side).

    In channels-last memory: oneDNN's depthwise convolution is about ten times faster so on the CPU."""
    import torch
    import torch.nn.functional as F

    channels = images.shape[1]
    rows, columns = _windows(channels, images.device)
    images = images.contiguous(memory_format=torch.channels_last)
    return F.conv2d(F.conv2d(images, rows, groups=channels), columns, groups=channels)


def _halve(images):
    """2x2 averages (odd last row/column dropped): exact on 8-bit data for five scales in float32."""
    import torch.nn.functional as F

    return F.avg_pool2d(images, 2)


def _scale_count(height: int, width: int, scales: int | None) -> int:
    side = min(height, width)
    if side < 2 * WINDOW_RADIUS + 1:
        raise Img2ImgLabError(f"ssim and ms_ssim need images of at least 11 px; got {width}x{height}. "
                              f"Fix: measure images of 11 px or more a side.")
    available = 1
    while available < 5 and side // 2**available >= 2 * WINDOW_RADIUS + 1:
        available += 1
    return available if scales is None else max(1, min(scales, available))


def _structural(reference: SourceReference, arrays, *, want_ssim: bool, want_ms: bool, scales: int | None = None,
                identical: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """SSIM (scale 0's mean SSIM map) and MS-SSIM (contrast-structure at scales 0..n-2, SSIM at n-1)."""
    count = _scale_count(*reference.shape[:2], scales if want_ms else 1)
    c1, c2 = (0.01 * reference.data_range) ** 2, (0.03 * reference.data_range) ** 2
    y = _as_images(arrays, reference.device) - reference.data_range / 2
    weights = np.asarray(MS_SSIM_WEIGHTS[:count]) / sum(MS_SSIM_WEIGHTS[:count])
    values: dict[str, np.ndarray] = {}
    product = np.ones(len(arrays))
    identical = _identical(reference, arrays) if identical is None else identical
    for scale, source in enumerate(reference.levels(count)):
        if scale:
            y = _halve(y)
        mu_y, square_y, cross = _blur(y), _blur(y * y), _blur(source["x"] * y)
        contrast_structure = cross.sub_(source["mu"] * mu_y).mul_(2).add_(c2)  # 2 cov + C2
        contrast_structure.div_(square_y.sub_(mu_y * mu_y).add_(source["variance_c2"]))
        mean_y = mu_y.add_(reference.data_range / 2)
        luminance = (source["twice_mean"] * mean_y).add_(c1).div_(mean_y.mul_(mean_y).add_(source["mean_square_c1"]))
        full = _mean_at_most_one(luminance.mul_(contrast_structure), identical)
        if scale == 0 and want_ssim:
            values["ssim"] = full
        if want_ms:
            term = full if scale == count - 1 else _mean_at_most_one(contrast_structure, identical)
            product = product * np.maximum(term, 0.0) ** weights[scale]
    if want_ms:
        values["ms_ssim"] = product
    return values


def _identical(reference: SourceReference, arrays) -> np.ndarray:
    return np.asarray([np.array_equal(array, reference.array) for array in arrays], dtype=bool)


def _mean_at_most_one(maps, identical: np.ndarray) -> np.ndarray:
    """Per-image means of SSIM-type maps, exactly 1 for an output identical to its source and never above 1
    (float32 rounding of the moments would otherwise leave 1 +- 1e-8 there)."""
    means = np.minimum(per_image_means(maps), 1.0)
    return np.where(identical, 1.0, means)


def _mse(reference: SourceReference, arrays) -> np.ndarray:
    """Mean squared error on [0, 1] intensities; the integer differences' squares are summed exactly."""
    import torch

    source = torch.tensor(reference.array, dtype=torch.int32, device=reference.device)
    outputs = torch.from_numpy(np.stack(arrays)).to(reference.device).to(torch.int32)
    squares = ((outputs - source) ** 2).sum(dim=(1, 2, 3), dtype=torch.int64).cpu().numpy()
    return squares.astype(np.float64) / (reference.array.size * 255.0**2)


def _edge_f1(reference: SourceReference, arrays) -> np.ndarray:
    """The edge F1 of a batch of outputs on the CPU, their edge maps made in stacks (:func:`edge_maps_cpu`)."""
    source_edges, source_count = reference.edges, int(reference.edges.sum())
    return np.asarray([edge_f1_from_counts(source_count, int(edges.sum()), int((edges & reference.edges_grown).sum()),
                                           int((source_edges & grow(edges, reference.tolerance)).sum()))
                       for edges in edge_maps_cpu(arrays, sigma=reference.sigma)], dtype=np.float64)


def _edge_f1_on_device(reference: SourceReference, arrays) -> np.ndarray:
    """The edge F1 of a batch with torch edge maps on the reference's device: the same pixel counts as
    :func:`_edge_f1`, hence the same values."""
    import torch

    source_edges, source_grown = reference.edge_tensors
    edges = edge_maps(_as_pixels(arrays, reference.device), sigma=reference.sigma)
    counts = torch.stack([edges.sum(dim=(1, 2)), (edges & source_grown).sum(dim=(1, 2)),
                          (source_edges & dilate(edges, reference.tolerance)).sum(dim=(1, 2))], dim=1).tolist()
    source_count = int(source_edges.sum())
    return np.asarray([edge_f1_from_counts(source_count, *row) for row in counts], dtype=np.float64)
