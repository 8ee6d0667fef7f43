"""Source-image intake: load, validate and normalise the images a sweep starts from.

Every source goes through :func:`load_image`, which

1. reads a path, raw bytes, a PIL image or a NumPy array;
2. guards against decompression bombs *before* decoding pixels (``max_pixels``);
3. applies the EXIF orientation tag (a phone photo shown upright stays upright);
4. converts any mode to 8-bit RGB (:func:`to_rgb`: alpha is composited over ``background``);
5. fits the size to the model (:func:`fit_to_model`): optional downscale so the longest side is at most
   ``max_side``, then a centred crop of each side down to a multiple of ``size_multiple``;
6. warns (:class:`SmallSourceWarning`) when the shorter side is under ``warn_below`` pixels.

Every rejected input raises :class:`~img2img_lab.errors.ImageError` naming the file, the problem and
the fix.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from img2img_lab.errors import ImageError

ImageSource = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]

#: Default decompression-bomb guard: 8192 x 8192 pixels (67 Mpx). Pass ``max_pixels`` to change it.
DEFAULT_MAX_PIXELS = 8192 * 8192

#: Sources whose shorter side is below this many pixels trigger a :class:`SmallSourceWarning`.
#: Guides for Stable Diffusion img2img advise sources of at least 512-800 px.
DEFAULT_WARN_BELOW = 256

RESIZE_POLICIES = ("crop", "resize")


class SmallSourceWarning(UserWarning):
    """A source image is smaller than the model's comfortable working size."""


def _describe(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return f"<PIL image {source.mode} {source.width}x{source.height}>"
    if isinstance(source, np.ndarray):
        return f"<array {source.dtype} {source.shape}>"
    return f"<{type(source).__name__}>"


_PILLOW_GUARD = threading.Lock()


def _open_header(stream) -> Image.Image:
    """``Image.open`` (the header only) with Pillow's own bomb guard off: it raises at ~179 Mpx with its own advice,
    before the caller's documented ``max_pixels`` check can say the size and the fix. Decoding (``load``) comes after
    that check."""
    with _PILLOW_GUARD:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(stream)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _open_checked(data: bytes | str | os.PathLike, *, name: str, max_pixels: int) -> Image.Image:
    """Open lazily, check the header's size, then decode. Raises ImageError for anything unreadable."""
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    with warnings.catch_warnings():
        # PIL's own bomb guard warns above its limit and raises at twice it; ours comes first.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = _open_header(stream)
        except Image.DecompressionBombError:
            raise ImageError(
                f"{name}: the image header declares more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels, over the limit "
                f"of {max_pixels:,} (a guard against decompression bombs). Fix: downscale the image (img2img models "
                f"work at 512-1024 px)."
            ) from None
        except UnidentifiedImageError:
            raise ImageError(
                f"{name}: not a readable image (the content matches no image format Pillow knows, "
                f"whatever its extension says). Fix: check that the file really is a PNG/JPEG/WebP/TIFF "
                f"image, e.g. re-export it from an image editor."
            ) from None
        except OSError as error:
            raise ImageError(f"{name}: cannot be opened ({error}). Fix: check the path and permissions.") from None
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(
                f"{name}: {width}x{height} = {width * height:,} pixels exceeds the limit of "
                f"{max_pixels:,} (a guard against decompression bombs). Fix: downscale the image "
                f"(img2img models work at 512-1024 px)."
            )
        try:
            image.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise ImageError(
                f"{name}: the image data is damaged or truncated ({error}). "
                f"Fix: re-download or re-export the file."
            ) from None
    return image


def to_rgb(image: Image.Image, *, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    Rules: transparency (RGBA, LA, PA, P with a ``transparency`` entry) is composited over the
    opaque ``background`` colour (default white, what a viewer shows); 16-bit and 32-bit greyscale
    (``I;16``, ``I``) are scaled linearly from their full range to 0-255; float images (``F``) must lie in
    [0, 1] (others are an :class:`ImageError`, not clipped); CMYK, YCbCr, LAB, HSV and palette images use Pillow's conversion.

    >>> to_rgb(Image.new("RGBA", (2, 2), (255, 0, 0, 0))).getpixel((0, 0))
    (255, 255, 255)
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image).astype(np.float64)
        if mode == "F":
            low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
            if not (np.isfinite(low) and np.isfinite(high) and low >= 0.0 and high <= 1.0):
                raise ImageError(f"a float image (mode F) must lie in [0, 1]; this one spans [{low:.4g}, {high:.4g}] "
                                 f"(clipping would turn it white). Fix: rescale it to [0, 1], or save it as 8- or "
                                 f"16-bit.")
            scaled = values * 255.0
        elif mode == "I":
            peak = 65535.0 if values.max(initial=0) <= 65535 else float(np.iinfo(np.int32).max)
            scaled = np.clip(values, 0, None) / peak * 255.0
        else:
            scaled = values / 65535.0 * 255.0
        grey = np.rint(scaled).astype(np.uint8)
        return Image.fromarray(np.stack([grey] * 3, axis=-1), mode="RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return image.convert("RGB")


def array_to_image(array: np.ndarray, *, name: str) -> Image.Image:
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageError(
            f"{name}: an image array must be HxW, HxWx1, HxWx3 or HxWx4; got shape {array.shape}. "
            f"Fix: pass a single image with channels last."
        )
    if array.dtype == np.uint8:
        data = array
    elif np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise ImageError(f"{name}: the float image contains NaN or infinity. Fix: clean the array.")
        if array.min() < 0.0 or array.max() > 1.0:
            raise ImageError(
                f"{name}: float images must lie in [0, 1]; got [{array.min():.3g}, {array.max():.3g}]. "
                f"Fix: rescale, e.g. (array - array.min()) / np.ptp(array), or pass uint8."
            )
        data = np.rint(array * 255.0).astype(np.uint8)
    elif array.dtype == np.uint16:
        data = np.rint(array.astype(np.float64) / 65535.0 * 255.0).astype(np.uint8)
    else:
        raise ImageError(
            f"{name}: unsupported array dtype {array.dtype}. Fix: pass uint8, uint16 or float in [0, 1]."
        )
    channels = data.shape[2]
    if channels == 1:
        return Image.fromarray(data[..., 0], mode="L")
    return Image.fromarray(np.ascontiguousarray(data), mode="RGB" if channels == 3 else "RGBA")


def fit_to_model(
    image: Image.Image,
    *,
    size_multiple: int = 8,
    max_side: int | None = None,
    policy: str = "crop",
    name: str = "image",
) -> Image.Image:
    """Fit an RGB image to a model's size rules, keeping its aspect ratio.

    1. If ``max_side`` is given and the longest side exceeds it, downscale (Lanczos) so the longest
       side equals ``max_side``. Images are never upscaled.
    2. ``policy="crop"`` (default): centre-crop each side down to a multiple of ``size_multiple``
       (at most ``size_multiple - 1`` pixels lost per side, no resampling).
       ``policy="resize"``: resample to the nearest multiples instead (keeps all content, may
       distort the aspect ratio by under one ``size_multiple``).

    >>> fit_to_model(Image.new("RGB", (70, 33)), size_multiple=8).size
    (64, 32)
    """
    if size_multiple < 1:
        raise ImageError(f"size_multiple must be >= 1, got {size_multiple}.")
    if policy not in RESIZE_POLICIES:
        raise ImageError(f"unknown resize policy {policy!r}. Fix: use one of {', '.join(RESIZE_POLICIES)}.")
    width, height = image.size
    if max_side is not None and max(width, height) > max_side:
        scale = max_side / max(width, height)
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    if policy == "crop":
        target_w, target_h = width - width % size_multiple, height - height % size_multiple
    else:
        target_w = max(size_multiple, round(width / size_multiple) * size_multiple)
        target_h = max(size_multiple, round(height / size_multiple) * size_multiple)
    if target_w < size_multiple or target_h < size_multiple:
        raise ImageError(
            f"{name}: {width}x{height} is smaller than the model's size multiple of {size_multiple} px. "
            f"Fix: use a larger source image."
        )
    if (target_w, target_h) == (width, height):
        return image
    if policy == "crop":
        left, top = (width - target_w) // 2, (height - target_h) // 2
        return image.crop((left, top, left + target_w, top + target_h))
    return image.resize((target_w, target_h), Image.Resampling.LANCZOS)


def check_image_files(paths) -> list[Path]:
    """Check that each path names a non-empty file (cheap: nothing is decoded), so a sweep reports a missing source
    before it loads a model; returns the paths. One-line :class:`ImageError` for the first that does not.

    >>> check_image_files(["no/such.png"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    img2img_lab.errors.ImageError: no/such.png: no such file. Fix: check the path (relative paths start at ...).
    """
    checked = []
    for source in paths:
        if not isinstance(source, (str, os.PathLike)):
            continue  # in-memory images have nothing to find
        name, path = _describe(source), Path(source).expanduser()
        if not path.exists():
            raise ImageError(f"{name}: no such file. Fix: check the path (relative paths start at {os.getcwd()}).")
        if path.is_dir():
            raise ImageError(f"{name}: is a folder, not an image file. Fix: name one image file.")
        if path.stat().st_size == 0:
            raise ImageError(f"{name}: the file is empty (0 bytes). Fix: re-export or re-download the image.")
        checked.append(path)
    return checked


def load_image(
    source: ImageSource,
    *,
    size_multiple: int = 8,
    max_side: int | None = None,
    policy: str = "crop",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    warn_below: int = DEFAULT_WARN_BELOW,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Load a source image as RGB, sized for a model.

    Parameters
    ----------
    source : path, bytes, PIL image or array
        Arrays are HxW[xC] uint8, uint16 or float in [0, 1].
    size_multiple : int, optional
        Each output side is a multiple of this (a model's VAE factor, 8 for Stable Diffusion).
    max_side : int, optional
        Downscale so the longest side is at most this many pixels (never upscales).
    policy : {"crop", "resize"}
        How to reach the multiple; see :func:`fit_to_model`.
    max_pixels : int
        Decompression-bomb guard, checked on the header before any pixel is decoded.
    warn_below : int
        Warn with :class:`SmallSourceWarning` when the shorter side is below this (0 disables).
    background : (r, g, b)
        Colour that transparent pixels are composited over.

    Raises
    ------
    ImageError
        For an empty, missing, truncated, non-image or oversized file, or a malformed array.

    >>> image = load_image(np.zeros((70, 33, 3), np.uint8), warn_below=0)
    >>> image.size, image.mode
    ((32, 64), 'RGB')
    """
    name = _describe(source)
    if isinstance(source, (str, os.PathLike)):
        path = check_image_files([source])[0]
        image = _open_checked(path, name=name, max_pixels=max_pixels)
    elif isinstance(source, bytes):
        if not source:
            raise ImageError("<0 bytes>: the image data is empty. Fix: pass the bytes of an image file.")
        image = _open_checked(source, name=name, max_pixels=max_pixels)
    elif isinstance(source, Image.Image):
        if source.width * source.height > max_pixels:
            raise ImageError(
                f"{name}: {source.width * source.height:,} pixels exceeds max_pixels={max_pixels:,}. "
                f"Fix: downscale it first."
            )
        image = source
    elif isinstance(source, np.ndarray):
        image = array_to_image(source, name=name)
    else:
        raise ImageError(
            f"{name}: cannot load an image from a {type(source).__name__}. "
            f"Fix: pass a file path, bytes, a PIL image or a NumPy array."
        )
    frames = getattr(image, "n_frames", 1)
    if isinstance(frames, int) and frames > 1:
        raise ImageError(f"{name}: an animation of {frames} frames; img2img-lab takes still images (it would use "
                         f"frame 1 only). Fix: export the frame you want as a PNG.")
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not reject an otherwise fine image
        pass
    image = to_rgb(image, background=background)
    image = fit_to_model(image, size_multiple=size_multiple, max_side=max_side, policy=policy, name=name)
    if warn_below and min(image.size) < warn_below:
        warnings.warn(
            f"{name}: source is {image.width}x{image.height}, under {warn_below} px on its shorter side; "
            f"img2img detail suffers at low resolution (guides advise >= 512-800 px).",
            SmallSourceWarning,
            stacklevel=2,
        )
    return image
