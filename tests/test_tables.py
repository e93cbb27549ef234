"""Summaries and the paper's tables from synthetic results.csv files."""
from __future__ import annotations

import csv
import importlib.util

import pytest
from PIL import Image

from grefine.bench.tables import (
    build_table,
    collect_results,
    format_value,
    make_tables,
    summarize_results,
    write_summary,
)
from tests.conftest import REPO

BEFORE = {"clipiqa": [0.5, 0.6, 0.7], "brisque": [30.0, 20.0, 40.0]}  # originals of a, b, c
AFTER = {
    "identity": BEFORE,
    "g-refine": {"clipiqa": [0.7, 0.8, 0.75], "brisque": [25.0, 22.0, 31.0]},
    "sdxl-refiner": {"clipiqa": [0.45, 0.55, 0.65], "brisque": [10.0, 12.0, 14.0]},
    "pasd": {"clipiqa": [0.6, 0.7, None], "brisque": [35.0, 25.0, None]},  # c.png failed
}


def _write_results(folder, after, failed=()):
    folder.mkdir(parents=True)
    columns = ["name", "prompt", "note", "clipiqa_before", "clipiqa_after", "brisque_before", "brisque_after", "metric_errors", "error"]
    with open(folder / "results.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        for i, name in enumerate(("a.png", "b.png", "c.png")):
            row = {"name": name, "prompt": "a cat", "metric_errors": "", "error": "RuntimeError: out of memory" if name in failed else ""}
            if name not in failed:
                for metric in BEFORE:
                    row[f"{metric}_before"], row[f"{metric}_after"] = f"{BEFORE[metric][i]:.6g}", f"{after[metric][i]:.6g}"
            writer.writerow(row)


@pytest.fixture
def bench(tmp_path):
    for method, after in AFTER.items():
        _write_results(tmp_path / "agiqa3k" / method, after, failed=("c.png",) if method == "pasd" else ())
    _write_results(tmp_path / "genimage" / "g-refine", AFTER["g-refine"])
    return tmp_path


def test_summary_means_counts_and_negative_marks(bench):
    grefine = summarize_results(bench / "agiqa3k" / "g-refine" / "results.csv").metrics
    assert grefine["clipiqa"].mean_before == pytest.approx(0.6) and grefine["clipiqa"].mean_after == pytest.approx(0.75)
    assert (grefine["clipiqa"].improved, grefine["clipiqa"].worsened, grefine["clipiqa"].negative) == (3, 0, False)
    brisque = grefine["brisque"]  # lower is better: 30 → 26 is an improvement although b worsened
    assert brisque.lower_better and brisque.change == pytest.approx(-4.0)
    assert (brisque.improved, brisque.worsened, brisque.negative) == (2, 1, False)
    pasd = summarize_results(bench / "agiqa3k" / "pasd" / "results.csv")
    assert (pasd.rows, pasd.failed) == (3, 1) and pasd.metrics["clipiqa"].images == 2  # the failed row is left out
    assert pasd.metrics["brisque"].mean_before == pytest.approx(25.0) and pasd.metrics["brisque"].negative  # 25 → 30
    assert summarize_results(bench / "agiqa3k" / "sdxl-refiner" / "results.csv").metrics["clipiqa"].negative


def test_identity_gives_zero_deltas_in_summary_files(bench):
    summary = write_summary(bench / "agiqa3k" / "identity")
    for metric in summary.metrics.values():
        assert metric.change == 0 and (metric.improved, metric.worsened, metric.unchanged) == (0, 0, 3) and not metric.negative
    with open(bench / "agiqa3k" / "identity" / "summary.csv", newline="") as handle:
        rows = {row["metric"]: row for row in csv.DictReader(handle)}
    assert rows["brisque"] == {
        "metric": "brisque", "lower_better": "True", "images": "3", "mean_before": "30", "mean_after": "30",
        "change": "0", "improved": "0", "worsened": "0", "unchanged": "3", "negative_optimisation": "False", "worse_rate": "0",
    }  # fmt: skip
    markdown = (bench / "agiqa3k" / "identity" / "summary.md").read_text()
    assert "# identity on agiqa3k" in markdown and "| brisque ↓ | 3 | 30.000 | 30.000 | +0 | 0 | 0 | 3 | 0.0 % |" in markdown


def test_table_ranks_marks_and_counts(bench):
    table = build_table("agiqa3k", collect_results(bench)["agiqa3k"])
    assert list(table.rows) == ["identity", "pasd", "sdxl-refiner", "g-refine"]  # the paper's order, G-Refine last
    assert table.metrics == ["clipiqa", "brisque"]  # the paper's column order
    assert table.original == {"clipiqa": pytest.approx(0.6), "brisque": pytest.approx(30.0)}
    clip = {method: row["clipiqa"] for method, row in table.rows.items()}
    assert clip["g-refine"].first and clip["pasd"].second and clip["sdxl-refiner"].negative
    assert not (clip["identity"].first or clip["identity"].second)  # the harness check is not ranked
    brisque = {method: row["brisque"] for method, row in table.rows.items()}
    assert brisque["sdxl-refiner"].first and brisque["g-refine"].second and brisque["pasd"].negative
    assert brisque["pasd"].before == pytest.approx(25.0)  # its own images: the mark compares 30 with 25
    counts = {method: (table.count(method, "first"), table.count(method, "second"), table.count(method, "negative")) for method in table.rows}
    assert counts == {"identity": (0, 0, 0), "pasd": (0, 1, 1), "sdxl-refiner": (1, 0, 1), "g-refine": (1, 1, 0)}


def test_make_tables_writes_markdown_latex_charts_and_summaries(bench):
    written = make_tables(bench)
    assert [table.database for table in written.tables] == ["genimage", "agiqa3k"]  # Tables 2 before 5
    markdown = written.markdown.read_text()
    assert markdown.index("GenImage (Table 2)") < markdown.index("AGIQA-3K (Table 5)")
    assert "| Method | CLIPQA ↑ | BRISQ ↓ | 1st | 2nd | neg. |" in markdown
    assert "| *Original images* | 0.6000 | 30.000 | | | |" in markdown
    assert "| g-refine | **0.7500** | <u>26.000</u> | 1 | 1 | 0 |" in markdown
    assert "| sdxl-refiner | 0.5500† | **12.000** | 1 | 0 | 1 |" in markdown
    assert "| pasd | <u>0.6500</u> | 30.000† | 0 | 1 | 1 |" in markdown
    assert "| identity | 0.6000 | 30.000 | – | – | 0 |" in markdown
    latex = written.latex.read_text()
    assert "g-refine & \\textbf{0.7500} & \\underline{26.000} & 1 & 1 & 0 \\\\" in latex
    assert "sdxl-refiner & 0.5500$^\\dagger$ & \\textbf{12.000} & 1 & 0 & 1 \\\\" in latex
    assert "BRISQ $\\downarrow$" in latex and latex.count("\\begin{tabular}") == 4  # per database: the means and the negative-optimisation rates
    assert [path.name for path in written.charts] == ["chart_genimage.png", "chart_agiqa3k.png"]
    with Image.open(written.charts[1]) as chart:
        assert chart.format == "PNG" and chart.width > 400
    assert all((bench / "agiqa3k" / method / "summary.csv").is_file() for method in AFTER)


def test_values_print_as_in_the_paper():
    assert [format_value(v) for v in (0.74436, 71.36, 14.5951, 9.34221, -1.453, -0.0577, None)] == [
        "0.7444", "71.360", "14.595", "9.3422", "-1.4530", "-0.0577", "—",
    ]  # fmt: skip


def test_make_tables_script(bench, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("make_tables", REPO / "scripts" / "make_tables.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(bench)]) == 0
    assert "AGIQA-3K (Table 5): 4 method(s), 2 metric(s)" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert script.main([str(empty)]) == 2
    assert "no <database>/<method>/results.csv" in capsys.readouterr().err
    assert script.main([str(tmp_path / "absent")]) == 2
