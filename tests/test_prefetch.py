"""The overlapping folder runner (issue 13): images decoded ahead of the refiner and written and
scored behind it in worker threads give the same results.csv and files as the strictly sequential
run, report each phase's failures the same way, keep the queues bounded, and lose nothing when the
run is interrupted."""
from __future__ import annotations

import csv
import threading
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

import grefine.run.runner as runner_module
from grefine import GRefinePipeline
from grefine.config import ConfigError, GRefineConfig
from grefine.run.runner import RunOptions, run_folder
from tests.conftest import REPO

TIMING_COLUMNS = {"maps_seconds", "stage1_seconds", "stage2_seconds", "total_seconds"}


def _rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _inputs(folder, count=4):
    """``count`` good images with prompts, one corrupt image, one without a prompt, one whose
    prompt makes :class:`_Failing` raise inside the refiner."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    lines = ["name,prompt"]
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (40 + 4 * index, 48, 3), dtype=np.uint8)).save(folder / f"img{index}.png")
        lines.append(f"img{index}.png,a red cube number {index} on a blue table")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    lines.append("corrupt.png,a dog")
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / "unprompted.png")
    Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(folder / "explodes.png")
    lines.append("explodes.png,boom")
    (folder / "prompts.csv").write_text("\n".join(lines) + "\n")
    return folder


class _Failing:
    """Wraps a refiner; raises inside phase 2 for the prompt ``boom``."""

    def __init__(self, refiner):
        self.refiner = refiner

    def __call__(self, image, prompt, *, seed=None):
        if prompt == "boom":
            raise RuntimeError("model exploded")
        return self.refiner(image, prompt, seed=seed)


class _Mean:
    name = "mean"

    def __call__(self, image, prompt=None, reference=None):
        return float(np.asarray(image, dtype=np.float64).mean())


class _Fails:
    """A metric that fails on the refined image of one item (phase 3 goes on)."""

    name = "picky"

    def __call__(self, image, prompt=None, reference=None):
        if "number 1" in prompt and reference is not None and image is not reference:
            raise ValueError("cannot score this one")
        return 1.0


@pytest.fixture(scope="module")
def tiny_pipeline(one_thread):
    return GRefinePipeline.from_pretrained(REPO / "configs" / "tiny-random.yaml")


def test_prefetching_run_writes_the_same_results_and_files_as_the_sequential_one(tiny_pipeline, tmp_path):
    inputs = _inputs(tmp_path / "in")
    outputs = {}
    for prefetch in (0, 2):
        out = tmp_path / f"out{prefetch}"
        summary = run_folder(
            _Failing(tiny_pipeline),
            inputs,
            out,
            prompts_file=inputs / "prompts.csv",
            metrics=[_Mean(), _Fails()],
            metric_names=["mean", "picky"],
            prefetch=prefetch,
            progress=False,
        )
        assert sorted(summary.failed) == ["corrupt.png", "explodes.png", "unprompted.png"]
        outputs[prefetch] = (out, _rows(out / "results.csv"), summary)
    (seq, seq_rows, seq_summary), (pre, pre_rows, pre_summary) = outputs[0], outputs[2]
    assert seq_summary.done == pre_summary.done == [f"img{i}.png" for i in range(4)]
    assert [row["name"] for row in seq_rows] == [row["name"] for row in pre_rows]  # same order
    for a, b in zip(seq_rows, pre_rows, strict=True):
        assert {k: v for k, v in a.items() if k not in TIMING_COLUMNS} == {k: v for k, v in b.items() if k not in TIMING_COLUMNS}
        assert (a["total_seconds"] == "") == (b["total_seconds"] == "")
    by_name = {row["name"]: row for row in pre_rows}
    assert "cannot be read as an image" in by_name["corrupt.png"]["error"]  # phase 1
    assert "no prompt" in by_name["unprompted.png"]["error"]  # phase 1
    assert by_name["explodes.png"]["error"] == "RuntimeError: model exploded"  # phase 2
    assert "picky/after: ValueError: cannot score this one" in by_name["img1.png"]["metric_errors"]  # phase 3
    files = sorted(p.relative_to(seq).as_posix() for p in seq.rglob("*") if p.is_file() and p.name != ".grefine.lock")
    assert files == sorted(p.relative_to(pre).as_posix() for p in pre.rglob("*") if p.is_file() and p.name != ".grefine.lock")
    assert "maps/img3.png.mask.png" in files
    for name in files:
        if name != "results.csv":
            assert (seq / name).read_bytes() == (pre / name).read_bytes(), name


@dataclass
class _Result:
    image: Image.Image

    def summary(self):
        return {"p": 0.5}


class _Recording:
    """A refiner, a metric and a decoder that log the phases in one event list; optionally each
    waits (up to ``timeout`` s) for the next item's previous phase, which only an overlapping
    runner lets happen."""

    def __init__(self, wait: bool, timeout: float = 10.0):
        self.events: list[tuple[str, str]] = []
        self.changed = threading.Condition()
        self.wait = wait
        self.timeout = timeout
        self.waits: list[bool] = []
        self.name = "recorder"

    def log(self, phase, name):
        with self.changed:
            self.events.append((phase, name))
            self.changed.notify_all()

    def wait_for(self, event):
        with self.changed:
            self.waits.append(self.changed.wait_for(lambda: event in self.events, timeout=self.timeout))

    def decode(self, original):
        def decode(path, max_pixels=None):
            self.log("decode", path.stem)
            return original(path, max_pixels)

        return decode

    def __call__(self, image, prompt=None, reference=None, *, seed=None):
        if reference is None:  # the refiner
            self.log("refine", prompt)
            following = f"img{int(prompt[3:]) + 1}"
            if self.wait and following != "img4":
                self.wait_for(("decode", following))  # phase 1 of the next item runs ahead
            return _Result(image.copy())
        if image is not reference:  # the metric, on the refined image
            following = f"img{int(prompt[3:]) + 1}"
            if self.wait and following != "img4":
                self.wait_for(("refine", following))  # phase 3 runs behind the next item's phase 2
            self.log("finish", prompt)
        return 0.0


def _named_inputs(folder, count=4):
    folder.mkdir(parents=True)
    for index in range(count):
        Image.new("RGB", (24, 16), (index * 40, 0, 0)).save(folder / f"img{index}.png")
        (folder / f"img{index}.txt").write_text(f"img{index}")
    return folder


def test_decoding_runs_ahead_and_writing_behind_the_refiner(tmp_path, monkeypatch):
    inputs = _named_inputs(tmp_path / "in")
    recorder = _Recording(wait=True)
    monkeypatch.setattr(runner_module, "load_image", recorder.decode(runner_module.load_image))
    summary = run_folder(recorder, inputs, tmp_path / "out", metrics=[recorder], metric_names=["recorder"], prefetch=2, progress=False)
    assert summary.ok and len(summary.done) == 4
    assert recorder.waits and all(recorder.waits)  # every wait was met: the phases overlapped
    events = recorder.events
    assert events.index(("refine", "img1")) < events.index(("finish", "img0"))
    assert [name for phase, name in events if phase == "finish"] == [f"img{i}" for i in range(4)]  # rows in item order


def test_prefetch_zero_runs_every_phase_in_turn(tmp_path, monkeypatch):
    inputs = _named_inputs(tmp_path / "in", 3)
    recorder = _Recording(wait=False)
    monkeypatch.setattr(runner_module, "load_image", recorder.decode(runner_module.load_image))
    run_folder(recorder, inputs, tmp_path / "out", metrics=[recorder], metric_names=["recorder"], prefetch=0, progress=False)
    assert recorder.events == [(phase, f"img{i}") for i in range(3) for phase in ("decode", "refine", "finish")]
    assert not any(t.name.startswith("grefine-") for t in threading.enumerate())  # no worker thread


@pytest.mark.parametrize("prefetch", [1, 3])
def test_at_most_prefetch_images_wait_decoded(tmp_path, monkeypatch, prefetch):
    inputs = _named_inputs(tmp_path / "in", 8)
    recorder = _Recording(wait=False)
    monkeypatch.setattr(runner_module, "load_image", recorder.decode(runner_module.load_image))
    ahead = []

    def refiner(image, prompt, *, seed=None):
        with recorder.changed:
            decoded = sum(phase == "decode" for phase, _ in recorder.events)
            refined = sum(phase == "refine" for phase, _ in recorder.events)
        ahead.append(decoded - refined - 1)  # decoded, not yet refined, besides this one
        return recorder(image, prompt, seed=seed)

    run_folder(refiner, inputs, tmp_path / "out", metrics=[recorder], metric_names=["recorder"], prefetch=prefetch, progress=False)
    assert max(ahead) <= prefetch and len(ahead) == 8


def test_an_interruption_keeps_every_refined_image_and_row(tmp_path):
    inputs = _named_inputs(tmp_path / "in", 5)

    def refiner(image, prompt, *, seed=None):
        if prompt == "img3":
            raise KeyboardInterrupt
        return _Result(Image.fromarray(255 - np.asarray(image)))

    with pytest.raises(KeyboardInterrupt):
        run_folder(refiner, inputs, tmp_path / "out", metrics=[_Mean()], metric_names=["mean"], prefetch=2, progress=False)
    rows = _rows(tmp_path / "out" / "results.csv")
    assert [row["name"] for row in rows] == ["img0.png", "img1.png", "img2.png"]
    assert all((tmp_path / "out" / row["name"]).is_file() for row in rows)
    assert not (tmp_path / "out" / ".grefine.lock").exists()
    assert not any(t.name.startswith("grefine-") for t in threading.enumerate())  # worker threads ended


def test_prefetch_is_checked(tmp_path):
    with pytest.raises(ValueError, match="prefetch must be an integer >= 0"):
        RunOptions(prefetch=-1)
    (tmp_path / "bad.yaml").write_text("prefetch: -1\n")
    with pytest.raises(ConfigError, match="prefetch"):
        GRefineConfig.from_yaml(tmp_path / "bad.yaml")
    assert GRefineConfig.from_yaml(REPO / "configs" / "default.yaml").prefetch == 2


def test_runner_benchmark_script_reports_each_prefetch(tmp_path, capsys):
    from tests.test_scripts import _load

    script = _load(REPO / "scripts" / "benchmark_runner.py")
    argv = ["--images", "3", "--size", "48", "--refine-seconds", "0.02", "--metrics", "psnr", "--prefetch", "0", "1", "--keep", str(tmp_path)]
    assert script.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("3 images of 48") and [line.split(":")[0] for line in lines[1:]] == ["prefetch 0", "prefetch 1"]
    assert len(_rows(tmp_path / "output-prefetch1" / "results.csv")) == 3
