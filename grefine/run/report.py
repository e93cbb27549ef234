"""``report.html``: what a run did, to be judged by eye (one self-contained page per run folder).

:func:`write_report` reads a run folder — ``results.csv`` (and the part files of a multi-process
run still going), the maps ``maps/<name>.{pq,pq_overlay,aq_defect,mask}.png`` and phrase tables
``maps/<name>.phrases.json`` the runner wrote — and writes ``<folder>/report.html`` atomically:

* a summary: how many images were refined, skipped or rejected by the gate, reverted (the
  ``verify`` column) and failed; per metric the mean before, after and change, and how many
  images it improved or worsened (``lower_better`` tells the direction); histograms of p and a,
  before and after (``p_after`` / ``a_after`` when the run has them);
* one card per image: before/after under a draggable comparison slider, the PQ-Map (over the
  image and alone), the defect map D and the stage-1 mask over the image, the phrase table
  (phrase, noun, scores, matched / noun-unmatched / adjective-unmatched, emphasised), p and a and
  every metric before → after, strengths and steps, the note, the gate's verdict, the error;
* sorting (by name, a score, any change, the mask area, the time) and filters (by verdict,
  failures only, by whether a chosen metric improved or worsened).

The page works from the file alone: its style and script are inlined from this package
(``grefine/run/report_assets/``) and it requests nothing from the network; images are referenced
by paths relative to the page (the refined images and maps inside the folder, the inputs through
the ``input`` column), so the folder can be moved together with its inputs. A file that does not
exist when the page is written is shown as missing, and one the browser cannot decode (a TIFF, a
corrupt input) as a link to the file, never as a broken image. The building blocks
(:func:`page`, :func:`compare_slider`, :func:`overlay`, :func:`histogram_svg`, …) also serve the
benchmark's side-by-side comparison, :mod:`grefine.bench.report`.
"""
from __future__ import annotations

import html
import json
import math
import os
import posixpath
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence
from urllib.parse import quote

from grefine.image_io import write_text_atomic
from grefine.run.lock import LOCK_NAME
from grefine.run.runner import REPORT_NAME, read_run_rows

LowerBetter = Callable[[str], bool]
"""Whether a lower value of a metric is better (PIQE, BRISQUE); p and a are higher-is-better."""

STATUSES = ("refined", "skipped", "rejected", "reverted", "failed")
STATUS_LABELS = {
    "refined": "refined",
    "skipped": "skipped by the gate",
    "rejected": "rejected by the gate",
    "reverted": "reverted (no better)",
    "failed": "failed",
}
DEFECT_LABELS = {"none": "matched", "noun_unmatched": "noun-unmatched", "adjective_unmatched": "adjective-unmatched"}
MAP_VIEWS = (
    ("pq_overlay", "PQ-Map over the image", None),
    ("pq", "PQ-Map P (white = good)", None),
    ("aq_defect", "defect map D over the image", "blend"),
    ("mask", "stage-1 mask over the image", "blend"),
)
"""The maps a card shows: (kind of ``maps/<name>.<kind>.png``, caption, drawn how): ``blend``
lays a grey map over the original (multiplied: the image stays bright where the map is white)."""
DETAIL_COLUMNS = (
    ("strength1", "stage-1 strength"),
    ("stage1_steps", "stage-1 steps"),
    ("strength2", "stage-2 strength"),
    ("stage2_steps", "stage-2 steps"),
    ("mask_area", "mask area"),
    ("candidates", "candidates"),
    ("rounds", "rounds"),
    ("changed_outside_mask", "changed outside the mask"),
    ("psnr_outside_mask", "PSNR outside the mask"),
    ("maps_seconds", "maps (s)"),
    ("stage1_seconds", "stage 1 (s)"),
    ("stage2_seconds", "stage 2 (s)"),
    ("verify_seconds", "verify (s)"),
    ("total_seconds", "total (s)"),
)
"""The columns a card lists when a row has them (``candidates`` etc. from a verifying run)."""


def _none_lower(metric: str) -> bool:
    return False


# ------------------------------------------------------------------------------ values


def number(text: Optional[str]) -> Optional[float]:
    """A ``results.csv`` cell as a finite float (None when empty or not a number)."""
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def fmt(value: Optional[float]) -> str:
    """A value as the report prints it (4 significant digits; ``–`` when missing)."""
    if value is None:
        return "–"
    return f"{value:.4g}"


def status_of(row: Mapping[str, str]) -> str:
    """A row's verdict: ``failed`` (an error), ``reverted`` (``verify``), ``skipped`` /
    ``rejected`` (the gate), else ``refined``."""
    if row.get("error"):
        return "failed"
    if row.get("verify") == "reverted":
        return "reverted"
    if row.get("gate") in ("skipped", "rejected"):
        return str(row["gate"])
    return "refined"


def metric_names(rows: Iterable[Mapping[str, str]]) -> list[str]:
    """The metrics of a results table: every ``<m>_before`` with its ``<m>_after``, in column order."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return [c[: -len("_before")] for c in columns if c.endswith("_before") and c[: -len("_before")] + "_after" in columns]


@dataclass(frozen=True)
class Change:
    """One score of one image (``key``: ``p``, ``a`` or a metric) before and after."""

    key: str
    before: Optional[float]
    after: Optional[float]
    lower_better: bool = False

    @property
    def delta(self) -> Optional[float]:
        return None if self.before is None or self.after is None else self.after - self.before

    @property
    def gain(self) -> Optional[float]:
        """The change counted as improvement (the delta, negated for a lower-is-better metric)."""
        delta = self.delta
        return None if delta is None else (-delta if self.lower_better else delta)


def changes(row: Mapping[str, str], metrics: Sequence[str], lower_better: LowerBetter) -> list[Change]:
    """p and a (with ``p_after`` / ``a_after`` when the row has them) and every metric of a row."""
    scores = [Change(key, number(row.get(key)), number(row.get(f"{key}_after"))) for key in ("p", "a")]
    return scores + [Change(m, number(row.get(f"{m}_before")), number(row.get(f"{m}_after")), lower_better(m)) for m in metrics]


@dataclass(frozen=True)
class ChangeSummary:
    """One score over the images that have it before and after: means and counts."""

    key: str
    lower_better: bool
    images: int
    mean_before: float
    mean_after: float
    improved: int
    worsened: int

    @property
    def mean_delta(self) -> float:
        return self.mean_after - self.mean_before

    @property
    def mean_gain(self) -> float:
        """The mean change counted as improvement (negated for a lower-is-better metric)."""
        return -self.mean_delta if self.lower_better else self.mean_delta


def tone(gain: Optional[float]) -> str:
    """The CSS class of a change: ``better``, ``worse``, or none (no change, or unknown)."""
    return "" if not gain else ("better" if gain > 0 else "worse")


def signed(value: Optional[float]) -> str:
    return fmt(value) if value is None or value < 0 else f"+{fmt(value)}"


def summarize_changes(per_image: Iterable[Sequence[Change]]) -> list[ChangeSummary]:
    """Per score key, the means before and after and the counts, over the images with both."""
    gathered: dict[str, list[Change]] = {}
    for row in per_image:
        for change in row:
            if change.delta is not None:
                gathered.setdefault(change.key, []).append(change)
    summaries = []
    for key, values in gathered.items():
        n = len(values)
        summaries.append(
            ChangeSummary(
                key,
                values[0].lower_better,
                n,
                sum(c.before for c in values) / n,  # type: ignore[misc]
                sum(c.after for c in values) / n,  # type: ignore[misc]
                sum(c.gain > 0 for c in values),  # type: ignore[operator]
                sum(c.gain < 0 for c in values),  # type: ignore[operator]
            )
        )
    return summaries


# ------------------------------------------------------------------------------ HTML blocks


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def url_of(target: Path, page_folder: Path) -> Optional[str]:
    """The relative URL from a page in ``page_folder`` to ``target``, or None when ``target`` is
    not a file now (the page shows it as missing instead of a broken image)."""
    if not target.is_file():
        return None
    relative = Path(os.path.relpath(target.absolute(), page_folder.absolute())).as_posix()
    return quote(relative)


def image(url: Optional[str], alt: str, css: str = "") -> str:
    """An ``<img>`` linking to its file, or a 'missing' placeholder."""
    if url is None:
        return f'<div class="missing {css}">{esc(alt)}: not written</div>'
    return f'<a href="{esc(url)}" target="_blank"><img class="{css}" src="{esc(url)}" alt="{esc(alt)}" loading="lazy"></a>'


def figure(content: str, caption: str) -> str:
    return f"<figure>{content}<figcaption>{esc(caption)}</figcaption></figure>"


def compare_slider(before: Optional[str], after: Optional[str], caption: str = "before | after") -> str:
    """Before and after stacked, the before image shown left of a draggable divider (a range
    input: drag it, or click where the divider should go). Without both images, what exists."""
    if before is None or after is None:
        shown = image(after, "after") if after is not None else image(before, "before")
        missing = "original" if before is None else "refined image"
        return figure(shown, f"{missing} not available")
    return (
        '<figure class="compare-figure"><div class="compare" style="--pos: 50%">'
        f'<img class="after" src="{esc(after)}" alt="after" loading="lazy">'
        f'<img class="before" src="{esc(before)}" alt="before" loading="lazy">'
        f'<div class="divider"></div><span class="label left">before</span><span class="label right">{esc(caption.split(" | ")[-1])}</span>'
        '<input class="slider" type="range" min="0" max="100" value="50" step="0.5" aria-label="before/after divider">'
        f'</div><figcaption>{esc(caption)} · <a href="{esc(before)}" target="_blank">before</a> · '
        f'<a href="{esc(after)}" target="_blank">after</a></figcaption></figure>'
    )


def overlay(base: Optional[str], layer: Optional[str], caption: str) -> str:
    """A grey map laid over an image (multiplied: bright where the map is white, dimmed elsewhere)."""
    if base is None or layer is None:
        return figure(image(layer, caption, "map"), caption)
    return figure(
        f'<a class="overlay" href="{esc(layer)}" target="_blank"><img class="map" src="{esc(base)}" alt="" loading="lazy">'
        f'<img class="map blend" src="{esc(layer)}" alt="{esc(caption)}" loading="lazy"></a>',
        caption,
    )


def change_cell(change: Change) -> str:
    """``before → after (Δ)``, coloured by whether it improved."""
    if change.after is None:
        return esc(fmt(change.before))
    shown = f" ({signed(change.delta)})" if change.delta is not None else ""
    return f'<span class="{tone(change.gain)}">{esc(fmt(change.before))} → {esc(fmt(change.after))}{esc(shown)}</span>'


def changes_table(rows: Sequence[Change]) -> str:
    body = "".join(
        f"<tr><th>{esc(c.key)}{' ↓' if c.lower_better else ''}</th><td>{change_cell(c)}</td></tr>"
        for c in rows
        if c.before is not None or c.after is not None
    )
    return f'<table class="scores"><tbody>{body}</tbody></table>' if body else ""


def phrase_table_html(table: Optional[Mapping]) -> str:
    """The phrase table of ``maps/<name>.phrases.json`` (:func:`grefine.run.runner.phrase_table`)."""
    if table is None:
        return ""
    phrases = table.get("phrases", [])
    if not phrases:
        return '<p class="phrases-none">AQ-Map: no phrase scored (the map is switched off, or the prompt has no content word).</p>'
    rows = []
    for index, phrase in enumerate(phrases):
        ancestor = phrase.get("ancestor")
        parent = phrases[ancestor].get("text", "") if isinstance(ancestor, int) and 0 <= ancestor < len(phrases) and ancestor != index else "itself"
        defect = str(phrase.get("defect", "none"))
        rows.append(
            f'<tr class="defect-{esc(defect)}"><td>{esc(phrase.get("text", ""))}</td><td>{esc(phrase.get("noun") or "–")}</td>'
            f"<td>{esc(parent)}</td><td>{esc(fmt(phrase.get('score')))}</td><td>{esc(fmt(phrase.get('noun_score')))}</td>"
            f"<td>{esc(DEFECT_LABELS.get(defect, defect))}</td><td>{'yes' if phrase.get('emphasized') else 'no'}</td></tr>"
        )
    emphasized = table.get("emphasized_prompt", "")
    return (
        f'<div class="phrases"><p>stage-1 prompt: <code>{esc(emphasized)}</code></p>'
        '<table><thead><tr><th>phrase</th><th>noun</th><th>ancestor</th><th>score a<sub>phs</sub></th>'
        "<th>noun score a<sub>pns</sub></th><th>alignment</th><th>emphasised</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def details_list(row: Mapping[str, str]) -> str:
    items = []
    for column, label in DETAIL_COLUMNS:
        value = row.get(column)
        if value in (None, ""):
            continue
        shown = f"{100 * number(value):.1f} %" if column in ("mask_area", "changed_outside_mask") and number(value) is not None else value
        items.append(f"<div><dt>{esc(label)}</dt><dd>{esc(shown)}</dd></div>")
    return f'<dl class="details">{"".join(items)}</dl>' if items else ""


def histogram_svg(title: str, series: Sequence[tuple[str, Sequence[float], str]], bins: int = 10) -> str:
    """Side-by-side bars of values in [0, 1] (``series``: label, values, colour), inline SVG."""
    width, height, left, bottom = 320, 150, 30, 28
    counts = [[0] * bins for _ in series]
    for k, (_, values, _) in enumerate(series):
        for value in values:
            counts[k][min(bins - 1, max(0, int(value * bins)))] += 1
    peak = max([1] + [max(c) for c in counts])
    plot_w, plot_h = width - left - 8, height - bottom - 22
    bin_w = plot_w / bins
    bar_w = (bin_w - 2) / max(1, len(series))
    bars = []
    for k, (label, _, colour) in enumerate(series):
        for b, count in enumerate(counts[k]):
            h = plot_h * count / peak
            x = left + b * bin_w + 1 + k * bar_w
            bars.append(
                f'<rect x="{x:.1f}" y="{22 + plot_h - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}" fill="{colour}">'
                f"<title>{esc(label)} {b / bins:g}–{(b + 1) / bins:g}: {count}</title></rect>"
            )
    legend = " ".join(
        f'<tspan fill="{colour}">■</tspan> {esc(label)} (n={len(values)})' for label, values, colour in series
    )
    axis = "".join(
        f'<text x="{left + plot_w * t:.1f}" y="{height - bottom + 14}" text-anchor="middle">{t:g}</text>' for t in (0, 0.5, 1)
    )
    return (
        f'<svg class="histogram" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="{esc(title)}">'
        f'<text x="{left}" y="12" class="title">{esc(title)}</text><text x="{width - 4}" y="12" text-anchor="end">{legend}</text>'
        f'<line x1="{left}" y1="{22 + plot_h}" x2="{left + plot_w}" y2="{22 + plot_h}" stroke="#888"/>'
        f'<text x="{left - 4}" y="30" text-anchor="end">{peak}</text><text x="{left - 4}" y="{22 + plot_h}" text-anchor="end">0</text>'
        f"{''.join(bars)}{axis}</svg>"
    )


def score_histograms(rows: Iterable[Mapping[str, str]]) -> str:
    """Histograms of p and of a over the images, before and (when recorded) after refining."""
    rows = list(rows)
    charts = []
    for key, name in (("p", "p (PQ-Map)"), ("a", "a (AQ-Map)")):
        before = [v for v in (number(r.get(key)) for r in rows) if v is not None]
        after = [v for v in (number(r.get(f"{key}_after")) for r in rows) if v is not None]
        series = [("before", before, "#3b6fb6")] + ([("after", after, "#e07b22")] if after else [])
        if before or after:
            charts.append(histogram_svg(name, series))
    return f'<div class="histograms">{"".join(charts)}</div>' if charts else ""


def summary_table(summaries: Sequence[ChangeSummary]) -> str:
    if not summaries:
        return "<p>No score was recorded before and after.</p>"
    body = "".join(
        f"<tr><th>{esc(s.key)}{' ↓' if s.lower_better else ''}</th><td>{s.images}</td><td>{esc(fmt(s.mean_before))}</td>"
        f'<td>{esc(fmt(s.mean_after))}</td><td class="{tone(s.mean_gain)}">{esc(signed(s.mean_delta))}</td>'
        f"<td>{s.improved}</td><td>{s.worsened}</td></tr>"
        for s in summaries
    )
    return (
        '<table class="summary"><thead><tr><th>score</th><th>images</th><th>mean before</th><th>mean after</th>'
        f"<th>mean change</th><th>improved</th><th>worsened</th></tr></thead><tbody>{body}</tbody></table>"
        f'<p class="hint">{"↓ lower is better. " if any(s.lower_better for s in summaries) else ""}Means over the images scored before and after.</p>'
    )


def data_attributes(keys: Mapping[str, object], gains: Mapping[str, Optional[float]], tags: Sequence[str], index: int) -> str:
    """The card's sort keys, changes (as gains) and filter tags, read by the page's script; the
    ``index``-th card starts hidden past the first page."""
    clean = {k: v for k, v in gains.items() if v is not None}
    return (
        f'data-keys="{esc(json.dumps(keys, allow_nan=False))}" data-gains="{esc(json.dumps(clean, allow_nan=False))}" '
        f'data-tags="{esc(json.dumps(list(tags)))}"{" hidden" if index >= PAGE_SIZE else ""}'
    )


PAGE_SIZE = 50
"""Cards per page (the page's script pages them; the rest start hidden, so that a large run's
report opens and sorts quickly)."""


def controls(sort_keys: Sequence[tuple[str, str]], tags: Sequence[tuple[str, str]], delta_keys: Sequence[tuple[str, str]]) -> str:
    """The sort and filter bar: sort key and order, a verdict filter, a change filter, paging."""
    options = lambda pairs: "".join(f'<option value="{esc(v)}">{esc(label)}</option>' for v, label in pairs)  # noqa: E731
    return (
        '<div class="controls">'
        f'<label>sort by <select id="sort-key">{options(sort_keys)}</select></label>'
        '<select id="sort-order" aria-label="order"><option value="asc">ascending</option><option value="desc">descending</option></select>'
        f'<label>show <select id="filter-tag">{options([("all", "all images"), *tags])}</select></label>'
        f'<label>where <select id="filter-delta">{options([("", "any score"), *delta_keys])}</select></label>'
        '<select id="filter-change" aria-label="change"><option value="any">changed or not</option><option value="improved">improved</option>'
        '<option value="worsened">worsened</option><option value="unchanged">unchanged</option></select>'
        f'<label>per page <select id="page-size">{options([(str(PAGE_SIZE), str(PAGE_SIZE)), ("200", "200"), ("0", "all")])}</select></label>'
        '<button id="page-previous" type="button">◀ previous</button><button id="page-next" type="button">next ▶</button>'
        '<span id="shown"></span></div>'
    )


def _asset(name: str) -> str:
    return resources.files("grefine.run").joinpath("report_assets", name).read_text(encoding="utf-8")


def page(title: str, header: str, body: str) -> str:
    """A whole page: the style and script inlined, no external resource (the icon is empty)."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
        f"<title>{esc(title)}</title><style>{_asset('report.css')}</style></head>"
        f"<body><header>{header}</header><main>{body}</main><script>{_asset('report.js')}</script></body></html>\n"
    )


def written_line(folder: Path) -> str:
    running = (folder / LOCK_NAME).exists()
    state = " · <strong>a run is writing this folder</strong>: reload to see its progress" if running else ""
    return f'<p class="meta">written {esc(time.strftime("%Y-%m-%d %H:%M:%S"))}{state}</p>'


# ------------------------------------------------------------------------------ a run folder


@dataclass
class RunCard:
    """What one image's card shows."""

    name: str
    row: Mapping[str, str]
    status: str
    changes: list[Change]
    urls: dict[str, Optional[str]] = field(default_factory=dict)
    phrases: Optional[dict] = None


def read_phrases(path: Path) -> Optional[dict]:
    """A phrase table file, or None when absent or unreadable (a report is never refused for it)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def run_cards(folder: Path, rows: Mapping[str, Mapping[str, str]], lower_better: LowerBetter, page_folder: Optional[Path] = None) -> list[RunCard]:
    """One card per row of a run folder, the file URLs relative to ``page_folder`` (the run folder)."""
    page_folder = page_folder or folder
    metrics = metric_names(rows.values())
    cards = []
    for name, row in sorted(rows.items()):
        urls: dict[str, Optional[str]] = {
            "after": url_of(folder / row["output"], page_folder) if row.get("output") else None,
            "before": url_of(Path(posixpath.normpath((folder / row["input"]).as_posix())), page_folder) if row.get("input") else None,
        }
        for kind, _, _ in MAP_VIEWS:
            urls[kind] = url_of(folder / "maps" / f"{name}.{kind}.png", page_folder)
        phrases = read_phrases(folder / "maps" / f"{name}.phrases.json")
        cards.append(RunCard(name, row, status_of(row), changes(row, metrics, lower_better), urls, phrases))
    return cards


def card_html(card: RunCard, index: int = 0) -> str:
    row, urls = card.row, card.urls
    base = urls["before"] or urls["after"]
    maps = "".join(overlay(base, urls[kind], caption) if how == "blend" else figure(image(urls[kind], caption, "map"), caption) for kind, caption, how in MAP_VIEWS)
    keys: dict[str, object] = {"name": card.name}
    gains: dict[str, Optional[float]] = {}
    for change in card.changes:
        if change.before is not None:
            keys[change.key] = change.before
        if change.delta is not None:
            keys[f"d:{change.key}"] = change.delta
            gains[change.key] = change.gain
    for column in ("mask_area", "total_seconds"):
        if number(row.get(column)) is not None:
            keys[column] = number(row.get(column))
    verdict = [f'<span class="badge {card.status}">{esc(STATUS_LABELS[card.status])}</span>']
    if row.get("gate"):
        verdict.append(f'<span class="tag">gate: {esc(row["gate"])}</span>')
    if row.get("verify"):
        verdict.append(f'<span class="tag">verify: {esc(row["verify"])}</span>')
    error = f'<p class="error">error: {esc(row["error"])}</p>' if row.get("error") else ""
    note = f'<p class="note">note: {esc(row["note"])}</p>' if row.get("note") else ""
    metric_errors = f'<p class="metric-errors">metric errors: {esc(row["metric_errors"])}</p>' if row.get("metric_errors") else ""
    has_maps = any(urls[kind] for kind, _, _ in MAP_VIEWS)
    return (
        f'<article class="card" id="{esc(quote(card.name))}" {data_attributes(keys, gains, [card.status], index)}>'
        f'<h2>{esc(card.name)} {" ".join(verdict)}</h2><p class="prompt">{esc(row.get("prompt", ""))}</p>{error}'
        f'<div class="images">{compare_slider(urls["before"], urls["after"])}'
        f'{f"<div class=maps>{maps}</div>" if has_maps else ""}</div>'
        f'<div class="facts">{changes_table(card.changes)}{details_list(row)}</div>{note}{metric_errors}'
        f"{phrase_table_html(card.phrases)}</article>"
    )


def counts_html(statuses: Sequence[str]) -> str:
    cells = "".join(f'<div class="count {s}"><b>{statuses.count(s)}</b> {esc(STATUS_LABELS[s])}</div>' for s in STATUSES)
    return f'<div class="counts"><div class="count"><b>{len(statuses)}</b> images</div>{cells}</div>'


def sort_options(change_keys: Sequence[tuple[str, bool]], extra: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """Sort keys: the name, each score, each change (``d:<key>``) and ``extra``."""
    options = [("name", "name")]
    options += [(key, key) for key, _ in change_keys if key in ("p", "a")]
    options += [(f"d:{key}", f"change of {key}{' (lower is better)' if lower else ''}") for key, lower in change_keys]
    return options + list(extra)


def render_run_report(folder: Path, rows: Mapping[str, Mapping[str, str]], lower_better: LowerBetter = _none_lower) -> str:
    """The HTML of a run folder's report (see the module docstring)."""
    cards = run_cards(folder, rows, lower_better)
    summaries = summarize_changes(card.changes for card in cards)
    change_keys = [(s.key, s.lower_better) for s in summaries]
    tags = [(s, STATUS_LABELS[s] if s != "failed" else "failures only") for s in STATUSES]
    header = f"<h1>grefine report · {esc(folder.absolute().name)}</h1>{written_line(folder)}"
    body = (
        f'<section class="summary-block">{counts_html([c.status for c in cards])}{summary_table(summaries)}'
        f"{score_histograms(rows.values())}</section>"
        f"{controls(sort_options(change_keys, [('mask_area', 'mask area'), ('total_seconds', 'seconds')]), tags, [(k, k) for k, _ in change_keys])}"
        f'<section id="cards">{"".join(card_html(card, index) for index, card in enumerate(cards))}</section>'
    )
    return page(f"grefine report · {folder.absolute().name}", header, body)


def write_report(folder: Path, *, lower_better: LowerBetter = _none_lower) -> Path:
    """Write ``<folder>/report.html`` for a run folder (atomically) and return its path.

    ``lower_better`` names the metrics whose lower values are better (the direction of the
    'improved' counts and filters; :func:`grefine.report` uses the metric registry's). A folder
    without rows yet (a run that has just started) gets a report without cards.

    Raises:
        RunInputError: the folder's ``results.csv`` is not grefine's, or is damaged.
    """
    folder = Path(folder)
    rows = read_run_rows(folder)
    path = folder / REPORT_NAME
    write_text_atomic(render_run_report(folder, rows, lower_better), path)
    return path
