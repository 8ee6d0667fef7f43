"""The oracle: a classical (non-learned) reader of shapes-world images.

:func:`read_image` reads the background colour (median of the image border, nearest palette colour), the
shape's pixels (those far from the background, largest connected region, holes filled), the shape colour
(median of the region's interior) and the shape class from two rotation-invariant measures of the region:

* ``solidity`` = area / convex-hull area: ~0.56 for the star, ~1 for the convex shapes;
* ``fill`` = area / (pi * R^2), R the largest centroid-to-pixel distance: circle ~1, square 2/pi ~ 0.64,
  triangle 3*sqrt(3)/(4*pi) ~ 0.41.

Its exactness on clean generated images is measured by the tests (>= 99%). Through
:mod:`img2img_lab.metrics.measure` it provides six metrics for shapes-world prompts:

* ``oracle_adherence`` (prompt): fraction of the prompt's three attributes the output shows, in [0, 1];
* ``oracle_match`` (prompt): 1 when all three match, else 0;
* ``oracle_preservation`` (pair): fraction of the source's attributes the output keeps, in [0, 1];
* ``oracle_kept`` (pair): 1 when all three are kept, else 0;
* ``oracle_subject_kept`` (pair) and ``oracle_background_match`` (prompt): a background swap's two halves, the
  source's shape and colour kept, the prompt's background shown;
* ``oracle_outlined`` (pair): 1 when the output is in the outlined style the project's LoRA teaches
  (:func:`outline_share`), else 0.

>>> from img2img_lab.shapes.world import Scene, render
>>> read_image(render(Scene("triangle", "yellow", "black", radius=0.33))).attributes()
('triangle', 'yellow', 'black')
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from img2img_lab.shapes.world import COLOURS, parse_caption

_PALETTE_NAMES = list(COLOURS)
_PALETTE = np.asarray([COLOURS[name] for name in _PALETTE_NAMES], dtype=np.float64)

#: Decision thresholds for the shape class (see the module docstring for the ideal values).
STAR_SOLIDITY = 0.78
CIRCLE_FILL = 0.80
SQUARE_FILL = 0.52
FOREGROUND_DISTANCE = 70.0
MIN_SHAPE_PIXELS = 12
#: How close (RGB distance) a rim pixel must be to a palette colour to count as an outline.
OUTLINE_DISTANCE = 60.0


@dataclass(frozen=True)
class Reading:
    """What the oracle read from an image, with a confidence in [0, 1] per attribute."""

    shape: str | None
    colour: str | None
    background: str
    shape_confidence: float
    colour_confidence: float
    background_confidence: float
    solidity: float = float("nan")
    fill: float = float("nan")

    def attributes(self) -> tuple[str | None, str | None, str]:
        return self.shape, self.colour, self.background

    @property
    def confidence(self) -> float:
        return min(self.shape_confidence, self.colour_confidence, self.background_confidence)


def _nearest_colour(rgb: np.ndarray, exclude: str | None = None) -> tuple[str, float]:
    distances = np.linalg.norm(_PALETTE - rgb, axis=1)
    if exclude is not None:
        distances[_PALETTE_NAMES.index(exclude)] = np.inf
    order = np.argsort(distances)
    best, second = distances[order[0]], distances[order[1]]
    confidence = float(np.clip(1 - best / max(second, 1e-9), 0, 1)) if np.isfinite(second) else 1.0
    return _PALETTE_NAMES[order[0]], confidence


def read_image(image) -> Reading:
    """Read ``(shape, colour, background)`` from an RGB image (PIL or uint8 array), any size.

    ``shape`` and ``colour`` are ``None`` when no shape stands out from the background.

    >>> from img2img_lab.shapes.world import Scene, render
    >>> read_image(render(Scene("star", "white", "red"))).shape
    'star'
    """
    from scipy import ndimage
    from skimage.measure import regionprops

    array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image).astype(np.float64)
    background_rgb, region = shape_region(array)
    background, background_confidence = _nearest_colour(background_rgb)
    if region is None:
        return Reading(None, None, background, 0.0, 0.0, background_confidence)
    area = int(region.sum())
    interior = ndimage.binary_erosion(region)
    pixels = array[interior] if interior.sum() >= 4 else array[region]
    colour, colour_confidence = _nearest_colour(np.median(pixels, axis=0), exclude=background)

    props = regionprops(region.astype(np.uint8))[0]
    cy, cx = props.centroid
    ys, xs = np.nonzero(region)
    radius = float(np.sqrt((ys - cy) ** 2 + (xs - cx) ** 2).max()) + 0.5
    fill = area / (math.pi * radius**2)
    solidity = float(props.solidity)
    if solidity < STAR_SOLIDITY:
        shape, margin = "star", (STAR_SOLIDITY - solidity) / 0.22
    elif fill >= CIRCLE_FILL:
        shape, margin = "circle", min((fill - CIRCLE_FILL) / 0.15, (solidity - STAR_SOLIDITY) / 0.22)
    elif fill >= SQUARE_FILL:
        shape, margin = "square", min(fill - SQUARE_FILL, CIRCLE_FILL - fill) / 0.12
    else:
        shape, margin = "triangle", min((SQUARE_FILL - fill) / 0.11, (solidity - STAR_SOLIDITY) / 0.22)
    return Reading(shape, colour, background, float(np.clip(margin, 0, 1)), colour_confidence,
                   background_confidence, solidity=solidity, fill=float(fill))


def shape_region(array: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(background RGB, shape pixels)`` of an HxWx3 float image: the background is the median of the 2-px border,
    the shape the largest region farther than :data:`FOREGROUND_DISTANCE` from it, holes filled (``None`` when
    there is none of at least :data:`MIN_SHAPE_PIXELS` pixels)."""
    from scipy import ndimage
    from skimage.measure import label

    border = np.concatenate([array[:2].reshape(-1, 3), array[-2:].reshape(-1, 3), array[:, :2].reshape(-1, 3),
                             array[:, -2:].reshape(-1, 3)])
    background_rgb = np.median(border, axis=0)
    labels = label(np.linalg.norm(array - background_rgb, axis=2) > FOREGROUND_DISTANCE, connectivity=2)
    if labels.max() == 0:
        return background_rgb, None
    region = ndimage.binary_fill_holes(labels == (int(np.argmax(np.bincount(labels.ravel())[1:])) + 1))
    return background_rgb, (region if region.sum() >= MIN_SHAPE_PIXELS else None)


def adherence(image, prompt: str) -> float:
    """Fraction of the prompt's attributes (shape, colour, background) that the image shows, in [0, 1].

    NaN for prompts that are not shapes-world captions.

    >>> from img2img_lab.shapes.world import Scene, render
    >>> adherence(render(Scene("circle", "red", "blue")), "a red square on a blue background")
    0.6666666666666666
    """
    try:
        wanted = parse_caption(prompt)
    except ValueError:
        return float("nan")
    seen = read_image(image).attributes()
    return sum(a == b for a, b in zip(wanted, seen)) / 3


def match(image, prompt: str) -> float:
    """1.0 when the image shows all three attributes of the prompt, 0.0 otherwise (NaN: not a world prompt)."""
    value = adherence(image, prompt)
    return value if math.isnan(value) else float(value == 1.0)


def preservation(source, output) -> float:
    """Fraction of the source's attributes that the output keeps, in [0, 1].

    >>> from img2img_lab.shapes.world import Scene, render
    >>> preservation(render(Scene("circle", "red", "blue")), render(Scene("circle", "red", "white")))
    0.6666666666666666
    """
    a, b = read_image(source).attributes(), read_image(output).attributes()
    return sum(x == y and x is not None for x, y in zip(a, b)) / 3


def kept(source, output) -> float:
    """1.0 when the output keeps all three attributes of the source, else 0.0."""
    return float(preservation(source, output) == 1.0)


def subject_kept(source, output) -> float:
    """1.0 when the output keeps the source's shape and colour (whatever its background), else 0.0: "keep the
    product" of a background swap.

    >>> from img2img_lab.shapes.world import Scene, render
    >>> subject_kept(render(Scene("circle", "red", "blue")), render(Scene("circle", "red", "white")))
    1.0
    """
    a, b = read_image(source), read_image(output)
    return float(a.shape is not None and (a.shape, a.colour) == (b.shape, b.colour))


def background_match(image, prompt: str) -> float:
    """1.0 when the image shows the prompt's background colour, else 0.0 (NaN: not a world prompt): "change the
    background" of a background swap.

    >>> from img2img_lab.shapes.world import Scene, render
    >>> background_match(render(Scene("circle", "red", "white")), "a red circle on a white background")
    1.0
    """
    try:
        wanted = parse_caption(prompt)[2]
    except ValueError:
        return float("nan")
    return float(read_image(image).background == wanted)


def outline_share(image) -> float:
    """The share of the shape's rim (its outer 2 px) drawn in a palette colour that is neither the shape's nor the
    background's: ~1 in the outlined style (:func:`img2img_lab.shapes.world.render` with ``outlined=True``, what the
    project's LoRA teaches), ~0 without (0 without a shape).

    >>> from img2img_lab.shapes.world import Scene, render
    >>> scene = Scene("star", "white", "red", radius=0.33)
    >>> round(outline_share(render(scene)), 2), round(outline_share(render(scene, outlined=True)), 2)
    (0.0, 0.81)
    """
    from scipy import ndimage

    array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image).astype(np.float64)
    background_rgb, region = shape_region(array)
    interior = None if region is None else ndimage.binary_erosion(region, iterations=3)
    if interior is None or interior.sum() < 4:
        return 0.0
    background = _nearest_colour(background_rgb)[0]
    colour = _nearest_colour(np.median(array[interior], axis=0), exclude=background)[0]
    rim = array[region & ~ndimage.binary_erosion(region, iterations=2)]
    others = _PALETTE[[index for index, name in enumerate(_PALETTE_NAMES) if name not in (colour, background)]]
    distance = np.linalg.norm(rim[:, None, :] - others[None, :, :], axis=2).min(axis=1)
    return float((distance <= OUTLINE_DISTANCE).mean())


def outlined(source, output) -> float:
    """1.0 when ``output`` is in the outlined style (:func:`outline_share` at least 0.3: every clean outlined render
    of 300 reaches 0.51, every plain one reads 0), else 0.0."""
    return float(outline_share(output) >= 0.3)


#: The overlap (intersection over union) at which an output's shape counts as following a silhouette.
FOLLOW_IOU = 0.5


def silhouette_overlap(silhouette, image) -> float:
    """Intersection over union of a silhouette's white pixels (a control image: the shape white on black) and the
    shape the oracle finds in ``image`` (0 without a shape).

    >>> from img2img_lab.shapes.world import Scene, render
    >>> scene = Scene("star", "white", "red")
    >>> control = np.repeat(render(Scene("star", "white", "black")).max(axis=2, keepdims=True), 3, axis=2)
    >>> round(silhouette_overlap(control, render(scene)), 2), silhouette_overlap(control, render(Scene("star", "red", "red")))
    (0.94, 0.0)
    """
    from img2img_lab.images.arrays import metric_array

    wanted = metric_array(silhouette).mean(axis=2) > 127
    found = subject_mask(image)
    union = (wanted | found).sum()
    return float((wanted & found).sum() / union) if union else 0.0


def follows_silhouette(silhouette, image) -> float:
    """1.0 when ``image``'s shape covers the silhouette (:func:`silhouette_overlap` at least :data:`FOLLOW_IOU`)."""
    return float(silhouette_overlap(silhouette, image) >= FOLLOW_IOU)


def shape_kept(source, output) -> float:
    """1.0 when the output's shape lies where the source's does, in its outline (overlap of the two shape regions at
    least :data:`FOLLOW_IOU`), whatever its colours: what a silhouette ControlNet holds.

    >>> from img2img_lab.shapes.world import Scene, render
    >>> shape_kept(render(Scene("square", "red", "blue")), render(Scene("square", "green", "white")))
    1.0
    """
    region = subject_mask(source)
    if not region.any():
        return 0.0
    return follows_silhouette(np.repeat(region[..., None] * 255, 3, axis=2).astype(np.uint8), output)


def subject_mask(image) -> np.ndarray:
    """The shape region of ``image`` (exact on an embedded-model source; all False without a shape).

    >>> from img2img_lab.shapes.world import Scene, render, shape_mask
    >>> scene = Scene("star", "white", "red")
    >>> int((subject_mask(render(scene)) & (shape_mask(scene) > 0.5)).sum()) > 0
    True
    """
    from img2img_lab.images.arrays import metric_array

    array = metric_array(image)
    region = shape_region(array.astype(np.float64))[1]
    return np.zeros(array.shape[:2], bool) if region is None else region


def register() -> None:
    """Register the oracle metrics (a built-in plugin: :func:`img2img_lab.metrics.registry.load_plugins` runs this
    the first time a metric name is looked up that is not registered yet)."""
    from img2img_lab.metrics.registry import register_mask_provider, register_pair_metric, register_prompt_scorer

    register_mask_provider("oracle", subject_mask)

    register_prompt_scorer("oracle_adherence", lambda: adherence, value_range=(0, 1),
                           description="shapes-world oracle: share of the prompt's attributes shown")
    register_prompt_scorer("oracle_match", lambda: match, value_range=(0, 1), discrete=True,
                           description="shapes-world oracle: all three prompt attributes shown")
    register_pair_metric("oracle_preservation", preservation, higher_is_better=True, value_range=(0, 1),
                         description="shapes-world oracle: share of the source's attributes kept")
    register_pair_metric("oracle_kept", kept, higher_is_better=True, value_range=(0, 1), discrete=True,
                         description="shapes-world oracle: all three source attributes kept")
    register_pair_metric("oracle_subject_kept", subject_kept, higher_is_better=True, value_range=(0, 1),
                         discrete=True, description="shapes-world oracle: the source's shape and colour kept")
    register_prompt_scorer("oracle_background_match", lambda: background_match, value_range=(0, 1), discrete=True,
                           description="shapes-world oracle: the prompt's background shown")
    register_pair_metric("oracle_outlined", outlined, higher_is_better=True, value_range=(0, 1), discrete=True,
                         description="shapes-world oracle: the output is in the outlined style (the project's LoRA)")
    register_pair_metric("oracle_shape_kept", shape_kept, higher_is_better=True, value_range=(0, 1), discrete=True,
                         description="shapes-world oracle: the output's shape where the source's is, in its outline "
                                     "(what the silhouette ControlNet holds)")
