"""The refinement benchmark (paper §4.3, Tables 2-5): one method over one database.

:func:`run_benchmark` refines the records of a :class:`~grefine.data.databases.Database` with a
method of :mod:`grefine.bench.methods` through the runner (:func:`grefine.run.runner.run_items`), so
every guarantee of the runner holds — everything checked before any model loads, one run per
folder, atomic writes, ``resume`` / ``overwrite``, one failed row per bad image, processes
splitting the records — into ``<output>/<database>/<method>/``: the refined images, the maps a
method has, and ``results.csv`` (one row per image, every metric before and after). Then
:func:`~grefine.bench.tables.write_summary` writes ``summary.csv`` and ``summary.md`` there; the
paper's tables gather every such folder (:func:`~grefine.bench.tables.make_tables`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional

from grefine.errors import RunInputError, printable
from grefine.data.databases import Database
from grefine.bench.methods import MethodConfig, build_refiner
from grefine.eval.metrics import PAPER_METRICS, create_metrics
from grefine.bench.tables import MethodSummary, write_summary
from grefine.run.runner import Models, Processes, RunMode, RunOptions, RunSummary, read_results, run_items
from grefine.run.sources import WorkItem


@dataclass
class BenchmarkRun:
    """What :func:`run_benchmark` did: the runner's summary, the method's folder, and (on the
    main process) the summary it wrote and the rows of ``results.csv`` that belong to images
    outside this run (kept by the runner, e.g. of an earlier, larger sample)."""

    run: RunSummary
    folder: Path
    summary: Optional[MethodSummary] = None
    other_rows: int = 0


def benchmark_items(database: Database) -> list[WorkItem]:
    """One :class:`~grefine.run.sources.WorkItem` per record, in the database's order.

    The item's name — the key of ``results.csv`` and the refined image's path under the method's
    folder — is the record's name as a relative POSIX path (``\\`` read as ``/``; empty, ``.``
    and ``..`` parts dropped). A name already taken (compared without regard to case, as some
    file systems do: the same file name in two splits, or two names that read the same) is put
    under its split's folder (``val/x.png``), and numbered if still taken (``val/x~2.png``).
    A record with an ``error`` becomes an item without a prompt: the runner records it as a
    failed row with that error, without running the models.
    """
    taken: set[str] = set()
    items = []
    for record in database:
        name = _unique_name(record.name, record.split, taken)
        taken.add(name.casefold())
        image = record.image_path or database.root / record.name
        items.append(WorkItem(name, image, None, record.error) if record.error else WorkItem(name, image, record.prompt))
    return items


def _unique_name(name: str, split: str, taken: set[str]) -> str:
    clean = "/".join(part for part in PurePosixPath(name.replace("\\", "/")).parts if part not in ("/", ".", "..")) or "unnamed"
    if clean.casefold() not in taken:
        return clean
    path = PurePosixPath(split or "_", clean)
    candidate, number = str(path), 2
    while candidate.casefold() in taken:
        candidate, number = str(path.with_name(f"{path.stem}~{number}{path.suffix}")), number + 1
    return candidate


def benchmark_folder(output: Path, database: str, method: str, root: Path) -> Path:
    """``<output>/<database>/<method>``, where a method's run over the database at ``root`` goes,
    once checked (nothing is created).

    Raises:
        RunInputError: a database or method name that is not a folder name; that folder inside
            the database root (the next run would index the refined images as the database's),
            or the root inside it.
    """
    for what, name in (("database", database), ("method", method)):
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise RunInputError(f"{what} name {name!r}: must be a folder name (no '/', not '.' or '..'); it names <output>/<database>/<method>/.")
    folder = Path(output) / database / method
    out, data = folder.resolve(), Path(root).resolve()
    if out == data or data in out.parents:
        raise RunInputError(
            f"--output: {folder} lies inside the database root {root}; the refined images would be read as the database's "
            "by the next run. Choose an output folder outside the root."
        )
    if out in data.parents:
        raise RunInputError(f"--root {root} lies inside the output folder {folder}. Choose an output folder outside the root.")
    return folder


def _loader(method: MethodConfig, metric_names: Sequence[str], report: Callable[[str], None]) -> Callable[[], Models]:
    """The ``load`` of :func:`~grefine.run.runner.run_items`: the method's refiner (after its weights
    pre-flight) and the metrics, on the method's device; each metric that cannot be created is
    reported and recorded in the rows' ``metric_errors``."""

    def load() -> Models:
        refiner = build_refiner(method)
        metrics, failures = create_metrics(metric_names, device=method.device)
        for name, reason in failures.items():
            report(f"metric {name} unavailable ({' '.join(reason.split())}); recorded in results.csv")
        return Models(refiner, metrics, failures)

    return load


def run_benchmark(
    database: Database,
    method: MethodConfig,
    output: Path,
    *,
    name: Optional[str] = None,
    metric_names: Sequence[str] = PAPER_METRICS,
    mode: RunMode = "new",
    output_format: Optional[str] = None,
    options: RunOptions = RunOptions(seed=None, metric_resolution=1024),
    processes: Processes = Processes(),
    report: Callable[[str], None] = lambda line: None,
) -> BenchmarkRun:
    """Refine ``database`` with ``method`` into ``<output>/<database>/<name>/`` (``name``: the
    method's by default; give another to keep variants apart, e.g. an ablation config) and
    summarise it (see the module docstring). The refinement seed is the method's own (its YAML's
    ``seed``; a ``g-refine`` method's: its config's), the same for every image.

    Args:
        metric_names: the metrics scored before and after (default: the paper's 13); those that
            cannot be created are recorded per row in ``metric_errors``.
        mode, output_format, options, processes: those of :func:`~grefine.run.runner.run_items`;
            ``options.seed`` is replaced by the method's.
        report: receives a line for each metric that cannot be created (main process).

    Raises:
        RunInputError: before any model loads — a bad folder name, an output folder inside the
            database root, a database without any usable image, or any refusal of the runner.
        WeightsUnavailableError: the method's weights are missing (the one pre-flight message).
    """
    folder = benchmark_folder(Path(output), database.name, name or method.name, database.root)
    items = benchmark_items(database)
    if not items:
        skipped = "; ".join(f"{len(names)} {reason}" for reason, names in database.skipped.items())
        raise RunInputError(f"database {database.name} under {database.root}: no image to refine{' (' + skipped + ')' if skipped else ''}.")
    main = processes.index == 0
    run = run_items(
        items,
        folder,
        _loader(method, metric_names, report if main else lambda line: None),
        mode=mode,
        output_format=output_format,
        metric_names=metric_names,
        options=dataclasses.replace(options, seed=None),
        processes=processes,
    )
    if not main:
        return BenchmarkRun(run, folder)
    names = {printable(item.name) for item in items}
    other_rows = sum(key not in names for key in read_results(run.results_csv))
    return BenchmarkRun(run, folder, write_summary(folder), other_rows)
