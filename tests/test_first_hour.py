"""Issue 23: a new user's first hour — the smoke run, refusals, faithful outputs, edge faults.

One test (or a few) per papercut of the issue, in its order. Runner and script behaviour is
driven in-process with stand-in refiners (no models), except the README's smoke command, which
is run exactly as the README writes it, in a fresh-clone layout beside ``../shared``.
"""
from __future__ import annotations

import csv
import errno
import importlib.util
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from grefine.refine.mask import MaskResult
from grefine.run.runner import Models, RunOptions, run_folder, run_items
from grefine.run.sources import scan_folder
from tests.conftest import REPO, SHARED

TINY = REPO / "configs" / "tiny-random.yaml"
DEFAULT = REPO / "configs" / "default.yaml"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_script_23", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REFINE = _script("refine")


# ------------------------------------------------------------------------- stand-ins


@dataclass
class _Out:
    image: Image.Image
    mask: MaskResult

    def summary(self):
        return {"p": 0.5, "a": 0.5, "mask_area": self.mask.coverage}


class _Brighten:
    """Brightens the top half of the image by 40 (the bottom half is left exactly as it was)."""

    def __init__(self, interrupt_on: int | None = None):
        self.calls = 0
        self.interrupt_on = interrupt_on

    def __call__(self, image, prompt, *, seed=None):
        self.calls += 1
        if self.interrupt_on is not None and self.calls == self.interrupt_on:
            raise KeyboardInterrupt
        pixels = np.asarray(image).astype(np.int16)
        pixels[: image.height // 2] += 40
        size = (image.height, image.width)
        mask = MaskResult(binary=np.ones(size, bool), soft=np.ones(size, np.float32))
        return _Out(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), mask)


def _prompted(folder: Path, *images: tuple[str, Image.Image], **save) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in images:
        image.save(folder / name, **save)
        (folder / name).with_suffix(".txt").write_text("a red cube on a table\n")
    return folder


def _rgb(seed=0, size=(24, 16)):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["name"]: row for row in csv.DictReader(handle)}


def _stand_in_loader(refiner, loads: list):
    def loader(config, names, report):
        def load():
            loads.append(config)
            return Models(refiner)

        return load

    return loader


@pytest.fixture
def stand_in(monkeypatch):
    """refine.py with the stand-in refiner in place of the models; the list counts loads."""
    loads: list = []
    refiner = _Brighten()
    monkeypatch.setattr(REFINE, "loader", _stand_in_loader(refiner, loads))
    return refiner, loads


def _main(*args, config=TINY):
    return REFINE.main([str(a) for a in args] + ["--config", str(config), "--no-progress", "--metrics", "none"])


def _offline_default(monkeypatch, tmp_path):
    """The default config on a machine with no weights: empty hub cache, no checkpoints/ here."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no official PQ-Map embeddings fetched yet
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _no_nltk_data(monkeypatch):
    from grefine.maps import syntax_tree

    def missing(error):
        def load():
            raise error("not installed")

        return load

    monkeypatch.setattr(syntax_tree, "load_tagger", missing(syntax_tree.TaggerUnavailableError))
    monkeypatch.setattr(syntax_tree, "load_stopwords", missing(syntax_tree.StopwordsUnavailableError))


# ------------------------------------------------------ 1. the smoke run, offline


def _readme_smoke_command() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.DOTALL)
    smoke = [block.strip() for block in blocks if "configs/tiny-random.yaml" in block and "scripts/refine.py" in block]
    assert smoke, "the README writes the smoke-test command out in full"
    return smoke[0]


def test_readme_smoke_command_runs_offline_in_a_fresh_clone(tmp_path):
    """The README's smoke test, exactly as written, in a clone beside ../shared, no network."""
    command = _readme_smoke_command()
    assert "\n" not in command and "NLTK_DATA" in command  # one command that names the NLTK data step
    clone = tmp_path / "work" / "grefine"
    clone.mkdir(parents=True)
    for entry in ("grefine", "scripts", "configs", "checkpoints", "setup.py", "README.md"):
        (clone / entry).symlink_to(REPO / entry)
    (tmp_path / "work" / "shared").symlink_to(SHARED)
    env = {key: value for key, value in os.environ.items() if key not in ("NLTK_DATA", "HF_HUB_OFFLINE", "PYTHONPATH")}
    env.update(HF_HOME=str(tmp_path / "hf"), HOME=str(tmp_path / "home"), PATH=f"{Path(sys.executable).parent}:{env['PATH']}")
    done = subprocess.run(["bash", "-c", command], cwd=clone, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "should be kept in float32" not in done.stderr, done.stderr[-3000:]
    results = list(clone.rglob("results.csv"))
    assert len(results) == 1 and len(_rows(results[0])) == 4


def test_missing_nltk_data_is_said_to_come_from_nltk_not_the_hub(tmp_path, monkeypatch, capsys, stand_in):
    _no_nltk_data(monkeypatch)
    inputs = _prompted(tmp_path / "in", ("a.png", _rgb()))
    assert _main("--input", inputs, "--output", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "Hugging Face" not in err and "weights" not in err.split("\n")[0], err
    assert "nltk.downloader averaged_perceptron_tagger_eng" in err and "nltk.downloader stopwords" in err and "NLTK_DATA" in err
    assert "smoke test" not in err, "never suggest the config already in use"
    assert stand_in[1] == [] and not (tmp_path / "out").exists()


def test_each_missing_weight_says_where_it_comes_from(tmp_path, monkeypatch, capsys, stand_in):
    _offline_default(monkeypatch, tmp_path)
    inputs = _prompted(tmp_path / "in", ("a.png", _rgb()))
    assert REFINE.main(["--input", str(inputs), "--output", str(tmp_path / "out"), "--config", str(DEFAULT)]) == 2
    lines = capsys.readouterr().err.rstrip("\n").split("\n")
    items = {line.split(":")[0].strip(" -"): line for line in lines if line.startswith("  - ")}
    assert "Hugging Face hub" in items["SDXL inpainting (stage 1)"]
    assert "github.com/Q-Future/Q-Refine" in items["PQ-Map quality embeddings"] and "Hugging Face" not in items["PQ-Map quality embeddings"]
    assert "Hugging Face hub" in items["PASD unet + controlnet (stage 2)"] and "yangtao9009/PASD" in items["PASD unet + controlnet (stage 2)"]
    assert "configs/tiny-random.yaml" in lines[-1]  # another config than the one in use: worth suggesting


# ------------------------------------------- 2. one message, one missing item per line


def test_refusal_lists_one_missing_item_per_line(tmp_path, monkeypatch, capsys, stand_in):
    _offline_default(monkeypatch, tmp_path)
    inputs = _prompted(tmp_path / "in", ("a.png", _rgb()))
    assert REFINE.main(["--input", str(inputs), "--output", str(tmp_path / "out"), "--config", str(DEFAULT)]) == 2
    lines = capsys.readouterr().err.rstrip("\n").split("\n")
    assert lines[0].startswith("grefine: cannot start with config") and lines[0].endswith(":")
    listed = [line for line in lines if line.startswith("  - ")]
    assert len(listed) == 5 and len(lines) == len(listed) + 2  # head, one line per item, where to look
    for source in ("timm/vit_base_patch16_clip_224.openai", "'official'", "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
                   "stable-diffusion-v1-5/stable-diffusion-v1-5", "yangtao9009/PASD"):
        assert sum(source in line for line in listed) == 1, source
    assert all(len(line) < 320 for line in lines)


# ------------------------------------------------------ 3. a refusal creates nothing


def test_refused_demo_run_creates_nothing(tmp_path, monkeypatch, capsys, stand_in):
    _offline_default(monkeypatch, tmp_path)
    assert REFINE.main(["--config", str(DEFAULT)]) == 2
    assert "cannot start" in capsys.readouterr().err
    assert not (tmp_path / "grefine-demo").exists() and {p.name for p in tmp_path.iterdir()} <= {"hf", "cache"}


def test_refused_folder_run_creates_no_output_folder(tmp_path, monkeypatch, capsys, stand_in):
    _no_nltk_data(monkeypatch)
    inputs = _prompted(tmp_path / "in", ("a.png", _rgb()))
    assert _main("--input", inputs, "--output", tmp_path / "deep" / "out") == 2
    assert not (tmp_path / "deep").exists()


# ------------------------------------------------ 4. RGBA and grayscale keep their mode


def _rgba(seed=1, size=(24, 16)):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    pixels[..., 3] = np.where(rng.random((size[1], size[0])) < 0.5, 255, rng.integers(0, 255, (size[1], size[0])))
    return Image.fromarray(pixels, "RGBA")


@pytest.mark.parametrize("output_format", [None, "png"])
def test_rgba_keeps_its_alpha_and_grayscale_stays_grayscale(tmp_path, output_format):
    rgba, gray = _rgba(), _rgb(2).convert("L")
    inputs = _prompted(tmp_path / "in", ("rgba.png", rgba), ("gray.png", gray))
    gray.save(inputs / "gray.jpg", quality=95)
    summary = run_folder(_Brighten(), inputs, tmp_path / "out", output_format=output_format, progress=False)
    assert summary.ok
    out = tmp_path / "out"
    refined = Image.open(out / "rgba.png")
    assert refined.mode == "RGBA"
    alpha = np.asarray(rgba)[..., 3]
    assert np.array_equal(np.asarray(refined)[..., 3], alpha)
    seen = np.asarray(_Brighten()(_on_white(Image.open(inputs / "rgba.png").convert("RGBA")), "x").image)
    opaque = alpha == 255
    assert np.array_equal(np.asarray(refined)[..., :3][opaque], seen[opaque])
    assert np.array_equal(np.asarray(refined)[8:, :, :3], np.asarray(rgba)[8:, :, :3])  # untouched half: every RGBA value kept
    gray_png = Image.open(out / "gray.png")
    assert gray_png.mode == "L"
    expected = np.asarray(gray).astype(int)
    expected[:8] = np.minimum(expected[:8] + 40, 255)
    assert np.array_equal(np.asarray(gray_png), expected)
    gray_jpg = Image.open(out / ("gray.jpg.png" if output_format else "gray.jpg"))
    assert gray_jpg.mode == "L"
    assert all(row["note"] == "" for row in _rows(out / "results.csv").values())


def _on_white(image: Image.Image) -> Image.Image:
    white = Image.new("RGB", image.size, (255, 255, 255))
    white.paste(image, mask=image.getchannel("A"))
    return white


# ------------------------------------------------------- 5. metrics on tiny images


def test_a_metric_too_small_for_an_image_gives_a_one_line_reason(tmp_path):
    from grefine.errors import NotScoredError
    from grefine.eval.metrics import create_metric

    ssim = create_metric("ssim", device="cpu")
    tiny = _rgb(3, (8, 8))
    with pytest.raises(NotScoredError, match=r"8x8 .*at least 11 px"):
        ssim(tiny, reference=tiny)
    inputs = _prompted(tmp_path / "in", ("tiny.png", tiny))
    run_folder(_Brighten(), inputs, tmp_path / "out", metrics=[ssim], metric_names=["ssim"], progress=False)
    errors = _rows(tmp_path / "out" / "results.csv")["tiny.png"]["metric_errors"]
    assert "RuntimeError" not in errors and "Kernel size" not in errors
    assert errors.startswith("ssim/before: not scored: the image is 8x8 px") and "\n" not in errors


# ---------------------------------------------------- 6. --resume with nothing left


def test_resume_with_nothing_left_loads_nothing(tmp_path, capsys, stand_in):
    inputs = _prompted(tmp_path / "in", ("a.png", _rgb()), ("b.png", _rgb(1)))
    assert _main("--input", inputs, "--output", tmp_path / "out") == 0
    capsys.readouterr()
    assert _main("--input", inputs, "--output", tmp_path / "out", "--resume") == 0
    assert len(stand_in[1]) == 1  # the first run loaded; the resume did not
    out = capsys.readouterr().out
    assert "nothing left to do" in out and "2 image(s)" in out


# ------------------------------------------------ 7. offline metric creation is fast


def test_offline_metric_creation_fails_fast_without_download_attempts(monkeypatch, capsys):
    from grefine.eval.metrics import create_metrics

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    attempts = []

    def connect(*args, **kwargs):
        attempts.append(args)
        time.sleep(5)  # a silent network
        raise OSError(errno.ETIMEDOUT, "timed out")

    monkeypatch.setattr(socket, "create_connection", connect)
    monkeypatch.setattr(socket, "getaddrinfo", connect)
    start = time.perf_counter()
    metrics, failures = create_metrics(["musiq", "psnr"], device="cpu", online=False)
    assert time.perf_counter() - start < 5 and attempts == []
    assert [m.name for m in metrics] == ["psnr"]
    assert "\n" not in failures["musiq"] and "; " not in failures["musiq"] and "cannot be reached" in failures["musiq"]
    assert "Downloading" not in capsys.readouterr().out


# ---------------------------------------------------------------- 8. make_tables


def _results(folder: Path, scores: dict[str, list], errors=""):
    folder.mkdir(parents=True)
    columns = ["name", "prompt", "note"] + [f"{m}_{w}" for m in scores for w in ("before", "after")] + ["metric_errors", "error"]
    with open(folder / "results.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        for i, name in enumerate(("a.png", "b.png")):
            row = {"name": name, "prompt": "a cat", "metric_errors": errors, "error": ""}
            for metric, pairs in scores.items():
                before, after = pairs[i] if pairs else ("", "")
                row[f"{metric}_before"], row[f"{metric}_after"] = before, after
            writer.writerow(row)


def test_tables_warn_when_every_metric_was_unavailable(tmp_path, capsys):
    reason = "clipiqa: metric 'clipiqa' is unavailable: its weights are not in the local cache"
    _results(tmp_path / "agiqa3k" / "g-refine", {"clipiqa": []}, errors=reason)
    assert _script("make_tables").main([str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "agiqa3k" in err and "no metric has a value" in err and "weights are not in the local cache" in err
    assert "no metric has a value" in (tmp_path / "tables.md").read_text(encoding="utf-8")


def test_tables_bold_neither_a_lone_method_nor_a_negative_optimisation(tmp_path):
    from grefine.bench.tables import make_tables

    _results(tmp_path / "agiqa3k" / "g-refine", {"clipiqa": [(0.5, 0.6), (0.5, 0.6)]})
    table = make_tables(tmp_path).tables[0]
    cell = table.rows["g-refine"]["clipiqa"]
    assert not cell.first and not cell.second and "**" not in _method_rows(tmp_path)
    _results(tmp_path / "agiqa3k" / "pasd", {"clipiqa": [(0.5, 0.4), (0.5, 0.45)]})  # made worse
    _results(tmp_path / "agiqa3k" / "sdxl-refiner", {"clipiqa": [(0.5, 0.2), (0.5, 0.2)]})  # made worse
    shutil.rmtree(tmp_path / "agiqa3k" / "g-refine")
    table = make_tables(tmp_path).tables[0]
    assert all(cell.negative and not cell.first for cell in (row["clipiqa"] for row in table.rows.values()))
    assert "**" not in _method_rows(tmp_path) and "†" in _method_rows(tmp_path)


def _method_rows(root: Path) -> str:
    lines = (root / "tables.md").read_text(encoding="utf-8").split("\n")
    return "\n".join(line for line in lines if line.startswith("| ") and not line.startswith(("| Method", "| ---", "| *Original")))


# ----------------------------------------------------- 9-10, 13: the score evaluation


@dataclass(frozen=True)
class _Record:
    name: str
    image_path: Path
    prompt: str
    mos: dict


def _mos_records(folder: Path, n: int, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        path = folder / f"{i:02d}.png"
        Image.fromarray(np.full((12, 12, 3), i, dtype=np.uint8)).save(path)
        records.append(_Record(path.name, path, "a cat", {"mos_quality": float(rng.normal(3, 1)), "mos_align": float(rng.normal(3, 1))}))
    return records


def _factory(values: dict[str, dict[int, float]], unavailable: dict[str, str] | None = None):
    """A scorer factory: scores by the image's gray level (its index), some names unavailable."""
    from grefine.eval.scorers import scorer_spec

    class Scorer:
        specs = [scorer_spec(name) for name in values]

        def __call__(self, image, prompt):
            index = int(np.asarray(image)[0, 0, 0])
            return {name: by_index[index] for name, by_index in values.items()}

    def build(names):
        return [Scorer()], {name: reason for name, reason in (unavailable or {}).items() if name in names}

    return build


def test_correlation_tables_escape_newlines_and_pipes(tmp_path):
    from grefine.eval.score_eval import evaluate_scores

    records = _mos_records(tmp_path / "img", 6)
    build = _factory({"piqe": {i: float(i) for i in range(6)}}, {"brisque": "line one\nline two | with a pipe"})
    evaluate_scores(records, ["piqe", "brisque"], tmp_path / "eval", build_scorers=build, n_boot=10, progress=False)
    lines = (tmp_path / "eval" / "correlations.md").read_text(encoding="utf-8").split("\n")
    rows = [line for line in lines if line.startswith(("| piqe", "| brisque"))]
    assert len(rows) == 2
    header = next(line for line in lines if line.startswith("| scorer"))
    for row in rows:
        assert len(re.split(r"(?<!\\)\|", row)) == len(header.split("|")), row
    assert "line one line two \\| with a pipe" in rows[1]


def test_autoqa_report_counts_images_gives_an_interval_and_warns(tmp_path):
    from grefine.eval.score_eval import evaluate_scores

    records = _mos_records(tmp_path / "img", 16)
    accepted = max(range(16), key=lambda i: min(records[i].mos.values()))
    values = {i: (10.0 if i == accepted else float(i % 3)) for i in range(16)}  # one image stands out
    result = evaluate_scores(records, ["piqe"], tmp_path / "eval", build_scorers=_factory({"piqe": {i: -v for i, v in values.items()}}),
                             n_boot=200, autoqa=True, progress=False)
    report = (tmp_path / "eval" / "autoqa.md").read_text(encoding="utf-8")
    best = result.gates["piqe"].best
    row = next(line for line in report.split("\n") if line.startswith("| piqe"))
    assert f"{best.n_passed} / {16 - best.n_passed}" in row  # passed / failed images behind the figure
    assert re.search(r"\d+\.\d% \[(−∞|-?\d+\.\d%), -?\d+\.\d%\]", row), row  # savings with its bootstrap interval
    assert "few images" in row and "< 30" in row


def test_small_samples_are_noted_on_every_table_and_plot(tmp_path):
    from grefine.eval.plots import correlation_title, gate_title
    from grefine.eval.score_eval import evaluate_scores

    records = _mos_records(tmp_path / "img", 16)
    build = _factory({"piqe": {i: float(i % 5) for i in range(16)}})
    result = evaluate_scores(records, ["piqe"], tmp_path / "eval", build_scorers=build, n_boot=20, autoqa=True, progress=False)
    [row] = result.correlations
    assert "small sample (n = 16 < 30)" in row.note
    assert "small sample (n = 16 < 30)" in (tmp_path / "eval" / "correlations.md").read_text(encoding="utf-8")
    assert "small sample" in correlation_title(row.result, "piqe vs mos")
    assert "small sample" in gate_title(result.gates["piqe"], "AutoQA gate on piqe")


def test_a_step_shaped_logistic_fit_is_flagged():
    from grefine.eval.correlation import correlations

    x = np.array([0, 1, 2, 3, 10, 11, 12, 13], dtype=float)
    y = np.array([1, 1.1, 0.9, 1, 4, 4.1, 3.9, 4], dtype=float)
    result = correlations(x, y, n_boot=0)
    assert "step" in result.note


# ----------------------------------------------- 11. training on a small validation set


def test_correlations_of_three_pairs_skip_the_logistic_fit():
    from grefine.eval.correlation import correlations
    from grefine.train.trainer import srcc_plcc

    result = correlations([0.1, 0.5, 0.3], [1.0, 3.0, 2.5], n_boot=50)
    assert result.srcc == pytest.approx(1.0) and np.isnan(result.plcc) and "4" in result.reason
    srcc, plcc = srcc_plcc([0.1, 0.5, 0.3], [1.0, 3.0, 2.5])
    assert srcc == pytest.approx(1.0) and np.isnan(plcc)


def test_training_with_a_three_image_validation_split_runs_and_notes_it(tmp_path, capsys, one_thread):
    rows = []
    for i in range(15):
        name = f"{i:02d}.png"
        Image.fromarray(np.full((32, 32, 3), 10 * i, dtype=np.uint8)).save(tmp_path / name)
        rows.append(f"{name},{i / 3:.3f}")
    (tmp_path / "labels.csv").write_text("image,mos\n" + "\n".join(rows) + "\n")
    argv = ["--data", str(tmp_path / "labels.csv"), "--image-root", str(tmp_path), "--factor", "overall", "--score-column", "mos",
            "--output", str(tmp_path / "out"), "--tiny-random", "--no-progress", "--epochs", "1", "--input-size", "32"]
    assert _script("train_pq_map").main(argv) == 0
    captured = capsys.readouterr()
    assert "3 val" in captured.out and "val_plcc" in captured.err and "too few" in captured.err
    assert (tmp_path / "out" / "PQ-overall.pth").is_file()


# ------------------------------------------------- 12. library warnings while loading


def test_tiny_models_load_without_float32_warnings(one_thread):
    from grefine.pipeline import GRefinePipeline

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep(logging.WARNING)
    logging.getLogger("diffusers").addHandler(handler)
    try:
        GRefinePipeline.from_pretrained(TINY)
    finally:
        logging.getLogger("diffusers").removeHandler(handler)
    assert not [r for r in records if "kept in float32" in r.getMessage()]


def test_library_messages_while_loading_go_to_a_log_named_in_the_summary(tmp_path, capfd):
    inputs = _prompted(tmp_path / "in", ("a.png", _rgb()))

    def load():
        warnings.warn("`torch_dtype` is deprecated", UserWarning)  # pytest.ini ignores FutureWarning
        logging.getLogger("diffusers.models.modeling_utils").warning("There are modules in X that should be kept in float32: []")
        logging.getLogger("bitsandbytes.cextension").warning("Failed to load CPU gemm_4bit_forward")
        return Models(_Brighten())

    summary = run_items(scan_folder(inputs).items, tmp_path / "out", load, options=RunOptions(progress=False))
    err = capfd.readouterr().err
    assert "deprecated" not in err and "float32" not in err and "gemm_4bit" not in err
    assert summary.log == tmp_path / "out" / "grefine.log"
    log = summary.log.read_text(encoding="utf-8")
    assert "torch_dtype" in log and "kept in float32" in log and "gemm_4bit_forward" in log


def test_the_summary_line_names_the_log(tmp_path, monkeypatch, capsys):
    def loader(config, names, report):
        def load():
            warnings.warn("a library message", UserWarning)
            return Models(_Brighten())

        return load

    monkeypatch.setattr(REFINE, "loader", loader)
    inputs = _prompted(tmp_path / "in", ("a.png", _rgb()))
    assert _main("--input", inputs, "--output", tmp_path / "out") == 0
    assert f"library messages: {tmp_path / 'out' / 'grefine.log'}" in capsys.readouterr().out


# ------------------------------------------------ 14. hostile options and configs


@pytest.mark.parametrize(
    "snippet",
    ["mask:\n  dilation: .nan", "mask:\n  feather: .inf", "stage2:\n  strength: .nan", "gate:\n  skip_above:\n    p: .nan",
     "seed: 18446744073709551616", "total_steps: .inf"],
)
def test_non_finite_and_overflowing_config_values_are_refused(tmp_path, capsys, stand_in, snippet):
    path = tmp_path / "hostile.yaml"
    path.write_text(TINY.read_text() + "\n" + snippet + "\n")  # the later key wins
    inputs = _prompted(tmp_path / "in", ("a.png", _rgb()))
    assert _main("--input", inputs, "--output", tmp_path / "out", config=path) == 2
    err = capsys.readouterr().err
    assert err.startswith("grefine: config ") and err.count("\n") == 1, err
    assert stand_in[1] == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--seed", str(2**64)], "--seed"),
        (["--seed", "-1"], "--seed"),
        (["--resume", "--overwrite"], "--overwrite"),
        (["--max-pixels", "abc"], "--max-pixels"),
        (["--prefetch", "1.5"], "--prefetch"),
        (["--no-such-option"], "--no-such-option"),
    ],
)
def test_hostile_options_are_refused_in_one_line(tmp_path, capsys, stand_in, args, fragment):
    inputs = _prompted(tmp_path / "in", ("a.png", _rgb()))
    assert _main("--input", inputs, "--output", tmp_path / "out", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("grefine: ") and err.count("\n") == 1 and fragment in err, err
    assert "usage:" not in err
    assert stand_in[1] == [] and not (tmp_path / "out").exists()


def test_benchmark_options_are_refused_in_one_line(tmp_path, capsys):
    bench = _script("benchmark")
    assert bench.main(["--database", "agiqa3k", "--root", str(tmp_path), "--output", str(tmp_path / "b"), "--resume", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("benchmark: ") and err.count("\n") == 1 and "usage:" not in err


# ---------------------------------------------------------- 15. faults at the edges


def test_a_full_disk_is_refused_cleanly_and_leaves_no_lock(tmp_path, monkeypatch, capsys, stand_in):
    from grefine.run import lock

    inputs = _prompted(tmp_path / "in", ("a.png", _rgb()))

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(lock.os, "write", full)
        assert _main("--input", inputs, "--output", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith("grefine: ") and err.count("\n") == 1 and "No space left on device" in err, err
    assert not (tmp_path / "out").exists() and stand_in[1] == []  # no lock, not even the folder
    assert _main("--input", inputs, "--output", tmp_path / "out") == 0  # space again: the next run goes


def test_an_unreadable_lock_left_behind_is_taken_over(tmp_path, stand_in):
    inputs = _prompted(tmp_path / "in", ("a.png", _rgb()))
    (tmp_path / "out").mkdir()
    lock = tmp_path / "out" / ".grefine.lock"
    lock.write_text("")
    old = time.time() - 600
    os.utime(lock, (old, old))
    assert _main("--input", inputs, "--output", tmp_path / "out") == 0
    assert not lock.exists()


def test_ctrl_c_says_in_one_line_what_was_kept(tmp_path, monkeypatch, capsys):
    loads: list = []
    monkeypatch.setattr(REFINE, "loader", _stand_in_loader(_Brighten(interrupt_on=2), loads))
    inputs = _prompted(tmp_path / "in", ("a.png", _rgb()), ("b.png", _rgb(1)), ("c.png", _rgb(2)))
    assert _main("--input", inputs, "--output", tmp_path / "out", "--prefetch", "0") == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "interrupted" in err and "1 image(s) refined and kept" in err and "--resume" in err
    assert (tmp_path / "out" / "a.png").is_file() and set(_rows(tmp_path / "out" / "results.csv")) == {"a.png"}


def test_resume_removes_temporary_files_left_by_a_kill(tmp_path, stand_in):
    inputs = _prompted(tmp_path / "in", ("a.png", _rgb()), ("b.png", _rgb(1)))
    assert _main("--input", inputs, "--output", tmp_path / "out") == 0
    out = tmp_path / "out"
    leftovers = [out / ".b.png.k3j_9xq2.tmp", out / "maps" / ".b.png.pq.png.a0b1c2d3.tmp", out / ".results.csv.zz11yy22.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a file")
    keep = out / ".notes.tmp"
    keep.write_text("mine")
    (out / "b.png").unlink()
    assert _main("--input", inputs, "--output", tmp_path / "out", "--resume") == 0
    assert not any(path.exists() for path in leftovers) and keep.exists()


# ------------------------------------------------------------ 16. faithful outputs


def _run_one(tmp_path: Path, name: str, write, output_format=None) -> tuple[Path, dict[str, str]]:
    inputs = tmp_path / "in"
    inputs.mkdir(exist_ok=True)
    write(inputs / name)
    (inputs / name).with_suffix(".txt").write_text("a red cube\n")
    out = tmp_path / f"out-{name}"
    summary = run_folder(_Brighten(), inputs, out, output_format=output_format, progress=False)
    assert summary.ok, summary.failed
    target = name if output_format is None else f"{name}.png" if not name.endswith(".png") else name
    return out / target, _rows(out / "results.csv")[name]


def _delta(seen: np.ndarray) -> np.ndarray:
    """What _Brighten changes, in 8-bit steps, on what the refiner saw."""
    change = np.zeros(seen.shape, dtype=np.int32)
    change[: seen.shape[0] // 2] = np.minimum(seen[: seen.shape[0] // 2].astype(np.int32) + 40, 255) - seen[: seen.shape[0] // 2]
    return change


def test_sixteen_bit_grayscale_png_stays_sixteen_bit(tmp_path):
    from grefine.image_io import load_image

    deep = np.random.default_rng(4).integers(0, 65536, (16, 24), dtype=np.uint16)
    out, row = _run_one(tmp_path, "deep.png", lambda p: Image.fromarray(deep).save(p))
    refined = Image.open(out)
    assert refined.mode.startswith("I;16") and row["note"] == ""
    seen = np.asarray(load_image(tmp_path / "in" / "deep.png"))[..., 0]
    expected = np.clip(deep.astype(np.int64) + 257 * _delta(seen), 0, 65535)
    assert np.array_equal(np.asarray(refined).astype(np.int64), expected)


def test_sixteen_bit_rgb_png_stays_sixteen_bit(tmp_path):
    import cv2

    from grefine.image_io import load_image

    deep = np.random.default_rng(5).integers(0, 65536, (16, 24, 3), dtype=np.uint16)  # RGB order
    out, row = _run_one(tmp_path, "deep.png", lambda p: cv2.imwrite(str(p), deep[..., ::-1]))
    refined = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert refined.dtype == np.uint16 and refined.shape == deep.shape and row["note"] == ""
    seen = np.asarray(load_image(tmp_path / "in" / "deep.png"))
    expected = np.clip(deep.astype(np.int64) + 257 * _delta(seen), 0, 65535)
    assert np.array_equal(refined[..., ::-1].astype(np.int64), expected)


def test_la_and_palette_transparency_is_kept(tmp_path):
    rng = np.random.default_rng(6)
    gray = rng.integers(0, 256, (16, 24), dtype=np.uint8)
    alpha = np.where(rng.random((16, 24)) < 0.5, 0, 255).astype(np.uint8)
    out, row = _run_one(tmp_path, "la.png", lambda p: Image.merge("LA", [Image.fromarray(gray), Image.fromarray(alpha)]).save(p))
    refined = Image.open(out)
    assert refined.mode == "LA" and np.array_equal(np.asarray(refined)[..., 1], alpha) and row["note"] == ""

    palette = Image.fromarray(gray).convert("P")
    out, row = _run_one(tmp_path, "p.png", lambda p: palette.save(p, transparency=int(np.asarray(palette)[0, 0])))
    refined = Image.open(out)
    assert refined.mode == "RGBA"
    transparent = np.asarray(palette) == np.asarray(palette)[0, 0]
    assert np.array_equal(np.asarray(refined)[..., 3] == 0, transparent)
    assert "palette" in row["note"] and "RGBA" in row["note"]


def test_lzw_tiff_stays_lzw(tmp_path):
    out, row = _run_one(tmp_path, "x.tif", lambda p: _rgb(7).save(p, compression="tiff_lzw"))
    assert Image.open(out).info["compression"] == "tiff_lzw" and row["note"] == ""


def test_animated_webp_says_only_the_first_frame_was_refined(tmp_path):
    frames = [_rgb(8), _rgb(9)]
    out, row = _run_one(tmp_path, "anim.webp", lambda p: frames[0].save(p, save_all=True, append_images=frames[1:], lossless=True))
    assert getattr(Image.open(out), "n_frames", 1) == 1
    assert "animated" in row["note"] and "first frame" in row["note"]


def test_a_format_that_cannot_hold_the_mode_says_so(tmp_path):
    out, row = _run_one(tmp_path, "gray.webp", lambda p: _rgba(10).save(p, lossless=True))
    assert Image.open(out).mode == "RGBA" and row["note"] == ""
    out, row = _run_one(tmp_path, "cmyk.jpg", lambda p: _rgb(11).convert("CMYK").save(p))
    assert Image.open(out).mode == "RGB" and "CMYK" in row["note"]
