"""scripts/evaluate_scores.py end to end on a miniature AGIQA-3K (real rows of ../shared's
agiqa3k.csv, tiny images, --tiny-random maps, the weight-free PIQE), its resume, its split syntax
and its refusals (exit 2, one line, before any model loads)."""
from __future__ import annotations

import csv
import importlib.util
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

import grefine.eval.scorers as scorers_module
from grefine.data.mos import load_rated
from grefine.eval.scorers import PAPER_SCORERS, TABLE6_SCORERS, TABLE7_SCORERS, list_scorers
from grefine.data.splits import SplitSpec, ratio_split
from tests.conftest import REPO

SCORERS = "pq,aq,pq_aq,piqe"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cli():
    spec = importlib.util.spec_from_file_location("evaluate_scores_script", REPO / "scripts" / "evaluate_scores.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def agiqa_rows(shared_dir):
    with open(shared_dir / "data" / "agiqa3k.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return rows[::250][:12]  # 12 images across the generators


def _write_agiqa3k(root, rows):
    """A miniature AGIQA-3K download: data.csv with ``rows`` and a tiny image for each."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "data.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    rng = np.random.default_rng(0)
    for row in rows:
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / row["name"])
    return root


@pytest.fixture(scope="module")
def mini_root(agiqa_rows, tmp_path_factory):
    return _write_agiqa3k(tmp_path_factory.mktemp("agiqa3k"), agiqa_rows)


def _forbid_models(monkeypatch):
    """From now on, building any scorer's model fails the test."""

    def never(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(scorers_module, "build_maps", never)
    monkeypatch.setattr(scorers_module, "create_metric", never)


@pytest.fixture
def no_models(monkeypatch):
    _forbid_models(monkeypatch)


def _csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_miniature_agiqa3k_tables_plots_gate_report_and_resume(cli, mini_root, agiqa_rows, tmp_path, capsys, monkeypatch):
    out = tmp_path / "eval"
    argv = ["--database", "agiqa3k", "--root", str(mini_root), "--output", str(out), "--scorers", SCORERS,
            "--tiny-random", "--autoqa", "--n-boot", "20", "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    assert "12 images of agiqa3k (split all) x 4 scorers: 48 scores computed, 0 failed" in capsys.readouterr().out

    # Each scorer against its own MOS column, recomputed here from scores.csv and the CSV rows.
    mos = {row["name"]: row for row in agiqa_rows}
    scores: dict[str, dict[str, float]] = {}
    for row in _csv(out / "scores.csv"):
        scores.setdefault(row["scorer"], {})[row["name"]] = float(row["value"])
    assert {name: len(values) for name, values in scores.items()} == {"pq": 12, "aq": 12, "pq_aq": 12, "piqe": 12}
    rows = {(r["scorer"], r["mos"]): r for r in _csv(out / "correlations.csv")}
    assert set(rows) == {("pq", "mos_quality"), ("aq", "mos_align"), ("pq_aq", "mos_quality"), ("pq_aq", "mos_align"), ("piqe", "mos_quality")}
    for (scorer, column), row in rows.items():
        names = sorted(scores[scorer])
        values = np.array([scores[scorer][n] for n in names]) * (-1 if scorer == "piqe" else 1)
        expected = stats.spearmanr(values, [float(mos[n][column]) for n in names]).statistic
        assert row["n"] == "12" and float(row["srcc"]) == pytest.approx(expected, abs=1e-5)
    assert "| pq_aq | combined | mos_align | 12 |" in (out / "correlations.md").read_text()
    plots = ["scatter_pq_mos_quality", "scatter_aq_mos_align", "scatter_pq_aq_mos_quality", "scatter_pq_aq_mos_align",
             "scatter_piqe_mos_quality", "savings_pq", "savings_aq", "savings_pq_aq", "savings_piqe"]  # fmt: skip
    for plot in plots:
        with Image.open(out / "plots" / f"{plot}.png") as image:
            assert image.format == "PNG"
    assert {r["scorer"] for r in _csv(out / "autoqa.csv")} == {"pq", "aq", "pq_aq", "piqe"}
    assert "(the median of each column)" in (out / "autoqa.md").read_text()

    # Again without --resume: refused, nothing lost. With --resume: nothing is computed (no
    # model is even built), the cache is unchanged and the gate report follows --accept-mos.
    cache = (out / "scores.csv").read_bytes()
    assert cli.main(argv) == 2
    assert "holds an earlier evaluation" in capsys.readouterr().err
    _forbid_models(monkeypatch)
    assert cli.main(argv + ["--resume", "--accept-mos", "2.5"]) == 0
    assert "0 scores computed" in capsys.readouterr().out
    assert (out / "scores.csv").read_bytes() == cache
    assert "mos_quality > 2.5 and mos_align > 2.5" in (out / "autoqa.md").read_text()
    assert not (out / ".grefine.lock").exists()


def test_a_ratio_split_evaluates_its_seeded_part(cli, mini_root, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["--database", "agiqa3k", "--root", str(mini_root), "--output", str(out), "--scorers", "piqe",
            "--split", "505:test:7", "--n-boot", "0", "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    assert "6 images of agiqa3k (split 505:test:7:1)" in capsys.readouterr().out
    records = load_rated("agiqa3k", mini_root).records
    expected = sorted(r.name for r in ratio_split(records, "505", seed=7)["test"])
    assert sorted(r["name"] for r in _csv(out / "scores.csv")) == expected
    assert _csv(out / "correlations.csv")[0]["n"] == "6"


def test_split_syntax_round_trips_and_refuses_bad_parts():
    assert SplitSpec.parse("all") == SplitSpec("all") and SplitSpec.parse("test") == SplitSpec("test")
    assert SplitSpec.parse("802:test") == SplitSpec("test", "802", 123, 1)
    assert SplitSpec.parse("721:val:5:2") == SplitSpec("val", "721", 5, 2)
    assert str(SplitSpec.parse("802:test")) == "802:test:123:1"
    for bad, message in [("82:test", "three digits"), ("802:dev", "one of train, val, test"), ("802:test:x", "seed"),
                         ("802:test:1:0", "index"), ("802:test:1:1:1", "too many"), ("", "RATIO:PHASE")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            SplitSpec.parse(bad)


def test_default_scorers_are_the_maps_and_the_papers_indicators(cli):
    assert cli.scorer_names(None) == list(PAPER_SCORERS)
    assert set(PAPER_SCORERS) == {"pq", "aq", "pq_aq", "clip_surgery", *TABLE6_SCORERS, *TABLE7_SCORERS}
    assert set(PAPER_SCORERS) <= set(list_scorers())


def _aigiqa20k(root, test_mos: bool):
    root.mkdir()
    for split, names in (("train", ["SD_0001.png"]), ("test", ["IF_0001.png", "IF_0002.png", "IF_0003.png"])):
        frame = {"name": names, "prompt": ["a tree"] * len(names)}
        if split == "train" or test_mos:
            frame["MOS"] = [3.0 + i for i in range(len(names))]  # the case of a column does not matter
        pd.DataFrame(frame).to_csv(root / f"info_{split}.csv", index=False)
        for name in names:
            Image.new("RGB", (8, 8)).save(root / name)
    return root


def test_aigiqa20k_uses_its_one_mos_for_both_kinds_and_its_test_split_by_default(tmp_path):
    rated = load_rated("aigiqa20k", _aigiqa20k(tmp_path / "db", test_mos=True))
    assert (rated.split, rated.perceptual, rated.alignment) == ("test", "mos", "mos")
    assert [(r.name, r.mos) for r in rated.records] == [("IF_0001.png", {"mos": 3.0}), ("IF_0002.png", {"mos": 4.0}), ("IF_0003.png", {"mos": 5.0})]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--database": "agiqa2k"}, "unknown database 'agiqa2k'"),
        ({"--database": "diffusiondb"}, "has no human MOS"),
        ({"--root": "{root}/absent"}, "is not a folder"),
        ({"--split": "test"}, r"has no split 'test' \(its splits: all\).*802:test"),
        ({"--split": "82:test"}, "three digits"),
        ({"--scorers": "pqq"}, r"unknown scorer 'pqq' \(did you mean pq\?\)"),
        ({"--scorers": "psnr"}, "full-reference"),
        ({"--scorers": " , "}, "names no scorer"),
        ({"--config": "{tmp}/bad.yaml"}, "pq_map.num_blocks must be ≥ 1"),
        ({"--accept-mos": "3"}, "--accept-mos applies only to the gate report: add --autoqa"),
        ({"--autoqa": None, "--costs": "1,2"}, "three costs are needed"),
        ({"--autoqa": None, "--costs": "-1,0,0.5"}, "c_gen must be a finite cost ≥ 0"),
        ({"--autoqa": None, "--accept-mos": "nan"}, "finite MOS level"),
        ({"--n-boot": "-1"}, "--n-boot must be"),
        ({"--output": "{root}/data.csv"}, "is a file, not a folder"),
        ({"--resume": None, "--output": "{tmp}/old"}, "not a score cache"),
        ({"--config": "{repo}/configs/default.yaml"}, r"^(?!.*stage1\.model).*missing.*pq_map\.embeddings"),  # the maps' alone
    ],
)
def test_bad_input_is_refused_with_one_line_before_any_model(cli, mini_root, tmp_path, capsys, no_models, monkeypatch, change, message):
    (tmp_path / "bad.yaml").write_text("pq_map:\n  num_blocks: 0\n")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "scores.csv").write_text("a,b\n1,2\n")
    monkeypatch.chdir(tmp_path)  # no checkpoints/ here: the default config's weights are missing
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    options = {"--database": "agiqa3k", "--root": "{root}", "--output": "{tmp}/out", "--scorers": SCORERS, "--tiny-random": None, "--no-progress": None}
    options.update(change)
    if "--config" in change:
        del options["--tiny-random"]
    argv = []
    for flag, value in options.items():
        argv.append(flag if value is None else f"{flag}={value.format(root=mini_root, tmp=tmp_path, repo=REPO)}")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("evaluate_scores: ")
    assert len(err) == 1 or all(line.startswith("  - ") for line in err[1:-1])  # missing weights: one per line
    assert re.search(message, " ".join(err)), err
    assert not (tmp_path / "out" / "scores.csv").exists()


@pytest.mark.parametrize(
    "test_mos, split, message",
    [(False, None, "split test has no MOS column 'mos'.*withholds the test MOS"), (True, "val", "has no split|not found")],
)
def test_an_aigiqa20k_split_without_mos_is_refused(cli, tmp_path, capsys, no_models, test_mos, split, message):
    root = _aigiqa20k(tmp_path / "db", test_mos=test_mos)
    argv = ["--database", "aigiqa20k", "--root", str(root), "--output", str(tmp_path / "out"), "--scorers", "piqe", "--no-progress"]
    assert cli.main(argv + (["--split", split] if split else [])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0]), err


def test_images_without_their_mos_are_refused(cli, agiqa_rows, tmp_path, capsys, no_models):
    rows = [dict(row) for row in agiqa_rows]
    rows[2]["mos_align"] = ""
    root = _write_agiqa3k(tmp_path / "db", rows)
    argv = ["--database", "agiqa3k", "--root", str(root), "--output", str(tmp_path / "out"), "--scorers", "piqe", "--no-progress"]
    assert cli.main(argv) == 2
    assert f"1 of the 12 images of split all have no mos_align (first: {rows[2]['name']})" in capsys.readouterr().err
