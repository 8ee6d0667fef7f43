"""Pipeline loading: folders, hub ids offline, the default model, schedulers, device, fingerprints."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from img2img_lab.errors import ModelError
from img2img_lab.models.handle import as_model
from img2img_lab.models.loading import load_model, load_pipeline, resolve_model, select_device
from img2img_lab.schedulers import SCHEDULERS, make_scheduler


def test_loads_a_saved_pipeline_through_autopipeline(tiny_model_dir):
    model = load_model(str(tiny_model_dir), device="cpu")
    tiny_pipe = model.pipe
    assert type(tiny_pipe).__name__ == "StableDiffusionImg2ImgPipeline"
    assert str(tiny_pipe.device) == "cpu" and str(tiny_pipe.dtype) == "torch.float32"
    assert load_pipeline(str(tiny_model_dir), device="cpu").img2img_lab_model.label == model.label
    info = model.describe()
    assert info["size_multiple"] == 2 and info["native_resolution"] == 32
    assert set(info["components"]) == {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}
    assert info["components"]["unet"]["parameters"] > 100_000
    assert info["scheduler"] == "PNDMScheduler"


def test_missing_model_folder():
    with pytest.raises(ModelError, match=r"model folder './models/nope' does not exist\. Fix: check the path"):
        load_pipeline("./models/nope")
    with pytest.raises(ModelError, match=r"does not exist"):
        resolve_model("deep/nested/missing/folder")


def test_folder_without_model_index(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelError, match=r"is not a diffusers pipeline \(no model_index\.json in it\)"):
        load_pipeline(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x")
    with pytest.raises(ModelError, match=r"is a file; a diffusers model is a folder"):
        load_pipeline(weights)


def test_uncached_hub_id_offline_fails_fast_and_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(ModelError) as caught:
        load_pipeline("img2img-lab-test/definitely-not-cached")
    elapsed = time.perf_counter() - started
    message = str(caught.value)
    assert "not in the Hugging Face cache" in message and "HF_HUB_OFFLINE=1" in message
    assert "hf download img2img-lab-test/definitely-not-cached" in message
    print(f"offline hub-id rejection took {elapsed * 1000:.1f} ms")


def test_default_model_missing_gives_the_fix(monkeypatch, tmp_path):
    import img2img_lab.models.loading as pipelines

    monkeypatch.delenv("IMG2IMG_LAB_MODEL", raising=False)
    monkeypatch.setattr(pipelines, "EMBEDDED_MODEL_DIR", tmp_path / "shapes-world")
    with pytest.raises(ModelError, match=r"embedded default model is missing at .*shapes-world\. Fix: reinstall img2img-lab"):
        load_pipeline()


def test_default_model_from_environment(monkeypatch, tiny_model_dir):
    monkeypatch.setenv("IMG2IMG_LAB_MODEL", str(tiny_model_dir))
    label, folder = resolve_model(None)
    assert folder == tiny_model_dir.resolve()


def test_scheduler_swap_by_name(tiny_pipe):
    expected = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler", "euler_a": "EulerAncestralDiscreteScheduler",
                "dpmpp_2m": "DPMSolverMultistepScheduler", "pndm": "PNDMScheduler", "unipc": "UniPCMultistepScheduler"}
    for name, class_name in expected.items():
        as_model(tiny_pipe).use_scheduler(name)
        assert type(tiny_pipe.scheduler).__name__ == class_name
        # the model's noise schedule carries over
        assert tiny_pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert make_scheduler(tiny_pipe.scheduler.config, "dpmpp_2m_karras").config.use_karras_sigmas is True
    as_model(tiny_pipe).use_scheduler("default")
    assert type(tiny_pipe.scheduler).__name__ == "PNDMScheduler"
    assert set(expected) <= set(SCHEDULERS)


def test_unknown_scheduler(tiny_pipe):
    with pytest.raises(ModelError, match=r"unknown scheduler 'dpm\+\+'\. Fix: use one of default, ddim"):
        as_model(tiny_pipe).use_scheduler("dpm++")


def test_device_and_dtype_selection():
    import torch

    assert select_device("cpu") == (torch.device("cpu"), torch.float32)
    assert select_device("cpu", "bf16")[1] == torch.bfloat16
    with pytest.raises(ModelError, match=r"unknown dtype 'float8'"):
        select_device("cpu", "float8")
    with pytest.raises(ModelError, match=r"unknown device 'gpu0'"):
        select_device("gpu0")
    if torch.cuda.is_available():  # the best device is the GPU, in half precision
        assert select_device() == (torch.device("cuda"), torch.float16)
    else:
        assert select_device() == (torch.device("cpu"), torch.float32)
        with pytest.raises(ModelError, match=r"torch sees no CUDA GPU"):
            select_device("cuda")


def test_fingerprint_is_stable_and_sensitive(tiny_model_dir):
    import torch

    first = load_pipeline(str(tiny_model_dir), device="cpu")
    second = load_pipeline(str(tiny_model_dir), device="cpu")
    a, b = as_model(first).fingerprint(), as_model(second).fingerprint()
    assert a["fingerprint"] == b["fingerprint"] and len(a["fingerprint"]) == 64
    assert set(a["components"]) == {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}
    with torch.no_grad():
        next(second.unet.parameters()).view(-1)[0] += 1e-3
    changed = as_model(second).fingerprint(refresh=True)
    assert changed["fingerprint"] != a["fingerprint"]
    assert changed["components"]["unet"]["weights_hash"] != a["components"]["unet"]["weights_hash"]
    assert changed["components"]["vae"] == a["components"]["vae"]


def test_a_steady_stretch_reads_the_device_and_stamps_the_weights_once(tiny_model_dir, monkeypatch):
    """A sweep asks its model's device and fingerprint a dozen times from opening its folder to keying its cells;
    each read walked every module (2 ms and 13 ms on the embedded model). Inside ``steady()`` each is worked out
    once; outside, a weight changed is seen at the next question."""
    import torch

    import img2img_lab.models.fingerprint as fingerprint_module

    model = as_model(load_pipeline(str(tiny_model_dir), device="cpu"))
    stamped, original = [], fingerprint_module.component_stamps
    monkeypatch.setattr(fingerprint_module, "component_stamps", lambda pipe: stamped.append(1) or original(pipe))
    with model.steady():
        with model.steady():  # nested: the outer stretch's answers
            first = model.fingerprint()
        assert model.fingerprint() is first and model.device == torch.device("cpu")
        assert len(stamped) == 1
    with torch.no_grad():
        next(model.pipe.unet.parameters()).view(-1)[0] += 1e-3
    assert model.fingerprint()["fingerprint"] != first["fingerprint"] and len(stamped) == 2


def test_decoding_beside_denoising_only_where_nothing_moves_or_casts_the_vae(tiny_model_dir):
    """A chunk is decoded on the writer thread while the next one denoises only where the VAE is never cast for a
    pass (a float16 or bfloat16 VAE with ``force_upcast``) and no hook moves or casts modules as they run."""
    import torch

    from img2img_lab.models.memory import decodes_beside_denoising

    model = as_model(load_pipeline(str(tiny_model_dir), device="cpu"))
    assert decodes_beside_denoising(model)
    model.pipe.vae.register_to_config(force_upcast=True)
    for dtype in (torch.float16, torch.bfloat16):  # SDXL's encoding casts either to float32 and back
        model.pipe.vae.to(dtype)
        assert not decodes_beside_denoising(model)
    model.pipe.vae.to(torch.float32)
    assert decodes_beside_denoising(model)
    model.pipe.unet.conv_in._diffusers_hook = object()  # what diffusers' offloading and layerwise casting attach
    assert not decodes_beside_denoising(model)


def test_fingerprint_of_a_tensor_over_two_to_the_24_values(tiny_model_dir):
    """SD 1.5's up-block convolutions hold 2560x1280x3x3 = 29.5M weights: the stamp's float32 sample positions
    rounded the last one past the end (IndexError on the CPU, a device-side assert on CUDA) and every sweep of a
    real-size model crashed."""
    import torch

    from img2img_lab.models.fingerprint import weights_stamp

    pipe = load_pipeline(str(tiny_model_dir), device="cpu")
    before = weights_stamp(pipe)
    pipe.unet.register_buffer("large", torch.zeros(2**24 + 4, dtype=torch.float16))
    stamp = weights_stamp(pipe)
    assert stamp != before and stamp == weights_stamp(pipe)
    assert len(as_model(pipe).fingerprint(refresh=True)["fingerprint"]) == 64


def test_a_vae_dtype_round_trip_rehashes_the_vae_alone(tiny_model_dir, monkeypatch, tmp_path):
    """A float16 sweep upcasts the VAE to decode (force_upcast) and casts it back: new storage, same weights. Every
    sweep hashed all weights again (SDXL: 2.6B UNet parameters, seconds per sweep); now only the VAE's."""
    import torch

    import img2img_lab.models.fingerprint as fingerprint

    monkeypatch.setenv("IMG2IMG_LAB_CACHE_DIR", str(tmp_path / "cache"))  # nothing kept: hashed on first use
    reused = []
    real = fingerprint.compute_fingerprint
    monkeypatch.setattr(fingerprint, "compute_fingerprint",
                        lambda *a, reuse=None, **k: (reused.append(sorted(reuse or {})), real(*a, reuse=reuse, **k))[1])
    pipe = load_pipeline(str(tiny_model_dir), device="cpu")
    first = as_model(pipe).fingerprint()
    assert as_model(pipe).fingerprint() is first and len(reused) == 1  # unchanged weights: not hashed again
    pipe.vae.to(torch.float64).to(torch.float32)
    again = as_model(pipe).fingerprint()
    assert reused[-1] == ["text_encoder", "tokenizer", "unet"]  # the VAE alone hashed again (and the scheduler)
    assert again == first == as_model(pipe).fingerprint(refresh=True)
    with torch.no_grad():
        pipe.vae.decoder.conv_out.bias.data.add_(1.0)
    assert as_model(pipe).fingerprint()["components"]["vae"]["weights_hash"] != first["components"]["vae"]["weights_hash"]


def test_torchvision_shim_is_conditional():
    """The shim is active exactly when torchvision's compiled extension cannot load, and either way the
    stack (torchvision, diffusers, transformers, lpips) imports."""
    code = (
        "import json, img2img_lab, img2img_lab._utils.compat as c, torchvision, diffusers, transformers, lpips;"
        "print(json.dumps({'active': c.shim_active(), 'extension': c.torchvision_extension_loads()}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    state = json.loads(result.stdout.strip().splitlines()[-1])
    assert state["active"] is (state["extension"] is False)


def test_a_class_name_list_is_refused_in_one_line(tmp_path):
    from img2img_lab.models.loading import img2img_pipeline_class

    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": ["pipeline", "MyPipeline"]}))
    with pytest.raises(ModelError, match=r'_class_name is \["pipeline", "MyPipeline"\], not a pipeline class name.*'
                                         r"custom pipeline's code"):
        img2img_pipeline_class(str(tmp_path), tmp_path)


def test_a_loaded_model_s_fingerprint_is_kept_until_its_files_or_weights_change(tiny_model_dir, tmp_path,
                                                                                monkeypatch):
    """Hashing an SD 1.5-sized model's 1.07 B weights took 5 s of every sweep's start on two cores; a model loaded
    from the same files (sizes, times), device, dtype and versions now takes the fingerprint kept by the last load.
    A weight changed after loading is hashed anew and not kept; a changed file keys it anew."""
    import shutil

    import torch

    import img2img_lab.models.fingerprint as fingerprint

    monkeypatch.setenv("IMG2IMG_LAB_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    hashed = []
    real = fingerprint.compute_fingerprint
    monkeypatch.setattr(fingerprint, "compute_fingerprint", lambda *a, **k: (hashed.append(1), real(*a, **k))[1])
    first = load_model(str(folder), device="cpu").fingerprint()
    assert len(hashed) == 1 and len(list((tmp_path / "cache" / "fingerprints").iterdir())) == 1
    again = load_model(str(folder), device="cpu")
    assert again.fingerprint() == first and len(hashed) == 1  # kept: not hashed again
    with torch.no_grad():
        again.pipe.unet.conv_in.bias.add_(1.0)
    assert again.fingerprint()["fingerprint"] != first["fingerprint"] and len(hashed) == 2
    assert load_model(str(folder), device="cpu").fingerprint() == first and len(hashed) == 2  # the change was not kept
    config = folder / "unet" / "config.json"
    config.write_text(config.read_text())  # same bytes, a new modification time: keyed anew
    assert load_model(str(folder), device="cpu").fingerprint() == first and len(hashed) == 3
