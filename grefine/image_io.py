"""Image input/output shared by every grefine component.

Reading turns whatever PIL can open (grayscale, RGBA, palette, 16-bit, CMYK) into 8-bit RGB;
writing is atomic (temporary file + ``os.replace``) so that a killed run never leaves a
half-written image behind.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

PathLike = Union[str, os.PathLike]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
"""File suffixes (compared lower-case) that grefine reads as images."""

MIN_SIDE = 8
"""Smallest side, in pixels, that grefine accepts: the maps need at least one CLIP patch."""


class ImageLoadError(ValueError):
    """An input image cannot be used; the message names the file and what to do."""


def to_rgb(image: Image.Image, source: str = "image") -> Image.Image:
    """Convert any PIL image to 8-bit RGB.

    16-bit and 32-bit integer images (modes ``I;16``, ``I``) are rescaled from their own
    bit depth instead of being clipped at 255; float images (``F``) are taken as [0, 1] when
    their maximum is at most 1, else as [0, 255]. Transparency is composited on white.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            peak = 1.0 if array.max(initial=0.0) <= 1.0 else 255.0
        elif image.mode.startswith("I;16"):
            peak = 65535.0
        else:
            peak = 65535.0 if array.max(initial=0.0) > 255 else 255.0
        array = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        image = Image.fromarray(array)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        image = background
    if image.mode != "RGB":
        image = image.convert("RGB")
    if min(image.size) < MIN_SIDE:
        raise ImageLoadError(
            f"{source} is {image.size[0]}x{image.size[1]} pixels; grefine needs at least "
            f"{MIN_SIDE} pixels on each side. Upscale it first or leave it out."
        )
    return image


def load_image(path: PathLike) -> Image.Image:
    """Read an image file as 8-bit RGB, raising :class:`ImageLoadError` that names the file."""
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"{path}: no such file. Check the path or the --input folder.")
    try:
        with Image.open(path) as opened:
            opened.load()
            image = opened.copy()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise ImageLoadError(
            f"{path}: cannot be read as an image ({err}). Re-export it as PNG or JPEG, or remove it."
        ) from err
    return to_rgb(image, source=str(path))


def as_rgb_image(image: Union[Image.Image, PathLike]) -> Image.Image:
    """Accept a PIL image or a path; return 8-bit RGB."""
    if isinstance(image, Image.Image):
        return to_rgb(image)
    return load_image(image)


def to_clip_tensor(
    images: list[Image.Image],
    size: tuple[int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> torch.Tensor:
    """Resize (bicubic, no crop, so every pixel of the image is covered by the map) to
    ``size`` = (height, width) and normalise with CLIP's mean/std; returns (B, 3, H, W)."""
    height, width = size
    batch = []
    for image in images:
        resized = image.resize((width, height), Image.Resampling.BICUBIC)
        batch.append(torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1))
    tensor = torch.stack(batch)
    mean_t = torch.tensor(mean, dtype=tensor.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=tensor.dtype).view(1, 3, 1, 1)
    return (tensor - mean_t) / std_t


def resize_map(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of (..., h, w) maps to ``size`` = (height, width) (the paper's BIC(.))."""
    lead = grid.shape[:-2]
    flat = grid.reshape(-1, 1, *grid.shape[-2:]).float()
    out = F.interpolate(flat, size=size, mode="bicubic", align_corners=False)
    return out.reshape(*lead, *size)


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_image_atomic(image: Image.Image, path: PathLike) -> None:
    """Write ``image`` to ``path`` so that the file is either complete or absent."""
    path = Path(path)
    file_format = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    _atomic_write(path, lambda tmp: image.save(tmp, format=file_format))


def write_text_atomic(text: str, path: PathLike) -> None:
    """Write a text file atomically (CSV, JSON, notes)."""
    path = Path(path)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)

    _atomic_write(path, write)


def map_to_image(values: np.ndarray) -> Image.Image:
    """A [0, 1] float map as an 8-bit grayscale PNG-ready image."""
    return Image.fromarray(np.clip(values * 255.0 + 0.5, 0, 255).astype(np.uint8))


def heatmap_overlay(image: Image.Image, values: np.ndarray, alpha: float = 0.6) -> Image.Image:
    """Blend a jet-coloured [0, 1] map over ``image`` (the authors' visualisation: 0.4 image + 0.6 map)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    # A dependency-free 'jet' colour map: blue (0) -> cyan -> yellow -> red (1).
    red = np.clip(1.5 - np.abs(4.0 * v - 3.0), 0, 1)
    green = np.clip(1.5 - np.abs(4.0 * v - 2.0), 0, 1)
    blue = np.clip(1.5 - np.abs(4.0 * v - 1.0), 0, 1)
    colour = np.concatenate([red, green, blue], axis=-1) * 255.0
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    blended = (1.0 - alpha) * base + alpha * colour
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8))
