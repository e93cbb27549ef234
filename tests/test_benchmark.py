"""scripts/benchmark.py end to end on miniature databases, then scripts/make_tables.py.

A miniature AGIQA-3K (its exact data.csv header and real rows of ../shared/data/agiqa3k.csv, tiny
images in nested folders, one listed image missing) is refined with ``identity`` (every change
exactly 0) and ``g-refine`` with tiny random models, scored with the weight-free metrics psnr,
ssim and piqe. ``build_refiner`` is wrapped to count model loads (every refusal happens before
any) and to hand out one tiny G-Refine built for the module.
"""
from __future__ import annotations

import csv
import importlib.util

import numpy as np
import pytest
from PIL import Image

from grefine.errors import RunInputError
from grefine.bench import benchmark
from grefine.data.databases import Database, DatabaseRecord
from grefine.bench.methods import build_refiner, load_method, tiny_random_overrides
from grefine.eval.metrics import PAPER_METRICS
from grefine.run.runner import plan_run
from tests.conftest import REPO

AGIQA3K_ROWS = (2, 62, 1000, 2000, 2500)  # line numbers in ../shared/data/agiqa3k.csv (1 = header)
MISSING = "sd1.5_lowcorr_216.jpg"  # line 2000: listed, no image
METRICS = "psnr,ssim,piqe"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCH = _script("benchmark")
TABLES = _script("make_tables")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_grefine(one_thread):
    return build_refiner(load_method("g-refine", overrides=tiny_random_overrides("g-refine")))


@pytest.fixture(autouse=True)
def loads(monkeypatch, request):
    """The methods whose models were built in this test; a tiny g-refine is the module's one."""
    calls = []

    def build(method):
        calls.append(method.name)
        if method.name == "g-refine":
            assert method.settings.tiny_random
            return request.getfixturevalue("tiny_grefine")
        return build_refiner(method)  # an ablation (Table 8) builds its own tiny pipeline

    monkeypatch.setattr(benchmark, "build_refiner", build)
    return calls


def _image(path, seed, size=(40, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)


@pytest.fixture(scope="module")
def agiqa3k(tmp_path_factory, shared_dir):
    """AGIQA-3K as unpacked: ``AGIQA-3K/data.csv`` and the images in nested folders."""
    lines = (shared_dir / "data" / "agiqa3k.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    root = tmp_path_factory.mktemp("agiqa3k-download")
    (root / "AGIQA-3K").mkdir()
    (root / "AGIQA-3K" / "data.csv").write_text("".join(lines[n - 1] for n in (1, *AGIQA3K_ROWS)), encoding="utf-8")
    for seed, number in enumerate(AGIQA3K_ROWS):
        name = lines[number - 1].split(",")[0]
        if name != MISSING:
            _image(root / "AGIQA-3K" / "images" / name.split("_")[0] / name, seed, size=(40 + 8 * seed, 32))
    return root


def _run(*args, metrics=METRICS):
    argv = [str(a) for a in args] + ["--no-progress"] + (["--metrics", metrics] if metrics else [])
    return BENCH.main(argv)


def _rows(path, key="name"):
    with open(path, newline="", encoding="utf-8") as handle:
        return {row[key]: row for row in csv.DictReader(handle)}


def _summary(folder):
    return _rows(folder / "summary.csv", key="metric")


def test_two_methods_then_the_tables_then_resume(agiqa3k, tmp_path, capsys, loads):
    out = tmp_path / "bench"
    common = ["--database", "agiqa3k", "--root", agiqa3k, "--output", out]
    assert _run(*common, "--method", "identity") == 0
    err = capsys.readouterr().err
    assert f"1 listed image(s) not found under {agiqa3k}, skipped (first: {MISSING})" in err and "agiqa3k: 4 image(s)" in err

    identity = out / "agiqa3k" / "identity"
    rows = _rows(identity / "results.csv")
    assert len(rows) == 4 and MISSING not in rows and all(row["error"] == "" for row in rows.values())
    assert rows["AttnGAN_normal_060.jpg"]["prompt"] == "artwork with only triangles, anime style"
    for row in rows.values():
        for metric in METRICS.split(","):
            assert row[f"{metric}_before"] == row[f"{metric}_after"] != ""
        assert (identity / row["name"]).read_bytes() == next(agiqa3k.rglob(row["name"])).read_bytes()
    for metric, line in _summary(identity).items():
        assert float(line["change"]) == 0.0 and (line["improved"], line["worsened"], line["unchanged"]) == ("0", "0", "4"), metric
        assert line["negative_optimisation"] == "False"
    assert not (identity / "maps").exists() and (identity / "summary.md").is_file()

    assert _run(*common, "--method", "g-refine", "--tiny-random") == 0
    grefine = out / "agiqa3k" / "g-refine"
    rows = _rows(grefine / "results.csv")
    assert len(rows) == 4 and all(row["error"] == "" and row["metric_errors"] == "" for row in rows.values())
    assert all(float(row["psnr_after"]) < float(row["psnr_before"]) for row in rows.values())  # noise models change every image
    assert all((grefine / "maps" / f"{name}.{kind}.png").is_file() for name in rows for kind in ("pq", "aq_defect", "mask"))
    summary = _summary(grefine)
    assert set(summary) == {"psnr", "ssim", "piqe"} and summary["psnr"]["worsened"] == "4"
    assert summary["psnr"]["negative_optimisation"] == "True" and summary["piqe"]["lower_better"] == "True"
    assert loads == ["identity", "g-refine"]
    # report.html: each method's, the two methods side by side per image (before | after each), the index
    assert all((out / "agiqa3k" / method / "report.html").is_file() for method in ("identity", "g-refine")) and (out / "report.html").is_file()
    comparison = (out / "agiqa3k" / "report.html").read_text(encoding="utf-8")
    assert comparison.count('<article class="card"') == 4 and comparison.count('<div class="compare"') == 8

    assert TABLES.main([str(out)]) == 0
    tables = (out / "tables.md").read_text(encoding="utf-8")
    assert "### AGIQA-3K (Table 5)" in tables and "| identity |" in tables and "| g-refine |" in tables
    assert "\\begin{tabular}" in (out / "tables.tex").read_text(encoding="utf-8")
    assert Image.open(out / "chart_agiqa3k.png").size[0] > 100

    outputs = {path: path.stat().st_mtime_ns for path in (out / "agiqa3k").rglob("*") if path.suffix in (".jpg", ".png")}
    capsys.readouterr()
    for method in (["--method", "identity"], ["--method", "g-refine", "--tiny-random"]):
        assert _run(*common, *method, "--resume") == 0
        assert "0 refined, 4 already done, 0 failed" in capsys.readouterr().out
    assert {path: path.stat().st_mtime_ns for path in outputs} == outputs

    assert _run(*common, "--method", "identity") == 2  # an earlier run's folder: --resume or --overwrite
    assert "add --resume to continue it" in capsys.readouterr().err


def test_table8_one_generator_with_an_ablation_method(agiqa3k, tmp_path, capsys, loads):
    """Paper Table 8: one generator's images (--match), a g-refine ablation method (stage 1 only)."""
    out = tmp_path / "bench"
    common = ["--database", "agiqa3k", "--root", agiqa3k, "--output", out, "--match", "sd1.5_*,midjourney_*"]
    assert _run(*common, "--method", "g-refine-stage1-only", "--tiny-random", metrics="psnr") == 0
    assert "agiqa3k: 2 image(s) matching sd1.5_*,midjourney_*" in capsys.readouterr().err  # sd1.5_lowcorr_216 has no image
    rows = _rows(out / "agiqa3k" / "g-refine-stage1-only" / "results.csv")
    assert sorted(rows) == ["midjourney_lowstep_110.jpg", "sd1.5_normal_116.jpg"]
    assert all(row["error"] == "" and row["stage2_steps"] == "0" and int(row["stage1_steps"]) > 0 for row in rows.values())
    assert loads == ["g-refine-stage1-only"]
    assert _run(*common[:-1], "SD1.5_*", "--method", "identity") == 2  # patterns are case-sensitive
    assert "no record name matches SD1.5_* (names look like: AttnGAN_normal_000.jpg" in capsys.readouterr().err


def test_the_never_worse_method_reports_its_reverted_share_and_negative_optimisation_rates(agiqa3k, tmp_path, capsys, loads):
    """configs/never-worse.yaml as a method: a reverted image is scored unchanged, the summary prints
    the reverted share and make_tables the share of images each metric made worse."""
    out = tmp_path / "bench"
    common = ["--database", "agiqa3k", "--root", agiqa3k, "--output", out, "--match", "sd1.5_*,midjourney_*"]
    assert _run(*common, "--method", "g-refine-never-worse", "--tiny-random", metrics="psnr") == 0
    rows = _rows(out / "agiqa3k" / "g-refine-never-worse" / "results.csv")
    reverted = [row["verify"] for row in rows.values()].count("reverted")
    assert len(rows) == 2 and all(row["verify"] in ("kept", "reverted") for row in rows.values())
    for row in rows.values():  # psnr against the input: inf when reverted, finite (worse) when kept
        assert (row["psnr_after"] == row["psnr_before"]) == (row["verify"] == "reverted")
    assert f"verify: {reverted} of 2 verified images reverted ({50.0 * reverted:.1f} %)" in capsys.readouterr().out
    assert TABLES.main([str(out)]) == 0
    tables = (out / "tables.md").read_text(encoding="utf-8")
    assert "Negative-optimisation rate, AGIQA-3K (Table 5)" in tables
    assert f"| g-refine-never-worse | {50.0 * (2 - reverted):.1f} % | {50.0 * reverted:.1f} % |" in tables
    assert loads == ["g-refine-never-worse"]

    config = tmp_path / "select-psnr.yaml"
    config.write_text(f"base: {REPO / 'configs' / 'never-worse.yaml'}\nverify:\n  select: psnr\n")
    method = tmp_path / "g-refine-psnr.yaml"
    method.write_text(f"type: g-refine\nconfig: {config}\n")
    assert _run(*common, "--method", method, "--tiny-random", metrics="psnr") == 2
    err = capsys.readouterr().err
    assert "verify.select in" in err and "psnr is a full-reference metric" in err and err.count("\n") == 1
    assert loads == ["g-refine-never-worse"]  # refused before any model loads


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"--database": "agiqa4k"}, "--database agiqa4k: unknown database; known databases: agiqa1k, agiqa3k"),
        ({"--method": "sdxl-turbo"}, "unknown method 'sdxl-turbo'; known methods:"),
        ({"--root": "EMPTY"}, "agiqa3k: no AGIQA-3K metadata under"),
        ({"--root": "NOWHERE"}, "is not a folder. Point it at the unpacked download of AGIQA-3K"),
        ({"--output": "INSIDE"}, "lies inside the database root"),
        ({"--metrics": "musik"}, "--metrics: unknown metric(s) musik (did you mean musiq?)"),
        ({"--config": "configs/tiny-random.yaml"}, "method identity is of type identity; change its YAML instead"),
        ({"--limit": "0"}, "--limit 0: a sample needs at least one image"),
        ({"--name": "a/b"}, "method name 'a/b': must be a folder name"),
    ],
)
def test_bad_input_is_refused_before_any_model_loads(agiqa3k, tmp_path, capsys, loads, change, fragment):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    places = {"EMPTY": tmp_path / "empty", "NOWHERE": tmp_path / "nowhere", "INSIDE": agiqa3k / "bench"}
    options = {"--database": "agiqa3k", "--root": agiqa3k, "--output": tmp_path / "bench", "--method": "identity", "--metrics": METRICS}
    options.update({key: places.get(value, value) for key, value in change.items()})
    assert BENCH.main([str(a) for pair in options.items() for a in pair] + ["--no-progress"]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and err.startswith("benchmark: ")
    assert loads == [] and not (tmp_path / "bench").exists() and not (agiqa3k / "bench").exists()


def test_missing_weights_give_the_one_preflight_message(agiqa3k, tmp_path, capsys, loads, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache; HF_HUB_OFFLINE=1
    assert _run("--database", "agiqa3k", "--root", agiqa3k, "--output", tmp_path / "bench", "--method", "sdxl-refiner") == 2
    err = capsys.readouterr().err
    assert "cannot start with method sdxl-refiner" in err and "stable-diffusion-xl-refiner-1.0' (config key model)" in err
    assert "checkpoints/README.md" in err and err.count("\n") == 1 and loads == []


def test_the_default_metrics_are_the_papers_thirteen(agiqa3k, tmp_path):
    args = BENCH.parse_args(["--database", "agiqa3k", "--root", str(agiqa3k), "--output", str(tmp_path)])
    assert BENCH.metric_names(args) == list(PAPER_METRICS) and len(PAPER_METRICS) == 13
    assert BENCH.method_from_args(args).name == "g-refine"


def test_a_record_that_cannot_be_refined_is_a_failed_row(tmp_path, capsys, loads):
    """GenImage: a file whose ImageNet class cannot be read is an error record -> a failed row."""
    ai = tmp_path / "GenImage" / "ADM" / "imagenet_ai_0508_adm" / "val" / "ai"
    _image(ai / "033_adm_1.png", 0)
    _image(ai / "no-class.png", 1)
    _image(ai.parent / "nature" / "n01440764_1.png", 2)  # a real photo: not refined
    out = tmp_path / "bench"
    assert _run("--database", "genimage", "--root", tmp_path / "GenImage", "--output", out, "--method", "identity") == 1
    captured = capsys.readouterr()
    assert "1 record(s) that cannot be refined, kept as error rows (first: no-class.png)" in captured.err
    assert "1 refined, 0 already done, 1 failed" in captured.out
    rows = _rows(out / "genimage" / "identity" / "results.csv")
    assert set(rows) == {"033_adm_1.png", "no-class.png"} and rows["033_adm_1.png"]["prompt"] == "a photo of a loggerhead sea turtle"
    assert "cannot read the ImageNet class of 'no-class.png'" in rows["no-class.png"]["error"]
    assert "2 images, 1 failed (left out)" in (out / "genimage" / "identity" / "summary.md").read_text(encoding="utf-8")


def test_work_item_names_are_unique_relative_paths(tmp_path):
    def record(name, split, error=""):
        return DatabaseRecord(name, tmp_path / split / name.split("/")[-1], "" if error else "a cat", {}, split, error)

    database = Database(
        "mine",
        tmp_path,
        [record("x.png", "train"), record("x.png", "val"), record("X.PNG", "val"), record("sub/y.png", "train"), record("../../z.png", "val"), record("w.png", "val", "bad class")],
    )
    items = benchmark.benchmark_items(database)
    assert [item.name for item in items] == ["x.png", "val/x.png", "val/X~2.PNG", "sub/y.png", "z.png", "w.png"]
    assert items[-1].prompt is None and items[-1].error == "bad class"
    plan = plan_run(items, tmp_path / "out")  # the runner accepts every name: no collision, nothing outside
    assert len({plan.output_path(item) for item in items}) == 6
    with pytest.raises(RunInputError, match="lies inside the database root"):
        benchmark.benchmark_folder(tmp_path / "bench", "mine", "identity", tmp_path)

