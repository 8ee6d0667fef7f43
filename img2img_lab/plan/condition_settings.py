"""A plan's modes and conditioning images: inpainting settings (``inpaint:``) and ControlNet settings (``control:``).

A config may add::

    modes: [img2img, inpaint]     # each cell runs in one mode; the mode is part of its key
    inpaint:
      mask: oracle                # auto | oracle | a folder of <source name>.png | {source name: file}
      repaint: background         # background | subject: which side of the subject mask is repainted
    control:
      image: canny                # canny (edges of the source) | a folder of <source name>.png | {name: file}
      conditioning_scales: [0.5, 1.0]   # controlnet_conditioning_scale axis (optional)
      guidance_starts: [0.0]            # control_guidance_start axis (optional)
      guidance_ends: [1.0]              # control_guidance_end axis (optional)

The modes and the three ControlNet lists are axes (:data:`img2img_lab.plan.axes.AXES`); this module checks the rest.

>>> inpaint, control = check_conditions(["img2img", "inpaint"], None, {"image": "canny", "conditioning_scales": [1]})
>>> inpaint, control
({'mask': 'auto', 'repaint': 'background'}, {'image': 'canny', 'conditioning_scales': [1.0]})
"""

from __future__ import annotations

from pathlib import Path

from img2img_lab.errors import PlanError
from img2img_lab.plan.axes import MODES, section_axes  # noqa: F401 - MODES re-exported
from img2img_lab.plan.values import as_list, check_unique, shown

MASK_SOURCES = ("auto", "oracle")
REPAINT = ("background", "subject")


def check_conditions(modes: list[str], inpaint, control) -> tuple[dict | None, dict | None]:
    """Checked ``(inpaint, control)`` for the plan's (checked) ``modes``; inpainting settings get their defaults
    where ``inpaint`` is a mode."""
    if inpaint is not None and "inpaint" not in modes:
        raise PlanError("the config gives inpaint settings but no 'inpaint' mode. Fix: add modes: [inpaint] (or "
                        "[img2img, inpaint]).")
    if "inpaint" in modes:
        inpaint = _check_inpaint(inpaint or {})
    return inpaint, (None if control is None else _check_control(control))


def _check_inpaint(settings) -> dict:
    if not isinstance(settings, dict):
        raise PlanError(f"inpaint must be a mapping (mask, repaint), got {shown(settings)}. Fix: e.g. inpaint: "
                        f"{{mask: oracle, repaint: background}}.")
    unknown = set(settings) - {"mask", "repaint"}
    if unknown:
        raise PlanError(f"unknown inpaint setting {shown(sorted(unknown)[0])}. Fix: use mask and repaint.")
    mask, repaint = settings.get("mask", "auto"), settings.get("repaint", "background")
    if repaint not in REPAINT:
        raise PlanError(f"inpaint repaint {shown(repaint)} must be 'background' or 'subject'.")
    return {"mask": _check_image_source(mask, "inpaint mask", MASK_SOURCES), "repaint": repaint}


def _check_control(settings) -> dict:
    if not isinstance(settings, dict) or "image" not in settings:
        raise PlanError(f"control must be a mapping with an 'image' (canny, a folder or {{source name: file}}), got "
                        f"{shown(settings)}. Fix: e.g. control: {{image: canny}}.")
    axes = section_axes("control")
    unknown = set(settings) - {"image", *axes}
    if unknown:
        raise PlanError(f"unknown control setting {shown(sorted(unknown)[0])}. Fix: use image, {', '.join(axes)}.")
    checked = {"image": _check_image_source(settings["image"], "control image", ("canny",))}
    for plural, axis in axes.items():
        if plural in settings:
            values = [axis.check(value) for value in as_list(settings[plural], plural)]
            check_unique(values, plural)
            checked[plural] = values
    return checked


def _check_image_source(value, what: str, names: tuple[str, ...]):
    if isinstance(value, dict):
        if not value or not all(isinstance(key, str) and isinstance(path, str) for key, path in value.items()):
            raise PlanError(f"{what} files must map source names to paths, got {shown(value)}.")
        return dict(value)
    if not isinstance(value, str) or not value.strip():
        raise PlanError(f"{what} {shown(value)} must be {', '.join(names)}, a folder or {{source name: file}}.")
    return value


def resolve_paths(settings: dict | None, key: str, names: tuple[str, ...], base_dir) -> dict | None:
    """``settings`` with its ``key`` (a folder or ``{name: file}``) made relative to ``base_dir`` (a config's
    folder)."""
    if settings is None or key not in settings or base_dir is None:
        return settings
    value = settings[key]

    def resolved(path: str) -> str:
        path = Path(path).expanduser()
        return str(path if path.is_absolute() else Path(base_dir) / path)

    if isinstance(value, dict):
        return {**settings, key: {name: resolved(path) for name, path in value.items()}}
    return {**settings, key: value if value in names else resolved(value)}
