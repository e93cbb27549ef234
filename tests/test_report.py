"""report.html of a run folder and of a benchmark (no browser here: tests/test_browser.py opens them)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

import grefine
from grefine.errors import RunInputError
from grefine.refine.mask import MaskResult
from grefine.run.report import Change, render_run_report, summarize_changes, write_report
from grefine.run.runner import phrase_table, run_folder, write_results


class _Page(HTMLParser):
    """The cards (their attributes), every img src and href, the scripts and stylesheets."""

    def __init__(self, text: str):
        super().__init__()
        self.cards: list[dict] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self.external: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "article" and "card" in attrs.get("class", ""):
            self.cards.append({"id": attrs["id"], "keys": json.loads(attrs["data-keys"]), "gains": json.loads(attrs["data-gains"]), "tags": json.loads(attrs["data-tags"]), "imgs": []})
        if tag == "img":
            self.images.append(attrs["src"])
            if self.cards:
                self.cards[-1]["imgs"].append(attrs["src"])
        if tag == "a":
            self.links.append(attrs["href"])
        if (tag == "script" and "src" in attrs) or (tag == "link" and attrs.get("rel") == "stylesheet"):
            self.external.append(str(attrs))


def _picture(path: Path, seed: int, size=(24, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _row(name, **values):
    return {"name": name, "output": name, "input": f"../in/{name}", "prompt": f"a photo of {name}", "p": 0.4, "a": 0.6, **values}


@pytest.fixture
def run_dir(tmp_path):
    """A run folder as the runner leaves it: five images with every verdict, maps, a phrase table."""
    names = ["ok one.png", "skip.png", "rej.png", "rev.png", "bad#1.png"]
    for seed, name in enumerate(names):
        _picture(tmp_path / "in" / name, seed)
    out = tmp_path / "out"
    for seed, name in enumerate(names[:4]):
        _picture(out / name, seed + 10)
        for kind in ("pq", "pq_overlay", "aq_defect", "mask"):
            _picture(out / "maps" / f"{name}.{kind}.png", seed + 20)
    table = {
        "score": 0.6,
        "prompt_score": 0.8,
        "emphasized_prompt": "a (red cube:1.1) on a table",
        "phrases": [
            {"text": "a red cube", "content": "red cube", "noun": "cube", "ancestor": 0, "score": 0.3, "noun_score": 0.4, "defect": "noun_unmatched", "emphasized": True},
            {"text": "on a table", "content": "table", "noun": "table", "ancestor": 0, "score": 0.7, "noun_score": 0.7, "defect": "none", "emphasized": False},
        ],
    }
    (out / "maps" / "ok one.png.phrases.json").write_text(json.dumps(table), encoding="utf-8")
    rows = [
        _row("ok one.png", psnr_before=30.0, psnr_after=32.0, piqe_before=50.0, piqe_after=40.0, strength1=0.6, stage1_steps=10, note="", gate="refined"),
        _row("skip.png", psnr_before=30.0, psnr_after=30.0, piqe_before=40.0, piqe_after=40.0, gate="skipped", note="gate: skipped"),
        _row("rej.png", psnr_before=30.0, psnr_after=30.0, piqe_before=40.0, piqe_after=45.0, gate="rejected"),
        _row("rev.png", psnr_before=30.0, psnr_after=28.0, piqe_before=40.0, piqe_after=60.0, verify="reverted", p_after=0.3, a_after=0.5),
        {"name": "bad#1.png", "input": "../in/bad#1.png", "prompt": "x", "error": "ImageLoadError: cannot be read"},
    ]
    write_results(out / "results.csv", rows, ["psnr", "piqe"])
    return out


def test_a_card_per_image_with_its_verdict_and_every_file_it_names(run_dir):
    path = write_report(run_dir, lower_better=lambda metric: metric == "piqe")
    assert path == run_dir / "report.html"
    text = path.read_text(encoding="utf-8")
    page = _Page(text)
    tags = {unquote(card["id"]): card["tags"] for card in page.cards}
    assert tags == {"ok one.png": ["refined"], "skip.png": ["skipped"], "rej.png": ["rejected"], "rev.png": ["reverted"], "bad#1.png": ["failed"]}
    for src in page.images:  # relative, quoted, and every one exists
        assert not src.startswith(("/", "http", "file:")) and (run_dir / unquote(src)).is_file(), src
    cards = {unquote(card["id"]): card for card in page.cards}
    assert "../in/ok%20one.png" in cards["ok one.png"]["imgs"] and "maps/ok%20one.png.mask.png" in cards["ok one.png"]["imgs"]
    assert cards["bad#1.png"]["imgs"] == ["../in/bad%231.png"]  # the original only; the rest is marked missing
    assert "ImageLoadError: cannot be read" in text and "refined image not available" in text
    # the summary: counts per verdict, and the mean change with the direction of each metric
    for count, label in ((5, "images"), (1, "refined"), (1, "skipped by the gate"), (1, "rejected by the gate"), (1, "reverted (no better)"), (1, "failed")):
        assert f"<b>{count}</b> {label}" in text, label
    assert cards["ok one.png"]["gains"] == {"psnr": 2.0, "piqe": 10.0}  # p and a have no value after
    assert cards["rev.png"]["gains"] == {"p": pytest.approx(-0.1), "a": pytest.approx(-0.1), "psnr": -2.0, "piqe": -20.0}
    assert cards["rev.png"]["keys"]["d:piqe"] == 20.0 and cards["ok one.png"]["keys"]["name"] == "ok one.png"
    # the phrase table, with the defect kinds in words and the emphasis
    assert "a (red cube:1.1) on a table" in text and "noun-unmatched" in text and "<td>matched</td>" in text
    # nothing from the network: no external script, stylesheet or URL at all
    assert not page.external and "http://" not in text and "https://" not in text


def test_mean_changes_follow_each_metrics_direction():
    per_image = [
        [Change("piqe", 50.0, 40.0, lower_better=True), Change("psnr", 30.0, 28.0)],
        [Change("piqe", 40.0, 45.0, lower_better=True), Change("psnr", None, 28.0)],
    ]
    summaries = {s.key: s for s in summarize_changes(per_image)}
    assert (summaries["piqe"].images, summaries["piqe"].improved, summaries["piqe"].worsened) == (2, 1, 1)
    assert summaries["piqe"].mean_delta == pytest.approx(-2.5)
    assert (summaries["psnr"].images, summaries["psnr"].worsened) == (1, 1)


def test_histograms_show_p_and_a_before_and_after_when_recorded(run_dir):
    text = render_run_report(run_dir, grefine.run.runner.read_run_rows(run_dir))
    assert text.count('<svg class="histogram"') == 2
    assert "after (n=1)" in text and "before (n=4)" in text  # rev.png has p_after / a_after


def test_a_folder_without_rows_yet_gets_an_empty_report_but_report_refuses_a_folder_of_nothing(tmp_path):
    assert "0</b> images" in write_report(tmp_path).read_text(encoding="utf-8")
    with pytest.raises(RunInputError, match="no results.csv"):
        grefine.report(tmp_path / "nothing")


def test_phrase_tables_store_missing_scores_as_null():
    phrase = SimpleNamespace(text="a dog", content="dog", noun="dog", ancestor=0, score=None, noun_score=math.nan, defect="none")
    aq = SimpleNamespace(score=math.nan, prompt_score=0.5, phrases=(phrase,), emphasized_prompt=_Emphasis())
    table = phrase_table(aq)
    assert table["score"] is None and table["phrases"][0]["noun_score"] is None and table["phrases"][0]["emphasized"] is False
    json.dumps(table, allow_nan=False)


class _Emphasis:
    phrases: tuple = ()

    def __str__(self) -> str:
        return "a dog"


# ---------------------------------------------------------------------- the runner's hook


@dataclass
class _Out:
    image: Image.Image
    mask: MaskResult

    def summary(self):
        return {"p": 0.5, "a": 0.5, "mask_area": self.mask.coverage}


class _Invert:
    calls = 0

    def __call__(self, image, prompt, *, seed=None):
        self.calls += 1
        size = (image.height, image.width)
        return _Out(Image.fromarray(255 - np.asarray(image)), MaskResult(np.ones(size, bool), np.ones(size, np.float32)))


def _folder(tmp_path, count=3):
    for k in range(count):
        _picture(tmp_path / "in" / f"img{k}.png", k)
        (tmp_path / "in" / f"img{k}.txt").write_text(f"prompt {k}")
    return tmp_path / "in"


def test_the_runner_writes_the_report_when_it_starts_and_when_it_ends(tmp_path):
    seen = []

    def hook(folder: Path) -> None:
        seen.append(len(grefine.run.runner.read_run_rows(folder)))
        write_report(folder)

    summary = run_folder(_Invert(), _folder(tmp_path), tmp_path / "out", report=hook, report_every=1000.0, progress=False)
    assert summary.ok and seen == [0, 3]  # nothing in between: at most one call every 1000 s
    page = _Page((tmp_path / "out" / "report.html").read_text(encoding="utf-8"))
    for card in page.cards:  # before and after, and the mask over the before (the only map this refiner has)
        name = unquote(card["id"])
        assert card["imgs"] == [name, f"../in/{name}", f"../in/{name}", f"maps/{name}.mask.png"]


def test_the_runner_updates_the_report_as_rows_come(tmp_path):
    refiner, seen = _Invert(), []

    def hook(folder: Path) -> None:  # costs nothing, so that only report_every throttles it
        seen.append(refiner.calls)

    run_folder(refiner, _folder(tmp_path), tmp_path / "out", report=hook, report_every=0.0, prefetch=0, progress=False)
    assert seen == [0, 1, 2, 3, 3]  # start, after each row, end


def test_a_failing_report_never_stops_the_run(tmp_path, capsys):
    def hook(folder: Path) -> None:
        raise OSError("disk full")

    summary = run_folder(_Invert(), _folder(tmp_path), tmp_path / "out", report=hook, report_every=0.0, prefetch=0, progress=False)
    assert summary.ok and len(summary.done) == 3
    assert capsys.readouterr().out.count("report not updated: OSError: disk full") == 1


def test_an_item_named_like_the_report_is_refused(tmp_path):
    _picture(tmp_path / "in" / "report.png", 0)
    (tmp_path / "in" / "report.png").rename(tmp_path / "in" / "report.html")
    from grefine.run.runner import plan_run
    from grefine.run.sources import WorkItem

    with pytest.raises(RunInputError, match="report.html"):
        plan_run([WorkItem("report.html", tmp_path / "in" / "report.html", "x")], tmp_path / "out")


# ---------------------------------------------------------------------- a benchmark folder


def test_a_benchmark_folder_gets_every_report_and_the_methods_side_by_side(tmp_path):
    inputs = _folder(tmp_path)
    bench = tmp_path / "bench"
    run_folder(_Invert(), inputs, bench / "db" / "invert", progress=False)
    fewer = tmp_path / "fewer"  # the second method misses one image
    for path in inputs.iterdir():
        if not path.name.startswith("img2"):
            fewer.mkdir(exist_ok=True)
            (fewer / path.name).write_bytes(path.read_bytes())
    run_folder(_Invert(), fewer, bench / "db" / "identity", progress=False)
    path = grefine.report(bench)
    assert path == bench / "report.html"
    assert all((bench / "db" / m / "report.html").is_file() for m in ("invert", "identity"))
    index = _Page(path.read_text(encoding="utf-8"))
    assert set(index.links) == {"db/report.html", "db/identity/report.html", "db/invert/report.html"}
    text = (bench / "db" / "report.html").read_text(encoding="utf-8")
    page = _Page(text)
    assert [unquote(card["id"]) for card in page.cards] == ["img0.png", "img1.png", "img2.png"]
    for card in page.cards:
        assert all((bench / "db" / unquote(src)).is_file() for src in card["imgs"])
    assert len(page.cards[0]["imgs"]) == 4 and len(page.cards[2]["imgs"]) == 2  # before + after per method
    assert text.count("not run on this image") == 1 and "identity/report.html#img0.png" in text
    assert text.index("identity") < text.index("invert")  # the tables' method order: identity first
