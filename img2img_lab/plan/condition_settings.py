"""A plan's modes and conditioning images: inpainting settings (``inpaint:``) and ControlNet settings (``control:``).

A config may add::

    modes: [img2img, inpaint]     # each cell runs in one mode; the mode is part of its key
    inpaint:
      mask: oracle                # auto | oracle | a folder of <source name>.png | {source name: file}
      repaint: background         # background | subject: which side of the subject mask is repainted
      composite: [false, true]    # paste the source back where the mask keeps it, after decoding (axis)
      mask_blur: [0, 4]           # pixels: mask_processor.blur(mask, blur_factor=N) before the call (axis)
      padding_mask_crop: [null, 32]   # "only masked": the pipeline's crop around the mask + paste back (axis)
    control:
      image: canny                # canny (edges of the source) | a folder of <source name>.png | {name: file};
                                  # a list of those: one per ControlNet of a MultiControlNetModel, in its order
      conditioning_scales: [0.5, 1.0]   # controlnet_conditioning_scale axis (optional)
      guidance_starts: [0.0]            # control_guidance_start axis (optional)
      guidance_ends: [1.0]              # control_guidance_end axis (optional)
      control_modes: [3]                # a union ControlNet's mode per control image (axis; [[3, 1]] for two)

The modes, the three inpainting options and the four ControlNet lists are axes
(:data:`img2img_lab.plan.axes.AXES`); this module checks the rest.

>>> inpaint, control = check_conditions(["img2img", "inpaint"], None, {"image": "canny", "conditioning_scales": [1]})
>>> inpaint, control
({'mask': 'auto', 'repaint': 'background'}, {'image': 'canny', 'conditioning_scales': [1.0]})
>>> check_conditions(["img2img"], None, {"image": ["canny", "silhouette"]})[1]
{'image': ['canny', 'silhouette']}
"""

from __future__ import annotations

from pathlib import Path

from img2img_lab.errors import PlanError
from img2img_lab.plan.axes import MODES, section_axes  # noqa: F401 - MODES re-exported
from img2img_lab.plan.values import as_list, check_unique, shown

MASK_SOURCES = ("auto", "oracle")
REPAINT = ("background", "subject")
#: The control images made from a source: its Canny edges, or its silhouette (the embedded model's ControlNet's input).
CONTROL_SOURCES = ("canny", "silhouette")


def check_conditions(modes: list[str], inpaint, control) -> tuple[dict | None, dict | None]:
    """Checked ``(inpaint, control)`` for the plan's (checked) ``modes``; inpainting settings get their defaults
    where ``inpaint`` is a mode."""
    if inpaint is not None and "inpaint" not in modes:
        options = sorted(set(inpaint) & set(section_axes("inpaint"))) if isinstance(inpaint, dict) else []
        raise PlanError(f"the config gives inpaint settings{' (' + ', '.join(options) + ')' if options else ''} but "
                        f"no 'inpaint' mode, so there is no mask to {'composite or blur' if options else 'use'}. "
                        f"Fix: add modes: [inpaint] (or [img2img, inpaint]).")
    if "inpaint" in modes:
        inpaint = _check_inpaint(inpaint or {})
    return inpaint, (None if control is None else _check_control(control))


def _check_inpaint(settings) -> dict:
    if not isinstance(settings, dict):
        raise PlanError(f"inpaint must be a mapping (mask, repaint), got {shown(settings)}. Fix: e.g. inpaint: "
                        f"{{mask: oracle, repaint: background}}.")
    axes = section_axes("inpaint")
    unknown = set(settings) - {"mask", "repaint", *axes}
    if unknown:
        raise PlanError(f"unknown inpaint setting {shown(sorted(unknown)[0])}. Fix: use mask, repaint, "
                        f"{', '.join(axes)}.")
    mask, repaint = settings.get("mask", "auto"), settings.get("repaint", "background")
    if repaint not in REPAINT:
        raise PlanError(f"inpaint repaint {shown(repaint)} must be 'background' or 'subject'.")
    return {"mask": _check_image_source(mask, "inpaint mask", MASK_SOURCES), "repaint": repaint,
            **_section_values(settings, axes)}


def _section_values(settings: dict, axes: dict) -> dict:
    """The checked lists of a section's axes that ``settings`` gives (a scalar is a list of one)."""
    checked = {}
    for plural, axis in axes.items():
        if plural in settings:
            values = [value if axis.at_baseline(value) else axis.check(value)
                      for value in as_list(settings[plural], plural)]
            check_unique(values, plural)
            checked[plural] = values
    return checked


def _check_control(settings) -> dict:
    if not isinstance(settings, dict) or "image" not in settings:
        raise PlanError(f"control must be a mapping with an 'image' (canny, a folder or {{source name: file}}), got "
                        f"{shown(settings)}. Fix: e.g. control: {{image: canny}}.")
    axes = section_axes("control")
    unknown = set(settings) - {"image", *axes}
    if unknown:
        raise PlanError(f"unknown control setting {shown(sorted(unknown)[0])}. Fix: use image, {', '.join(axes)}.")
    image = settings["image"]
    if isinstance(image, list):  # one per ControlNet
        if not image:
            raise PlanError("control image is an empty list. Fix: name one control image per ControlNet, e.g. "
                            "control: {image: [canny, silhouette]}.")
        image = [_check_image_source(each, "control image", CONTROL_SOURCES) for each in image]
        image = image[0] if len(image) == 1 else image
    else:
        image = _check_image_source(image, "control image", CONTROL_SOURCES)
    return {"image": image, **_section_values(settings, axes)}


def control_images(control: dict | None) -> list:
    """The control image sources a plan's ``control`` names, one per ControlNet (``[]`` without one).

    >>> control_images({"image": "canny"}), control_images({"image": ["canny", "depth/"]})
    (['canny'], ['canny', 'depth/'])
    """
    if control is None:
        return []
    return list(control["image"]) if isinstance(control["image"], list) else [control["image"]]


def _check_image_source(value, what: str, names: tuple[str, ...]):
    if isinstance(value, dict):
        if not value or not all(isinstance(key, str) and isinstance(path, str) for key, path in value.items()):
            raise PlanError(f"{what} files must map source names to paths, got {shown(value)}.")
        return dict(value)
    if not isinstance(value, str) or not value.strip():
        raise PlanError(f"{what} {shown(value)} must be {', '.join(names)}, a folder or {{source name: file}}.")
    return value


def resolve_paths(settings: dict | None, key: str, names: tuple[str, ...], base_dir) -> dict | None:
    """``settings`` with its ``key`` (a folder or ``{name: file}``, or a list of them) made relative to ``base_dir`` (a
    config's folder)."""
    if settings is None or key not in settings or base_dir is None:
        return settings
    value = settings[key]

    def resolved(path: str) -> str:
        path = Path(path).expanduser()
        return str(path if path.is_absolute() else Path(base_dir) / path)

    def resolved_source(value):  # anything but a path is left for check_conditions to refuse
        if isinstance(value, dict):
            return {name: resolved(path) if isinstance(path, str) else path for name, path in value.items()}
        return resolved(value) if isinstance(value, str) and value not in names else value

    return {**settings, key: [resolved_source(each) for each in value] if isinstance(value, list)
            else resolved_source(value)}
