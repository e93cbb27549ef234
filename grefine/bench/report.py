"""Reports of runs and benchmarks: :func:`report` (exported as ``grefine.report``).

``report(folder)`` writes ``report.html`` for whatever folder it is given:

* a run folder (``results.csv``: ``scripts/refine.py --output``, or one method of a benchmark):
  the run's report, :func:`grefine.run.report.write_report`;
* a benchmark database folder (``DIR/<database>/``, one ``<method>/results.csv`` per method): each
  method's run report and the methods side by side (:func:`write_comparison`): per image the
  original and every method's result under its own before/after slider with its scores, per
  method the mean change of every metric; sort by any method's change of any metric, filter by a
  method's verdict or failures;
* a benchmark folder (``DIR/``, ``<database>/<method>/results.csv``): all of the above for every
  database, and an index page linking them (:func:`write_index`).

The direction of each metric (lower is better for PIQE, BRISQUE, …) comes from the metric
registry (:func:`grefine.eval.metrics.describe_metric`). :func:`run_report` and
:func:`benchmark_report` are the report hooks (:class:`grefine.run.runner.RunOptions` ``report``)
of ``scripts/refine.py`` and ``scripts/benchmark.py`` (the method's report, the database's
comparison, the index).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional
from urllib.parse import quote

from grefine.bench.tables import METHOD_ORDER
from grefine.errors import RunInputError
from grefine.eval.metrics import describe_metric
from grefine.image_io import write_text_atomic
from grefine.run.report import (
    STATUS_LABELS,
    STATUSES,
    Change,
    changes,
    changes_table,
    compare_slider,
    controls,
    data_attributes,
    esc,
    metric_names,
    page,
    signed,
    status_of,
    summarize_changes,
    tone,
    url_of,
    write_report,
    written_line,
)
from grefine.run.runner import REPORT_NAME, RESULTS_NAME, read_run_rows


def lower_better(metric: str) -> bool:
    """Whether a lower value of ``metric`` is better, from the registry (an unknown name: no)."""
    try:
        return describe_metric(metric).lower_better
    except KeyError:
        return False


def _is_run(folder: Path) -> bool:
    return (folder / RESULTS_NAME).is_file() or any(folder.glob("results.part*.csv"))


def method_folders(database_folder: Path) -> list[Path]:
    """The run folders of a database folder, in the tables' method order."""
    found = [path for path in Path(database_folder).iterdir() if path.is_dir() and _is_run(path)] if Path(database_folder).is_dir() else []

    def key(path: Path) -> tuple[float, str]:  # the tables' rows: baselines, other methods, G-Refine last
        known = path.name in METHOD_ORDER
        return (METHOD_ORDER.index(path.name) if known else METHOD_ORDER.index("g-refine-notebook") - 0.5, path.name)

    return sorted(found, key=key)


def database_folders(benchmark: Path) -> list[Path]:
    """The database folders of a benchmark folder (those holding at least one method's run)."""
    return sorted(path for path in Path(benchmark).iterdir() if path.is_dir() and method_folders(path)) if Path(benchmark).is_dir() else []


def report(folder: Path) -> Path:
    """Write ``report.html`` for a run folder, a benchmark database folder or a benchmark folder
    (see the module docstring) and return its path; it can be opened from the file (no server).

    Raises:
        RunInputError: the folder holds no ``results.csv`` at any of these levels, or a damaged one.
    """
    folder = Path(folder)
    if _is_run(folder):
        return write_report(folder, lower_better=lower_better)
    if method_folders(folder):
        for method in method_folders(folder):
            write_report(method, lower_better=lower_better)
        return write_comparison(folder)
    databases = database_folders(folder)
    if not databases:
        raise RunInputError(
            f"{folder}: no {RESULTS_NAME} in it, in <method>/ or in <database>/<method>/ below it; give the output folder of "
            "scripts/refine.py or scripts/benchmark.py."
        )
    for database in databases:
        report(database)
    return write_index(folder)


def run_report(folder: Path) -> Path:
    """The report hook of ``scripts/refine.py``: the run folder's report (also before its first row)."""
    return write_report(Path(folder), lower_better=lower_better)


def benchmark_report(method_folder: Path) -> None:
    """The report hook of a benchmark run in ``DIR/<database>/<method>/``: the method's report,
    the database's comparison and the benchmark's index."""
    method_folder = Path(method_folder)
    write_report(method_folder, lower_better=lower_better)
    write_comparison(method_folder.parent)
    write_index(method_folder.parent.parent)


# ------------------------------------------------------------------------- the comparison


def _method_block(database: Path, method: str, name: str, row: Mapping[str, str], before: Optional[str], metrics: list[str]) -> tuple[str, list[Change]]:
    folder = database / method
    after = url_of(folder / row["output"], database) if row.get("output") else None
    status = status_of(row)
    scores = changes(row, metrics, lower_better)
    link = f"{quote(method)}/{REPORT_NAME}#{quote(quote(name))}"
    error = f'<p class="error">{esc(row["error"])}</p>' if row.get("error") else ""
    html = (
        f'<div class="method"><h3><a href="{esc(link)}">{esc(method)}</a> <span class="badge {status}">{esc(STATUS_LABELS[status])}</span></h3>'
        f"{compare_slider(before, after, f'before | {method}')}{error}{changes_table(scores)}</div>"
    )
    return html, scores


def _before_url(database: Path, rows: Mapping[str, Mapping[str, Mapping[str, str]]], name: str) -> Optional[str]:
    for method, method_rows in rows.items():
        row = method_rows.get(name)
        if row is not None and row.get("input"):
            url = url_of(database / method / row["input"], database)
            if url is not None:
                return url
    return None


def comparison_card(database: Path, rows: Mapping[str, Mapping[str, Mapping[str, str]]], name: str, metrics: Mapping[str, list[str]], index: int = 0) -> str:
    """One image (the ``index``-th card): the original and every method's result side by side."""
    before = _before_url(database, rows, name)
    blocks, keys, gains, tags = [], {"name": name}, {}, []
    prompt = ""
    for method, method_rows in rows.items():
        row = method_rows.get(name)
        if row is None:
            blocks.append(f'<div class="method"><h3>{esc(method)}</h3><div class="missing">not run on this image</div></div>')
            continue
        prompt = prompt or row.get("prompt", "")
        block, scores = _method_block(database, method, name, row, before, metrics[method])
        blocks.append(block)
        status = status_of(row)
        tags += [f"{method}:{status}"] + (["failed"] if status == "failed" else [])
        for change in scores:
            if change.delta is not None:
                keys[f"d:{method}:{change.key}"] = change.delta
                gains[f"{method}:{change.key}"] = change.gain
    return (
        f'<article class="card" id="{esc(quote(name))}" {data_attributes(keys, gains, tags, index)}><h2>{esc(name)}</h2>'
        f'<p class="prompt">{esc(prompt)}</p><div class="methods">{"".join(blocks)}</div></article>'
    )


def _means_table(summaries: Mapping[str, list], keys: list[str]) -> str:
    if not keys:
        return "<p>No score was recorded before and after.</p>"
    head = "".join(f"<th>{esc(k)}{' ↓' if lower_better(k) and k not in ('p', 'a') else ''}</th>" for k in keys)
    body = []
    for method, method_summaries in summaries.items():
        by_key = {s.key: s for s in method_summaries}
        cells = []
        for key in keys:
            s = by_key.get(key)
            if s is None:
                cells.append("<td>–</td>")
                continue
            cells.append(f'<td class="{tone(s.mean_gain)}">{esc(signed(s.mean_delta))}<br><small>{s.improved} better, {s.worsened} worse of {s.images}</small></td>')
        body.append(f'<tr><th><a href="{esc(quote(method))}/{REPORT_NAME}">{esc(method)}</a></th>{"".join(cells)}</tr>')
    return f'<table class="summary"><thead><tr><th>method: mean change</th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def render_comparison(database: Path) -> str:
    """The HTML of a database folder's side-by-side comparison of its methods."""
    rows = {method.name: read_run_rows(method) for method in method_folders(database)}
    metrics = {method: metric_names(method_rows.values()) for method, method_rows in rows.items()}
    names = sorted({name for method_rows in rows.values() for name in method_rows})
    summaries = {
        method: summarize_changes(changes(row, metrics[method], lower_better) for row in method_rows.values())
        for method, method_rows in rows.items()
    }
    keys = list(dict.fromkeys(s.key for method_summaries in summaries.values() for s in method_summaries))
    counts = "".join(
        f"<tr><th>{esc(method)}</th><td>{len(method_rows)}</td>"
        + "".join(f"<td>{sum(status_of(r) == s for r in method_rows.values())}</td>" for s in STATUSES)
        + "</tr>"
        for method, method_rows in rows.items()
    )
    status_head = "".join(f"<th>{esc(STATUS_LABELS[s])}</th>" for s in STATUSES)
    tags = [("failed", "failures only (any method)")] + [
        (f"{method}:{s}", f"{method}: {STATUS_LABELS[s]}") for method, method_rows in rows.items() for s in STATUSES if any(status_of(r) == s for r in method_rows.values())
    ]
    deltas = [(f"{method}:{s.key}", f"{method} · {s.key}") for method, method_summaries in summaries.items() for s in method_summaries]
    sort_keys = [("name", "name")] + [(f"d:{key}", f"change of {label}") for key, label in deltas]
    header = f"<h1>grefine benchmark · {esc(database.absolute().name)} · {len(rows)} methods side by side</h1>{written_line(database)}"
    body = (
        f'<section class="summary-block"><table class="summary"><thead><tr><th>method</th><th>images</th>{status_head}</tr></thead>'
        f"<tbody>{counts}</tbody></table><br>{_means_table(summaries, keys)}</section>"
        f"{controls(sort_keys, tags, deltas)}"
        f'<section id="cards">{"".join(comparison_card(database, rows, name, metrics, index) for index, name in enumerate(names))}</section>'
    )
    return page(f"grefine benchmark · {database.absolute().name}", header, body)


def write_comparison(database: Path) -> Path:
    """Write ``<database>/report.html``, the methods side by side (atomically); return its path."""
    path = Path(database) / REPORT_NAME
    write_text_atomic(render_comparison(Path(database)), path)
    return path


def write_index(benchmark: Path) -> Path:
    """Write ``<benchmark>/report.html``: each database's comparison and its methods' reports."""
    benchmark = Path(benchmark)
    items = []
    for database in database_folders(benchmark):
        methods = ", ".join(
            f'<a href="{esc(quote(database.name))}/{esc(quote(m.name))}/{REPORT_NAME}">{esc(m.name)}</a> ({len(read_run_rows(m))} images)'
            for m in method_folders(database)
        )
        items.append(f'<li><a href="{esc(quote(database.name))}/{REPORT_NAME}"><b>{esc(database.name)}</b>: methods side by side</a> · {methods}</li>')
    body = f'<section class="summary-block"><ul>{"".join(items)}</ul></section>'
    header = f"<h1>grefine benchmark · {esc(benchmark.absolute().name)}</h1>{written_line(benchmark)}"
    path = benchmark / REPORT_NAME
    write_text_atomic(page(f"grefine benchmark · {benchmark.absolute().name}", header, body), path)
    return path
