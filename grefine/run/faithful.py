"""Faithful outputs: a refined image written in its input's own form (:func:`save_faithful`).

The refiner works on 8-bit RGB (:func:`grefine.image_io.load_image`: transparency composited on
white, 16 bits rescaled, grayscale expanded). Its result is written back in the input's form, as
far as the output format allows:

* the *change* the refiner made is put onto the input's own pixels — ``out = input + Δ``, with
  Δ = refined − what the refiner saw, in the input's scale (×257 for 16 bits) — so that a pixel
  the refiner left alone keeps its exact input value (16-bit depth, the colour under a
  transparent pixel);
* grayscale stays grayscale (8-bit ``L``, 16-bit ``I;16``, 32-bit ``I`` and ``F``: the change of
  the refined image's luma), the alpha channel of ``LA``, ``RGBA`` and ``PA`` inputs is kept as it
  was, and a palette image becomes RGBA when it has transparency, else RGB (the refined colours do
  not fit its palette);
* 16-bit RGB and RGBA PNGs, which Pillow reads as 8-bit, are read with OpenCV and written 16-bit;
* a TIFF keeps a lossless compression (LZW, deflate, PackBits); WebP is written lossless.

What cannot be kept is said in the returned note, which the runner puts into the row's ``note``:
an animated or multi-page input (its first frame is refined and written as a still image), a CMYK
or palette image written as RGB(A), a mode the output format cannot store, a lossy TIFF
compression replaced by deflate.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from grefine.image_io import metadata_of, atomic_write, save_image_atomic

WRITABLE_MODES = {
    "PNG": {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"},
    "JPEG": {"L", "RGB"},
    "WEBP": {"RGB", "RGBA"},
    "BMP": {"1", "L", "P", "RGB"},
    "TIFF": {"1", "L", "LA", "I", "I;16", "F", "P", "RGB", "RGBA"},
}
"""The modes of a refined image that grefine writes in each output format."""

LOSSLESS_TIFF = ("raw", "tiff_lzw", "tiff_adobe_deflate", "tiff_deflate", "packbits")
"""TIFF compressions a refined TIFF keeps; any other (e.g. JPEG) is replaced by lossless deflate."""

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GRAY = ("L", "I", "I;16", "I;16B", "I;16L", "F")
_EXIF_ORIENTATION = 0x0112


def save_faithful(refined: Image.Image, seen: Image.Image, source: Path, target: Path) -> str:
    """Write ``refined`` (8-bit RGB, the refiner's result for ``seen``, the 8-bit RGB it was given)
    to ``target`` in the form of the input file ``source`` (see the module docstring), atomically,
    with the input's metadata. Returns a note saying what could not be kept ("" when nothing)."""
    file_format = Image.registered_extensions().get(Path(target).suffix.lower(), "PNG")
    with Image.open(source) as opened:
        frames = getattr(opened, "n_frames", 1)
        compression = opened.info.get("compression")
        deep = _is_deep_rgb_png(source) and opened.getexif().get(_EXIF_ORIENTATION, 1) == 1
        original = ImageOps.exif_transpose(opened)
    notes = [f"animated ({frames} frames): the first frame was refined and is written as a still image"] if frames > 1 else []
    if refined.size != seen.size or original.size != seen.size:
        notes.append("the refiner changed the image size: written as 8-bit RGB")
        save_image_atomic(refined, target, reference=source)
        return "; ".join(notes)
    if deep and file_format == "PNG":
        _save_png16(_deep_change(refined, seen, source), target, metadata_of(source, "RGB"))
        return "; ".join(notes)
    image, note = in_input_form(refined, seen, original)
    image, fallback = _writable(image, refined, file_format)
    options = {}
    if file_format == "TIFF" and compression:
        options["compression"] = compression if compression in LOSSLESS_TIFF else "tiff_adobe_deflate"
        if compression not in LOSSLESS_TIFF:
            notes.append(f"TIFF compression {compression} is not lossless: written with deflate")
    save_image_atomic(image, target, reference=source, **options)
    return "; ".join(notes + [n for n in (note, fallback) if n])


def in_input_form(refined: Image.Image, seen: Image.Image, original: Image.Image) -> tuple[Image.Image, str]:
    """The refined image in the mode of ``original`` (the input as decoded, upright), the
    refiner's change added to the input's own pixels; and a note when the mode changes."""
    mode = {"La": "LA", "RGBa": "RGBA"}.get(original.mode, original.mode)
    if mode in ("RGB", "LA", "RGBA") and original.mode != mode:
        original = original.convert(mode)
    change = np.asarray(refined, dtype=np.int32) - np.asarray(seen, dtype=np.int32)
    if mode == "RGB":
        return refined, ""
    if mode in _GRAY:
        return _gray_change(original, refined, seen), ""
    if mode == "1":
        return _gray_change(original.convert("L"), refined, seen), "1-bit image written as 8-bit grayscale"
    if mode == "LA":
        gray, alpha = original.split()
        return Image.merge("LA", [_gray_change(gray, refined, seen), alpha]), ""
    if mode in ("RGBA", "PA") or (mode == "P" and "transparency" in original.info):
        rgba = np.asarray(original.convert("RGBA"))
        rgb = np.clip(rgba[..., :3].astype(np.int32) + change, 0, 255).astype(np.uint8)
        note = "" if mode == "RGBA" else "palette image written as RGBA (the refined colours do not fit its palette)"
        return Image.fromarray(np.dstack([rgb, rgba[..., 3]])), note
    if mode == "P":
        return refined, "palette image written as RGB (the refined colours do not fit its palette)"
    return refined, f"{mode} image written as RGB"


def _gray_change(original: Image.Image, refined: Image.Image, seen: Image.Image) -> Image.Image:
    """A grayscale input plus the change of the luma, in its own scale (the peak that
    :func:`grefine.image_io.to_rgb` mapped to 255)."""
    values = np.asarray(original)
    if original.mode == "F":
        peak = 1.0 if values.max(initial=0.0) <= 1.0 else 255.0
    elif original.mode.startswith("I;16") or (original.mode == "I" and values.max(initial=0) > 255):
        peak = 65535.0
    else:
        peak = 255.0
    change = np.asarray(refined.convert("L"), dtype=np.float64) - np.asarray(seen.convert("L"), dtype=np.float64)
    out = values.astype(np.float64) + change * (peak / 255.0)
    if original.mode == "F":
        return Image.fromarray(out.astype(np.float32))
    out = np.clip(np.rint(out), 0, peak)
    return Image.fromarray(out.astype(np.uint8 if peak == 255.0 else np.uint16))


def _writable(image: Image.Image, refined: Image.Image, file_format: str) -> tuple[Image.Image, str]:
    """``image`` if ``file_format`` stores its mode, else the nearest mode it does store
    (8-bit grayscale, RGBA, or the refined RGB) and a note saying so."""
    writable = WRITABLE_MODES.get(file_format, {"RGB"})
    if image.mode in writable:
        return image, ""
    if image.mode in _GRAY and "L" in writable:
        fallback = Image.fromarray(np.asarray(refined.convert("L")))
    elif "A" in image.mode and "RGBA" in writable:
        fallback = image.convert("RGBA")
    else:
        fallback = refined
    return fallback, f"{file_format} cannot store mode {image.mode}: written as {fallback.mode}"


# ------------------------------------------------------------------------ 16-bit RGB PNG


def _is_deep_rgb_png(path: Path) -> bool:
    """A PNG with 16-bit RGB or RGBA pixels (Pillow decodes those to 8 bits), from its header."""
    with open(path, "rb") as handle:
        header = handle.read(26)
    return header[:8] == _PNG_SIGNATURE and header[12:16] == b"IHDR" and header[24] == 16 and header[25] in (2, 6)


def _deep_change(refined: Image.Image, seen: Image.Image, source: Path) -> np.ndarray:
    """The 16-bit RGB(A) input (read with OpenCV) plus the refiner's change × 257; alpha kept."""
    import cv2

    pixels = cv2.imread(str(source), cv2.IMREAD_UNCHANGED)
    pixels = pixels[..., [2, 1, 0, 3]] if pixels.shape[2] == 4 else pixels[..., ::-1]
    change = np.asarray(refined, dtype=np.int64) - np.asarray(seen, dtype=np.int64)
    out = pixels.astype(np.int64)
    out[..., :3] = np.clip(out[..., :3] + 257 * change, 0, 65535)
    return out.astype(np.uint16)


def _save_png16(pixels: np.ndarray, target: Path, metadata: dict) -> None:
    """Write an H×W×3 or H×W×4 ``uint16`` array as a 16-bit PNG (with the input's ICC profile,
    resolution and EXIF), atomically."""
    height, width, channels = pixels.shape
    rows = np.ascontiguousarray(pixels.astype(">u2")).reshape(height, -1).view(np.uint8)
    scanlines = np.hstack([np.zeros((height, 1), np.uint8), rows]).tobytes()  # filter type 0 on every row
    chunks = [(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2 if channels == 3 else 6, 0, 0, 0))]
    if "icc_profile" in metadata:
        chunks.append((b"iCCP", b"ICC profile\x00\x00" + zlib.compress(metadata["icc_profile"])))
    if "dpi" in metadata:
        chunks.append((b"pHYs", struct.pack(">IIB", *(round(float(d) / 0.0254) for d in metadata["dpi"]), 1)))
    if "exif" in metadata:
        exif = metadata["exif"]
        chunks.append((b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif))
    chunks += [(b"IDAT", zlib.compress(scanlines, 6)), (b"IEND", b"")]
    data = _PNG_SIGNATURE + b"".join(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body)) for kind, body in chunks)
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(data))
