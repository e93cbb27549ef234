"""The runner: work items (name, image, prompt) -> refined images, quality maps and ``results.csv``.

Entry point: :func:`run_items` (check, lock, load the models, refine). Items come from
:func:`grefine.run.sources.scan_folder` (a folder; :func:`run_folder` chains the two) or from any other
source that builds :class:`~grefine.run.sources.WorkItem` objects. Whatever the source, a run

* checks everything before ``load`` is called (:func:`plan_run`): unique, relative item names;
  an output folder that is a writable folder, is not the folder of an input, and where no output
  path is an input file or another output; a readable ``results.csv`` of grefine's own, and, for a
  new run, no earlier results or files it would replace (``mode="resume"`` continues, ``"overwrite"``
  redoes every item). A failure raises :class:`~grefine.errors.RunInputError`;
* owns its output folder: :class:`OutputLock` refuses a second concurrent run; a lock left by a
  killed run (its process is gone) is stale and taken over;
* never loses work: outputs are written atomically with the umask's mode; ``results.csv`` is
  rewritten (atomically) after each item and keeps every row it had (rows of items no longer
  given, rows of a killed multi-process run's part files); one bad item (unreadable, above
  ``max_pixels``, no prompt, a failure inside a model) becomes a row with its ``error`` and the
  run goes on;
* writes faithful outputs (:func:`finish_item`): the input's format, form (bit depth, grayscale,
  transparency; :mod:`grefine.run.faithful`) and metadata, a byte-for-byte copy when the refiner
  changed no pixel (an image the gate left alone, or one that ``verify`` reverted), or PNG
  (``output_format="png"``, written as ``<name>.png``); what cannot be kept is said in the row's
  ``note``; the maps a result has (G-Refine's; a baseline has none) go to
  ``maps/<name>.<kind>.png`` and its phrase table to ``maps/<name>.phrases.json``
  (:func:`phrase_table`), so no two items can collide; each row names its input relative to the
  output folder (``input``);
* keeps a report up to date (:class:`RunOptions` ``report``, e.g. :func:`grefine.bench.report.run_report`): called
  with the output folder when the run starts, as rows are recorded (at most every
  ``report_every`` seconds) and at the end, so that ``report.html`` can be opened mid-run;
* works at a bounded size: images above ``max_pixels`` are refused from their header, and the
  metrics score images downscaled to ``metric_resolution`` (the pipeline bounds its own stages);
* keeps the refiner busy (:class:`RunOptions` ``prefetch``): items are decoded ahead of it and
  written and scored behind it in worker threads, with the same ``results.csv`` and files as a
  run that does each step in turn (``prefetch=0``);
* splits the items round-robin over processes (:class:`Processes`, e.g. ``accelerate launch`` or
  ``torchrun``): each writes ``results.part<i>.csv`` and the main process merges them;
* loads nothing when resuming a run with nothing left to do, removes the temporary files a killed
  run left, sends the libraries' messages (while the models load and run) to ``grefine.log``
  (:mod:`grefine.run.library_log`), and on Ctrl-C raises :class:`~grefine.errors.RunInterrupted`
  once what was refined is written.
"""
from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import math
import os
import tempfile
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Literal, Optional, Protocol, Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from grefine.errors import NotScoredError, RunInputError, RunInterrupted, printable
from grefine.image_io import (
    copy_file_atomic,
    fit_long_side,
    heatmap_overlay,
    load_image,
    map_to_image,
    remove_temporary_files,
    save_image_atomic,
    write_text_atomic,
)
from grefine.run.faithful import save_faithful
from grefine.run.library_log import library_messages
from grefine.run.lock import LOCK_NAME, OutputLock
from grefine.run.sources import WorkItem, scan_folder

RunMode = Literal["new", "resume", "overwrite"]
RESULTS_NAME = "results.csv"
REPORT_NAME = "report.html"
LOG_NAME = "grefine.log"
"""The libraries' messages during a run (written only when there were some)."""
_MAPS: dict[str, tuple[str, Callable[[Any, Image.Image], Image.Image]]] = {
    "pq": ("pq", lambda pq, original: map_to_image(pq.map)),
    "aq_defect": ("aq", lambda aq, original: map_to_image(aq.defect_map)),
    "mask": ("mask", lambda mask, original: map_to_image(mask.soft.astype("float32"))),
    "pq_overlay": ("pq", lambda pq, original: heatmap_overlay(original, pq.map)),
}
"""Map kind -> (the result's attribute it is drawn from, how it is drawn over the original)."""
MAP_KINDS = tuple(_MAPS)
BASE_COLUMNS = (
    "name",
    "output",
    "input",
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
    "verify_seconds",
    "total_seconds",
    "note",
    "gate",
    "verify",
    "p_after",
    "a_after",
    "candidates",
    "rounds",
    "changed_outside_mask",
    "psnr_outside_mask",
    "metric_errors",
    "error",
)
_SIGNATURE = ("name", "prompt", "p", "a", "mask_area", "error")
"""Columns every ``results.csv`` written by grefine has (a file without them is someone else's)."""


class Refiner(Protocol):
    """What the runner needs of :class:`grefine.pipeline.GRefinePipeline` (or of a benchmark
    baseline, :mod:`grefine.bench.methods`): a result with ``.image`` and ``.summary()``, and the
    maps it has among ``.pq`` (``.map``), ``.aq`` (``.defect_map``) and ``.mask`` (``.soft``)."""

    def __call__(self, image: Image.Image, prompt: str, *, seed: Optional[int] = None): ...


class Metric(Protocol):
    """A metric of :mod:`grefine.eval.metrics`: ``full_reference`` ones compare with ``reference``."""

    name: str
    full_reference: bool

    def __call__(self, image: Image.Image, prompt: Optional[str] = None, reference: Optional[Image.Image] = None) -> float: ...


@dataclass
class Models:
    """What the ``load`` callable of :func:`run_items` returns: the refiner, the metrics that could
    be created, and the reason of each requested metric that could not (recorded per row; see
    :func:`grefine.eval.metrics.create_metrics`)."""

    refiner: Refiner
    metrics: Sequence[Metric] = ()
    metric_failures: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Processes:
    """This process among the processes of one run: ``index`` of ``count``, a ``barrier``,
    ``share`` (returns the main process's value on every process) and ``gather`` (every
    process's value, in process order, on every process). One process by default;
    :meth:`from_accelerate` for ``accelerate launch`` / ``torchrun``."""

    index: int = 0
    count: int = 1
    barrier: Callable[[], None] = lambda: None
    share: Callable[[Any], Any] = lambda value: value
    gather: Callable[[Any], list] = lambda value: [value]

    @classmethod
    def from_accelerate(cls, state) -> "Processes":
        """From an ``accelerate.PartialState`` (on CPUs create it with ``cpu=True``: the gloo backend)."""
        from accelerate.utils import broadcast_object_list, gather_object

        def share(value: Any) -> Any:
            box = [value]
            broadcast_object_list(box, from_process=0)
            return box[0]

        if state.num_processes == 1:
            return cls()
        return cls(state.process_index, state.num_processes, state.wait_for_everyone, share, lambda value: gather_object([value]))


@dataclass
class RunSummary:
    """What a run did (names as in ``results.csv``), over all its processes; ``log``: the file
    the libraries' messages went to during the run (None: there were none)."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    results_csv: Optional[Path] = None
    log: Optional[Path] = None

    def merged(self, others: Iterable["RunSummary"]) -> "RunSummary":
        """This summary with the others' items added (the processes of one run)."""
        total = RunSummary(list(self.done), list(self.skipped), dict(self.failed), self.results_csv)
        for other in others:
            total.done += other.done
            total.skipped += other.skipped
            total.failed.update(other.failed)
        return total

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def exit_code(self) -> int:
        """0: every item refined (or already done); 1: some failed (see their rows)."""
        return 0 if self.ok else 1


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class RunPlan:
    """A checked run (:func:`plan_run`): the items and where each of their outputs goes."""

    items: list[WorkItem]
    output_dir: Path
    mode: RunMode = "new"
    output_format: Optional[str] = None

    @property
    def results_csv(self) -> Path:
        return self.output_dir / RESULTS_NAME

    def output_path(self, item: WorkItem) -> Path:
        """``<output>/<name>``, or ``<output>/<name>.png`` when converting to PNG."""
        convert = self.output_format is not None and not item.name.lower().endswith(f".{self.output_format}")
        return self.output_dir / (f"{item.name}.{self.output_format}" if convert else item.name)

    def map_path(self, item: WorkItem, kind: str) -> Path:
        """``<output>/maps/<name>.<kind>.png``: the full name, so ``x.png`` and ``x.jpg`` never share maps."""
        return self.output_dir / "maps" / f"{item.name}.{kind}.png"

    def phrases_path(self, item: WorkItem) -> Path:
        """``<output>/maps/<name>.phrases.json``: the item's phrase table (:func:`phrase_table`)."""
        return self.output_dir / "maps" / f"{item.name}.phrases.json"

    def input_reference(self, item: WorkItem) -> str:
        """The item's input as a POSIX path relative to the output folder (the ``input`` column):
        it stays valid when both folders move together."""
        return Path(os.path.relpath(item.image.absolute(), self.output_dir.absolute())).as_posix()

    def outputs(self, item: WorkItem) -> list[Path]:
        return [self.output_path(item), *(self.map_path(item, kind) for kind in MAP_KINDS), self.phrases_path(item)]


def plan_run(
    items: Iterable[WorkItem],
    output_dir: Path,
    *,
    mode: RunMode = "new",
    output_format: Optional[str] = None,
    protected: Sequence[Path] = (),
) -> RunPlan:
    """Check a run before any model loads, and return its plan.

    ``protected``: input files besides the images (e.g. the prompts file) that no output may
    replace. ``output_format``: None keeps each input's format, ``"png"`` converts. Creates the
    output folder (to check that it is writable) and nothing else.

    Raises:
        RunInputError: naming what is wrong and the fix (see the module docstring).
    """
    if mode not in ("new", "resume", "overwrite"):
        raise ValueError(f"mode must be 'new', 'resume' or 'overwrite', got {mode!r}")
    if output_format not in (None, "png"):
        raise ValueError(f"output_format must be None or 'png', got {output_format!r}")
    plan = RunPlan(list(items), Path(output_dir), mode, output_format)
    _check_names(plan.items)
    _check_output_folder(plan)
    planned = _check_outputs(plan, protected)
    previous = read_run_rows(plan.output_dir)
    if mode == "new":
        _refuse_to_replace(plan, previous, planned)
    try:
        plan.output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=plan.output_dir):
            pass
    except OSError as err:
        raise RunInputError(f"--output {plan.output_dir}: cannot write there ({err.strerror}). Choose a writable folder.") from err
    return plan


def _check_names(items: Sequence[WorkItem]) -> None:
    seen: dict[str, Path] = {}
    for item in items:
        name = printable(item.name)
        parts = PurePosixPath(item.name).parts
        if not item.name or PurePosixPath(item.name).is_absolute() or ".." in parts or name in (RESULTS_NAME, REPORT_NAME, LOCK_NAME, LOG_NAME):
            raise RunInputError(f"work item {name!r} ({item.image}): a name must be a relative path inside the output folder, without '..'.")
        if name in seen:
            raise RunInputError(f"two work items are named {name!r} ({seen[name]} and {item.image}); names must be unique.")
        seen[name] = item.image


def _check_output_folder(plan: RunPlan) -> None:
    output = plan.output_dir.absolute()
    for folder in (output, *output.parents):
        if folder.exists():
            if not folder.is_dir():
                where = "is a file" if folder == output else f"lies under {folder}, which is a file"
                raise RunInputError(f"--output {plan.output_dir} {where}, not a folder. Choose a folder (it is created when missing).")
            break
    target = plan.output_dir.resolve()
    for source in {item.image.parent for item in plan.items}:
        if source.resolve() == target or (source.exists() and plan.output_dir.exists() and os.path.samefile(source, plan.output_dir)):
            raise RunInputError(
                f"--output {plan.output_dir} is the input folder {source}: the refined images would replace the originals. "
                "Choose another output folder."
            )


def _check_outputs(plan: RunPlan, protected: Sequence[Path]) -> list[Path]:
    """Every output path of the run; refuses two items sharing one, or one replacing an input."""
    inputs = {}
    for path in [*(item.image for item in plan.items), *protected]:
        try:
            info = os.stat(path)
            inputs[(info.st_dev, info.st_ino)] = path
        except OSError:
            pass  # a missing input becomes that item's failed row
    owners: dict[Path, str] = {}
    extra = [plan.results_csv, plan.output_dir / REPORT_NAME, plan.output_dir / LOCK_NAME, plan.output_dir / LOG_NAME]
    for item in plan.items:
        for path in plan.outputs(item):
            if path in owners:
                raise RunInputError(
                    f"work items {owners[path]!r} and {printable(item.name)!r} would both write {printable(str(path))}; rename one."
                )
            owners[path] = printable(item.name)
    for path in [*owners, *extra]:
        try:
            info = os.stat(path)
        except OSError:
            continue
        if (info.st_dev, info.st_ino) in inputs:
            raise RunInputError(
                f"--output {plan.output_dir}: writing {printable(str(path))} would replace the input {printable(str(inputs[(info.st_dev, info.st_ino)]))}. "
                "Choose another output folder."
            )
    return list(owners)


def _refuse_to_replace(plan: RunPlan, previous: dict[str, dict[str, str]], planned: Sequence[Path]) -> None:
    if previous:
        raise RunInputError(
            f"--output {plan.output_dir} holds the results of an earlier run ({len(previous)} rows in {RESULTS_NAME}): "
            "add --resume to continue it, --overwrite to refine every image again, or choose another output folder."
        )
    existing = [path for path in planned if path.exists()]
    if existing:
        raise RunInputError(
            f"--output {plan.output_dir}: {len(existing)} file(s) would be replaced (e.g. {printable(str(existing[0]))}); "
            "add --overwrite to replace them, or choose another output folder."
        )


# ---------------------------------------------------------------------- results.csv


def read_results(path: Path) -> dict[str, dict[str, str]]:
    """Rows of a ``results.csv`` written by grefine, keyed by name (missing file: no rows).

    Raises:
        RunInputError: the file is not one of grefine's (other columns, not UTF-8) or is damaged.
    """
    if not path.exists():
        return {}
    fix = "Move it away, or choose another output folder."
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise RunInputError(f"{path}: not a grefine results file ({err}). {fix}") from err
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, [])
        missing = [column for column in _SIGNATURE if column not in header]
        if missing:
            raise RunInputError(f"{path}: not a grefine results file (no column {', '.join(missing)}). {fix}")
        rows = {}
        for row in reader:
            if len(row) != len(header):
                raise RunInputError(f"{path}:{reader.line_num}: damaged ({len(row)} fields, the header has {len(header)}). {fix}")
            record = dict(zip(header, row))
            rows[record["name"]] = record
    except csv.Error as err:
        raise RunInputError(f"{path}:{reader.line_num}: damaged ({err}). {fix}") from err
    return rows


def _part_files(output_dir: Path) -> list[Path]:
    return sorted(output_dir.glob("results.part*.csv")) if output_dir.is_dir() else []


def read_run_rows(output_dir: Path) -> dict[str, dict[str, str]]:
    """``results.csv`` and the part files of a multi-process run (running, or killed), merged."""
    rows = read_results(output_dir / RESULTS_NAME)
    for part in _part_files(output_dir):
        rows.update(read_results(part))
    return rows


def _merge_results(output_dir: Path, metric_names: Sequence[str]) -> None:
    """``results.csv`` := its rows and those of every part file (which are then removed)."""
    parts = _part_files(output_dir)
    write_results(output_dir / RESULTS_NAME, read_run_rows(output_dir).values(), metric_names)
    for part in parts:
        part.unlink()


def write_results(path: Path, rows: Iterable[dict[str, object]], metric_names: Sequence[str]) -> None:
    """Atomically (re)write a results CSV with a stable column order (rows sorted by name)."""
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
    if isinstance(value, float):
        return f"{value:.6g}"
    return printable(value) if isinstance(value, str) else value


# ------------------------------------------------------------------------ the loop


class RunItemError(Exception):
    """One item cannot be refined, for a reason known without the models (e.g. no prompt)."""


@dataclass(frozen=True)
class RunOptions:
    """How each item of a run is refined.

    Args:
        seed: the refiner's seed, the same for every item (None: the refiner's own).
        max_pixels: larger images become failed rows, refused from their header.
        metric_resolution: long side the metrics score at most (None: full size).
        prefetch: how many items are decoded ahead of the refiner, and how many refined ones
            may still be written and scored behind it, each in one worker thread, so that a
            GPU refines without waiting for file I/O and metrics; 0: every phase in turn, in
            the calling thread. ``results.csv`` is the same either way (rows in item order,
            the same errors); only the timing columns differ.
        progress: a tqdm bar.
        report: called with the output folder (by the main process) when the run starts, after
            a row is recorded when ``report_every`` seconds have passed since the last call (or
            20 times the last call's own time, whichever is longer: a large folder's report is
            not rebuilt after every image) and when the run ends; e.g. :func:`grefine.bench.report.run_report`,
            which writes ``report.html``. An exception in it is reported once and the run goes on.
        report_every: see ``report``.
    """

    seed: Optional[int] = 0
    max_pixels: Optional[int] = None
    metric_resolution: Optional[int] = None
    prefetch: int = 2
    progress: bool = True
    report: Optional[Callable[[Path], object]] = None
    report_every: float = 5.0

    def __post_init__(self) -> None:
        if not isinstance(self.prefetch, int) or isinstance(self.prefetch, bool) or self.prefetch < 0:
            raise ValueError(f"RunOptions.prefetch must be an integer >= 0 (0: no worker threads), got {self.prefetch!r}.")
        if not self.report_every >= 0:
            raise ValueError(f"RunOptions.report_every must be >= 0 seconds, got {self.report_every!r}.")


def _score(metrics: Sequence[Metric], image: Image.Image, prompt: str, reference: Image.Image, suffix: str, row: dict, errors: list[str]) -> None:
    """Each metric of ``image`` into ``row`` (``<metric>_<suffix>``), or its reason into ``errors``.
    A full-reference metric compares ``image`` at the reference's size: an output of another size
    (``configs/authors-notebook.yaml`` keeps SDXL's 1024×1024) is resized to it, bicubic."""
    at_reference = image if image.size == reference.size else image.resize(reference.size, Image.BICUBIC)
    for metric in metrics:
        scored = at_reference if getattr(metric, "full_reference", False) else image
        try:
            row[f"{metric.name}_{suffix}"] = float(metric(scored, prompt=prompt, reference=reference))
        except NotScoredError as err:  # a reason, not a failure (e.g. an image below the metric's window)
            errors.append(f"{metric.name}/{suffix}: not scored: {err}")
        except Exception as err:  # one failing metric must not lose the image
            errors.append(f"{metric.name}/{suffix}: {type(err).__name__}: {' '.join(str(err).split())}")


def _same_format(source: Path, target: Path) -> bool:
    formats = Image.registered_extensions()
    return formats.get(source.suffix.lower()) == formats.get(target.suffix.lower())


@dataclass
class _Refined:
    """An item on its way through the phases: its decoded original, then the refiner's result,
    and the seconds each phase took so far."""

    item: WorkItem
    original: Image.Image
    seconds: float
    result: Any = None


def decode_item(item: WorkItem, max_pixels: Optional[int] = None) -> _Refined:
    """Phase 1: the item's original image (raises :class:`RunItemError` for an item without a
    prompt, :class:`~grefine.image_io.ImageLoadError` for an unreadable or too large image)."""
    start = time.perf_counter()
    if item.prompt is None:
        raise RunItemError(item.error or f"{printable(item.name)}: no prompt.")
    return _Refined(item, load_image(item.image, max_pixels), time.perf_counter() - start)


def refine_item(refiner: Refiner, decoded: _Refined, seed: Optional[int] = 0) -> _Refined:
    """Phase 2: the refiner's result for a decoded item (the only phase that uses the models)."""
    start = time.perf_counter()
    decoded.result = refiner(decoded.original, decoded.item.prompt, seed=seed)
    decoded.seconds += time.perf_counter() - start
    return decoded


def finish_item(refined: _Refined, plan: RunPlan, metrics: Sequence[Metric] = (), metric_resolution: Optional[int] = None) -> dict[str, object]:
    """Phase 3: write the refined image and its maps, score before and after, return the row.

    The refined image keeps the input's format, form and metadata (:func:`grefine.run.faithful.save_faithful`;
    what it cannot keep goes into the row's ``note``); when the refiner changed no pixel and the
    format is kept, the input file is copied byte for byte.
    Of the maps (:data:`MAP_KINDS`), those the result has are written.
    Metrics score the original and the refined image downscaled alike to ``metric_resolution``
    (long side; None: full size), so that their cost does not grow with the image.
    ``total_seconds``: the three phases' own time (not the time spent queued between them).
    """
    start = time.perf_counter()
    item, original, result = refined.item, refined.original, refined.result
    image = result.image
    target = plan.output_path(item)
    kept = ""
    if _same_format(item.image, target) and image.size == original.size and np.array_equal(np.asarray(image), np.asarray(original)):
        copy_file_atomic(item.image, target)
    else:
        kept = save_faithful(image, original, item.image, target)
    for kind, (attribute, draw) in _MAPS.items():
        source = getattr(result, attribute, None)
        if source is not None:  # a result without maps (a baseline) writes none
            save_image_atomic(draw(source, original), plan.map_path(item, kind))
    aq = getattr(result, "aq", None)
    if aq is not None and hasattr(aq, "phrases"):
        write_text_atomic(json.dumps(phrase_table(aq), indent=1, ensure_ascii=False, allow_nan=False), plan.phrases_path(item))
    row: dict[str, object] = {
        "name": item.name,
        "output": target.relative_to(plan.output_dir).as_posix(),
        "input": plan.input_reference(item),
        "prompt": item.prompt,
        **result.summary(),
    }
    row["note"] = "; ".join(filter(None, [str(row.get("note") or ""), kept]))
    errors: list[str] = []
    if image.size != original.size and any(getattr(metric, "full_reference", False) for metric in metrics):
        row["note"] = "; ".join(filter(None, [row["note"], f"full-reference metrics compare the {image.width}x{image.height} output resized to the input's {original.width}x{original.height}"]))
    original, image = fit_long_side(original, metric_resolution), fit_long_side(image, metric_resolution)
    _score(metrics, original, item.prompt, original, "before", row, errors)
    _score(metrics, image, item.prompt, original, "after", row, errors)
    row["metric_errors"] = "; ".join(errors)
    row["total_seconds"] = refined.seconds + time.perf_counter() - start
    row["error"] = ""
    return row


def _finite(value: Optional[float]) -> Optional[float]:
    return None if value is None or not math.isfinite(value) else float(value)


def phrase_table(aq: Any) -> dict[str, object]:
    """The phrase table of an AQ-Map result (:class:`~grefine.maps.aq_map.AQMapResult`), as
    written to ``maps/<name>.phrases.json``: the scores a (Eq. 8) and its whole-prompt term, the
    emphasised prompt (Eq. 7, in ``(phrase:1.1)`` notation), and per phrase its text, scored
    content, noun, ancestor (an index into the list), score a_phs and noun score a_pns (Eq. 5;
    null when not scored), defect (Eq. 6: ``none``, ``noun_unmatched``, ``adjective_unmatched``)
    and whether it is emphasised in stage 1's prompt. A score that is not a number (a dropped
    map) is null."""
    emphasized = set(aq.emphasized_prompt.phrases)
    return {
        "score": _finite(aq.score),
        "prompt_score": _finite(aq.prompt_score),
        "emphasized_prompt": str(aq.emphasized_prompt),
        "phrases": [
            {
                "text": phrase.text,
                "content": phrase.content,
                "noun": phrase.noun,
                "ancestor": phrase.ancestor,
                "score": _finite(phrase.score),
                "noun_score": _finite(phrase.noun_score),
                "defect": phrase.defect,
                "emphasized": phrase.defect != "none" and phrase.content in emphasized,
            }
            for phrase in aq.phrases
        ],
    }


def _is_done(row: Optional[dict[str, str]], output: Path) -> bool:
    return bool(row) and not row.get("error") and output.is_file()


def _failure(err: BaseException) -> str:
    return printable(str(err) if isinstance(err, RunItemError) else f"{type(err).__name__}: {err}")


@dataclass
class _ReportHook:
    """:class:`RunOptions` ``report`` (None on the other processes): called when forced, or when
    ``every`` seconds (at least 20 times its last call's own time) have passed since the last
    call; an exception in it is reported once and never stops the run."""

    report: Optional[Callable[[Path], object]]
    every: float
    _last: float = -math.inf
    _cost: float = 0.0
    _failed: bool = False

    def __call__(self, folder: Path, force: bool = False) -> None:
        now = time.monotonic()
        if self.report is None or not (force or now - self._last >= max(self.every, 20 * self._cost)):
            return
        try:
            self.report(folder)
        except Exception as err:  # the report must never stop a run
            if not self._failed:
                tqdm.write(f"[grefine] report not updated: {type(err).__name__}: {printable(str(err))}")
            self._failed = True
        self._last = time.monotonic()
        self._cost = self._last - now


class _InTurn:
    """The executor of ``prefetch=0``: each call runs at once, in the caller's thread."""

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as err:  # kept for .result(), as a worker thread would
            future.set_exception(err)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        return None


@dataclass
class _Recorder:
    """Phase 3 and the bookkeeping after it, in item order (one thread): each item's row into
    ``rows`` and the CSV, and its name into the summary."""

    plan: RunPlan
    models: Models
    options: RunOptions
    csv_path: Path
    rows: dict[str, dict]
    metric_names: Sequence[str]
    summary: RunSummary
    process: Optional[int]
    report: _ReportHook

    def finished(self, refined: _Refined) -> None:
        try:
            row = finish_item(refined, self.plan, self.models.metrics, self.options.metric_resolution)
        except Exception as err:  # reported per item; the run goes on
            return self.failed(refined.item, err)
        unavailable = "; ".join(f"{name}: {reason}" for name, reason in self.models.metric_failures.items())
        row["metric_errors"] = "; ".join(filter(None, [unavailable, str(row["metric_errors"])]))
        self.summary.done.append(printable(refined.item.name))
        self._record(row)

    def failed(self, item: WorkItem, err: BaseException) -> None:
        key, message = printable(item.name), _failure(err)
        self.summary.failed[key] = message
        tqdm.write(f"[grefine] {key}: {message}")
        self._record({"name": item.name, "input": self.plan.input_reference(item), "prompt": item.prompt or "", "error": message})

    def _record(self, row: dict) -> None:
        if self.process is not None:
            row["process"] = self.process
        self.rows[printable(str(row["name"]))] = row
        write_results(self.csv_path, self.rows.values(), self.metric_names)
        self.report(self.plan.output_dir)


def _refine_all(items: Sequence[WorkItem], models: Models, recorder: _Recorder, options: RunOptions) -> None:
    """Decode (ahead), refine, finish (behind) every item; see :class:`RunOptions` ``prefetch``.
    At most ``prefetch`` decoded and ``prefetch`` refined items wait; on an interruption the
    refined items still waiting are written before it propagates."""
    ahead = options.prefetch
    threads = ahead > 0
    decoder = ThreadPoolExecutor(1, thread_name_prefix="grefine-decode") if threads else _InTurn()
    finisher = ThreadPoolExecutor(1, thread_name_prefix="grefine-finish") if threads else _InTurn()
    decodes: deque[Future] = deque()
    behind: deque[Future] = deque()
    upcoming = iter(items)
    bar = tqdm(total=len(items), desc="grefine", unit="img", disable=not options.progress)
    try:
        for item in items:
            for queued in itertools.islice(upcoming, ahead + 1 - len(decodes)):
                decodes.append(decoder.submit(decode_item, queued, options.max_pixels))
            bar.set_postfix_str(printable(item.name))
            try:
                refined = refine_item(models.refiner, decodes.popleft().result(), options.seed)
            except Exception as err:  # reported per item; the run goes on
                behind.append(finisher.submit(recorder.failed, item, err))
            else:
                behind.append(finisher.submit(recorder.finished, refined))
            while len(behind) > ahead:
                behind.popleft().result()
            bar.update()
        while behind:
            behind.popleft().result()
    finally:
        decoder.shutdown(wait=True, cancel_futures=True)
        finisher.shutdown(wait=True)
        bar.close()


def execute(
    plan: RunPlan,
    models: Models,
    *,
    metric_names: Sequence[str] = (),
    options: RunOptions = RunOptions(),
    processes: Processes = Processes(),
    report: Optional[_ReportHook] = None,
) -> RunSummary:
    """Refine the plan's items (this process's share of them) with the loaded ``models``; the
    caller holds the :class:`OutputLock` and calls ``report`` (``options.report``, throttled)
    once more when the run is over. ``metric_names``: every requested metric (the columns)."""
    final_csv = plan.results_csv
    if processes.index == 0:  # every row so far into results.csv, before any is rewritten
        _merge_results(plan.output_dir, metric_names)
    processes.barrier()
    previous = read_results(final_csv)
    single = processes.count == 1
    summary = RunSummary(results_csv=final_csv)
    mine = plan.items[processes.index :: processes.count]
    if plan.mode == "resume":
        done = {id(item) for item in mine if _is_done(previous.get(printable(item.name)), plan.output_path(item))}
        summary.skipped = [printable(item.name) for item in mine if id(item) in done]
        mine = [item for item in mine if id(item) not in done]
    recorder = _Recorder(
        plan,
        models,
        options,
        csv_path=final_csv if single else plan.output_dir / f"results.part{processes.index}.csv",
        rows=dict(previous) if single else {},
        metric_names=metric_names,
        summary=summary,
        process=None if single else processes.index,
        report=report or _ReportHook(options.report if processes.index == 0 else None, options.report_every),
    )
    recorder.report(plan.output_dir, force=True)
    try:
        _refine_all(mine, models, recorder, options)
    except KeyboardInterrupt:  # what was refined is written: say so, once
        raise RunInterrupted(summary, plan.output_dir) from None
    if single:
        return summary
    processes.barrier()
    if processes.index == 0:
        _merge_results(plan.output_dir, metric_names)
    return RunSummary(results_csv=final_csv).merged(processes.gather(summary))


def run_items(
    items: Iterable[WorkItem],
    output_dir: Path,
    load: Callable[[], Models],
    *,
    mode: RunMode = "new",
    output_format: Optional[str] = None,
    protected: Sequence[Path] = (),
    metric_names: Sequence[str] = (),
    options: RunOptions = RunOptions(),
    processes: Processes = Processes(),
) -> RunSummary:
    """Refine work items into ``output_dir``: the runner's public entry point.

    In order: :func:`plan_run` checks the run (every process); the main process takes the
    :class:`OutputLock` (a refusal reaches every process) and removes the temporary files a killed
    run left; a resumed run with every item done returns at once (nothing loads); ``load()``
    builds the models (only now: a refused run loads nothing); :func:`execute` refines this
    process's share (decoding ahead and writing behind the refiner, :class:`RunOptions`) and the
    main process merges ``results.csv`` — the libraries' messages meanwhile going to
    ``grefine.log`` (:func:`~grefine.run.library_log.library_messages`, named in ``summary.log``);
    the lock is released, also on errors, and the report (``options.report``) is written a last
    time. Exit status of a command built on it: ``summary.exit_code`` (0 or 1), 2 for a
    :class:`~grefine.errors.RunInputError`; Ctrl-C raises :class:`~grefine.errors.RunInterrupted`.

    Args:
        items: the work items (unique names), from :func:`grefine.run.sources.scan_folder` or any source.
        load: builds the models, called once the run is checked and locked.
        mode: ``"new"`` (refuses a folder with results or files it would replace), ``"resume"``
            (skips items with a successful row and an output), ``"overwrite"`` (redoes every item).
        output_format: None keeps each input's format; ``"png"`` writes ``<name>.png``.
        protected: other input files that no output may replace (e.g. the prompts file).
        metric_names: every requested metric (the ``results.csv`` columns).
        options: seed, size bounds, prefetch and progress bar (:class:`RunOptions`).
        processes: this process among the run's processes (default: one).
    """
    created = not Path(output_dir).exists()
    plan = plan_run(items, output_dir, mode=mode, output_format=output_format, protected=protected)
    lock = OutputLock(plan.output_dir)
    refusal = None
    if processes.index == 0:
        try:
            lock.acquire()
        except RunInputError as err:
            refusal = str(err)
            if created:  # a refused run leaves nothing behind (e.g. a disk too full for the lock)
                with contextlib.suppress(OSError):
                    plan.output_dir.rmdir()
    refusal = processes.share(refusal)
    if refusal:
        raise RunInputError(refusal)
    report = _ReportHook(options.report if processes.index == 0 else None, options.report_every)
    models = None
    try:
        if processes.index == 0:
            remove_temporary_files(plan.output_dir)
        if plan.mode == "resume" and processes.share(_left_to_do(plan) if processes.index == 0 else None) == 0:
            return RunSummary(skipped=[printable(item.name) for item in plan.items], results_csv=plan.results_csv)
        with library_messages(plan.output_dir / LOG_NAME) as messages:
            models = load()
            summary = execute(plan, models, metric_names=metric_names, options=options, processes=processes, report=report)
        summary.log = messages.path
        return summary
    finally:
        lock.release()
        if models is not None:  # a run refused by load() (missing weights) writes nothing
            report(plan.output_dir, force=True)


def _left_to_do(plan: RunPlan) -> int:
    """How many items of a resumed run lack a successful row or their output."""
    previous = read_run_rows(plan.output_dir)
    return sum(not _is_done(previous.get(printable(item.name)), plan.output_path(item)) for item in plan.items)


def run_folder(
    refiner: Refiner,
    input_dir: Path,
    output_dir: Path,
    *,
    prompts_file: Optional[Path] = None,
    prompt_encoding: Optional[str] = None,
    metrics: Sequence[Metric] = (),
    metric_names: Sequence[str] = (),
    metric_failures: Optional[dict[str, str]] = None,
    mode: RunMode = "new",
    output_format: Optional[str] = None,
    processes: Processes = Processes(),
    **options: Any,
) -> RunSummary:
    """:func:`grefine.run.sources.scan_folder` then :func:`run_items` with an already built ``refiner``
    (``options``: the fields of :class:`RunOptions`)."""
    scan = scan_folder(Path(input_dir), prompts_file, prompt_encoding)
    protected = [prompts_file] if prompts_file is not None else []
    models = Models(refiner, metrics, dict(metric_failures or {}))
    return run_items(
        scan.items,
        Path(output_dir),
        lambda: models,
        mode=mode,
        output_format=output_format,
        protected=protected,
        metric_names=metric_names,
        options=RunOptions(**options),
        processes=processes,
    )
