"""LPIPS (Zhang et al. 2018) with torchvision's ImageNet backbones, never a random one in their place.

LPIPS needs the backbone weights in ``$TORCH_HOME/hub/checkpoints`` (``alexnet-owt-7be5be79.pth``,
``vgg16-397923af.pth``, ``squeezenet1_1-b8a52dc0.pth``); when they are missing the metric is unavailable
(:class:`~img2img_lab.errors.MetricUnavailable` says which file goes where).

>>> lpips_status("alex")[0] in (True, False)
True
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import img2img_lab  # noqa: F401  - torchvision shim before lpips
from img2img_lab.errors import Img2ImgLabError, MetricUnavailable
from img2img_lab.images import metric_pair as _pair


#: torchvision's file names for the ImageNet backbones LPIPS builds on.
LPIPS_BACKBONE_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}

_LPIPS_MODELS: dict[tuple, object] = {}


def lpips_checkpoint_dir() -> Path:
    """Where torchvision looks for backbone weights: ``$TORCH_HOME/hub/checkpoints``."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def lpips_status(net: str = "alex") -> tuple[bool, str]:
    """``(available, explanation)`` for LPIPS with backbone ``net`` (alex, vgg or squeeze).

    >>> lpips_status("alex")  # doctest: +ELLIPSIS
    (False, 'lpips (alex): backbone weights missing at .../alexnet-owt-7be5be79.pth. Fix: copy ...')
    """
    if net not in LPIPS_BACKBONE_FILES:
        raise Img2ImgLabError(f"unknown LPIPS backbone {net!r}. Fix: use one of {', '.join(LPIPS_BACKBONE_FILES)}.")
    path = lpips_checkpoint_dir() / LPIPS_BACKBONE_FILES[net]
    if path.is_file():
        return True, f"lpips ({net}): backbone weights at {path}"
    return False, (
        f"lpips ({net}): backbone weights missing at {path}. Fix: copy torchvision's ImageNet weights file "
        f"{LPIPS_BACKBONE_FILES[net]} (from a machine with internet: "
        f"python -c \"import torchvision; torchvision.models.{ {'alex': 'alexnet', 'vgg': 'vgg16', 'squeeze': 'squeezenet1_1'}[net] }(weights='DEFAULT')\" "
        f"then look in ~/.cache/torch/hub/checkpoints) into {path.parent}, or set TORCH_HOME to a folder whose "
        f"hub/checkpoints holds it."
    )


def _lpips_model(net: str, device: str, random_backbone: bool):
    key = (net, device, random_backbone)
    if key not in _LPIPS_MODELS:
        import contextlib
        import io

        import lpips as lpips_package

        if not random_backbone:
            available, explanation = lpips_status(net)
            if not available:
                raise MetricUnavailable(explanation)
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
