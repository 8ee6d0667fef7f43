"""CIELAB and the CIEDE2000 colour difference (Sharma, Wu & Dalal 2005) in torch, batched, on any device.

Term for term as scikit-image's ``rgb2lab`` and ``deltaE_ciede2000`` (float32 here; the mean over an image agrees
within 3e-6 on the test images, ``tests/test_fidelity.py``), including the zero-chroma case (a grey pixel has no
hue: its hue difference is 0 and the mean hue is the sum). Sharma, Wu & Dalal's 34 published test pairs hold in
float32 within 1e-4 (``tests/test_fidelity.py``; :data:`HUE_TIE`).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["D65_WHITE", "XYZ_FROM_RGB", "ciede2000_means", "lab_from_pixels", "per_image_means"]

#: sRGB -> XYZ (D65) and the D65 2-degree white point, as scikit-image's ``rgb2lab``.
XYZ_FROM_RGB = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
D65_WHITE = (0.95047, 1.0, 1.08883)
#: Radians by which a hue difference must pass 180 degrees to wrap: Sharma et al.'s rule says |dh| <= 180 does not
#: wrap, and their pair 14 is an exact 180-degree tie that float32's rounding of the hue angles (about 1e-6 rad near
#: 2 pi) pushed past it (error 0.058). Their pairs 13 and 15 sit 6e-5 rad on either side and stay apart.
HUE_TIE = 1e-5


def lab_from_pixels(batch):
    """CIELAB (D65, 2 degrees) of an NxHxWx3 uint8 tensor, as float32 NxHxWx3, by scikit-image's ``rgb2lab``
    formulas (the sRGB decoding by a 256-entry table).

    >>> import torch
    >>> lab = lab_from_pixels(torch.tensor([[[[255, 255, 255]]]], dtype=torch.uint8))  # white
    >>> [round(value, 3) for value in lab.flatten().tolist()]  # scikit-image: 100.0, -0.002, 0.005
    [100.0, -0.002, 0.005]
    """
    import torch

    levels = torch.arange(256, dtype=torch.float64) / 255.0
    linear = torch.where(levels > 0.04045, ((levels + 0.055) / 1.055) ** 2.4, levels / 12.92)
    rgb = linear.float().to(batch.device)[batch.long()]
    xyz = rgb @ torch.tensor(XYZ_FROM_RGB, device=batch.device).T / torch.tensor(D65_WHITE, device=batch.device)
    f = torch.where(xyz > 0.008856, xyz.clamp_min(0) ** (1 / 3), 7.787 * xyz + 16.0 / 116.0)
    return torch.stack([116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])], -1)


def ciede2000_means(lab_source, lab_outputs) -> np.ndarray:
    """Mean CIEDE2000 per output (Sharma, Wu & Dalal 2005), term for term as scikit-image's ``deltaE_ciede2000``:
    ``lab_source`` is 1xHxWx3, ``lab_outputs`` NxHxWx3 (float tensors); returns N float64 means.

    >>> import torch
    >>> red, blue = (lab_from_pixels(torch.tensor([[[rgb]]], dtype=torch.uint8)) for rgb in ([255, 0, 0], [0, 0, 255]))
    >>> ciede2000_means(red, blue).round(2).tolist()  # Sharma's worked red/blue pair in sRGB
    [52.88]
    """
    import torch

    (l1, a1, b1), (l2, a2, b2) = lab_source.unbind(-1), lab_outputs.unbind(-1)
    mean_chroma = 0.5 * (torch.hypot(a1, b1) + torch.hypot(a2, b2))
    stretch = 1.5 - 0.5 * _chroma_weight(mean_chroma)
    chroma1, chroma2 = torch.hypot(a1 * stretch, b1), torch.hypot(a2 * stretch, b2)
    hue1, hue2 = _hue(b1, a1 * stretch), _hue(b2, a2 * stretch)
    mean_l = 0.5 * (l1 + l2)
    lightness_offset = (mean_l - 50) * (mean_l - 50)
    lightness_term = (l2 - l1) / (1 + 0.015 * lightness_offset / torch.sqrt(20 + lightness_offset))
    mean_c = 0.5 * (chroma1 + chroma2)
    chroma_term = (chroma2 - chroma1) / (1 + 0.045 * mean_c)
    hue_diff, hue_sum, chroma_product = hue2 - hue1, hue1 + hue2, chroma1 * chroma2
    coloured = (chroma_product != 0).float()  # 0 where a colour is grey: hue difference 0, mean hue the sum
    wraps = (hue_diff.abs() > math.pi + HUE_TIE).float() * coloured  # a 180-degree tie does not wrap (Sharma)
    d_hue = (hue_diff - 2 * math.pi * torch.sign(hue_diff) * wraps) * coloured
    mean_hue = (hue_sum + wraps * (2 * math.pi) * (1 - 2 * (hue_sum >= 2 * math.pi).float())) * (1 - 0.5 * coloured)
    t = (1 - 0.17 * torch.cos(mean_hue - math.radians(30)) + 0.24 * torch.cos(2 * mean_hue)
         + 0.32 * torch.cos(3 * mean_hue + math.radians(6)) - 0.20 * torch.cos(4 * mean_hue - math.radians(63)))
    hue_term = 2 * torch.sqrt(chroma_product) * torch.sin(d_hue / 2) / (1 + 0.015 * mean_c * t)
    rotation = 2 * _chroma_weight(mean_c)
    angle_offset = (torch.rad2deg(mean_hue) - 275) / 25
    angle = math.radians(30) * torch.exp(-angle_offset * angle_offset)
    rotation_term = -torch.sin(2 * angle) * rotation * chroma_term * hue_term
    squared = lightness_term * lightness_term + chroma_term * chroma_term + hue_term * hue_term + rotation_term
    return per_image_means(torch.sqrt(squared.clamp_min(0)))


def _chroma_weight(chroma):
    """``sqrt(C^7 / (C^7 + 25^7))``, CIEDE2000's chroma weighting."""
    import torch

    square = chroma * chroma
    seventh = square * square * square * chroma
    return torch.sqrt(seventh / (seventh + 25.0**7))


def _hue(b, a):
    """Hue angle in [0, 2 pi)."""
    import torch

    angle = torch.atan2(b, a)
    return torch.where(angle < 0, angle + 2 * math.pi, angle)


def per_image_means(maps) -> np.ndarray:
    """The mean of each image of a batch (over every dimension but the first), summed in float64 where the device
    has it (Apple's MPS has not: float32 there, whose cascaded sums stay within 1e-6 of it).

    >>> import torch
    >>> per_image_means(torch.ones(2, 3, 4)).tolist()
    [1.0, 1.0]
    """
    dims = tuple(range(1, maps.dim()))
    if maps.device.type == "mps":
        return maps.mean(dim=dims).cpu().double().numpy()
    return maps.double().mean(dim=dims).cpu().numpy()
