"""The shapes world: 64x64 images of one coloured shape on a plain background of another colour.

A scene is ``(shape, colour, background)`` plus a position, size and rotation; its caption is
``"a {colour} {shape} on a {background} background"``. Everything is seeded, so the same seed always
gives the same images. Rendering is 4x supersampled then box-filtered, so edges are anti-aliased like a
photograph's rather than jagged.

>>> scene = random_scene(np.random.default_rng(0))
>>> caption(scene)
'a yellow star on a blue background'
>>> render(scene).shape
(64, 64, 3)
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass

import numpy as np

from img2img_lab.errors import Img2ImgLabError

#: The palette: each colour word and the RGB value it is drawn with (far apart in RGB and in CIELAB).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 210, 40),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}

SHAPES = ("circle", "square", "triangle", "star")
#: The outlined style (:func:`render`, ``outlined=True``): the ring's colours in order of preference, and its width
#: as a fraction of the side (the circumscribed radius grows by this; a star's by 1.5 times: its points are sharp).
OUTLINE_COLOURS = ("black", "white", "yellow")
OUTLINE_WIDTH = 0.08

IMAGE_SIZE = 64
SUPERSAMPLE = 4

_CAPTION = re.compile(r"^\s*an? (?P<colour>\w+) (?P<shape>\w+) on an? (?P<background>\w+) background\s*$")


@dataclass(frozen=True)
class Scene:
    """One image of the world: what is drawn, where, and how big."""

    shape: str
    colour: str
    background: str
    center_x: float = 0.5  # fractions of the image side
    center_y: float = 0.5
    radius: float = 0.3  # circumscribed radius, fraction of the side
    rotation: float = 0.0  # radians

    def attributes(self) -> tuple[str, str, str]:
        return self.shape, self.colour, self.background


def caption(scene: Scene) -> str:
    """``"a {colour} {shape} on a {background} background"``.

    >>> caption(Scene("star", "red", "blue"))
    'a red star on a blue background'
    """
    return f"a {scene.colour} {scene.shape} on a {scene.background} background"


def parse_caption(text: str) -> tuple[str, str, str]:
    """``(shape, colour, background)`` from a caption of the world; raises for anything else.

    >>> parse_caption("a red star on a blue background")
    ('star', 'red', 'blue')
    """
    match = _CAPTION.match(text.lower())
    if not match or match["colour"] not in COLOURS or match["shape"] not in SHAPES or match["background"] not in COLOURS:
        raise Img2ImgLabError(
            f"{text!r} is not a shapes-world prompt. Fix: write 'a {{colour}} {{shape}} on a {{background}} background' "
            f"with colours from {', '.join(COLOURS)} and shapes from {', '.join(SHAPES)}."
        )
    return match["shape"], match["colour"], match["background"]


def all_combinations() -> list[tuple[str, str, str]]:
    """Every valid ``(shape, colour, background)`` (colour != background): 4 x 6 x 5 = 120.

    >>> len(all_combinations())
    120
    """
    return [(shape, colour, background) for shape, colour, background in itertools.product(SHAPES, COLOURS, COLOURS)
            if colour != background]


def random_scene(rng: np.random.Generator, *, shape: str | None = None, colour: str | None = None,
                 background: str | None = None) -> Scene:
    """A random scene (any attribute can be fixed). The shape always lies fully inside the image.

    >>> random_scene(np.random.default_rng(1), shape="circle").shape
    'circle'
    """
    shape = shape or SHAPES[rng.integers(len(SHAPES))]
    colour = colour or list(COLOURS)[rng.integers(len(COLOURS))]
    choices = [name for name in COLOURS if name != colour]
    background = background or choices[rng.integers(len(choices))]
    if colour == background:
        raise Img2ImgLabError(f"shape colour and background are both {colour!r}; the shape would be invisible.")
    radius = float(rng.uniform(0.2, 0.36))
    margin = radius + 2 / IMAGE_SIZE
    return Scene(shape=shape, colour=colour, background=background,
                 center_x=float(rng.uniform(margin, 1 - margin)), center_y=float(rng.uniform(margin, 1 - margin)),
                 radius=radius, rotation=float(rng.uniform(0, 2 * math.pi)))


def _polygon(scene: Scene) -> np.ndarray | None:
    """Vertices (fractions of the side) of a polygonal shape, or None for a circle."""
    if scene.shape == "circle":
        return None
    if scene.shape == "square":
        angles = scene.rotation + np.pi / 4 + np.arange(4) * np.pi / 2
        radii = np.full(4, scene.radius)
    elif scene.shape == "triangle":
        angles = scene.rotation + np.arange(3) * 2 * np.pi / 3
        radii = np.full(3, scene.radius)
    elif scene.shape == "star":
        angles = scene.rotation + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, scene.radius, scene.radius * 0.45)
    else:
        raise Img2ImgLabError(f"unknown shape {scene.shape!r}. Fix: use one of {', '.join(SHAPES)}.")
    return np.stack([scene.center_x + radii * np.cos(angles), scene.center_y + radii * np.sin(angles)], axis=1)


def shape_mask(scene: Scene, *, size: int = IMAGE_SIZE, supersample: int = SUPERSAMPLE) -> np.ndarray:
    """Coverage of each pixel by the shape, in [0, 1] (anti-aliased), shape ``(size, size)``."""
    fine = size * supersample
    coords = (np.arange(fine) + 0.5) / fine
    x, y = np.meshgrid(coords, coords)
    polygon = _polygon(scene)
    if polygon is None:
        inside = (x - scene.center_x) ** 2 + (y - scene.center_y) ** 2 <= scene.radius**2
    else:
        # even-odd rule, vectorised over edges
        inside = np.zeros_like(x, dtype=bool)
        for (x0, y0), (x1, y1) in zip(polygon, np.roll(polygon, -1, axis=0)):
            crosses = (y0 > y) != (y1 > y)
            with np.errstate(divide="ignore", invalid="ignore"):
                x_cross = (x1 - x0) * (y - y0) / (y1 - y0) + x0
            inside ^= crosses & (x < x_cross)
    return inside.reshape(size, supersample, size, supersample).mean(axis=(1, 3))


def outline_colour(scene: Scene) -> str:
    """The colour of a scene's outline in the outlined style: the first of black, white and yellow that is neither
    the shape's nor the background's colour.

    >>> outline_colour(Scene("square", "black", "white")), outline_colour(Scene("star", "red", "blue"))
    ('yellow', 'black')
    """
    return next(name for name in OUTLINE_COLOURS if name not in (scene.colour, scene.background))


def render(scene: Scene, *, size: int = IMAGE_SIZE, outlined: bool = False) -> np.ndarray:
    """Draw a scene as an RGB uint8 array of ``size x size``; ``outlined``: the outlined style (the shape inside a
    ring of :func:`outline_colour`, :data:`OUTLINE_WIDTH` of the side wide) that the project's LoRA teaches.

    >>> render(Scene("square", "red", "white", radius=0.3))[32, 32].tolist()
    [220, 40, 40]
    >>> render(Scene("square", "red", "white", radius=0.3), outlined=True)[32, 16].tolist()  # on the ring
    [20, 20, 20]
    """
    coverage = shape_mask(scene, size=size)[..., None]
    foreground = np.asarray(COLOURS[scene.colour], dtype=np.float64)
    background = np.asarray(COLOURS[scene.background], dtype=np.float64)
    if outlined:
        grown = Scene(scene.shape, scene.colour, scene.background, scene.center_x, scene.center_y,
                      scene.radius + OUTLINE_WIDTH * (1.5 if scene.shape == "star" else 1.0), scene.rotation)
        ring = shape_mask(grown, size=size)[..., None]
        background = ring * np.asarray(COLOURS[outline_colour(scene)], dtype=np.float64) + (1 - ring) * background
    return np.rint(coverage * foreground + (1 - coverage) * background).astype(np.uint8)


def _render_many(scenes: list[Scene], size: int, outlined: bool = False) -> np.ndarray:
    return np.stack([render(scene, size=size, outlined=outlined) for scene in scenes])


def make_dataset(count: int, *, seed: int = 0, size: int = IMAGE_SIZE, workers: int = 1,
                 outlined: bool = False) -> tuple[np.ndarray, list[str], list[Scene]]:
    """``count`` random scenes: images (N x size x size x 3 uint8), captions and scenes.

    Scenes are drawn in order from one seeded generator, so ``workers`` (processes that render) never
    changes the result.

    >>> images, captions, scenes = make_dataset(4, seed=0)
    >>> images.shape, len(captions)
    ((4, 64, 64, 3), 4)
    """
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng) for _ in range(count)]
    if not scenes:
        return np.zeros((0, size, size, 3), np.uint8), [], []
    if workers > 1 and count >= 1000:
        from concurrent.futures import ProcessPoolExecutor

        chunks = [scenes[start:start + 500] for start in range(0, count, 500)]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            images = np.concatenate(list(pool.map(_render_many, chunks, [size] * len(chunks),
                                                  [outlined] * len(chunks))))
    else:
        images = _render_many(scenes, size, outlined)
    return images, [caption(scene) for scene in scenes], scenes


#: The sample sources shipped in data/sources (name -> scene): centred, upright-ish, medium size.
SAMPLE_SCENES: dict[str, Scene] = {
    "red_circle_on_blue": Scene("circle", "red", "blue", 0.5, 0.5, 0.3, 0.0),
    "green_triangle_on_yellow": Scene("triangle", "green", "yellow", 0.5, 0.55, 0.32, -math.pi / 2),
    "white_star_on_red": Scene("star", "white", "red", 0.5, 0.52, 0.33, -math.pi / 2),
    "black_square_on_green": Scene("square", "black", "green", 0.48, 0.5, 0.3, 0.2),
    "yellow_star_on_black": Scene("star", "yellow", "black", 0.45, 0.5, 0.3, 0.4),
    "blue_circle_on_white": Scene("circle", "blue", "white", 0.55, 0.45, 0.25, 0.0),
}


def write_sample_sources(folder) -> list:
    """Render :data:`SAMPLE_SCENES` as PNGs into ``folder`` (how data/sources was made); returns the paths.

    >>> [path.name for path in write_sample_sources("sources")][:2]
    ['red_circle_on_blue.png', 'green_triangle_on_yellow.png']
    """
    from pathlib import Path

    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, scene in SAMPLE_SCENES.items():
        path = folder / f"{name}.png"
        Image.fromarray(render(scene)).save(path)
        paths.append(path)
    return paths
