"""evaluate_scores() end to end on a miniature AGIQA-3K (real CSV rows, tiny images, tiny models,
weight-free metrics), its cache, and the seeded ratio splits."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from grefine.config import GRefineConfig
from grefine.eval.score_eval import ScoreCache, evaluate_scores
from grefine.eval.scorers import MAP_SCORERS, create_scorers
from grefine.data.splits import parse_ratio, ratio_split
from tests.conftest import REPO

SCORERS = ["pq", "aq", "pq_aq", "clip_surgery", "piqe", "hps"]


@dataclass(frozen=True)
class Record:
    name: str
    image_path: Path
    prompt: str
    mos: dict


@pytest.fixture(scope="module")
def agiqa_rows(shared_dir):
    with open(shared_dir / "data" / "agiqa3k.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return rows[::250][:12]  # 12 images across the generators (AttnGAN ... sd1.5, xl2.2)


def _records(rows, folder: Path, broken: str = ""):
    """Records straight from the CSV rows, each with a tiny random image; ``broken`` is not an image."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    records = []
    for row in rows:
        path = folder / row["name"]
        if row["name"] == broken:
            path.write_bytes(b"not an image")
        else:
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path, format="JPEG")
        mos = {"mos_quality": float(row["mos_quality"]), "mos_align": float(row["mos_align"])}
        records.append(Record(row["name"], path, row["prompt"], mos))
    return records


class _CountingFactory:
    """create_scorers on the tiny config, remembering which names it was asked to build."""

    def __init__(self):
        self.config = GRefineConfig.from_yaml(REPO / "configs" / "tiny-random.yaml")
        self.calls: list[list[str]] = []

    def __call__(self, names):
        self.calls.append(list(names))
        return create_scorers(names, config=self.config, device="cpu", metric_options={"hps": {"checkpoint": "absent/hpc.pt"}})


def _csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_miniature_agiqa3k_end_to_end_with_cache(agiqa_rows, tmp_path):
    broken = agiqa_rows[3]["name"]
    records = _records(agiqa_rows, tmp_path / "images", broken=broken)
    out = tmp_path / "eval"
    factory = _CountingFactory()

    # 1. A weight-free metric first.
    first = evaluate_scores(records, ["piqe"], out, build_scorers=factory, n_boot=20, progress=False)
    assert factory.calls == [["piqe"]]
    assert (first.scored, first.failed) == (11, 1)  # the broken image is an error entry

    # 2. Add scorers and the gate report: only the new ones are built and computed; the maps
    # are built once for the four map scorers.
    second = evaluate_scores(records, SCORERS, out, build_scorers=factory, resume=True, n_boot=20, autoqa=True, progress=False)
    assert factory.calls[1] == ["pq", "aq", "pq_aq", "clip_surgery", "hps"]
    assert second.scored == 11 * 4 and set(second.unavailable) == {"hps"}
    cache_text = (out / "scores.csv").read_text()

    # 3. Again: nothing is computed; only the unavailable scorer is tried again.
    third = evaluate_scores(records, SCORERS, out, build_scorers=factory, resume=True, n_boot=20, autoqa=True, progress=False)
    assert third.scored == 0 and factory.calls[2] == ["hps"]
    assert (out / "scores.csv").read_text() == cache_text

    cache = ScoreCache.read(out / "scores.csv")
    assert len(cache.values) == 11 * 5
    assert all("cannot be read as an image" in cache.errors[(broken, name)] for name in ("pq", "piqe", "aq"))
    for name in ["correlations.csv", "correlations.md", "autoqa.csv", "autoqa.md"]:
        assert (out / name).stat().st_size > 0
    for plot in ["scatter_pq_mos_quality", "scatter_aq_mos_align", "scatter_pq_aq_mos_quality", "scatter_pq_aq_mos_align",
                 "scatter_piqe_mos_quality", "savings_pq_aq", "savings_pq", "savings_piqe"]:  # fmt: skip
        with Image.open(out / "plots" / f"{plot}.png") as image:
            assert image.format == "PNG"
    assert not (out / "plots" / "scatter_hps_mos_align.png").exists()

    # The table compares each scorer with its own MOS column, from the cached scores.
    rows = {(r["scorer"], r["mos"]): r for r in _csv(out / "correlations.csv")}
    assert set(rows) == {("pq", "mos_quality"), ("aq", "mos_align"), ("pq_aq", "mos_quality"), ("pq_aq", "mos_align"),
                         ("clip_surgery", "mos_align"), ("piqe", "mos_quality"), ("hps", "mos_align")}  # fmt: skip
    by_name = {r.name: r for r in records}
    for (scorer, column), row in rows.items():
        if scorer == "hps":
            assert row["n"] == "0" and "unavailable" in row["note"] and row["srcc"] == "nan"
            continue
        scores = cache.scores(scorer)
        values = np.array([scores[n] for n in sorted(scores)])
        mos = np.array([by_name[n].mos[column] for n in sorted(scores)])
        sign = -1.0 if scorer == "piqe" else 1.0  # lower is better: negated
        assert row["n"] == "11" and row["failed"] == "1"
        assert float(row["srcc"]) == pytest.approx(sign * stats.spearmanr(values, mos).statistic, abs=1e-5)
        assert float(row["srcc_low"]) <= float(row["srcc"]) <= float(row["srcc_high"])
    assert "| pq | perceptual | mos_quality | 11 |" in (out / "correlations.md").read_text()

    # The gate report: every available scorer swept against one acceptance (both MOS medians).
    gates = third.gates
    assert set(gates) == {"pq", "aq", "pq_aq", "clip_surgery", "piqe"}
    good = [r for r in records if r.name != broken]
    median_q = np.median([r.mos["mos_quality"] for r in records])
    median_a = np.median([r.mos["mos_align"] for r in records])
    accepted = sum(r.mos["mos_quality"] > median_q and r.mos["mos_align"] > median_a for r in good)
    assert gates["pq_aq"].n_accepted == accepted and gates["pq_aq"].accept_mos == (median_q, median_a)
    gate_rows = _csv(out / "autoqa.csv")
    assert {r["scorer"] for r in gate_rows} == set(gates)
    assert sum(r["best"] == "1" for r in gate_rows) == len(gates)
    report = (out / "autoqa.md").read_text()
    assert "mos_quality >" in report and "| pq_aq | 11 |" in report


class _Brightness:
    """A model-free scorer under the name 'pq' (mean brightness); interrupts on call ``stop_at``."""

    specs = (MAP_SCORERS["pq"],)

    def __init__(self, stop_at=None):
        self.calls, self.stop_at = 0, stop_at

    def __call__(self, image, prompt):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        return {"pq": float(np.asarray(image).mean())}


def test_an_interrupted_run_keeps_what_it_scored(agiqa_rows, tmp_path):
    records = _records(agiqa_rows, tmp_path / "images")
    out = tmp_path / "eval"
    interrupted = _Brightness(stop_at=5)
    with pytest.raises(KeyboardInterrupt):
        evaluate_scores(records, ["pq"], out, build_scorers=lambda names: ([interrupted], {}), n_boot=0, progress=False)
    assert len(ScoreCache.read(out / "scores.csv").values) == 4
    resumed = _Brightness()
    result = evaluate_scores(records, ["pq"], out, build_scorers=lambda names: ([resumed], {}), resume=True, n_boot=0, progress=False)
    assert resumed.calls == 8 and result.scored == 8
    assert len(ScoreCache.read(out / "scores.csv").values) == 12
    fresh = _Brightness()
    evaluate_scores(records, ["pq"], out, build_scorers=lambda names: ([fresh], {}), n_boot=0, progress=False)
    assert fresh.calls == 12  # without resume everything is scored again


def test_inputs_are_checked_before_any_model_is_built(agiqa_rows, tmp_path):
    records = _records(agiqa_rows[:3], tmp_path / "images")

    def never(names):
        raise AssertionError("no model may be built for bad input")

    with pytest.raises(KeyError, match="unknown scorer"):
        evaluate_scores(records, ["pq", "nope"], tmp_path / "out", build_scorers=never)
    with pytest.raises(ValueError, match="has no MOS column \\['mos'\\]"):
        evaluate_scores(records, ["pq"], tmp_path / "out", perceptual_mos="mos", build_scorers=never)
    with pytest.raises(ValueError, match="unique"):
        evaluate_scores(records + records[:1], ["pq"], tmp_path / "out", build_scorers=never)
    with pytest.raises(ValueError, match="no records"):
        evaluate_scores([], ["pq"], tmp_path / "out", build_scorers=never)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "scores.csv").write_text("something,else\n1,2\n")
    with pytest.raises(ValueError, match="not a score cache"):
        evaluate_scores(records, ["pq"], tmp_path / "out", build_scorers=never, resume=True)


def test_ratio_splits_are_seeded_disjoint_and_order_free():
    records = [Record(f"img_{i:03d}.png", Path("."), "", {}) for i in range(50)]
    split = ratio_split(records, "721")
    assert [len(split[p]) for p in ("train", "val", "test")] == [35, 10, 5]
    names = [r.name for phase in split.values() for r in phase]
    assert sorted(names) == sorted(r.name for r in records)
    assert ratio_split(records[::-1], "721") == split  # the loader's order does not matter
    assert ratio_split(records, "721", split_index=2) != split
    assert ratio_split(records, "721", seed=1) != split
    assert ratio_split(records, (0.8, 0.0, 0.2))["val"] == []
    assert parse_ratio("802") == (0.8, 0.0, 0.2)
    for bad in ("80", "812", (0.5, 0.6, 0.1)):
        with pytest.raises(ValueError, match="ratio"):
            ratio_split(records, bad)
    with pytest.raises(ValueError, match="split_index"):
        ratio_split(records, split_index=0)
    with pytest.raises(ValueError, match="repeated names"):
        ratio_split(records + records[:1])
