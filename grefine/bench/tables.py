"""Benchmark summaries and the paper's result tables (§4.3, Tables 2-5).

A benchmark folder holds ``<database>/<method>/results.csv``: one row per image with
``<metric>_before`` / ``<metric>_after`` columns, ``metric_errors`` and ``error`` (the runner's
format). From it:

* :func:`summarize_results` / :func:`write_summary`: per metric the mean before and after, the
  change, how many images improved, worsened or kept their score, and the paper's
  *negative optimisation* mark (the mean after is worse than the mean before — lower for a
  higher-is-better metric, higher for BRISQUE, PIQE and the other lower-is-better metrics of
  the registry, :func:`~grefine.eval.metrics.describe_metric`); per metric also the
  *negative-optimisation rate*, the share of images it scores worse after refining; and, for a
  G-Refine run with ``verify`` on, the share of the verified images that were reverted (returned
  unchanged: results.csv's ``verify`` column). Written as ``summary.csv`` and ``summary.md`` next
  to ``results.csv``. Rows with an ``error`` are left out; a metric's means use the images that
  have both of its scores; a metric without any keeps the reason its rows give in
  ``metric_errors`` (e.g. its weights are missing).
* :func:`make_tables`: every database × method in the paper's layout — one table per database
  (GenImage, DiffusionDB, AGIQA-1K, AGIQA-3K first: Tables 2-5), a first row with the original
  images' scores, one row per method, the indicator columns in the paper's order (then any other
  metric); per column the best method in bold and the second underlined (only when two ranked
  methods or more have a value, and never a value marked †), negative optimisations marked †, and
  per method its count of first and second places and of negative optimisations
  — as Markdown (``tables.md``) and LaTeX (``tables.tex``), each table followed by its
  negative-optimisation rates (per method and metric, the share of images made worse, and the
  reverted share of a method with ``verify``), plus one PNG chart per database
  (``chart_<database>.png``: each method's relative change per metric, improvement upwards).
  A column without any value is explained under its table and in :attr:`TablesOutput.warnings`
  (a table whose every column is empty too: e.g. every metric was unavailable).

Ranks compare the values as printed (4 decimals below 1, else 5 significant digits, as the
paper prints them), so equal-looking numbers share a place. ``identity`` (the harness check) is
shown but not ranked.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from grefine.eval.metrics import PAPER_METRICS, describe_metric
from grefine.image_io import write_text_atomic
from grefine.run.report import ChangeSummary

PAPER_LABELS = {
    "clipiqa": "CLIPQA", "unique": "UNIQUE", "liqe": "LIQE", "dbcnn": "DBCNN", "topiq_nr": "TOPIQ",
    "cnniqa": "CNNQA", "musiq": "MUSIQ", "brisque": "BRISQ", "qalign": "Q-Align", "clipscore": "CLIPS",
    "imagereward": "ImgRw", "pickscore": "PicS", "hpsv2": "HPSv2",
}  # fmt: skip
"""The paper's column labels of the 13 indicators."""

DATABASE_TITLES = {
    "genimage": "GenImage (Table 2)",
    "diffusiondb": "DiffusionDB (Table 3)",
    "agiqa1k": "AGIQA-1K (Table 4)",
    "agiqa3k": "AGIQA-3K (Table 5)",
}
"""The paper's databases in table order; any other database follows, by name."""

METHOD_ORDER = ("identity", "pasd", "sdxl-refiner", "sdxl-img2img", "sdxl-inpaint-full", "g-refine-notebook", "g-refine")
"""Row order (the paper's: baselines, then G-Refine last); other methods go before G-Refine."""

UNRANKED = ("identity",)
NEGATIVE_MARK = "†"


# ------------------------------------------------------------------------------ summaries


@dataclass(frozen=True)
class MetricSummary(ChangeSummary):
    """One metric of one method (the report's :class:`~grefine.run.report.ChangeSummary`, keyed
    by the metric): means over the images with both scores, and counts."""

    @property
    def metric(self) -> str:
        return self.key

    @property
    def unchanged(self) -> int:
        return self.images - self.improved - self.worsened

    @property
    def change(self) -> float:
        return self.mean_delta

    @property
    def negative(self) -> bool:
        """The paper's negative optimisation: the mean after is worse than the mean before."""
        return _better(self.mean_before, self.mean_after, self.lower_better)

    @property
    def worse_rate(self) -> float:
        """The negative-optimisation rate: the share of the images this metric scores worse
        after refining (NaN without images)."""
        return self.worsened / self.images if self.images else math.nan


@dataclass
class MethodSummary:
    """One ``results.csv``: its metrics, how many rows and failed rows, the original (before)
    score of every image per metric (for the table's original-images row), and how many images
    ``verify`` judged (``kept`` or ``reverted``) and reverted."""

    database: str
    method: str
    rows: int
    failed: int
    metrics: dict[str, MetricSummary]
    before: dict[str, dict[str, float]] = field(default_factory=dict)
    verified: int = 0
    reverted: int = 0
    unavailable: dict[str, str] = field(default_factory=dict)
    """Why a metric has no image with both scores: the reason in its rows' ``metric_errors``."""

    @property
    def reverted_share(self) -> Optional[float]:
        """The share of the verified images that were returned unchanged; None without verification."""
        return self.reverted / self.verified if self.verified else None


def _better(a: float, b: float, lower_better: bool) -> bool:
    """Is ``a`` strictly better than ``b``?"""
    return a < b if lower_better else a > b


def _float(text: Optional[str]) -> Optional[float]:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _lower_better(metric: str) -> bool:
    try:
        return describe_metric(metric).lower_better
    except KeyError:  # a metric the registry does not know: read as higher-is-better
        return False


def summarize_results(results_csv: Path, database: str = "", method: str = "") -> MethodSummary:
    """Summarise one ``results.csv`` (see the module docstring)."""
    with open(results_csv, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        rows = list(reader)
    if "name" not in columns:
        raise ValueError(f"{results_csv}: not a results.csv (no 'name' column)")
    names = [c[: -len("_before")] for c in columns if c.endswith("_before") and f"{c[: -len('_before')]}_after" in columns]
    usable = [row for row in rows if not row.get("error")]
    metrics, before = {}, {}
    for name in names:
        lower = _lower_better(name)
        pairs = [(row["name"], _float(row[f"{name}_before"]), _float(row[f"{name}_after"])) for row in usable]
        pairs = [(image, b, a) for image, b, a in pairs if b is not None and a is not None]
        before[name] = {image: b for image, b, _ in pairs}
        n = len(pairs)
        metrics[name] = MetricSummary(
            key=name,
            lower_better=lower,
            images=n,
            mean_before=sum(b for _, b, _ in pairs) / n if n else math.nan,
            mean_after=sum(a for _, _, a in pairs) / n if n else math.nan,
            improved=sum(_better(a, b, lower) for _, b, a in pairs),
            worsened=sum(_better(b, a, lower) for _, b, a in pairs),
        )
    verdicts = [row.get("verify", "") for row in usable]
    verified = sum(verdict in ("kept", "reverted") for verdict in verdicts)
    unavailable = {name: _no_value_reason(rows, name) for name, summary in metrics.items() if not summary.images}
    return MethodSummary(
        database, method, len(rows), len(rows) - len(usable), metrics, before, verified, verdicts.count("reverted"), unavailable
    )


def _no_value_reason(rows: list[dict[str, str]], metric: str) -> str:
    """The first reason a row's ``metric_errors`` gives for ``metric`` (``name: why`` or
    ``name/before: why``), else why no image has both scores."""
    for row in rows:
        for part in (row.get("metric_errors") or "").split("; "):
            name, _, reason = part.partition(":")
            if name.split("/")[0].strip() == metric and reason.strip():
                return reason.strip()
    return "no image has both scores" if rows else "results.csv has no rows"


def write_summary(method_dir: Path) -> MethodSummary:
    """Summarise ``method_dir/results.csv`` into ``summary.csv`` and ``summary.md`` (atomic);
    the folder names are the method and, above it, the database."""
    method_dir = Path(method_dir)
    summary = summarize_results(method_dir / "results.csv", method_dir.parent.name, method_dir.name)
    write_text_atomic(_summary_csv(summary), method_dir / "summary.csv")
    write_text_atomic(_summary_markdown(summary), method_dir / "summary.md")
    return summary


def _summary_csv(summary: MethodSummary) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["metric", "lower_better", "images", "mean_before", "mean_after", "change", "improved", "worsened", "unchanged", "negative_optimisation", "worse_rate"])
    for m in summary.metrics.values():
        writer.writerow(
            [m.metric, m.lower_better, m.images, f"{m.mean_before:.6g}", f"{m.mean_after:.6g}", f"{m.change:.6g}", m.improved, m.worsened, m.unchanged, m.negative, f"{m.worse_rate:.6g}"]
        )
    return buffer.getvalue()


def _summary_markdown(summary: MethodSummary) -> str:
    lines = [
        f"# {summary.method} on {summary.database}",
        "",
        f"{summary.rows} images, {summary.failed} failed (left out). {NEGATIVE_MARK} negative optimisation: the mean after is worse than before; "
        "worse: the negative-optimisation rate, the share of images the metric scores worse after.",
        "",
        "| metric | images | mean before | mean after | change | improved | worsened | unchanged | worse |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in summary.metrics.values():
        arrow = "↓" if m.lower_better else "↑"
        mark = f" {NEGATIVE_MARK}" if m.negative else ""
        lines.append(
            f"| {m.metric} {arrow} | {m.images} | {format_value(m.mean_before)} | {format_value(m.mean_after)}{mark} "
            f"| {'—' if math.isnan(m.change) else format(m.change, '+.4g')} | {m.improved} | {m.worsened} | {m.unchanged} | {format_share(m.worse_rate)} |"
        )
    if summary.verified:
        lines += ["", f"verify: {summary.reverted} of {summary.verified} verified images reverted ({format_share(summary.reverted_share)}), returned unchanged."]
    if summary.unavailable:
        lines += [""] + [f"*No value for {metric}: {' '.join(reason.split())}*" for metric, reason in summary.unavailable.items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------- tables


def format_value(value: Optional[float]) -> str:
    """As the paper prints: 4 decimals below 1 in magnitude, else 5 significant digits; "—"
    for no value."""
    if value is None or not math.isfinite(value):
        return "—"
    if abs(value) < 1:
        return f"{value:.4f}"
    return f"{value:.{max(0, 4 - math.floor(math.log10(abs(value))))}f}"


def format_share(value: Optional[float]) -> str:
    """A share as a percentage with one decimal (``12.5 %``); "—" for no value."""
    return "—" if value is None or not math.isfinite(value) else f"{100 * value:.1f} %"


@dataclass(frozen=True)
class Cell:
    """One method's mean after refinement for one metric, the mean before over the same images
    (what ``negative`` compares with), its marks, and its negative-optimisation rate."""

    value: Optional[float]
    before: Optional[float] = None
    first: bool = False
    second: bool = False
    negative: bool = False
    worse_rate: Optional[float] = None


@dataclass
class DatabaseTable:
    """One of the paper's tables: the original images' row and one row per method, and each
    method's reverted share (None: no verification)."""

    database: str
    metrics: list[str]
    lower_better: dict[str, bool]
    original: dict[str, Optional[float]]
    rows: dict[str, dict[str, Cell]]
    reverted: dict[str, Optional[float]] = field(default_factory=dict)
    empty: dict[str, str] = field(default_factory=dict)
    """Metrics without a value in any row, and why (:attr:`MethodSummary.unavailable`)."""

    def count(self, method: str, mark: str) -> int:
        """How many cells of ``method`` are ``first``, ``second`` or ``negative``."""
        return sum(getattr(cell, mark) for cell in self.rows[method].values())

    @property
    def title(self) -> str:
        return DATABASE_TITLES.get(self.database, self.database)


def collect_results(root: Path) -> dict[str, dict[str, MethodSummary]]:
    """Every ``root/<database>/<method>/results.csv``, summarised, in table order."""
    found: dict[str, dict[str, MethodSummary]] = {}
    for path in sorted(Path(root).glob("*/*/results.csv")):
        database, method = path.parent.parent.name, path.parent.name
        found.setdefault(database, {})[method] = summarize_results(path, database, method)
    order = list(DATABASE_TITLES)
    databases = sorted(found, key=lambda name: (order.index(name) if name in order else len(order), name))
    return {database: dict(sorted(found[database].items(), key=lambda item: _method_key(item[0]))) for database in databases}


def _method_key(method: str) -> tuple[float, str]:
    if method in METHOD_ORDER:
        return METHOD_ORDER.index(method), method
    return METHOD_ORDER.index("g-refine-notebook") - 0.5, method


def build_table(database: str, summaries: dict[str, MethodSummary]) -> DatabaseTable:
    """The paper's table of one database from its methods' summaries."""
    present = list(dict.fromkeys(metric for summary in summaries.values() for metric in summary.metrics))
    metrics = [m for m in PAPER_METRICS if m in present] + [m for m in present if m not in PAPER_METRICS]
    lower = {metric: _lower_better(metric) for metric in metrics}
    original = {}
    for metric in metrics:
        scores: dict[str, float] = {}
        for summary in summaries.values():
            for image, score in summary.before.get(metric, {}).items():
                scores.setdefault(image, score)
        original[metric] = sum(scores.values()) / len(scores) if scores else None
    rows = {method: {metric: _cell(summary.metrics.get(metric)) for metric in metrics} for method, summary in summaries.items()}
    reverted = {method: summary.reverted_share for method, summary in summaries.items()}
    empty = {
        metric: next((s.unavailable[metric] for s in summaries.values() if metric in s.unavailable), "no image has both scores")
        for metric in metrics
        if all(row[metric].value is None for row in rows.values())
    }
    table = DatabaseTable(database, metrics, lower, original, rows, reverted, empty)
    for metric in metrics:
        _rank(table, metric)
    return table


def _cell(summary: Optional[MetricSummary]) -> Cell:
    if summary is None or not summary.images:
        return Cell(None)
    return Cell(summary.mean_after, summary.mean_before, negative=summary.negative, worse_rate=summary.worse_rate)


def _rank(table: DatabaseTable, metric: str) -> None:
    """Mark the best (bold) and second-best (underlined) ranked methods of one column: only when
    two ranked methods or more have a value, and never a negative optimisation (†)."""
    ranked = {method: row[metric] for method, row in table.rows.items() if method not in UNRANKED and row[metric].value is not None}
    if len(ranked) < 2:
        return
    shown = {method: float(format_value(cell.value)) for method, cell in ranked.items() if not cell.negative}
    places = sorted(set(shown.values()), reverse=not table.lower_better[metric])
    for method, value in shown.items():
        cell = table.rows[method][metric]
        table.rows[method][metric] = replace(cell, first=value == places[0], second=len(places) > 1 and value == places[1])


def _header(table: DatabaseTable, metric: str, latex: bool = False) -> str:
    label = PAPER_LABELS.get(metric, metric)
    if latex:
        arrow = "$\\downarrow$" if table.lower_better[metric] else "$\\uparrow$"
        return f"{_latex_escape(label)} {arrow}"
    return f"{label} {'↓' if table.lower_better[metric] else '↑'}"


def table_markdown(table: DatabaseTable) -> str:
    """The table as Markdown: best **bold**, second <u>underlined</u>, † negative optimisation."""
    header = ["Method", *(_header(table, m) for m in table.metrics), "1st", "2nd", "neg."]
    lines = [f"### {table.title}", "", "| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    lines.append("| *Original images* | " + " | ".join(format_value(table.original[m]) for m in table.metrics) + " | | | |")
    for method, row in table.rows.items():
        cells = [_markdown_cell(row[m]) for m in table.metrics]
        counts = ["–", "–"] if method in UNRANKED else [str(table.count(method, "first")), str(table.count(method, "second"))]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {' | '.join(counts)} | {table.count(method, 'negative')} |")
    explained = empty_columns_note(table)
    lines += ["", f"*{explained}*"] if explained else []
    return "\n".join(lines) + "\n\n" + worse_markdown(table)


def empty_columns_note(table: DatabaseTable) -> str:
    """Why columns of ``table`` have no value ("" when every column has one)."""
    if not table.metrics:
        return "no metric was scored (the runs had --metrics none)"
    if not table.empty:
        return ""
    reasons = "; ".join(f"{metric}: {' '.join(reason.split())}" for metric, reason in table.empty.items())
    if len(table.empty) == len(table.metrics):
        return f"no metric has a value, so the table and chart are empty ({reasons})"
    return f"no value for {', '.join(table.empty)} ({reasons})"


def worse_markdown(table: DatabaseTable) -> str:
    """The table's negative-optimisation rates as Markdown: per method and metric the share of
    images made worse, and the share of verified images reverted (— without ``verify``)."""
    header = ["Method", *(_header(table, m) for m in table.metrics), "reverted"]
    lines = [
        f"Negative-optimisation rate, {table.title}: share of images each metric scores worse after refining; "
        "reverted: share of the verified images returned unchanged (`verify`).",
        "",
        "| " + " | ".join(header) + " |",
        "| --- |" + " ---: |" * (len(header) - 1),
    ]
    for method, row in table.rows.items():
        cells = [format_share(row[m].worse_rate) for m in table.metrics]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {format_share(table.reverted.get(method))} |")
    return "\n".join(lines) + "\n"


def _markdown_cell(cell: Cell) -> str:
    text = format_value(cell.value)
    if cell.first:
        text = f"**{text}**"
    elif cell.second:
        text = f"<u>{text}</u>"
    return text + (NEGATIVE_MARK if cell.negative else "")


def table_latex(table: DatabaseTable) -> str:
    """The table as a LaTeX ``table`` (no packages needed): ``\\textbf`` best, ``\\underline``
    second, ``$^\\dagger$`` negative optimisation."""
    columns = "l" + "c" * (len(table.metrics) + 3)
    header = ["Method", *(_header(table, m, latex=True) for m in table.metrics), "1st", "2nd", "neg."]
    lines = [
        "\\begin{table}[t]",
        "\\centering",
        (
            f"\\caption{{{_latex_escape(table.title)}: mean scores after refinement. Best \\textbf{{bold}}, "
            "second \\underline{underlined}, $^\\dagger$ negative optimisation.}"
        ),
        f"\\begin{{tabular}}{{{columns}}}",
        "\\hline",
        " & ".join(header) + " \\\\",
        "\\hline",
        "\\textit{Original images} & " + " & ".join(_latex_escape(format_value(table.original[m])) for m in table.metrics) + " & & & \\\\",
    ]
    for method, row in table.rows.items():
        cells = [_latex_cell(row[m]) for m in table.metrics]
        counts = ["--", "--"] if method in UNRANKED else [str(table.count(method, "first")), str(table.count(method, "second"))]
        lines.append(f"{_latex_escape(method)} & " + " & ".join(cells) + f" & {' & '.join(counts)} & {table.count(method, 'negative')} \\\\")
    lines += ["\\hline", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n" + worse_latex(table)


def worse_latex(table: DatabaseTable) -> str:
    """The table's negative-optimisation rates (:func:`worse_markdown`) as a LaTeX ``table``."""
    header = ["Method", *(_header(table, m, latex=True) for m in table.metrics), "reverted"]
    lines = [
        "\\begin{table}[t]",
        "\\centering",
        f"\\caption{{{_latex_escape(table.title)}: negative-optimisation rate, the share of images each metric scores worse "
        "after refining; reverted: the share of the verified images returned unchanged.}",
        f"\\begin{{tabular}}{{l{'c' * (len(table.metrics) + 1)}}}",
        "\\hline",
        " & ".join(header) + " \\\\",
        "\\hline",
    ]
    for method, row in table.rows.items():
        cells = [_latex_escape(format_share(row[m].worse_rate)) for m in table.metrics]
        reverted = _latex_escape(format_share(table.reverted.get(method)))
        lines.append(f"{_latex_escape(method)} & " + " & ".join(cells) + f" & {reverted} \\\\")
    lines += ["\\hline", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def _latex_cell(cell: Cell) -> str:
    text = _latex_escape(format_value(cell.value))
    if cell.first:
        text = f"\\textbf{{{text}}}"
    elif cell.second:
        text = f"\\underline{{{text}}}"
    return text + ("$^\\dagger$" if cell.negative else "")


def _latex_escape(text: str) -> str:
    replacements = {"\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#", "_": "\\_", "{": "\\{", "}": "\\}", "—": "--"}
    return "".join(replacements.get(char, char) for char in text)


def write_chart(table: DatabaseTable, path: Path) -> None:
    """A grouped bar chart of each method's relative change per metric (after vs. before, over
    the images it refined), in %, signed so that improvement is upwards (for lower-is-better
    metrics too)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    methods = list(table.rows)
    figure = Figure(figsize=(max(6.0, 0.9 * len(table.metrics) + 2), 4.0))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(methods))
    for index, method in enumerate(methods):
        changes = [_relative_change(table, method, metric) for metric in table.metrics]
        positions = [x + (index - (len(methods) - 1) / 2) * width for x in range(len(table.metrics))]
        axes.bar(positions, [0.0 if c is None else c for c in changes], width, label=method)
    axes.axhline(0.0, color="black", linewidth=0.8)
    if table.metrics and len(table.empty) == len(table.metrics):
        axes.text(0.5, 0.75, "no metric has a value: see tables.md", transform=axes.transAxes, ha="center", va="center", color="tab:red", bbox={"facecolor": "white", "edgecolor": "none"})
    axes.set_xticks(range(len(table.metrics)), [_header(table, m) for m in table.metrics], rotation=45, ha="right")
    axes.set_ylabel("change after refinement (%), up = better")
    axes.set_title(table.title)
    axes.legend(fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temporary, dpi=120)
    temporary.replace(path)


def _relative_change(table: DatabaseTable, method: str, metric: str) -> Optional[float]:
    """The change of the method's mean over the images it refined, in % of the mean before."""
    after, before = table.rows[method][metric].value, table.rows[method][metric].before
    if after is None or before is None or before == 0:
        return None
    change = 100.0 * (after - before) / abs(before)
    return -change if table.lower_better[metric] else change


@dataclass(frozen=True)
class TablesOutput:
    """What :func:`make_tables` wrote."""

    tables: list[DatabaseTable]
    markdown: Path
    latex: Path
    charts: list[Path]
    summaries: list[Path]
    warnings: list[str] = field(default_factory=list)
    """One line per table with empty columns, saying why (e.g. every metric was unavailable)."""


def make_tables(root: Path) -> TablesOutput:
    """Gather ``root/<database>/<method>/results.csv`` into ``root/tables.md``,
    ``root/tables.tex`` and ``root/chart_<database>.png``, (re)writing each method's
    ``summary.csv`` / ``summary.md`` on the way.

    Raises:
        FileNotFoundError: ``root`` holds no ``<database>/<method>/results.csv``.
    """
    root = Path(root)
    collected = collect_results(root)
    if not collected:
        raise FileNotFoundError(f"{root}: no <database>/<method>/results.csv under it; run scripts/benchmark.py --output {root} first.")
    summaries = [root / database / method / "summary.md" for database, methods in collected.items() for method in methods]
    for path in summaries:
        write_summary(path.parent)
    tables = [build_table(database, methods) for database, methods in collected.items()]
    legend = (
        f"Mean scores after refinement. Best **bold**, second <u>underlined</u> (among the methods; "
        f"{', '.join(UNRANKED)} is not ranked); {NEGATIVE_MARK} negative optimisation (worse than the "
        "original images). 1st / 2nd: places per method; neg.: negative optimisations.\n"
    )
    markdown = _write(root / "tables.md", "# G-Refine benchmark\n\n" + legend + "\n" + "\n".join(table_markdown(t) for t in tables))
    latex = _write(root / "tables.tex", "\n".join(table_latex(t) for t in tables))
    charts = []
    for table in tables:
        charts.append(root / f"chart_{table.database}.png")
        write_chart(table, charts[-1])
    warnings = [f"{table.database}: {note}" for table in tables if (note := empty_columns_note(table))]
    return TablesOutput(tables, markdown, latex, charts, summaries, warnings)


def _write(path: Path, text: str) -> Path:
    write_text_atomic(text, path)
    return path
