"""Image loading: formats, modes, crop and resize, range, and bad files reported by name."""

import numpy as np
import pytest
import torch
from PIL import Image

from noiseclr_lite.data import IMAGE_EXTENSIONS, list_images, load_image, load_images, to_pil

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def solid(mode, color, size=(20, 20)):
    return Image.new(mode, size, color)


def pixel(tensor, y=None, x=None):
    """The [-1, 1] RGB value at the centre of a [3, H, W] tensor, as a list."""
    y = tensor.shape[1] // 2 if y is None else y
    x = tensor.shape[2] // 2 if x is None else x
    return tensor[:, y, x].tolist()


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".png", ".webp", ".PNG"])
def test_formats_load_as_rgb_in_range(tmp_path, suffix):
    path = tmp_path / f"red{suffix}"
    solid("RGB", RED, (30, 30)).save(path, quality=95) if "jp" in suffix.lower() else solid("RGB", RED).save(path)
    image = load_image(path, 8)
    assert image.shape == (3, 8, 8) and image.dtype == torch.float32
    np.testing.assert_allclose(image.mean(dim=(1, 2)).numpy(), [1.0, -1.0, -1.0], atol=0.05)


def test_rgba_is_composited_over_white(tmp_path):
    image = Image.new("RGBA", (20, 20), (0, 0, 255, 0))  # fully transparent blue ...
    image.paste((255, 0, 0, 255), (0, 0, 10, 20))  # ... with an opaque red left half
    image.save(tmp_path / "rgba.png")
    out = load_image(tmp_path / "rgba.png", 20)
    assert pixel(out, 10, 2) == [1.0, -1.0, -1.0]  # red stays red
    assert pixel(out, 10, 17) == [1.0, 1.0, 1.0]  # transparent becomes white, not blue or black
    half = Image.new("LA", (10, 10), (0, 128))  # half-transparent black over white: mid grey
    half.save(tmp_path / "la.png")
    np.testing.assert_allclose(pixel(load_image(tmp_path / "la.png", 10)), [0.0] * 3, atol=0.02)


def test_greyscale_palette_and_cmyk_become_rgb(tmp_path):
    solid("L", 64).save(tmp_path / "grey.png")
    grey = load_image(tmp_path / "grey.png", 8)
    assert grey.shape == (3, 8, 8)
    np.testing.assert_allclose(pixel(grey), [64 / 127.5 - 1] * 3, atol=1e-6)

    palette = solid("RGB", GREEN).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    assert palette.mode == "P"
    palette.save(tmp_path / "palette.png")
    np.testing.assert_allclose(pixel(load_image(tmp_path / "palette.png", 8)), [-1.0, 1.0, -1.0], atol=1e-6)

    transparent = Image.new("P", (8, 8), 0)
    transparent.putpalette([0, 0, 0] * 256)
    transparent.save(tmp_path / "ptrans.png", transparency=0)  # palette index 0 (black) is transparent
    assert pixel(load_image(tmp_path / "ptrans.png", 8)) == [1.0, 1.0, 1.0]

    solid("CMYK", (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)  # CMYK red
    np.testing.assert_allclose(pixel(load_image(tmp_path / "cmyk.jpg", 8)), [1.0, -1.0, -1.0], atol=0.1)

    deep = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))  # a 16-bit greyscale PNG: white
    deep.save(tmp_path / "deep.png")
    assert pixel(load_image(tmp_path / "deep.png", 8)) == [1.0, 1.0, 1.0]


def test_centre_crop_then_resize(tmp_path):
    wide = Image.new("RGB", (60, 20), RED)
    wide.paste(GREEN, (20, 0, 40, 20))
    wide.paste(BLUE, (40, 0, 60, 20))
    wide.save(tmp_path / "wide.png")
    out = load_image(tmp_path / "wide.png", 8)
    assert out.shape == (3, 8, 8)
    torch.testing.assert_close(out, torch.tensor([-1.0, 1.0, -1.0]).view(3, 1, 1).expand(3, 8, 8))  # only green

    tall = Image.new("RGB", (10, 30), BLUE)
    tall.paste(RED, (0, 10, 10, 20))
    tall.save(tmp_path / "tall.png")
    torch.testing.assert_close(load_image(tmp_path / "tall.png", 16)[:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))

    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    noisy.save(tmp_path / "noisy.png")
    big = load_image(tmp_path / "noisy.png", 32)
    assert big.shape == (3, 32, 32) and big.min() >= -1 and big.max() <= 1 and big.min() < -0.5 < 0.5 < big.max()


def test_load_images_from_folder_file_and_list(tmp_path):
    for name, color in [("b.png", GREEN), ("a.jpg", RED), ("c.webp", BLUE)]:
        solid("RGB", color).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "._a.jpg").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork: hidden, ignored
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.png", "c.webp"]
    batch = load_images(tmp_path, 8)
    assert batch.shape == (3, 3, 8, 8) and batch.dtype == torch.float32
    assert batch.min() >= -1 and batch.max() <= 1
    np.testing.assert_allclose(batch[:, :, 4, 4].numpy(), [[1, -1, -1], [-1, 1, -1], [-1, -1, 1]], atol=0.05)
    assert load_images(tmp_path / "b.png", 4).shape == (1, 3, 4, 4)
    assert load_images([tmp_path / "c.webp", str(tmp_path / "a.jpg")], 4)[1, 0].mean() > 0.9  # red second


def test_corrupt_file_is_named(tmp_path):
    solid("RGB", RED).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"this is text, not a png")
    with pytest.raises(ValueError, match=r"bad\.png.*on_error='warn'"):
        load_images(tmp_path, 8)
    with open(tmp_path / "cut.jpg", "wb") as f:  # a JPEG cut off half way
        solid("RGB", RED, (64, 64)).save(tmp_path / "whole.jpg")
        f.write((tmp_path / "whole.jpg").read_bytes()[:300])
    with pytest.raises(ValueError, match=r"cut\.jpg"):
        load_image(tmp_path / "cut.jpg", 8)


def test_warn_mode_skips_bad_files_by_name(tmp_path):
    solid("RGB", RED).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match=r"bad\.png"):
        batch = load_images(tmp_path, 8, on_error="warn")
    assert batch.shape == (1, 3, 8, 8) and batch[0, 0].mean() > 0.9  # the good (red) one
    with pytest.warns(UserWarning, match="missing.png"):
        assert len(load_images([tmp_path / "good.png", tmp_path / "missing.png"], 8, on_error="warn")) == 1
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"none of the 1 files.*bad\.png"):
        load_images([tmp_path / "bad.png"], 8, on_error="warn")
    with pytest.raises(ValueError, match="on_error"):
        load_images(tmp_path, 8, on_error="ignore")


def test_empty_or_missing_folder_is_named(tmp_path):
    empty = tmp_path / "my_faces"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match=r"my_faces.*\.jpg.*\.png.*\.webp"):
        load_images(empty, 8)
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        list_images(tmp_path / "no_such_folder")
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        load_images(tmp_path / "no_such_folder", 8)
    with pytest.raises(FileNotFoundError, match=r"gone\.png"):
        load_images(tmp_path / "gone.png", 8)
    assert IMAGE_EXTENSIONS == (".jpg", ".jpeg", ".png", ".webp")


def test_to_pil_round_trips(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    image = to_pil(load_image(tmp_path / "x.png", 16))  # same size: no resampling
    assert image.mode == "RGB" and image.size == (16, 16)
    assert np.array_equal(np.asarray(image), pixels)
    assert np.asarray(to_pil(torch.full((3, 2, 2), 5.0))).min() == 255  # clipped, not wrapped
    with pytest.raises(ValueError, match="index a batch"):
        to_pil(torch.zeros(1, 3, 4, 4))
