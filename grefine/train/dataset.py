"""Human-scored images for learning PQ-Map's prompts: a label table (CSV or XLSX) of image
names and scores, split into training and validation.

Everything here runs before any model is loaded, so that a bad table, a missing column, a
missing image folder or an empty split is refused at once (:class:`TrainingDataError`, whose
message names the input and the fix). Rows whose score is not a number or whose image file
does not exist are skipped and counted (:class:`SkippedRow`); images that exist but cannot be
decoded are skipped later, when their features are computed
(:mod:`grefine.train.features`).
"""
from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from grefine.image_io import PathLike

IMAGE_COLUMN_CANDIDATES = ("image", "name", "image_name", "img_name", "filename", "file_name", "file", "path", "img")
"""Columns tried, in order, when no image column is named."""

MIN_SPLIT_SIZE = 2
"""Smallest split: correlations need two images."""


class TrainingDataError(ValueError):
    """The label table, the image folder or a split cannot be used."""


@dataclass(frozen=True)
class ScoredImage:
    """One labelled image: its name as written in the table, its file, its raw score, and
    where it was read (the table and its data row, counted from 1 after the header)."""

    name: str
    path: Path
    score: float
    source: str = ""
    row: int = 0


@dataclass(frozen=True)
class SkippedRow:
    """A row left out, and why (``row`` counts data rows from 1, after the header)."""

    source: str
    row: int
    name: str
    reason: str


@dataclass
class TrainingData:
    """The training and validation images and the rows skipped while reading them."""

    train: list[ScoredImage]
    val: list[ScoredImage]
    skipped: list[SkippedRow] = field(default_factory=list)


def read_table(path: PathLike) -> list[dict[str, object]]:
    """Rows of a CSV (header line) or XLSX (first sheet, header row) file as dicts."""
    path = Path(path)
    if not path.is_file():
        raise TrainingDataError(f"{path}: no such label file. Give a CSV or XLSX with an image column and a score column.")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, encoding="utf-8-sig", newline="") as handle:
            return list(csv.DictReader(handle))
    if suffix == ".xlsx":
        return _read_xlsx(path)
    raise TrainingDataError(f"{path}: unsupported label file type '{suffix}'. Save it as .csv or .xlsx.")


def _read_xlsx(path: Path) -> list[dict[str, object]]:
    from openpyxl import load_workbook

    try:
        workbook = load_workbook(path, read_only=True, data_only=True)
    except Exception as err:  # openpyxl raises zipfile/KeyError/InvalidFileException variants
        raise TrainingDataError(f"{path}: not a readable .xlsx file ({type(err).__name__}: {err}).") from err
    try:
        rows = workbook.worksheets[0].iter_rows(values_only=True)
        header = next(rows, None)
        if not header:
            return []
        names = ["" if cell is None else str(cell).strip() for cell in header]
        return [dict(zip(names, row)) for row in rows if any(cell is not None for cell in row)]
    finally:
        workbook.close()


def _image_column(columns: Sequence[str], requested: Optional[str], source: Path) -> str:
    if requested is not None:
        if requested not in columns:
            raise TrainingDataError(f"{source}: no image column '{requested}'; its columns are {list(columns)}. Pass --image-column.")
        return requested
    for candidate in IMAGE_COLUMN_CANDIDATES:
        if candidate in columns:
            return candidate
    raise TrainingDataError(
        f"{source}: no image column found (tried {', '.join(IMAGE_COLUMN_CANDIDATES)}); its columns are "
        f"{list(columns)}. Pass --image-column."
    )


def _as_score(value: object) -> Optional[float]:
    try:
        score = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return score if math.isfinite(score) else None


def load_scored_images(
    table: PathLike, image_root: PathLike, score_column: str, image_column: Optional[str] = None
) -> tuple[list[ScoredImage], list[SkippedRow]]:
    """The usable rows of ``table`` (image under ``image_root``, numeric score) and the skipped ones."""
    table, image_root = Path(table), Path(image_root)
    if not image_root.is_dir():
        raise TrainingDataError(f"--image-root {image_root}: not a folder. Give the folder the table's image names are relative to.")
    rows = read_table(table)
    if not rows:
        raise TrainingDataError(f"{table}: no data rows.")
    columns = list(rows[0].keys())
    if score_column not in columns:
        raise TrainingDataError(f"{table}: no score column '{score_column}'; its columns are {columns}. Pass --score-column.")
    image_key = _image_column(columns, image_column, table)
    items, skipped = [], []
    for number, row in enumerate(rows, start=1):
        name = "" if row.get(image_key) is None else str(row[image_key]).strip()
        score = _as_score(row.get(score_column))
        reason = None
        if not name:
            reason = f"empty '{image_key}'"
        elif score is None:
            reason = f"'{score_column}' is not a number ({row.get(score_column)!r})"
        elif not (image_root / name).is_file():
            reason = f"no such file {image_root / name}"
        if reason:
            skipped.append(SkippedRow(str(table), number, name, reason))
        else:
            items.append(ScoredImage(name, image_root / name, score, str(table), number))  # type: ignore[arg-type]
    return items, skipped


def split_validation(items: Sequence[ScoredImage], fraction: float, seed: int) -> tuple[list[ScoredImage], list[ScoredImage]]:
    """A seeded random split: ``round(fraction · n)`` images for validation, the rest for training."""
    if not 0.0 < fraction < 1.0:
        raise TrainingDataError(f"--val-split must be in (0, 1), got {fraction}.")
    order = np.random.default_rng(seed).permutation(len(items))
    n_val = int(round(fraction * len(items)))
    val = [items[i] for i in sorted(order[:n_val])]
    train = [items[i] for i in sorted(order[n_val:])]
    return train, val


def check_split(items: Sequence[ScoredImage], what: str, fix: str) -> None:
    """Refuse a split too small for correlations."""
    if len(items) < MIN_SPLIT_SIZE:
        raise TrainingDataError(f"the {what} split has {len(items)} usable image(s); at least {MIN_SPLIT_SIZE} are needed. {fix}")


def prepare_training_data(
    data: PathLike,
    image_root: PathLike,
    score_column: str,
    *,
    image_column: Optional[str] = None,
    val: Optional[PathLike] = None,
    val_split: float = 0.2,
    seed: int = 0,
) -> TrainingData:
    """Read and split the labelled images (``val``: a second table with the same columns and
    image folder; else a seeded ``val_split`` fraction of ``data``)."""
    items, skipped = load_scored_images(data, image_root, score_column, image_column)
    if val is not None:
        val_items, val_skipped = load_scored_images(val, image_root, score_column, image_column)
        train, skipped = items, skipped + val_skipped
    else:
        train, val_items = split_validation(items, val_split, seed)
    check_split(train, "training", f"Check {data} and --image-root (skipped rows: {len(skipped)}).")
    check_split(val_items, "validation", "Use a larger --val-split or a --val table with more images.")
    return TrainingData(train=train, val=val_items, skipped=skipped)


def normalize_scores(scores: Sequence[float], score_range: tuple[float, float]) -> np.ndarray:
    """Min-max normalisation to [0, 1] by ``score_range`` = (low, high), pyiqa's ``mos_normalize``."""
    low, high = score_range
    if not high > low:
        raise TrainingDataError(
            f"the score range ({low}, {high}) is empty: every training score is the same. Check --score-column or pass --score-range."
        )
    return (np.asarray(scores, dtype=np.float64) - low) / (high - low)


def fingerprint(*splits: Sequence[ScoredImage]) -> str:
    """A short hash of the splits' names and scores (a resumed run must see the same data)."""
    digest = hashlib.sha1()
    for split in splits:
        for item in split:
            digest.update(f"{item.name}\t{item.score!r}\n".encode())
        digest.update(b"--\n")
    return digest.hexdigest()[:16]
