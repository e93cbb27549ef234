"""Score evaluation: how well quality scorers agree with human MOS (paper §4.4, Tables 6-7), and
what each is worth as an automatic QA gate (:mod:`grefine.eval.autoqa`).

:func:`evaluate_scores` takes records (any objects with ``name``, ``image_path``, ``prompt`` and a
``mos`` mapping of MOS columns, e.g. AGIQA-3K's ``mos_quality`` / ``mos_align``), scorer names
(:mod:`grefine.eval.scorers`) and an output folder, and writes there:

* ``scores.csv`` — the per-image cache, one row per (image, scorer): ``name, scorer, value,
  error``. Every image is scored once per scorer; with ``resume=True`` what the cache holds is
  not computed again (adding a scorer scores only that scorer), failed entries are retried. It
  is rewritten atomically every ``save_every_s`` seconds and when the run ends or is
  interrupted. It is keyed by image and scorer name only: after changing a scorer's weights or
  config, evaluate into a fresh folder.
* ``correlations.csv`` / ``correlations.md`` — one row per scorer and MOS column: n, SRCC,
  PLCC, KRCC, RMSE (and raw PLCC) with bootstrap intervals (:func:`grefine.correlations`); a
  row on fewer than :data:`~grefine.eval.correlation.SMALL_SAMPLE` images, or whose logistic fit
  is a step, says so in its ``note``.
  Perceptual scorers are compared with ``perceptual_mos``, alignment scorers with
  ``alignment_mos`` and combined ones (``pq_aq``) with both. A database with one overall MOS
  (AIGIQA-20K) passes that column as both: the paper's Tables 6 and 7 compare the perceptual
  and the alignment indicators alike with it. Scores of lower-is-better scorers (PIQE, BRISQUE)
  are negated first, so that a good scorer has positive correlations in every row.
* ``plots/scatter_<scorer>_<mos>.png`` — each score against MOS with its fitted logistic and
  the number of images behind it.
* with ``autoqa=True``: ``autoqa.csv`` (every scorer × pass threshold: yield, precision, recall,
  cost, savings, images passed and failed; the best row with the savings' bootstrap interval),
  ``autoqa.md`` (the best threshold per scorer, how many images pass and fail there, the savings
  with their interval, and a warning when fewer than ``SMALL_SAMPLE`` pass or fail) and
  ``plots/savings_<scorer>.png``. Every scorer, ``pq_aq`` included, is judged by one acceptance:
  an image is accepted by people when its MOS is above ``accept_mos`` on both MOS columns
  (default: each column's median over the records; see :mod:`grefine.eval.autoqa`).

One unreadable image or one failing scorer becomes an error entry in the cache and the run goes
on; a scorer that cannot be created here (missing weights) gets a row saying why.
"""
from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Protocol, Sequence

import numpy as np
from tqdm.auto import tqdm

from grefine.eval.autoqa import GateSweep, UnitCosts, gate_sweep, people_accept, savings_interval
from grefine.eval.correlation import CRITERIA, SMALL_SAMPLE, Correlations, correlations
from grefine.eval.plots import plot_correlation, plot_gate_sweep
from grefine.eval.scorers import Scorer, ScorerSpec, create_scorers, scorer_spec
from grefine.image_io import ImageLoadError, PathLike, load_image, write_text_atomic

CACHE_COLUMNS = ("name", "scorer", "value", "error")
ScorerFactory = Callable[[Sequence[str]], tuple[list[Scorer], dict[str, str]]]
"""Names → (scorers, {name: why unavailable}), e.g. :func:`grefine.eval.scorers.create_scorers`
with a config bound; called only when some image needs scoring."""


class MOSRecord(Protocol):
    """One rated image of a database."""

    name: str
    image_path: PathLike
    prompt: str
    mos: Mapping[str, float]


@dataclass
class ScoreCache:
    """The per-image score cache ``scores.csv``: a value or an error per (image, scorer)."""

    path: Path
    values: dict[tuple[str, str], float] = field(default_factory=dict)
    errors: dict[tuple[str, str], str] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> "ScoreCache":
        """The cache at ``path`` (empty when there is none)."""
        cache = cls(path)
        if not path.is_file():
            return cache
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            if tuple(reader.fieldnames or ()) != CACHE_COLUMNS:
                raise ValueError(
                    f"{path}: not a score cache (columns {reader.fieldnames}, expected {list(CACHE_COLUMNS)}); "
                    "move it away or evaluate into another folder."
                )
            for row in reader:
                key = (row["name"], row["scorer"])
                if row["error"]:
                    cache.errors[key] = row["error"]
                else:
                    cache.values[key] = float(row["value"])
        return cache

    def put(self, name: str, scorer: str, value: float) -> None:
        self.values[(name, scorer)] = value
        self.errors.pop((name, scorer), None)

    def put_error(self, name: str, scorer: str, error: str) -> None:
        self.errors[(name, scorer)] = error

    def scores(self, scorer: str) -> dict[str, float]:
        """Image name → value of one scorer."""
        return {name: value for (name, key), value in self.values.items() if key == scorer}

    def write(self) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CACHE_COLUMNS)
        for name, scorer in sorted(set(self.values) | set(self.errors)):
            value = self.values.get((name, scorer))
            writer.writerow([name, scorer, "" if value is None else repr(value), self.errors.get((name, scorer), "")])
        write_text_atomic(buffer.getvalue(), self.path)


@dataclass(frozen=True)
class CorrelationRow:
    """One row of ``correlations.csv``: ``scorer`` against MOS column ``mos``; ``failed`` images
    have an error instead of a score; ``note`` says why values are missing or how they were read."""

    scorer: str
    kind: str
    mos: str
    result: Correlations
    failed: int = 0
    note: str = ""


@dataclass
class ScoreEvaluation:
    """What :func:`evaluate_scores` did: ``scored`` / ``failed`` count the (image, scorer) entries
    computed by this call (0 / 0 when the cache held everything), ``unavailable`` the scorers
    that could not be created, ``gates`` the AutoQA sweeps (with ``autoqa=True``)."""

    output: Path
    scored: int
    failed: int
    unavailable: dict[str, str]
    correlations: list[CorrelationRow]
    gates: dict[str, GateSweep] = field(default_factory=dict)


def evaluate_scores(
    records: Iterable[MOSRecord],
    scorer_names: Sequence[str],
    output: PathLike,
    *,
    perceptual_mos: str = "mos_quality",
    alignment_mos: str = "mos_align",
    build_scorers: ScorerFactory = create_scorers,
    resume: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
    autoqa: bool = False,
    accept_mos: Optional[float] = None,
    costs: UnitCosts = UnitCosts(),
    save_every_s: float = 30.0,
    progress: bool = True,
) -> ScoreEvaluation:
    """Score ``records`` with ``scorer_names`` and write the tables and plots of the module
    docstring into ``output``. Records, scorer names and MOS columns are checked before any
    model is built (``build_scorers`` runs only when an image needs scoring).

    Raises:
        KeyError: an unknown scorer name.
        ValueError: no records, repeated names, a record without one of the MOS columns needed.
    """
    records = list(records)
    specs = [scorer_spec(name) for name in dict.fromkeys(scorer_names)]
    acceptance = _acceptance_columns(perceptual_mos, alignment_mos)
    _check_records(records, acceptance if autoqa else _mos_columns(specs, perceptual_mos, alignment_mos))
    output = Path(output)
    cache = ScoreCache.read(output / "scores.csv") if resume else ScoreCache(output / "scores.csv")
    scored, failed, unavailable = _score_records(records, specs, cache, build_scorers, progress, save_every_s)
    rows = _correlation_rows(records, specs, cache, unavailable, perceptual_mos, alignment_mos, n_boot, seed)
    _write_correlations(rows, output, n_boot, seed)
    for row in rows:
        if row.result.n:
            _plot_row(records, row, cache, output)
    gates = {}
    if autoqa:
        available = [spec for spec in specs if spec.name not in unavailable]
        gates = _gate_report(records, available, cache, acceptance, accept_mos, costs, output, n_boot, seed)
    return ScoreEvaluation(output, scored, failed, unavailable, rows, gates)


# ---------------------------------------------------------------------------- checks


def _kind_columns(kind: str, perceptual_mos: str, alignment_mos: str) -> list[str]:
    columns = {"perceptual": [perceptual_mos], "alignment": [alignment_mos], "combined": [perceptual_mos, alignment_mos]}
    return list(dict.fromkeys(columns[kind]))


def _mos_columns(specs: Sequence[ScorerSpec], perceptual_mos: str, alignment_mos: str) -> list[str]:
    return list(dict.fromkeys(c for spec in specs for c in _kind_columns(spec.kind, perceptual_mos, alignment_mos)))


def _acceptance_columns(perceptual_mos: str, alignment_mos: str) -> list[str]:
    return list(dict.fromkeys((perceptual_mos, alignment_mos)))


def _check_records(records: Sequence[MOSRecord], columns: Sequence[str]) -> None:
    if not records:
        raise ValueError("no records to evaluate: check the database root and split.")
    names = [record.name for record in records]
    if len(set(names)) != len(names):
        repeated = sorted({name for name in names if names.count(name) > 1})[:5]
        raise ValueError(f"record names must be unique; repeated: {repeated}.")
    for record in records:
        missing = [column for column in columns if column not in record.mos]
        if missing:
            raise ValueError(
                f"record {record.name!r} has no MOS column {missing} (it has {sorted(record.mos)}); "
                "name the database's columns with perceptual_mos= / alignment_mos=."
            )
        for column in columns:
            if isinstance(record.mos[column], bool) or not isinstance(record.mos[column], (int, float)):
                raise ValueError(f"record {record.name!r}: MOS {column} = {record.mos[column]!r} is not a number.")


# --------------------------------------------------------------------------- scoring


class _LazyScorers:
    """Scorers built on first need. The first build covers every name still to be scored on
    images that have not failed before (so one build serves the whole run); a name needed later
    (an image that failed before now loads) is built then."""

    def __init__(self, build_scorers: ScorerFactory, first_batch: Sequence[str]) -> None:
        self.build_scorers = build_scorers
        self.first_batch = list(first_batch)
        self.by_name: dict[str, Scorer] = {}
        self.unavailable: dict[str, str] = {}
        self.built = False

    def for_names(self, names: Sequence[str]) -> list[tuple[Scorer, list[str]]]:
        """(scorer, the names it gives) for the available ones of ``names``, each scorer once."""
        missing = [n for n in names if n not in self.by_name and n not in self.unavailable]
        if missing:
            batch = missing if self.built else list(dict.fromkeys([*self.first_batch, *missing]))
            scorers, failures = self.build_scorers(batch)
            self.built = True
            self.unavailable.update(failures)
            for scorer in scorers:
                for spec in scorer.specs:
                    self.by_name[spec.name] = scorer
            for name in batch:
                if name not in self.by_name:
                    self.unavailable.setdefault(name, "the scorer factory built nothing under this name")
        groups: dict[int, tuple[Scorer, list[str]]] = {}
        for name in names:
            if name in self.by_name:
                scorer = self.by_name[name]
                groups.setdefault(id(scorer), (scorer, []))[1].append(name)
        return list(groups.values())


def _score_records(
    records: Sequence[MOSRecord],
    specs: Sequence[ScorerSpec],
    cache: ScoreCache,
    build_scorers: ScorerFactory,
    progress: bool,
    save_every_s: float,
) -> tuple[int, int, dict[str, str]]:
    """Fill ``cache`` for every (record, scorer) without a value (errors are retried); returns
    (scored, failed, unavailable)."""
    names = [spec.name for spec in specs]
    pending = {r.name: [n for n in names if (r.name, n) not in cache.values] for r in records}
    todo = [r for r in records if pending[r.name]]
    failed_before = {name for (name, _) in cache.errors}
    scorers = _LazyScorers(build_scorers, [n for n in names if any(n in pending[r.name] for r in todo if r.name not in failed_before)])
    scored = failed = 0
    last_save = time.monotonic()
    try:
        for record in tqdm(todo, desc="scoring", unit="img", disable=not progress):
            try:
                image = load_image(record.image_path)
            except ImageLoadError as err:
                for name in pending[record.name]:
                    cache.put_error(record.name, name, str(err))
                failed += len(pending[record.name])
                tqdm.write(f"[grefine] {record.name}: {err}")
                continue
            for scorer, wanted in scorers.for_names(pending[record.name]):
                try:
                    values = scorer(image, record.prompt)
                    bad = [name for name in wanted if not math.isfinite(values[name])]
                    if bad:
                        raise ValueError(f"non-finite score from {bad}")
                except Exception as err:  # one failing scorer must not stop the others
                    message = f"{type(err).__name__}: {err}"
                    for name in wanted:
                        cache.put_error(record.name, name, message)
                    failed += len(wanted)
                    tqdm.write(f"[grefine] {record.name} ({', '.join(wanted)}): {message}")
                    continue
                for name in wanted:
                    cache.put(record.name, name, float(values[name]))
                scored += len(wanted)
            if time.monotonic() - last_save >= save_every_s:
                cache.write()
                last_save = time.monotonic()
    finally:
        cache.write()
    return scored, failed, scorers.unavailable


# ----------------------------------------------------------------------- correlation


def _paired(
    records: Sequence[MOSRecord], scores: Mapping[str, float], columns: Sequence[str]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Names, scores and MOS (n, len(columns)) of the records with a score and finite MOS."""
    names, values, mos = [], [], []
    for record in records:
        row = [float(record.mos[c]) for c in columns]
        if record.name in scores and all(math.isfinite(v) for v in row):
            names.append(record.name)
            values.append(scores[record.name])
            mos.append(row)
    return names, np.asarray(values, dtype=np.float64), np.asarray(mos, dtype=np.float64).reshape(-1, len(columns))


def _oriented(spec: ScorerSpec, values: np.ndarray) -> np.ndarray:
    return -values if spec.lower_better else values


def _correlation_rows(
    records: Sequence[MOSRecord],
    specs: Sequence[ScorerSpec],
    cache: ScoreCache,
    unavailable: Mapping[str, str],
    perceptual_mos: str,
    alignment_mos: str,
    n_boot: int,
    seed: int,
) -> list[CorrelationRow]:
    names = {record.name for record in records}
    rows = []
    for spec in specs:
        scores = cache.scores(spec.name)
        failed = sum(1 for (name, scorer) in cache.errors if scorer == spec.name and name in names)
        for column in _kind_columns(spec.kind, perceptual_mos, alignment_mos):
            _, values, mos = _paired(records, scores, [column])
            result = correlations(_oriented(spec, values), mos[:, 0], n_boot=n_boot, seed=seed)
            notes = [f"unavailable: {unavailable[spec.name]}" if spec.name in unavailable else result.reason]
            if 0 < result.n < SMALL_SAMPLE:
                notes.append(f"small sample (n = {result.n} < {SMALL_SAMPLE}): wide intervals")
            notes += [result.note] + (["lower is better: negated"] if spec.lower_better else [])
            rows.append(CorrelationRow(spec.name, spec.kind, column, result, failed, "; ".join(filter(None, notes))))
    return rows


def _write_correlations(rows: Sequence[CorrelationRow], output: Path, n_boot: int, seed: int) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["scorer", "kind", "mos", "n", "failed"] + [f"{c}{s}" for c in CRITERIA for s in ("", "_low", "_high")] + ["note"])
    for row in rows:
        result = row.result
        cells = []
        for criterion in CRITERIA:
            cells += [getattr(result, criterion), *result.intervals[criterion]]
        writer.writerow([row.scorer, row.kind, row.mos, result.n, row.failed] + [f"{v:.6g}" for v in cells] + [row.note])
    write_text_atomic(buffer.getvalue(), output / "correlations.csv")

    confidence = rows[0].result.confidence if rows else 0.95
    lines = [
        "# Correlation of quality scores with human MOS",
        "",
        f"PLCC and RMSE after the VQEG 4-parameter logistic fit; [{confidence:.0%} bootstrap interval, "
        f"{n_boot} resamples, seed {seed}]. `n`: images with a score and a MOS behind the row (fewer than "
        f"{SMALL_SAMPLE}: marked in the note); `failed`: images whose score is an error (see scores.csv).",
        "",
        "| scorer | kind | MOS | n | SRCC | PLCC | KRCC | RMSE | failed | note |",
        "| --- | --- | --- | ---: | --- | --- | --- | --- | ---: | --- |",
    ]
    for row in rows:
        r = row.result
        cells = [_with_interval(getattr(r, c), r.intervals[c]) for c in ("srcc", "plcc", "krcc", "rmse")]
        lines.append(f"| {_cell(row.scorer)} | {row.kind} | {_cell(row.mos)} | {r.n} | {' | '.join(cells)} | {row.failed} | {_cell(row.note)} |")
    write_text_atomic("\n".join(lines) + "\n", output / "correlations.md")


def _cell(text: str) -> str:
    """Free text as one Markdown table cell: whitespace (newlines) collapsed, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _with_interval(value: float, interval: tuple[float, float]) -> str:
    if not math.isfinite(value):
        return "—"
    low, high = interval
    return f"{value:.4f} [{low:.4f}, {high:.4f}]" if math.isfinite(low) else f"{value:.4f}"


def _plot_row(records: Sequence[MOSRecord], row: CorrelationRow, cache: ScoreCache, output: Path) -> None:
    spec = scorer_spec(row.scorer)
    _, values, mos = _paired(records, cache.scores(row.scorer), [row.mos])
    label = f"−{row.scorer} (lower is better)" if spec.lower_better else row.scorer
    plot_correlation(
        _oriented(spec, values), mos[:, 0], row.result, output / "plots" / f"scatter_{row.scorer}_{row.mos}.png",
        xlabel=label, ylabel=row.mos, title=f"{row.scorer} vs {row.mos}",
    )


# ------------------------------------------------------------------------------ AutoQA


def _gate_report(
    records: Sequence[MOSRecord],
    specs: Sequence[ScorerSpec],
    cache: ScoreCache,
    columns: Sequence[str],
    accept_mos: Optional[float],
    costs: UnitCosts,
    output: Path,
    n_boot: int,
    seed: int,
) -> dict[str, GateSweep]:
    """Sweep every scorer as a gate against one acceptance (levels fixed over all records); the
    savings at each best threshold get a bootstrap interval over the images."""
    all_mos = np.asarray([[float(r.mos[c]) for c in columns] for r in records], dtype=np.float64)
    finite = np.all(np.isfinite(all_mos), axis=1)
    _, levels = people_accept(all_mos[finite], accept_mos)
    gates: dict[str, GateSweep] = {}
    intervals: dict[str, tuple[float, float]] = {}
    problems: dict[str, str] = {}
    for spec in specs:
        _, values, mos = _paired(records, cache.scores(spec.name), columns)
        try:
            gates[spec.name] = gate = gate_sweep(values, mos, accept_mos=levels, costs=costs, lower_better=spec.lower_better)
        except ValueError as err:
            problems[spec.name] = str(err)
            continue
        if gate.best is not None:
            intervals[spec.name] = savings_interval(
                values, mos, gate.best.threshold, accept_mos=levels, costs=costs, lower_better=spec.lower_better, n_boot=n_boot, seed=seed
            )
        plot_gate_sweep(gate, output / "plots" / f"savings_{spec.name}.png", title=f"AutoQA gate on {spec.name}")
    _write_gate_report(gates, intervals, problems, columns, levels, accept_mos is None, costs, output, n_boot)
    return gates


def _write_gate_report(
    gates: Mapping[str, GateSweep],
    intervals: Mapping[str, tuple[float, float]],
    problems: Mapping[str, str],
    columns: Sequence[str],
    levels: Sequence[float],
    median: bool,
    costs: UnitCosts,
    output: Path,
    n_boot: int,
) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["scorer", "threshold", "n_passed", "y_aqa", "p_aqa", "recall", "cost_with", "cost_without", "savings", "best", "n_failed", "savings_low", "savings_high"]
    )
    for name, sweep in gates.items():
        best = sweep.best
        for point in sweep.points:
            values = [point.threshold, point.n_passed, point.y_aqa, point.p_aqa, point.recall, point.cost.cost_with, point.cost.cost_without, point.savings]
            interval = [f"{v:.6g}" for v in intervals.get(name, ("", ""))] if point is best and name in intervals else ["", ""]
            writer.writerow([name] + [f"{v:.6g}" for v in values] + [int(point is best), sweep.n - point.n_passed] + interval)
    write_text_atomic(buffer.getvalue(), output / "autoqa.csv")

    accepted = " and ".join(f"{c} > {level:.4g}" for c, level in zip(columns, levels))
    first = next(iter(gates.values()), None)
    lines = [
        "# AutoQA gate report",
        "",
        f"People accept an image when {accepted}" + (" (the median of each column)." if median else "."),
        f"Unit costs: c_Gen = {costs.c_gen:g}, c_AQA = {costs.c_aqa:g}, c_MQA = {costs.c_mqa:g}. A gate passes an image "
        "when its score ≥ the threshold (≤ for lower-is-better scorers); the best threshold saves the most per accepted image.",
        f"`passed / failed`: the images the best threshold passes and fails, behind its figures; the savings' interval is a "
        f"95% bootstrap over the images ({n_boot} resamples) at that threshold — optimistic, since the threshold was chosen on "
        f"the same images. Fewer than {SMALL_SAMPLE} images passing or failing are marked: such figures are not reliable.",
    ]
    if first is not None:
        lines.append(
            f"Generator precision P_Gen = {first.p_gen:.4f}; cost per accepted image without AutoQA = "
            f"{first.points[0].cost.cost_without:.4f}."
        )
    lines += [
        "",
        "| scorer | n | passed / failed | best threshold | y_AQA | P_AQA | recall | cost / accepted | savings [95% interval] | generated / reviewed per 100 accepted | note |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for name, sweep in gates.items():
        best = sweep.best
        if best is None:
            lines.append(f"| {_cell(name)} | {sweep.n} | — | — | — | — | — | — | — | — | no threshold passes an acceptable image |")
            continue
        volumes = best.cost.with_autoqa
        failed = sweep.n - best.n_passed
        low, high = intervals.get(name, (math.nan, math.nan))
        interval = f" [{_percent(low)}, {_percent(high)}]" if math.isfinite(high) else ""
        note = f"few images: {best.n_passed} pass, {failed} fail (< {SMALL_SAMPLE}): not reliable" if min(best.n_passed, failed) < SMALL_SAMPLE else ""
        lines.append(
            f"| {_cell(name)} | {sweep.n} | {best.n_passed} / {failed} | {best.threshold:.4g} | {best.y_aqa:.3f} | {best.p_aqa:.3f} | "
            f"{best.recall:.3f} | {best.cost.cost_with:.4f} | {_percent(best.savings)}{interval} | "
            f"{volumes.generated:.0f} / {volumes.reviewed:.0f} | {note} |"
        )
    for name, problem in problems.items():
        lines.append(f"| {_cell(name)} | — | — | — | — | — | — | — | — | — | {_cell(problem)} |")
    write_text_atomic("\n".join(lines) + "\n", output / "autoqa.md")


def _percent(value: float) -> str:
    return "−∞" if value == -math.inf else f"{value:.1%}"
