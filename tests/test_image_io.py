"""Reading odd images and writing outputs atomically."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from grefine.image_io import (
    ImageLoadError,
    heatmap_overlay,
    load_image,
    map_to_image,
    save_image_atomic,
)


def test_sixteen_bit_is_rescaled_not_clipped(tmp_path):
    values = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16).repeat(8, 0).repeat(8, 1)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    image = load_image(path)
    assert image.mode == "RGB"
    pixels = np.asarray(image)[::8, ::8, 0]
    assert pixels.tolist() == [[0, 255], [128, 4]]


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:5, :, 3] = 255  # top half opaque red, bottom half transparent
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba).save(path)
    pixels = np.asarray(load_image(path))
    assert pixels[0, 0].tolist() == [255, 0, 0]
    assert pixels[9, 9].tolist() == [255, 255, 255]


def test_grayscale_and_palette_become_rgb(tmp_path):
    gray = Image.fromarray(np.full((12, 12), 77, dtype=np.uint8))
    gray.save(tmp_path / "g.png")
    gray.convert("P").save(tmp_path / "p.png")
    for name in ("g.png", "p.png"):
        image = load_image(tmp_path / name)
        assert image.mode == "RGB" and np.asarray(image)[0, 0].tolist() == [77, 77, 77]


def test_tiny_missing_and_unreadable_images_are_named(tmp_path):
    Image.new("RGB", (4, 30)).save(tmp_path / "tiny.png")
    with pytest.raises(ImageLoadError, match=r"tiny.png is 4x30 pixels"):
        load_image(tmp_path / "tiny.png")
    with pytest.raises(ImageLoadError, match="nothere.png: no such file"):
        load_image(tmp_path / "nothere.png")
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(ImageLoadError, match="text.jpg: cannot be read as an image"):
        load_image(tmp_path / "text.jpg")


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "out" / "image.png"
    save_image_atomic(Image.new("RGB", (9, 9), (1, 2, 3)), target)
    assert np.asarray(Image.open(target))[0, 0].tolist() == [1, 2, 3]

    def boom(self, fp, format=None, **params):
        with open(fp, "wb") as handle:
            handle.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_image_atomic(Image.new("RGB", (9, 9)), target)
    monkeypatch.undo()
    assert np.asarray(Image.open(target))[0, 0].tolist() == [1, 2, 3]  # old file intact
    assert os.listdir(target.parent) == ["image.png"]  # no temporary left behind


def test_map_rendering():
    values = np.array([[0.0, 1.0]], dtype=np.float32).repeat(4, 0)
    assert np.asarray(map_to_image(values))[0].tolist() == [0, 255]
    overlay = np.asarray(heatmap_overlay(Image.new("RGB", (2, 4)), values, alpha=1.0))
    assert overlay[0, 0].tolist() == [0, 0, 128] and overlay[0, 1].tolist() == [128, 0, 0]
