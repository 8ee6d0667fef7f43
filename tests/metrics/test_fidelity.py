"""Fidelity metrics (SSIM, MS-SSIM, PSNR, MSE, CIEDE2000, edge F1) against their reference implementations, batched
and per pair, with the source side computed once."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import binary_dilation, gaussian_filter
from skimage.color import deltaE_ciede2000, rgb2lab
from skimage.feature import canny
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

import img2img_lab.metrics.fidelity as fidelity
from img2img_lab.metrics import measure as metrics
from img2img_lab.errors import Img2ImgLabError
from img2img_lab.metrics.fidelity import ReferenceCache, fidelity_values

TOLERANCE = 1e-4  # the bound; the measured worst cases are printed by -s and sit near 1e-6


# --------------------------------------------------------------------------- reference implementations (float64)


def reference_ssim(a, b):
    return structural_similarity(a, b, data_range=255, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False)


def _paper_components(x, y):
    """Mean SSIM and contrast-structure, float64, transcribed from Wang et al. 2004 (scipy blur, valid region)."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    blur = lambda image: gaussian_filter(image, sigma=(1.5, 1.5, 0), truncate=3.5)  # noqa: E731
    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y, cov = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2, blur(x * y) - mu_x * mu_y
    cs = (2 * cov + c2) / (var_x + var_y + c2)
    full = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs
    return full[5:-5, 5:-5].mean(), cs[5:-5, 5:-5].mean()


def reference_ms_ssim(a, b):
    """MS-SSIM (Wang, Simoncelli & Bovik 2003): five scales or as many as keep 11 px, weights renormalised."""
    x, y = a.astype(np.float64), b.astype(np.float64)
    count = 1
    while count < 5 and min(a.shape[:2]) // 2**count >= 11:
        count += 1
    weights = np.asarray(fidelity.MS_SSIM_WEIGHTS[:count]) / sum(fidelity.MS_SSIM_WEIGHTS[:count])
    value = 1.0
    for scale in range(count):
        full, cs = _paper_components(x, y)
        value *= max(full if scale == count - 1 else cs, 0.0) ** weights[scale]
        h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
        x = x[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))
        y = y[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))
    return value


def reference_delta_e(a, b):
    return float(np.mean(deltaE_ciede2000(rgb2lab(a / 255.0), rgb2lab(b / 255.0))))


def reference_edge_f1(a, b):
    edges = [np.any([canny(image[..., c] / 255.0, sigma=1.0) for c in range(3)], axis=0) for image in (a, b)]
    if not edges[0].any() and not edges[1].any():
        return 1.0
    if not edges[0].any() or not edges[1].any():
        return 0.0
    grown = [binary_dilation(e, np.ones((3, 3), bool)) for e in edges]
    precision, recall = (edges[1] & grown[0]).sum() / edges[1].sum(), (edges[0] & grown[1]).sum() / edges[0].sum()
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


REFERENCES = {
    "ssim": reference_ssim,
    "ms_ssim": reference_ms_ssim,
    "psnr": lambda a, b: peak_signal_noise_ratio(a, b, data_range=255),
    "mse": lambda a, b: mean_squared_error(a, b) / 255.0**2,
    "delta_e": reference_delta_e,
    "edge_f1": reference_edge_f1,
}


# --------------------------------------------------------------------------- test images


def _source(kind: str, height: int, width: int, rng) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    if kind == "gradient":
        image = np.stack([x / max(width - 1, 1), y / max(height - 1, 1), 1 - x / max(width - 1, 1)], -1) * 255
    elif kind == "noise":
        image = rng.uniform(0, 255, (height, width, 3))
    else:  # shapes on grey: flat areas, hard edges, zero-chroma pixels (CIEDE2000's special case)
        image = np.full((height, width, 3), 128.0)
        image[:, : max(1, width // 8)] = 0  # black: a = b = 0 exactly
        image[height // 4: height * 3 // 4, width // 5: width // 2] = (220, 40, 30)
        image[(x - width * 0.7) ** 2 + (y - height * 0.5) ** 2 < (min(height, width) / 5) ** 2] = (30, 90, 210)
    return np.rint(image).astype(np.uint8)


def _outputs(source: np.ndarray, rng) -> list[np.ndarray]:
    noisy = [np.clip(np.rint(source + rng.normal(0, sigma, source.shape)), 0, 255).astype(np.uint8)
             for sigma in (1, 8, 40)]
    shifted = np.roll(source, (3, -2), axis=(0, 1))
    recoloured = source[..., ::-1].copy()
    return [source.copy(), *noisy, 255 - source, shifted, recoloured]


CASES = [("gradient", 64, 64), ("noise", 37, 53), ("shapes", 130, 97), ("shapes", 256, 256), ("gradient", 11, 16)]


@pytest.mark.parametrize("kind,height,width", CASES)
def test_every_fidelity_metric_equals_its_reference_batched_and_per_pair(kind, height, width):
    rng = np.random.default_rng(height * 1000 + width)
    source = _source(kind, height, width, rng)
    outputs = _outputs(source, rng)
    names = list(REFERENCES) if min(height, width) >= 11 else ["psnr", "mse", "delta_e", "edge_f1"]
    batched = fidelity_values(source, outputs, names)
    worst = {}
    for name in names:
        expected = np.asarray([REFERENCES[name](source, output) for output in outputs], dtype=np.float64)
        per_pair = np.asarray([getattr(fidelity, name)(source, output) for output in outputs])
        finite = np.isfinite(expected)
        assert np.array_equal(np.isfinite(batched[name]), finite), name  # PSNR: inf exactly for identical images
        worst[name] = float(np.max(np.abs(batched[name][finite] - expected[finite])))
        assert worst[name] <= TOLERANCE, (name, batched[name], expected)
        np.testing.assert_allclose(per_pair, batched[name], rtol=0, atol=1e-6)  # float32 in other shapes
    print(kind, height, width, {name: f"{value:.1e}" for name, value in worst.items()})
    assert batched["edge_f1"][0] == 1.0 and batched["delta_e"][0] == 0.0 and batched["mse"][0] == 0.0
    if "ssim" in names:
        assert batched["ssim"][0] == 1.0 and batched["ms_ssim"][0] == 1.0  # identical: exactly 1


def test_at_512_px_the_metrics_agree_in_float32_as_well():
    rng = np.random.default_rng(512)
    source = _source("shapes", 512, 512, rng)
    output = np.clip(np.rint(source + rng.normal(0, 12, source.shape)), 0, 255).astype(np.uint8)
    values = fidelity_values(source, [output], list(REFERENCES))
    for name, reference in REFERENCES.items():
        assert values[name][0] == pytest.approx(reference(source, output), abs=TOLERANCE), name


def _scikit_image_edges(image: np.ndarray) -> np.ndarray:
    """The reference: scikit-image's Canny per channel, one call each, their union."""
    return np.any([canny(image[..., c] / 255.0, sigma=1.0) for c in range(3)], axis=0)


@pytest.mark.parametrize("where", ["torch", "cpu stack", "cpu without the private kernel"])
def test_batched_canny_gives_scikit_images_edge_maps_bit_for_bit(where, monkeypatch):
    """A GPU's edge maps (torch, float64 in scipy's order of operations) and the CPU's (a stack of channel images
    through scipy's filters at once, several stacks here) are the reference's pixels."""
    import torch

    from img2img_lab.metrics import edges as edge_module

    monkeypatch.setattr(edge_module, "CANNY_STACK_PIXELS", 3 * 64 * 64 * 4)  # 4 images of 64 px a stack
    if where == "cpu without the private kernel":  # another scikit-image version: one canny call per channel
        monkeypatch.setattr(edge_module, "_suppression", lambda: None)
    checked = 0
    for kind, height, width in CASES + [("shapes", 512, 512)]:
        rng = np.random.default_rng(height * 1000 + width)
        source = _source(kind, height, width, rng)
        images = [source, *_outputs(source, rng)][: 3 if height == 512 else None]
        maps = edge_module.edge_maps(torch.from_numpy(np.stack(images))).numpy() if where == "torch" \
            else edge_module.edge_maps_cpu(images)
        for image, edges in zip(images, maps):
            assert np.array_equal(edges, _scikit_image_edges(image)), (kind, height, width)
            checked += int(edges.sum())
    assert checked > 10_000  # edges were there to compare


def test_edge_f1_on_a_torch_edge_device_equals_the_cpu_path(monkeypatch):
    rng = np.random.default_rng(7)
    source = _source("shapes", 130, 97, rng)
    outputs = _outputs(source, rng)
    on_cpu = fidelity_values(source, outputs, ["edge_f1"])["edge_f1"]
    monkeypatch.setattr(fidelity, "TORCH_EDGE_DEVICES", frozenset({"cpu"}))
    for name in ("edge_map", "edge_maps_cpu"):
        monkeypatch.setattr(fidelity, name, lambda *a, **k: pytest.fail("the CPU's Canny ran"))
    in_torch = fidelity_values(source, outputs, ["edge_f1"])["edge_f1"]
    assert in_torch.tolist() == on_cpu.tolist() and len(set(on_cpu.tolist())) > 3


def test_the_source_side_is_computed_once_per_source(monkeypatch):
    rng = np.random.default_rng(0)
    sources = [_source("shapes", 48, 48, rng), _source("gradient", 48, 48, rng)]
    made, edge_maps, output_stacks = [], [], []
    real_init, real_edge_map, real_stacks = fidelity.SourceReference.__init__, fidelity.edge_map, fidelity.edge_maps_cpu
    monkeypatch.setattr(fidelity.SourceReference, "__init__",
                        lambda self, *a, **k: (made.append(1), real_init(self, *a, **k))[1])
    monkeypatch.setattr(fidelity, "edge_map", lambda *a, **k: (edge_maps.append(1), real_edge_map(*a, **k))[1])
    monkeypatch.setattr(fidelity, "edge_maps_cpu",
                        lambda arrays, **k: (output_stacks.append(len(arrays)), real_stacks(arrays, **k))[1])
    pairs = [(sources[i % 2], _outputs(sources[i % 2], rng)[2]) for i in range(6)]
    values = metrics.measure_pairs([s for s, _ in pairs], [o for _, o in pairs], ["ssim", "ms_ssim", "edge_f1"])
    assert len(made) == 2 and len(edge_maps) == 2  # one reference and one edge map per source
    assert output_stacks == [3, 3]  # each source's outputs' edge maps made together
    for (source, output), ssim_value in zip(pairs, values["ssim"]):
        assert ssim_value == pytest.approx(reference_ssim(source, output), abs=TOLERANCE)
    cache = ReferenceCache()
    for source, output in pairs:  # a sweep measures one cell at a time, keeping its references
        metrics.measure_pair(source, output, ["delta_e"], references=cache)
    assert len(made) == 2 + 2


def test_the_reference_cache_stays_within_its_budget():
    rng = np.random.default_rng(1)
    cache = ReferenceCache(max_bytes=1)
    sources = [_source("noise", 32, 32, rng) for _ in range(3)]
    for source in sources:
        fidelity_values(cache.get(source), [source], ["ssim"])
        cache.trim()
    assert len(cache._entries) == 1 and cache.get(sources[-1]).levels(1)  # the newest stays, its levels kept


def test_bad_inputs_get_one_line_errors():
    with pytest.raises(Img2ImgLabError, match=r"at least 11 px; got 8x8"):
        fidelity.ssim(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(Img2ImgLabError, match=r"differ in size"):
        fidelity_values(np.zeros((16, 16, 3), np.uint8), [np.zeros((16, 17, 3), np.uint8)], ["psnr"])
    with pytest.raises(Img2ImgLabError, match=r"not a fidelity metric: 'lpips'"):
        fidelity_values(np.zeros((16, 16, 3), np.uint8), [], ["lpips"])
    assert math.isinf(fidelity.psnr(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint8)))


#: Sharma, Wu & Dalal (2005), "The CIEDE2000 color-difference formula: implementation notes, supplementary test
#: data, and mathematical observations", Table 1: (L1, a1, b1, L2, a2, b2, dE00), the 34 pairs.
SHARMA_PAIRS = (
    (50.0, 2.6772, -79.7751, 50.0, 0.0, -82.7485, 2.0425), (50.0, 3.1571, -77.2803, 50.0, 0.0, -82.7485, 2.8615),
    (50.0, 2.8361, -74.0200, 50.0, 0.0, -82.7485, 3.4412), (50.0, -1.3802, -84.2814, 50.0, 0.0, -82.7485, 1.0),
    (50.0, -1.1848, -84.8006, 50.0, 0.0, -82.7485, 1.0), (50.0, -0.9009, -85.5211, 50.0, 0.0, -82.7485, 1.0),
    (50.0, 0.0, 0.0, 50.0, -1.0, 2.0, 2.3669), (50.0, -1.0, 2.0, 50.0, 0.0, 0.0, 2.3669),
    (50.0, 2.49, -0.001, 50.0, -2.49, 0.0009, 7.1792), (50.0, 2.49, -0.001, 50.0, -2.49, 0.001, 7.1792),
    (50.0, 2.49, -0.001, 50.0, -2.49, 0.0011, 7.2195), (50.0, 2.49, -0.001, 50.0, -2.49, 0.0012, 7.2195),
    (50.0, -0.001, 2.49, 50.0, 0.0009, -2.49, 4.8045), (50.0, -0.001, 2.49, 50.0, 0.001, -2.49, 4.8045),
    (50.0, -0.001, 2.49, 50.0, 0.0011, -2.49, 4.7461), (50.0, 2.5, 0.0, 50.0, 0.0, -2.5, 4.3065),
    (50.0, 2.5, 0.0, 73.0, 25.0, -18.0, 27.1492), (50.0, 2.5, 0.0, 61.0, -5.0, 29.0, 22.8977),
    (50.0, 2.5, 0.0, 56.0, -27.0, -3.0, 31.9030), (50.0, 2.5, 0.0, 58.0, 24.0, 15.0, 19.4535),
    (50.0, 2.5, 0.0, 50.0, 3.1736, 0.5854, 1.0), (50.0, 2.5, 0.0, 50.0, 3.2972, 0.0, 1.0),
    (50.0, 2.5, 0.0, 50.0, 1.8634, 0.5757, 1.0), (50.0, 2.5, 0.0, 50.0, 3.2592, 0.3350, 1.0),
    (60.2574, -34.0099, 36.2677, 60.4626, -34.1751, 39.4387, 1.2644),
    (63.0109, -31.0961, -5.8663, 62.8187, -29.7946, -4.0864, 1.2630),
    (61.2901, 3.7196, -5.3901, 61.4292, 2.2480, -4.9620, 1.8731),
    (35.0831, -44.1164, 3.7933, 35.0232, -40.0716, 1.5901, 1.8645),
    (22.7233, 20.0904, -46.6940, 23.0331, 14.9730, -42.5619, 2.0373),
    (36.4612, 47.8580, 18.3852, 36.2715, 50.5065, 21.2231, 1.4146),
    (90.8027, -2.0831, 1.4410, 91.1528, -1.6435, 0.0447, 1.4441),
    (90.9257, -0.5406, -0.9208, 88.6381, -0.8985, -0.7239, 1.5381),
    (6.7747, -0.2908, -2.4247, 5.8714, -0.0985, -2.2286, 0.6377),
    (2.0776, 0.0795, -1.1350, 0.9033, -0.0636, -0.5514, 0.9082),
)


def test_ciede2000_holds_sharma_s_34_pairs_in_float32(capsys):
    import torch

    from img2img_lab.metrics.ciede2000 import ciede2000_means

    errors = []
    for pair in SHARMA_PAIRS:
        first = torch.tensor([[[pair[:3]]]], dtype=torch.float32)
        second = torch.tensor([[[pair[3:6]]]], dtype=torch.float32)
        errors.append(abs(float(ciede2000_means(first, second)[0]) - pair[6]))
    worst = int(np.argmax(errors))
    with capsys.disabled():
        print(f"\n[ciede2000] Sharma's 34 pairs in float32: max |error| {max(errors):.2e} (pair {worst + 1}); "
              f"pair 14 (the 180-degree tie) {errors[13]:.2e}")
    assert max(errors) <= 1e-4, [(index + 1, round(error, 6)) for index, error in enumerate(errors) if error > 1e-4]
