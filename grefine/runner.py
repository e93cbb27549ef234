"""The folder runner: image + prompt pairs -> refined images, quality maps and ``results.csv``.

One bad image (unreadable, missing prompt, a failure inside a model) becomes a row with its
error and the run goes on. Every output is written atomically, ``results.csv`` is rewritten
(atomically) after each image, and ``resume=True`` skips the images that already have a
successful row and a refined image. Under ``accelerate launch`` the images are split across
processes round-robin; each process writes its own part and the main process merges them.
"""
from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Protocol, Sequence

from PIL import Image
from tqdm.auto import tqdm

from grefine.image_io import (
    heatmap_overlay,
    load_image,
    map_to_image,
    save_image_atomic,
    write_text_atomic,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
BASE_COLUMNS = (
    "name",
    "prompt",
    "p",
    "a",
    "mask_area",
    "strength1",
    "strength2",
    "stage1_steps",
    "stage2_steps",
    "maps_seconds",
    "stage1_seconds",
    "stage2_seconds",
    "total_seconds",
    "note",
    "metric_errors",
    "error",
)


class PromptSourceError(ValueError):
    """The prompts file cannot be read; the message names it and the expected format."""


class Refiner(Protocol):
    """What the runner needs of :class:`grefine.pipeline.GRefinePipeline`."""

    def __call__(self, image: Image.Image, prompt: str, *, seed: Optional[int] = None): ...


class Metric(Protocol):
    name: str

    def __call__(self, image: Image.Image, prompt: Optional[str] = None, reference: Optional[Image.Image] = None) -> float: ...


def create_metrics(names: Sequence[str], device=None) -> tuple[list[Metric], dict[str, str]]:
    """Create the named metrics (:func:`grefine.eval.metrics.create_metric`); those that cannot be
    had here (missing weights, offline) are returned with their reason instead of raising.
    An unknown name still raises, before any work is done."""
    from grefine.eval.metrics import MetricUnavailable, create_metric

    metrics: list[Metric] = []
    failures: dict[str, str] = {}
    for name in names:
        try:
            metrics.append(create_metric(name, device=device))
        except MetricUnavailable as err:
            failures[name] = str(err)
    return metrics, failures


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    if not folder.is_dir():
        raise FileNotFoundError(f"--input {folder}: not a folder. Give a folder of images.")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_prompts(path: Path) -> dict[str, str]:
    """Prompts from a CSV (header with ``name`` and ``prompt`` columns) or a JSONL file
    (one ``{"name": ..., "prompt": ...}`` object per line). Names may carry the extension or not."""
    if not path.is_file():
        raise PromptSourceError(f"--prompts {path}: no such file.")
    text = path.read_text(encoding="utf-8-sig")
    prompts: dict[str, str] = {}
    if path.suffix.lower() in (".jsonl", ".json"):
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                prompts[str(record["name"])] = str(record["prompt"])
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise PromptSourceError(
                    f"{path}:{number}: expected a JSON object with 'name' and 'prompt' ({err})."
                ) from err
        return prompts
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or not {"name", "prompt"} <= set(reader.fieldnames):
        raise PromptSourceError(f"{path}: a CSV needs a header with 'name' and 'prompt' columns, got {reader.fieldnames}.")
    for row in reader:
        prompts[row["name"]] = row["prompt"] or ""
    return prompts


def prompt_for(image_path: Path, prompts: dict[str, str]) -> str:
    """The prompt of one image: from the prompts table (by file name, then stem), else from a
    sidecar ``<stem>.txt`` next to it."""
    for key in (image_path.name, image_path.stem):
        if key in prompts:
            return prompts[key]
    sidecar = image_path.with_suffix(".txt")
    if sidecar.is_file():
        return sidecar.read_text(encoding="utf-8").strip()
    raise KeyError(f"{image_path.name}: no prompt (not in the prompts file, no sidecar {sidecar.name}).")


@dataclass
class RunSummary:
    """What a folder run did."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    results_csv: Optional[Path] = None

    @property
    def ok(self) -> bool:
        return not self.failed


def read_results(path: Path) -> dict[str, dict[str, str]]:
    """Rows of an existing results CSV, keyed by image name (missing file -> empty)."""
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8", newline="") as handle:
        return {row["name"]: row for row in csv.DictReader(handle)}


def write_results(path: Path, rows: Iterable[dict[str, object]], metric_names: Sequence[str]) -> None:
    """Atomically (re)write the results CSV with a stable column order."""
    rows = list(rows)
    columns = list(BASE_COLUMNS[:-2])
    for name in metric_names:
        columns += [f"{name}_before", f"{name}_after"]
    columns += list(BASE_COLUMNS[-2:])
    extra = sorted({key for row in rows for key in row} - set(columns))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns + extra, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: str(r["name"])):
        writer.writerow({key: _fmt(value) for key, value in row.items()})
    write_text_atomic(buffer.getvalue(), path)


def _fmt(value: object) -> object:
    return f"{value:.6g}" if isinstance(value, float) else value


def _score(metrics: Sequence[Metric], image: Image.Image, prompt: str, reference: Optional[Image.Image], suffix: str, row: dict, errors: list[str]) -> None:
    for metric in metrics:
        try:
            row[f"{metric.name}_{suffix}"] = float(metric(image, prompt=prompt, reference=reference))
        except Exception as err:  # one failing metric must not lose the image
            errors.append(f"{metric.name}/{suffix}: {type(err).__name__}: {err}")


def refine_one(
    refiner: Refiner,
    image_path: Path,
    prompt: str,
    output_dir: Path,
    metrics: Sequence[Metric],
    seed: Optional[int],
) -> dict[str, object]:
    """Refine one image, write its outputs, return its results row (raises on failure)."""
    start = time.perf_counter()
    original = load_image(image_path)
    result = refiner(original, prompt, seed=seed)
    refined = result.image
    maps_dir = output_dir / "maps"
    stem = image_path.stem
    save_image_atomic(refined, output_dir / image_path.name)
    save_image_atomic(map_to_image(result.pq.map), maps_dir / f"{stem}_pq.png")
    save_image_atomic(map_to_image(result.aq.defect_map), maps_dir / f"{stem}_aq_defect.png")
    save_image_atomic(map_to_image(result.mask.soft.astype("float32")), maps_dir / f"{stem}_mask.png")
    save_image_atomic(heatmap_overlay(original, result.pq.map), maps_dir / f"{stem}_pq_overlay.png")
    row: dict[str, object] = {"name": image_path.name, "prompt": prompt, **result.summary()}
    errors: list[str] = []
    _score(metrics, original, prompt, original, "before", row, errors)
    _score(metrics, refined, prompt, original, "after", row, errors)
    row["metric_errors"] = "; ".join(errors)
    row["total_seconds"] = time.perf_counter() - start
    row["error"] = ""
    return row


def _is_done(row: Optional[dict[str, str]], output_dir: Path) -> bool:
    return bool(row) and not row.get("error") and (output_dir / row["name"]).is_file()


def run_folder(
    refiner: Refiner,
    input_dir: Path,
    output_dir: Path,
    *,
    prompts_file: Optional[Path] = None,
    metrics: Sequence[Metric] = (),
    metric_names: Sequence[str] = (),
    metric_failures: Optional[dict[str, str]] = None,
    resume: bool = False,
    seed: Optional[int] = 0,
    process_index: int = 0,
    num_processes: int = 1,
    barrier: Callable[[], None] = lambda: None,
    progress: bool = True,
) -> RunSummary:
    """Refine every image of ``input_dir`` into ``output_dir``; see the module docstring.

    ``metric_names`` are all requested metrics (columns); ``metric_failures`` maps the ones that
    could not be created to their reason, recorded in every row's ``metric_errors``.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    images = list_images(input_dir)[process_index::num_processes]
    prompts = read_prompts(prompts_file) if prompts_file else {}
    final_csv = output_dir / "results.csv"
    part_csv = final_csv if num_processes == 1 else output_dir / f"results.part{process_index}.csv"
    previous = {**read_results(final_csv), **read_results(part_csv)} if resume else {}
    mine = {path.name for path in images}
    rows = {name: row for name, row in previous.items() if name in mine}
    unavailable = "; ".join(f"{name}: {reason}" for name, reason in (metric_failures or {}).items())
    summary = RunSummary(results_csv=final_csv)
    bar = tqdm(images, desc="grefine", unit="img", disable=not progress)
    for path in bar:
        bar.set_postfix_str(path.name)
        if resume and _is_done(previous.get(path.name), output_dir):
            summary.skipped.append(path.name)
            continue
        prompt = ""
        try:
            prompt = prompt_for(path, prompts)
            row = refine_one(refiner, path, prompt, output_dir, metrics, seed)
            row["metric_errors"] = "; ".join(filter(None, [unavailable, str(row["metric_errors"])]))
            summary.done.append(path.name)
        except Exception as err:  # reported per image; the run goes on
            message = err.args[0] if isinstance(err, KeyError) and err.args else f"{type(err).__name__}: {err}"
            row = {"name": path.name, "prompt": prompt, "error": str(message)}
            summary.failed[path.name] = str(message)
            tqdm.write(f"[grefine] {path.name}: {message}")
        rows[path.name] = row
        write_results(part_csv, rows.values(), metric_names)
    if not images:
        write_results(part_csv, rows.values(), metric_names)
    if num_processes > 1:
        barrier()
        if process_index == 0:
            merged = read_results(final_csv) if resume else {}
            parts = sorted(output_dir.glob("results.part*.csv"))
            for part in parts:
                merged.update(read_results(part))
            write_results(final_csv, merged.values(), metric_names)
            for part in parts:
                part.unlink()
    return summary
