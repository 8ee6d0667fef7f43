"""LPIPS (Zhang et al. 2018) with torchvision's ImageNet backbones, never a random one in their place.

LPIPS needs the backbone weights in ``$TORCH_HOME/hub/checkpoints`` (``alexnet-owt-7be5be79.pth``,
``vgg16-397923af.pth``, ``squeezenet1_1-b8a52dc0.pth``). Online they download on first use
(:func:`img2img_lab.weights.fetch_lpips`); offline a missing file makes the metric unavailable
(:class:`~img2img_lab.errors.MetricUnavailable` says which file goes where and how to seed it).

>>> lpips_status("alex")[0] in (True, False)
True
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import img2img_lab  # noqa: F401  - torchvision shim before lpips
from img2img_lab.errors import Img2ImgLabError
from img2img_lab.images import metric_pair as _pair
from img2img_lab.weights import (LPIPS_BACKBONE_FILES, fetch_lpips, lpips_checkpoint_dir,  # noqa: F401 - re-exported
                                 lpips_missing_message, lpips_url, offline_mode)



_LPIPS_MODELS: dict[tuple, object] = {}


def lpips_status(net: str = "alex") -> tuple[bool, str]:
    """``(available, explanation)`` for LPIPS with backbone ``net`` (alex, vgg or squeeze). Online a missing file is
    available: it downloads on first use.

    >>> available, explanation = lpips_status("alex")  # offline here, and no backbone file
    >>> available, explanation.split(". Fix: ")[1][:42]
    (False, 'run `img2img-lab weights fetch lpips` on a')
    """
    if net not in LPIPS_BACKBONE_FILES:
        raise Img2ImgLabError(f"unknown LPIPS backbone {net!r}. Fix: use one of {', '.join(LPIPS_BACKBONE_FILES)}.")
    path = lpips_checkpoint_dir() / LPIPS_BACKBONE_FILES[net]
    if path.is_file():
        return True, f"lpips ({net}): backbone weights at {path}"
    if not offline_mode():
        return True, f"lpips ({net}): backbone weights download on first use from {lpips_url(net)} into {path.parent}"
    return False, lpips_missing_message(net, path)


def _lpips_model(net: str, device: str, random_backbone: bool):
    key = (net, device, random_backbone)
    if key not in _LPIPS_MODELS:
        import contextlib
        import io

        import lpips as lpips_package

        if not random_backbone:
            fetch_lpips(net)  # present, or downloaded now (online), or MetricUnavailable with the fix
        with contextlib.redirect_stdout(io.StringIO()):
            model = lpips_package.LPIPS(net=net, pretrained=True, pnet_rand=random_backbone, verbose=False)
        _LPIPS_MODELS[key] = model.eval().to(device)
    return _LPIPS_MODELS[key]


def lpips_distances(sources, outputs, *, net: str = "alex", device: str | None = None, batch_size: int = 32,
                    random_backbone: bool = False) -> np.ndarray:
    """LPIPS distances (Zhang et al. 2018) for pairs of RGB images, batched; lower = closer, 0 = identical.

    Raises :class:`MetricUnavailable` when the backbone weights are missing. ``random_backbone=True``
    uses a randomly initialised backbone: **for wiring tests only**, its numbers are not LPIPS.

    >>> lpips_distances([source], [output])  # needs the ImageNet backbone's weights  # doctest: +SKIP
    array([0.1234], dtype=float32)
    """
    import torch

    device = device or "cpu"
    model = _lpips_model(net, device, random_backbone)
    pairs = [_pair(a, b) for a, b in zip(sources, outputs)]
    results = []
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            shapes = {a.shape for a, _ in chunk}
            if len(shapes) > 1:  # mixed sizes: one pair at a time
                for a, b in chunk:
                    results.extend(lpips_distances([a], [b], net=net, device=device, random_backbone=random_backbone))
                continue
            to_tensor = lambda arrays: (torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()  # noqa: E731
                                        / 127.5 - 1.0).to(device)
            distance = model(to_tensor([a for a, _ in chunk]), to_tensor([b for _, b in chunk]))
            results.extend(distance.reshape(-1).cpu().numpy().tolist())
    return np.asarray(results, dtype=np.float64)


def lpips(source, output, *, net: str = "alex", device: str | None = None) -> float:
    """LPIPS distance of one pair (see :func:`lpips_distances`).

    >>> lpips(source, output)  # needs the ImageNet backbone's weights  # doctest: +SKIP
    0.1234
    """
    return float(lpips_distances([source], [output], net=net, device=device)[0])
