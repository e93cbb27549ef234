"""The folder runner and scripts/refine.py: bad images, prompts, resume, atomic outputs."""
from __future__ import annotations

import csv
import importlib.util
import json
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from grefine.refine.mask import MaskResult
from grefine.run.runner import Processes, read_results, run_folder
from grefine.run.sources import PromptSourceError, read_prompts, scan_folder
from tests.conftest import REPO


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_images(folder, names=("a.png", "b.jpg")):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(folder / name)


def _rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["name"]: row for row in csv.DictReader(handle)}


@dataclass
class _Map:
    map: np.ndarray
    score: float


@dataclass
class _Defects:
    defect_map: np.ndarray
    score: float


@dataclass
class _Out:
    image: Image.Image
    pq: _Map
    aq: _Defects
    mask: MaskResult

    def summary(self):
        return {"p": self.pq.score, "a": self.aq.score, "mask_area": self.mask.coverage}


class _Inverter:
    """A stand-in refiner (inverts the image) so the runner's bookkeeping is tested fast."""

    def __init__(self, fail_on=()):
        self.calls = []
        self.fail_on = fail_on

    def __call__(self, image, prompt, *, seed=None):
        self.calls.append(prompt)
        if prompt in self.fail_on:
            raise RuntimeError("model exploded")
        size = (image.height, image.width)
        mask = MaskResult(binary=np.ones(size, bool), soft=np.ones(size, np.float32))
        return _Out(Image.fromarray(255 - np.asarray(image)), _Map(np.full(size, 0.5, np.float32), 0.5), _Defects(np.zeros(size, np.float32), 0.9), mask)


class _Mean:
    name = "mean"

    def __call__(self, image, prompt=None, reference=None):
        return float(np.asarray(image).mean())


def test_prompt_sources(tmp_path):
    (tmp_path / "p.csv").write_text("name,prompt\na.png,first\nb,second\n")
    (tmp_path / "p.jsonl").write_text(json.dumps({"name": "a.png", "prompt": "j"}) + "\n\n")
    assert read_prompts(tmp_path / "p.csv") == {"a.png": "first", "b": "second"}
    assert read_prompts(tmp_path / "p.jsonl") == {"a.png": "j"}
    _write_images(tmp_path / "in", ("b.jpg", "c.png", "d.png"))
    (tmp_path / "in" / "c.txt").write_text("sidecar prompt\n")
    items = {item.name: item for item in scan_folder(tmp_path / "in", tmp_path / "p.csv").items}
    assert items["b.jpg"].prompt == "second" and items["c.png"].prompt == "sidecar prompt"
    assert items["d.png"].prompt is None and "d.png: no prompt" in items["d.png"].error
    (tmp_path / "bad.csv").write_text("file,text\nx,y\n")
    with pytest.raises(PromptSourceError, match="bad.csv.*'name' and 'prompt'"):
        read_prompts(tmp_path / "bad.csv")
    (tmp_path / "bad.jsonl").write_text("{not json}\n")
    with pytest.raises(PromptSourceError, match="bad.jsonl:1"):
        read_prompts(tmp_path / "bad.jsonl")


def test_one_bad_image_is_a_row_and_the_rest_go_on(tmp_path):
    inputs = tmp_path / "in"
    _write_images(inputs, ("a.png", "b.png", "c.png", "d.png"))
    (inputs / "c.png").write_bytes(b"corrupt")
    (inputs / "prompts.csv").write_text("name,prompt\na.png,ok\nc.png,corrupt one\nd.png,boom\n")
    refiner = _Inverter(fail_on=("boom",))
    summary = run_folder(refiner, inputs, tmp_path / "out", prompts_file=inputs / "prompts.csv", metrics=[_Mean()], metric_names=["mean"], progress=False)
    assert summary.done == ["a.png"] and not summary.ok
    rows = _rows(tmp_path / "out" / "results.csv")
    assert "no prompt" in rows["b.png"]["error"]
    assert "cannot be read as an image" in rows["c.png"]["error"]
    assert "model exploded" in rows["d.png"]["error"]
    assert rows["a.png"]["error"] == "" and float(rows["a.png"]["mean_after"]) == pytest.approx(255 - float(rows["a.png"]["mean_before"]), abs=1e-3)
    assert (tmp_path / "out" / "a.png").is_file() and (tmp_path / "out" / "maps" / "a.png.pq.png").is_file()
    assert not (tmp_path / "out" / "c.png").exists()


def test_resume_skips_finished_images_and_retries_failed_ones(tmp_path):
    inputs = tmp_path / "in"
    _write_images(inputs, ("a.png", "b.png"))
    (inputs / "a.txt").write_text("alpha")
    run_folder(_Inverter(), inputs, tmp_path / "out", progress=False)
    assert _rows(tmp_path / "out" / "results.csv")["b.png"]["error"]
    (inputs / "b.txt").write_text("beta")
    again = _Inverter()
    summary = run_folder(again, inputs, tmp_path / "out", mode="resume", progress=False)
    assert again.calls == ["beta"] and summary.skipped == ["a.png"] and summary.ok
    assert set(_rows(tmp_path / "out" / "results.csv")) == {"a.png", "b.png"}


def test_a_refiner_without_maps_writes_only_its_image_and_row(tmp_path):
    from grefine.bench.methods import IdentityRefiner

    inputs = tmp_path / "in"
    _write_images(inputs, ("a.png", "b.jpg"))
    (inputs / "prompts.csv").write_text("name,prompt\na.png,alpha\nb.jpg,beta\n")
    summary = run_folder(IdentityRefiner(), inputs, tmp_path / "out", prompts_file=inputs / "prompts.csv", metrics=[_Mean()], metric_names=["mean"], progress=False)
    assert summary.done == ["a.png", "b.jpg"] and summary.ok
    out = tmp_path / "out"
    assert not (out / "maps").exists()  # a baseline has no PQ/AQ maps and no mask
    for name in ("a.png", "b.jpg"):
        assert (out / name).read_bytes() == (inputs / name).read_bytes()
    row = _rows(out / "results.csv")["b.jpg"]
    assert row["error"] == "" and row["note"].startswith("identity") and row["stage1_steps"] == "0" and row["p"] == ""
    assert row["mean_before"] == row["mean_after"]


class _Upscaler:
    """A stand-in refiner whose output has another size, as the notebook preset's SDXL 1024x1024."""

    def __call__(self, image, prompt, *, seed=None):
        return _Out(image.resize((64, 64), Image.BICUBIC), _Map(np.full((image.height, image.width), 0.5, np.float32), 0.5), _Defects(np.zeros((image.height, image.width), np.float32), 0.9), MaskResult(binary=np.ones((image.height, image.width), bool), soft=np.ones((image.height, image.width), np.float32)))


def test_full_reference_metrics_score_an_output_of_another_size_at_the_inputs_size(tmp_path):
    from grefine.eval.metrics import create_metrics

    inputs = tmp_path / "in"
    _write_images(inputs, ("a.png",))
    (inputs / "a.txt").write_text("alpha")
    metrics, failures = create_metrics(["psnr", "piqe"], device="cpu")
    assert not failures
    run_folder(_Upscaler(), inputs, tmp_path / "out", metrics=metrics, metric_names=["psnr", "piqe"], progress=False)
    row = _rows(tmp_path / "out" / "results.csv")["a.png"]
    assert row["error"] == "" and row["metric_errors"] == "", row["metric_errors"]
    original = Image.open(inputs / "a.png").convert("RGB")
    back = original.resize((64, 64), Image.BICUBIC).resize(original.size, Image.BICUBIC)
    expected = float(metrics[0](back, reference=original))
    assert float(row["psnr_after"]) == pytest.approx(expected, rel=1e-4) and float(row["psnr_after"]) < float(row["psnr_before"])
    assert row["piqe_after"] != "" and "64x64 output resized to the input's 56x40" in row["note"]


def test_metric_failures_are_recorded_per_row(tmp_path):
    inputs = tmp_path / "in"
    _write_images(inputs, ("a.png",))
    (inputs / "a.txt").write_text("alpha")
    run_folder(_Inverter(), inputs, tmp_path / "out", metric_names=["musiq"], metric_failures={"musiq": "weights missing"}, progress=False)
    row = _rows(tmp_path / "out" / "results.csv")["a.png"]
    assert row["error"] == "" and "musiq: weights missing" in row["metric_errors"] and row["musiq_after"] == ""


def test_processes_split_the_folder_and_merge(tmp_path):
    inputs = tmp_path / "in"
    _write_images(inputs, ("a.png", "b.png", "c.png"))
    for name in "abc":
        (inputs / f"{name}.txt").write_text(name)
    refiners = [_Inverter(), _Inverter()]
    for index in (1, 0):  # the main process (0) merges after the barrier
        run_folder(refiners[index], inputs, tmp_path / "out", processes=Processes(index, 2), mode="resume", progress=False)
    assert refiners[0].calls == ["a", "c"] and refiners[1].calls == ["b"]
    assert set(read_results(tmp_path / "out" / "results.csv")) == {"a.png", "b.png", "c.png"}
    assert not list((tmp_path / "out").glob("results.part*.csv"))


def test_refine_script_with_tiny_random_config(tmp_path, capsys):
    inputs = tmp_path / "in"
    _write_images(inputs, ("one.png", "two.jpg", "three.png"))
    (inputs / "three.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (inputs / "prompts.csv").write_text("name,prompt\none.png,a red cube on a blue table\ntwo.jpg,a cat wearing a hat\nthree.png,a dog\n")
    refine = _load_script("refine")
    args = ["--input", str(inputs), "--output", str(tmp_path / "out"), "--prompts", str(inputs / "prompts.csv"),
            "--config", str(REPO / "configs" / "tiny-random.yaml"), "--no-progress"]
    assert refine.main(args) == 1
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["one.png", "report.html", "results.csv", "two.jpg"]
    for stem in ("one.png", "two.jpg"):
        for kind in ("pq", "aq_defect", "mask", "pq_overlay"):
            assert (out / "maps" / f"{stem}.{kind}.png").is_file()
        assert json.loads((out / "maps" / f"{stem}.phrases.json").read_text(encoding="utf-8"))["phrases"]
    rows = _rows(out / "results.csv")
    assert rows["three.png"]["error"] and not rows["one.png"]["error"] and not rows["two.jpg"]["error"]
    assert float(rows["one.png"]["psnr_after"]) < float(rows["one.png"]["psnr_before"])
    assert int(rows["one.png"]["stage1_steps"]) + int(rows["one.png"]["stage2_steps"]) > 0
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix in (".png", ".jpg")}
    assert refine.main(args + ["--resume"]) == 1  # the corrupt image still fails
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix in (".png", ".jpg")} == mtimes
    assert "0 refined, 2 already done, 1 failed" in capsys.readouterr().out


def test_refine_script_stops_at_once_without_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    _write_images(tmp_path / "in", ("a.png",))
    refine = _load_script("refine")
    assert refine.main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]) == 2
    message = capsys.readouterr().err
    assert "cannot start with config" in message and "missing (the Hugging Face hub cannot be reached" in message
    assert "checkpoints/README.md" in message
    assert "diffusers/stable-diffusion-xl-1.0-inpainting-0.1" in message
