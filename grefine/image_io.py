"""Image input/output shared by every grefine component.

Reading turns whatever an image comes as — a path, any PIL mode (grayscale, RGBA, premultiplied
``La``/``RGBa``, palette, 16-bit, CMYK, ...), an H×W×3 ``uint8`` array or a C×H×W float tensor in
[0, 1] — into 8-bit RGB, refusing images above a pixel budget from their header, before decoding.
Writing is atomic (temporary file + ``os.replace``) so that a killed run never leaves a
half-written file behind, gives files the mode the umask asks for, and carries an input's
metadata over to its refined version (:func:`save_image_atomic`).
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

PathLike = Union[str, os.PathLike]
ImageInput = Union[Image.Image, PathLike, np.ndarray, torch.Tensor]
"""What every component accepts as an image: see :func:`as_rgb_image`."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
"""File suffixes (compared lower-case) that grefine reads as images."""

MIN_SIDE = 8
"""Smallest side, in pixels, that grefine accepts: the maps need at least one CLIP patch."""

JPEG_QUALITY = 95
"""Quality of refined JPEGs (written with the input's chroma subsampling, ICC profile and EXIF)."""

_PREMULTIPLIED = {"La": "LA", "RGBa": "RGBA"}
_EXIF_ORIENTATION = 0x0112
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
TEMPORARY_FILE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
"""Names of the temporary files of :func:`atomic_write` (``.<name>.<8 random characters>.tmp``)."""


class ImageLoadError(ValueError):
    """An input image cannot be used; the message names the file and what to do."""


def to_rgb(image: Image.Image, source: str = "image") -> Image.Image:
    """Convert any PIL image to 8-bit RGB.

    16-bit and 32-bit integer images (modes ``I;16``, ``I``) are rescaled from their own
    bit depth instead of being clipped at 255; float images (``F``) are taken as [0, 1] when
    their maximum is at most 1, else as [0, 255]. Transparency (also premultiplied, ``La`` and
    ``RGBa``) is composited on white.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in _PREMULTIPLIED:
        image = image.convert(_PREMULTIPLIED[image.mode])
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
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


def check_pixels(size: tuple[int, int], max_pixels: Optional[int], source: str = "image") -> None:
    """Refuse an image of ``size`` = (width, height) above ``max_pixels`` (None: no limit)."""
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageLoadError(
            f"{source} is {width}x{height} = {width * height / 1e6:.1f} Mpx, above max_pixels = "
            f"{max_pixels / 1e6:.1f} Mpx. Downscale it, or raise max_pixels (config key or --max-pixels) "
            "if the machine has the memory."
        )


def load_image(path: PathLike, max_pixels: Optional[int] = None) -> Image.Image:
    """Read an image file as 8-bit RGB, raising :class:`ImageLoadError` that names the file.
    An image above ``max_pixels`` is refused from its header, before it is decoded."""
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"{path}: no such file. Check the path or the --input folder.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # max_pixels is the guard
        try:
            opened = Image.open(path)
        except Image.DecompressionBombError as err:
            raise ImageLoadError(f"{path}: {err} Downscale it first.") from err
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise _unreadable(path, err) from err
        with opened:
            check_pixels(opened.size, max_pixels, str(path))
            try:
                opened.load()
                image = opened.copy()
            except (OSError, ValueError) as err:
                raise _unreadable(path, err) from err
    return to_rgb(image, source=str(path))


def _unreadable(path: Path, err: Exception) -> ImageLoadError:
    return ImageLoadError(f"{path}: cannot be read as an image ({err}). Re-export it as PNG or JPEG, or remove it.")


def as_rgb_image(image: ImageInput, max_pixels: Optional[int] = None) -> Image.Image:
    """Any image input as 8-bit RGB: a PIL image (every mode), a path, an H×W×3 (or H×W)
    ``uint8`` numpy array, or a C×H×W float tensor in [0, 1] with C = 1 or 3 (any device).
    ``max_pixels`` (None: no limit) refuses larger images, from the header for a path."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(image, max_pixels)
    if isinstance(image, torch.Tensor):
        image = _tensor_to_pil(image)
    elif isinstance(image, np.ndarray):
        image = _array_to_pil(image)
    elif not isinstance(image, Image.Image):
        raise TypeError(
            f"expected a PIL image, a path, an HxWx3 uint8 numpy array or a CxHxW float tensor in [0, 1]; "
            f"got {type(image).__name__}"
        )
    check_pixels(image.size, max_pixels)
    return to_rgb(image)


def _array_to_pil(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3))):
        raise ValueError(
            f"a numpy image must be an HxWx3 (or HxW) uint8 array; got shape {array.shape} and dtype {array.dtype}. "
            "For floats in [0, 1] use (array * 255).round().astype(np.uint8)."
        )
    return Image.fromarray(np.ascontiguousarray(array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array))


def _tensor_to_pil(tensor: torch.Tensor) -> Image.Image:
    if not tensor.is_floating_point() or tensor.ndim != 3 or tensor.shape[0] not in (1, 3):
        raise ValueError(
            f"a tensor image must be a CxHxW float tensor (C = 1 or 3) in [0, 1]; got shape {tuple(tensor.shape)} "
            f"and dtype {tensor.dtype}. For uint8 tensors use tensor.float() / 255."
        )
    values = tensor.detach().float().cpu()
    if values.numel() and (values.min() < 0.0 or values.max() > 1.0 or not torch.isfinite(values).all()):
        raise ValueError(
            f"a tensor image must hold values in [0, 1]; got [{values.min().item():.3g}, {values.max().item():.3g}]. "
            "Map it to [0, 1] first (e.g. (tensor + 1) / 2 for [-1, 1])."
        )
    array = (values * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return _array_to_pil(array)


def fit_long_side(image: Image.Image, max_side: Optional[int]) -> Image.Image:
    """``image`` downscaled (Lanczos) so that its long side is at most ``max_side``; unchanged when
    it already fits or ``max_side`` is None. The working size of a stage that must not grow with the image."""
    if max_side is None or max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS)


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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write) -> None:
    """Call ``write(temporary_path)`` and move the result onto ``path``: complete or absent, with
    the mode the umask gives a new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide outputs from the user's group
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_temporary_files(folder: Path) -> list[Path]:
    """Remove the temporary files of :func:`atomic_write` that a killed process left in ``folder``
    and below (only names of :data:`TEMPORARY_FILE`; call it while no other process writes
    there). Returns what was removed."""
    removed = []
    for path in Path(folder).rglob(".*.tmp"):
        if TEMPORARY_FILE.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def save_image_atomic(image: Image.Image, path: PathLike, reference: Optional[PathLike] = None, **save_options) -> None:
    """Write ``image`` to ``path`` (format from the suffix) so that the file is either complete or absent.

    Lossless formats stay lossless (PNG, TIFF, BMP; WebP is written lossless, keeping the colours
    under transparent pixels). JPEG is written at quality :data:`JPEG_QUALITY` (95). With a
    ``reference`` (the input file this image was refined from), its ICC profile (when it describes
    the image's colour space: RGB, or gray for a grayscale image), EXIF (orientation reset: the
    pixels are upright), resolution and, for JPEG, its chroma subsampling are carried over.
    ``save_options`` go to ``Image.save`` last (e.g. a TIFF's ``compression``).
    """
    path = Path(path)
    file_format = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    options = metadata_of(Path(reference), image.mode) if reference is not None else {}
    if file_format == "JPEG":
        options = {"quality": JPEG_QUALITY, "subsampling": options.pop("subsampling", 0), **options}
    else:
        options.pop("subsampling", None)
        if file_format == "WEBP":
            options.update(lossless=True, exact=True)
    options.update(save_options)
    atomic_write(path, lambda tmp: image.save(tmp, format=file_format, **options))


def metadata_of(reference: Path, mode: str = "RGB") -> dict:
    """The save options that carry ``reference``'s metadata over to an image of ``mode`` (read
    from its header)."""
    with Image.open(reference) as original:
        options: dict = {}
        icc = original.info.get("icc_profile")
        if icc and icc[16:20] == (b"GRAY" if mode in _GRAY_MODES else b"RGB "):  # a profile must describe the pixels
            options["icc_profile"] = icc
        exif = original.getexif()
        if exif:
            if _EXIF_ORIENTATION in exif:
                exif[_EXIF_ORIENTATION] = 1
            options["exif"] = exif.tobytes()
        if "dpi" in original.info:
            options["dpi"] = original.info["dpi"]
        if original.format == "JPEG":
            sampling = JpegImagePlugin.get_sampling(original)
            if sampling in (0, 1, 2):
                options["subsampling"] = sampling
    return options


def copy_file_atomic(source: PathLike, path: PathLike) -> None:
    """Copy ``source`` byte for byte to ``path``, atomically (mode from the umask)."""
    atomic_write(Path(path), lambda tmp: shutil.copyfile(source, tmp))


def write_text_atomic(text: str, path: PathLike) -> None:
    """Write a text file atomically (CSV, JSON, notes)."""
    path = Path(path)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)

    atomic_write(path, write)


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
