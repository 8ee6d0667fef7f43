"""Image intake: every bad input gets ImageError with a useful message; modes, EXIF, sizes, hashing."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from img2img_lab.errors import ImageError, Img2ImgLabError
from img2img_lab.images.hashes import content_hash
from img2img_lab.images.intake import SmallSourceWarning, fit_to_model, load_image, to_rgb


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height, followed by an empty IDAT and IEND."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------- rejected inputs


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.png: the file is empty \(0 bytes\)\. Fix: re-export"):
        load_image(path)


def test_truncated_png(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    path = tmp_path / "truncated.png"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageError, match=r"truncated\.png: the image data is damaged or truncated.*Fix: re-download"):
        load_image(path)


def test_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("these are not pixels\n")
    with pytest.raises(ImageError, match=r"notes\.png: not a readable image.*whatever its extension says"):
        load_image(path)


def test_decompression_bomb_header_is_rejected_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(30000, 30000))  # 900 Mpx: past Pillow's own guard (~179 Mpx)
    with pytest.raises(ImageError, match=r"bomb\.png: 30000x30000 = 900,000,000 pixels exceeds the limit of "
                                         r"67,108,864 .*Fix: downscale"):
        load_image(path)
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # Pillow's guard is back for everyone else


def test_an_animation_is_refused_not_cut_to_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (64, 64), colour) for colour in ("red", "blue", "green")]
    for suffix in ("gif", "webp"):
        path = tmp_path / f"animated.{suffix}"
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
        with pytest.raises(ImageError, match=rf"animated\.{suffix}: an animation of 3 frames.*Fix: export the frame"):
            load_image(path, warn_below=0)
    frames[0].save(tmp_path / "still.gif")
    assert load_image(tmp_path / "still.gif", warn_below=0).size == (64, 64)


def test_a_float_tiff_outside_0_1_is_refused_not_clipped_to_white(tmp_path):
    path = tmp_path / "depth.tif"
    Image.fromarray(np.linspace(0, 1000, 64 * 64, dtype=np.float32).reshape(64, 64), mode="F").save(path)
    with pytest.raises(ImageError, match=r"spans \[0, 1000\].*Fix: rescale it to \[0, 1\]"):
        load_image(path, warn_below=0)
    Image.fromarray(np.full((64, 64), 0.5, np.float32), mode="F").save(path)
    assert load_image(path, warn_below=0).getpixel((0, 0)) == (128, 128, 128)


def test_header_over_custom_limit_names_size_and_fix(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(path)
    with pytest.raises(ImageError, match=r"300x200 = 60,000 pixels exceeds the limit of 50,000.*Fix: downscale"):
        load_image(path, max_pixels=50_000)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageError, match=r"nope\.png: no such file\. Fix: check the path"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match=r"is a folder, not an image file"):
        load_image(tmp_path)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((4, 4, 2), np.uint8), r"must be HxW, HxWx1, HxWx3 or HxWx4"),
        (np.full((8, 8, 3), 2.0), r"float images must lie in \[0, 1\]"),
        (np.full((8, 8, 3), np.nan), r"contains NaN or infinity"),
        (np.zeros((8, 8, 3), np.int64), r"unsupported array dtype int64"),
    ],
)
def test_bad_arrays(array, message):
    with pytest.raises(ImageError, match=message):
        load_image(array, warn_below=0)


def test_unsupported_type_and_empty_bytes():
    with pytest.raises(ImageError, match=r"cannot load an image from a dict"):
        load_image({"not": "an image"})
    with pytest.raises(ImageError, match=r"the image data is empty"):
        load_image(b"")


def test_too_small_for_the_size_multiple():
    with pytest.raises(ImageError, match=r"smaller than the model's size multiple of 8 px"):
        load_image(np.zeros((5, 40, 3), np.uint8), warn_below=0)


def test_errors_share_the_library_base_class():
    assert issubclass(ImageError, Img2ImgLabError) and issubclass(ImageError, ValueError)


# --------------------------------------------------------------------------- modes


def test_rgba_alpha_is_composited_over_background():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200  # red
    rgba[:, :4, 3] = 255  # left half opaque, right half fully transparent
    rgba[:, 4:6, 3] = 128  # half transparent
    out = np.asarray(to_rgb(Image.fromarray(rgba, "RGBA")))
    assert tuple(out[0, 0]) == (200, 0, 0)
    assert tuple(out[0, 7]) == (255, 255, 255)
    expected = np.array([200 * 128 / 255 + 255 * 127 / 255, 127, 127])  # alpha 128/255 over white
    assert np.abs(out[0, 4].astype(float) - expected).max() <= 1.0  # Pillow rounds its integer blend
    black = np.asarray(to_rgb(Image.fromarray(rgba, "RGBA"), background=(0, 0, 0)))
    assert tuple(black[0, 7]) == (0, 0, 0)


def test_palette_with_transparency_la_cmyk_and_16_bit():
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    palette.info["transparency"] = 1
    assert to_rgb(palette).getpixel((0, 0)) == (255, 255, 255)
    palette.info.pop("transparency")
    assert to_rgb(palette).getpixel((0, 0)) == (10, 20, 30)

    la = Image.fromarray(np.stack([np.full((4, 4), 50, np.uint8), np.full((4, 4), 255, np.uint8)], -1), "LA")
    assert to_rgb(la).getpixel((0, 0)) == (50, 50, 50)

    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))
    assert to_rgb(cmyk).getpixel((0, 0)) == (255, 0, 0)

    deep = Image.fromarray(np.full((4, 4), 65535, np.uint16))
    assert deep.mode.startswith("I;16")
    assert to_rgb(deep).getpixel((0, 0)) == (255, 255, 255)
    mid = Image.fromarray(np.full((4, 4), 32896, np.uint16))  # 32896 / 65535 * 255 = 128.0
    assert to_rgb(mid).getpixel((0, 0)) == (128, 128, 128)


def test_every_mode_loads_as_rgb(tmp_path):
    for mode in ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I", "F", "YCbCr"):
        image = Image.new(mode, (16, 16))
        out = load_image(image, warn_below=0)
        assert out.mode == "RGB" and out.size == (16, 16), mode


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((16, 32, 3), np.uint8)  # landscape 32 wide x 16 high
    pixels[:, :8] = 255  # white band on the left
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "phone.jpg"
    image.save(path, exif=exif, quality=95)
    out = load_image(path, warn_below=0)
    assert out.size == (16, 32)  # displayed upright: portrait
    top_row = np.asarray(out)[0]
    assert top_row.mean() > 200  # the left band is now at the top


# --------------------------------------------------------------------------- sizes


def test_crop_policy_keeps_aspect_and_centre():
    pixels = np.zeros((33, 70, 3), np.uint8)
    pixels[:, 3:67] = 100
    out = fit_to_model(Image.fromarray(pixels), size_multiple=8)
    assert out.size == (64, 32)
    assert np.all(np.asarray(out) == 100)  # the 3 px margins on each side were the ones cut


def test_resize_policy_and_max_side():
    image = Image.new("RGB", (1000, 750))
    assert fit_to_model(image, size_multiple=8, max_side=512).size == (512, 384)
    assert fit_to_model(Image.new("RGB", (70, 33)), size_multiple=8, policy="resize").size == (72, 32)
    assert fit_to_model(Image.new("RGB", (100, 50)), size_multiple=8, max_side=512).size == (96, 48)  # no upscale
    with pytest.raises(ImageError, match="unknown resize policy 'stretch'"):
        fit_to_model(image, policy="stretch")


def test_small_source_warning():
    with pytest.warns(SmallSourceWarning, match=r"32x32, under 256 px"):
        load_image(np.zeros((32, 32, 3), np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image(np.zeros((32, 32, 3), np.uint8), warn_below=32)


def test_inputs_path_bytes_pil_array_agree(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 255, (24, 40, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(pixels).save(path)
    loaded = [load_image(src, warn_below=0) for src in (path, str(path), path.read_bytes(), Image.fromarray(pixels), pixels)]
    hashes = {content_hash(image) for image in loaded}
    assert len(hashes) == 1
    float_version = load_image(pixels.astype(np.float64) / 255.0, warn_below=0)
    assert content_hash(float_version) in hashes


# --------------------------------------------------------------------------- hashing


def test_content_hash_is_of_pixels_not_file(tmp_path):
    image = Image.fromarray(np.random.default_rng(2).integers(0, 255, (16, 16, 3), dtype=np.uint8))
    image.save(tmp_path / "a.png", compress_level=0)
    image.save(tmp_path / "b.png", compress_level=9)
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()
    assert content_hash(Image.open(tmp_path / "a.png")) == content_hash(Image.open(tmp_path / "b.png"))
    changed = np.asarray(image).copy()
    changed[0, 0, 0] ^= 1
    assert content_hash(changed) != content_hash(image)
    # Same bytes, different shape: the size is part of the hash.
    flat = np.asarray(image).reshape(8, 32, 3)
    assert content_hash(flat) != content_hash(image)
    assert len(content_hash(image)) == 64
