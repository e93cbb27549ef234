"""The fault matrix of issue 9, one named case per failure once seen on ``scripts/refine.py``.

Driven through the script's ``main(argv)`` in-process (the tiny random config; its models are
built once for the module and handed out by a patched ``GRefinePipeline.from_pretrained``, which
also counts loads, so that every refusal is shown to happen before any model loads), and through
real processes where they are the point (``torchrun`` with two CPU processes).
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import yaml
from PIL import Image, ImageCms, JpegImagePlugin

from grefine.image_io import as_rgb_image, load_image
from grefine.pipeline import GRefinePipeline
from grefine.run.runner import run_folder
from grefine.run.sources import scan_folder
from grefine.tiny import build_tiny_pasd_stage2
from tests.conftest import REPO

TINY = REPO / "configs" / "tiny-random.yaml"
NON_UTF8 = b"caf\xe9.png"  # latin-1 bytes: not valid UTF-8
ARTIST = 0x013B
ORIENTATION = 0x0112


def _load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("refine_script", REPO / "scripts" / "refine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REFINE = _load_script()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_pipeline(one_thread):
    return GRefinePipeline.from_pretrained(TINY)


@pytest.fixture(autouse=True)
def loads(monkeypatch, tiny_pipeline):
    """Model loads of this test: the module's tiny models, with the config each run asked for."""
    calls = []

    def from_pretrained(config, select_metric=None):
        calls.append(config)
        stage2 = tiny_pipeline.stage2 if config.stage2.type else None
        return GRefinePipeline(tiny_pipeline.pq_map, tiny_pipeline.aq_map, tiny_pipeline.stage1, stage2, config, select_metric)

    monkeypatch.setattr(GRefinePipeline, "from_pretrained", staticmethod(from_pretrained))
    return calls


def _pixels(seed=0, size=(40, 32)):
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def _image(path: Path, seed=0, size=(40, 32), **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_pixels(seed, size)).save(path, **save)
    return path


def _folder(root: Path, names=("a.png",)) -> Path:
    for seed, name in enumerate(names):
        _image(root / name, seed)
        (root / name).with_suffix(".txt").write_text(f"a red cube number {seed}\n")
    return root


def _config(tmp_path: Path, **sections) -> Path:
    data = yaml.safe_load(TINY.read_text())
    for key, value in sections.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _main(*args, config=TINY, metrics="none"):
    argv = [str(a) for a in args] + ["--config", str(config), "--no-progress"]
    if metrics is not None:
        argv += ["--metrics", metrics]
    return REFINE.main(argv)


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["name"]: row for row in csv.DictReader(handle)}


def _refused(code, capsys, loads, *fragments):
    """Exit 2, one line on stderr holding every fragment, no model loaded."""
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("grefine: ") and "\n" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    assert loads == []
    return err


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------- data loss or corruption


@pytest.mark.parametrize("spelling", ["same", "dot-and-slash", "symlink"])
def test_output_is_input_folder(tmp_path, capsys, loads, spelling):
    inputs = _folder(tmp_path / "in", ("a.png", "b.jpg"))
    before = _snapshot(inputs)
    output = {"same": inputs, "dot-and-slash": tmp_path / "in" / ".." / "in" / ".", "symlink": tmp_path / "link"}[spelling]
    if spelling == "symlink":
        output.symlink_to(inputs)
    _refused(_main("--input", inputs, "--output", output), capsys, loads, "is the input folder")
    assert _snapshot(inputs) == before


def test_output_path_resolves_to_an_input_file(tmp_path, capsys, loads):
    inputs = _folder(tmp_path / "in", ("a.png",))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.png").symlink_to(inputs / "a.png")
    before = _snapshot(inputs)
    _refused(_main("--input", inputs, "--output", tmp_path / "out", "--overwrite"), capsys, loads, "would replace the input", "a.png")
    assert _snapshot(inputs) == before


def test_output_would_replace_the_prompts_file(tmp_path, capsys, loads):
    inputs = _folder(tmp_path / "in", ("a.png",))
    (tmp_path / "out").mkdir()
    prompts = tmp_path / "out" / "results.csv"
    prompts.write_text("name,prompt\na.png,a cube\n")
    _refused(_main("--input", inputs, "--output", tmp_path / "out", "--prompts", prompts), capsys, loads, "would replace the input")
    assert prompts.read_text() == "name,prompt\na.png,a cube\n"


def _icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _exif(orientation: int = 1) -> bytes:
    exif = Image.Exif()
    exif[ARTIST] = "grefine test"
    exif[ORIENTATION] = orientation
    return exif.tobytes()


def test_jpeg_unchanged_by_the_refiner_is_copied_byte_for_byte(tmp_path, loads):
    inputs = tmp_path / "in"
    _image(inputs / "a.jpg", quality=75, icc_profile=_icc(), exif=_exif())
    (inputs / "a.txt").write_text("a red cube")
    config = _config(tmp_path, mask={"perceptual_bound": 0.0, "alignment_bound": 1.0}, stage2={"type": None})  # empty mask, no stage 2
    assert _main("--input", inputs, "--output", tmp_path / "out", config=config) == 0
    assert (tmp_path / "out" / "a.jpg").read_bytes() == (inputs / "a.jpg").read_bytes()
    assert "stage 1 skipped" in _rows(tmp_path / "out" / "results.csv")["a.jpg"]["note"]


def test_refined_jpeg_keeps_icc_exif_subsampling_at_quality_95(tmp_path, loads):
    inputs, icc = tmp_path / "in", _icc()
    _image(inputs / "a.jpg", size=(32, 48), quality=90, subsampling=0, icc_profile=icc, exif=_exif(orientation=6))
    (inputs / "a.txt").write_text("a red cube")
    assert _main("--input", inputs, "--output", tmp_path / "out") == 0
    with Image.open(tmp_path / "out" / "a.jpg") as out:
        assert out.info["icc_profile"] == icc
        assert out.getexif()[ARTIST] == "grefine test" and out.getexif()[ORIENTATION] == 1  # pixels are upright
        assert out.size == (48, 32)  # the EXIF rotation was applied once
        assert JpegImagePlugin.get_sampling(out) == 0  # 4:4:4 like the input (PIL's default is 4:2:0)
        reference = io.BytesIO()
        out.save(reference, "JPEG", quality=95, subsampling=0)
        assert Image.open(reference).quantization == out.quantization


def test_format_png_is_lossless_and_named_apart(tmp_path, loads, tiny_pipeline):
    inputs = tmp_path / "in"
    _image(inputs / "a.jpg", quality=95)
    (inputs / "a.txt").write_text("a red cube")
    assert _main("--input", inputs, "--output", tmp_path / "out", "--format", "png") == 0
    expected = tiny_pipeline(load_image(inputs / "a.jpg"), "a red cube", seed=0).image
    with Image.open(tmp_path / "out" / "a.jpg.png") as out:
        assert out.format == "PNG" and np.array_equal(np.asarray(out), np.asarray(expected))
    assert _rows(tmp_path / "out" / "results.csv")["a.jpg"]["output"] == "a.jpg.png"


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory, tiny_pipeline):
    """One tiny run, umask 002, over: dup.png + dup.jpg, a non-UTF-8 file name, a sidecar with a BOM."""
    root = tmp_path_factory.mktemp("shared")
    inputs = root / "in"
    _image(inputs / "dup.png", seed=1)
    _image(inputs / "dup.jpg", seed=2, quality=95)
    (inputs / "dup.txt").write_text("a blue sphere")
    (inputs / "bom.png").write_bytes((inputs / "dup.png").read_bytes())
    (inputs / "bom.txt").write_bytes("\ufeffa green cone".encode("utf-8"))
    with open(os.fsencode(inputs) + b"/" + NON_UTF8, "wb") as handle:
        Image.fromarray(_pixels(3)).save(handle, format="PNG")
    with open(os.fsencode(inputs) + b"/caf\xe9.txt", "wb") as handle:
        handle.write(b"a yellow cup")
    mask = os.umask(0o002)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(GRefinePipeline, "from_pretrained", staticmethod(lambda config, select_metric=None: GRefinePipeline(
                tiny_pipeline.pq_map, tiny_pipeline.aq_map, tiny_pipeline.stage1, tiny_pipeline.stage2, config, select_metric)))
            code = _main("--input", inputs, "--output", root / "out")
    finally:
        os.umask(mask)
    return code, inputs, root / "out"


def test_same_stem_inputs_never_share_outputs_or_maps(shared_run):
    code, _, out = shared_run
    assert code == 0
    for name in ("dup.png", "dup.jpg"):
        assert (out / name).is_file()
        for kind in ("pq", "aq_defect", "mask", "pq_overlay"):
            assert (out / "maps" / f"{name}.{kind}.png").is_file()
    overlay = {name: np.asarray(Image.open(out / "maps" / f"{name}.pq_overlay.png")) for name in ("dup.png", "dup.jpg")}
    assert not np.array_equal(overlay["dup.png"], overlay["dup.jpg"])  # each drawn over its own image


def test_output_modes_follow_the_umask(shared_run):
    _, _, out = shared_run
    for path in [out / "dup.png", out / "dup.jpg", out / "results.csv", out / "maps" / "dup.png.pq.png"]:
        assert path.stat().st_mode & 0o777 == 0o664, path


def test_rerun_without_resume_refuses_and_keeps_results(shared_run, tmp_path, capsys, loads):
    _, inputs, out = shared_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    before = (copy / "results.csv").read_bytes()
    _refused(_main("--input", inputs, "--output", copy), capsys, loads, "earlier run", "--resume", "--overwrite")
    assert (copy / "results.csv").read_bytes() == before


def test_second_input_into_the_same_output_refuses(shared_run, tmp_path, capsys, loads):
    _, _, out = shared_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    other = _folder(tmp_path / "other", ("x.png", "y.png"))
    _refused(_main("--input", other, "--output", copy), capsys, loads, "earlier run")
    assert not (copy / "x.png").exists()


def test_new_run_refuses_to_replace_files_without_results(tmp_path, capsys, loads):
    inputs = _folder(tmp_path / "in", ("a.png",))
    _image(tmp_path / "out" / "a.png", seed=9)
    before = (tmp_path / "out" / "a.png").read_bytes()
    _refused(_main("--input", inputs, "--output", tmp_path / "out"), capsys, loads, "would be replaced", "--overwrite")
    assert (tmp_path / "out" / "a.png").read_bytes() == before


def test_overwrite_interrupted_keeps_every_row(shared_run, tmp_path, loads, monkeypatch):
    _, inputs, out = shared_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    rows_before = _rows(copy / "results.csv")
    calls = []

    def interrupted(self, image, prompt, *, seed=None):
        calls.append(prompt)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user stops the run on the second image
        return original_call(self, image, prompt, seed=seed)

    original_call = GRefinePipeline.__call__
    monkeypatch.setattr(GRefinePipeline, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _main("--input", inputs, "--output", copy, "--overwrite")
    rows = _rows(copy / "results.csv")
    assert set(rows) == set(rows_before) and len(rows) == 4
    assert not (copy / ".grefine.lock").exists()


def test_resume_merges_part_files_and_keeps_rows_of_other_images(tmp_path, loads):
    inputs = _folder(tmp_path / "in", ("a.png", "b.png"))
    out = tmp_path / "out"
    header = "name,prompt,p,a,mask_area,error\n"
    out.mkdir()
    (out / "results.csv").write_text(header + "gone.png,old prompt,0.5,0.5,0.1,\n")
    (out / "results.part1.csv").write_text(header + "b.png,a red cube number 1,0.5,0.5,0.1,\n")
    _image(out / "b.png", seed=5)
    assert _main("--input", inputs, "--output", out, "--resume") == 0
    rows = _rows(out / "results.csv")
    assert set(rows) == {"a.png", "b.png", "gone.png"} and not list(out.glob("results.part*"))
    assert len(loads) == 1 and rows["b.png"]["p"] == "0.5"  # b was done by the killed run: skipped


# ------------------------------------------------------------------- silent wrong prompts


@pytest.mark.parametrize(
    "suffix, text, fragments",
    [
        ("csv", "name,prompt\na.png,masterpiece, a cat, 4k\n", ["prompts.csv:2", "4 fields", "Quote"]),
        ("jsonl", '{"name": "a.png", "prompt": null}\n', ["prompts.jsonl:1", '"prompt" must be a string', "null"]),
        ("jsonl", '{"name": "a.png", "prompt": 12345}\n', ["prompts.jsonl:1", "12345 (a number)"]),
        ("jsonl", '{"name": "a.png", "prompt": ["a", "dog"]}\n', ["prompts.jsonl:1", "(a list)"]),
        ("csv", "name,prompt\na.png,first\nb.png,x\na.png,second\n", ["'a.png' is given twice (lines 2 and 4)"]),
    ],
    ids=["csv-unquoted-commas", "jsonl-prompt-null", "jsonl-prompt-number", "jsonl-prompt-list", "csv-duplicate-names"],
)
def test_bad_prompts_file_is_refused_naming_the_line(tmp_path, capsys, loads, suffix, text, fragments):
    inputs = _folder(tmp_path / "in", ("a.png", "b.png"))
    prompts = tmp_path / f"prompts.{suffix}"
    prompts.write_text(text)
    _refused(_main("--input", inputs, "--output", tmp_path / "out", "--prompts", prompts), capsys, loads, *fragments)
    assert not (tmp_path / "out").exists()


def test_sidecar_bom_is_removed(shared_run):
    _, _, out = shared_run
    assert _rows(out / "results.csv")["bom.png"]["prompt"] == "a green cone"


# ------------------------------------------------------------------------- late crashes


def test_non_utf8_file_name_is_refined_and_recorded(shared_run):
    code, _, out = shared_run
    assert code == 0
    row = _rows(out / "results.csv")["caf\\xe9.png"]
    assert row["error"] == "" and row["prompt"] == "a yellow cup"
    assert NON_UTF8 in os.listdir(os.fsencode(out))
    assert NON_UTF8.replace(b".png", b".png.pq.png") in os.listdir(os.fsencode(out / "maps"))


def test_non_utf8_file_name_resumes(shared_run, tmp_path, capsys, loads):
    _, inputs, out = shared_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    assert _main("--input", inputs, "--output", copy, "--resume") == 0
    assert "0 refined, 4 already done, 0 failed" in capsys.readouterr().out
    assert _rows(copy / "results.csv") == _rows(out / "results.csv")


def test_latin1_prompts_file_is_refused_naming_it(tmp_path, capsys, loads):
    inputs = _folder(tmp_path / "in", ("a.png",))
    prompts = tmp_path / "prompts.csv"
    prompts.write_bytes("name,prompt\na.png,un café crème\n".encode("latin-1"))
    _refused(_main("--input", inputs, "--output", tmp_path / "out", "--prompts", prompts), capsys, loads,
             "prompts.csv:2", "not valid UTF-8", "--prompt-encoding")
    assert scan_folder(inputs, prompts, "latin-1").items[0].prompt == "un café crème"


def test_latin1_sidecar_is_refused_naming_it(tmp_path, capsys, loads):
    inputs = _folder(tmp_path / "in", ("a.png",))
    (inputs / "a.txt").write_bytes("une tasse de café".encode("latin-1"))
    _refused(_main("--input", inputs, "--output", tmp_path / "out"), capsys, loads, "a.txt:1", "not valid UTF-8")
    assert scan_folder(inputs, None, "latin-1").items[0].prompt == "une tasse de café"


def _read_only_output(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o555)
        return tmp_path / "ro" / "out"
    if not os.path.isdir("/sys") or os.access("/sys", os.W_OK) and _writable("/sys"):
        pytest.skip("root, and no read-only file system at /sys")
    return Path("/sys/grefine-out")  # root writes anywhere but on a read-only mount


def _writable(folder: str) -> bool:
    try:
        os.mkdir(os.path.join(folder, "grefine-probe"))
    except OSError:
        return False
    os.rmdir(os.path.join(folder, "grefine-probe"))
    return True


@pytest.mark.parametrize("case", ["output-is-a-file", "output-parent-is-a-file", "output-read-only"])
def test_unusable_output_folder_is_refused(tmp_path, capsys, loads, case):
    inputs = _folder(tmp_path / "in", ("a.png",))
    (tmp_path / "file.png").write_bytes(b"x")
    output = {
        "output-is-a-file": lambda: tmp_path / "file.png",
        "output-parent-is-a-file": lambda: tmp_path / "file.png" / "out",
        "output-read-only": lambda: _read_only_output(tmp_path),
    }[case]()
    expected = "cannot write there" if case == "output-read-only" else "file.png"
    _refused(_main("--input", inputs, "--output", output), capsys, loads, f"--output {output}", expected)


def test_unknown_metric_is_refused_before_loading(tmp_path, capsys, loads):
    inputs = _folder(tmp_path / "in", ("a.png",))
    _refused(_main("--input", inputs, "--output", tmp_path / "out", metrics="psnr,musiqq"), capsys, loads, "musiqq", "musiq")


@pytest.mark.parametrize(
    "content, fragment",
    [(b"\x00\xff\xfe garbage", "not a grefine results file"), (b"name,prompt,p,a,mask_area,error\na.png,x,0.5\n", ":2: damaged")],
    ids=["resume-corrupt-results", "resume-truncated-results"],
)
def test_resume_with_a_damaged_results_csv_is_refused(tmp_path, capsys, loads, content, fragment):
    inputs = _folder(tmp_path / "in", ("a.png",))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results.csv").write_bytes(content)
    _refused(_main("--input", inputs, "--output", tmp_path / "out", "--resume"), capsys, loads, fragment, "Move it away")
    assert (tmp_path / "out" / "results.csv").read_bytes() == content


def test_resume_with_a_foreign_results_csv_is_refused(tmp_path, capsys, loads):
    inputs = _folder(tmp_path / "in", ("a.png",))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results.csv").write_text("id,score\n1,0.3\n")
    _refused(_main("--input", inputs, "--output", tmp_path / "out", "--resume"), capsys, loads, "not a grefine results file", "no column name")


@pytest.mark.parametrize(
    "section, values, fragment",
    [
        ("mask", {"perceptual_bound": "high"}, "mask.perceptual_bound must be a number, got 'high'"),
        ("mask", {"dilation": -5}, "mask.dilation must be ≥ 0, got -5"),
        ("total_steps", "four", "total_steps must be a whole number, got 'four'"),
        ("metrics", "psnr", "metrics must be a list of strings, got 'psnr' (a string); write it as a list, e.g. [psnr]"),
    ],
    ids=["config-threshold-string", "config-dilation-negative", "config-total-steps-string", "config-metrics-string"],
)
def test_config_values_are_typed_and_range_checked_at_load(tmp_path, capsys, loads, section, values, fragment):
    inputs = _folder(tmp_path / "in", ("a.png",))
    config = _config(tmp_path, **{section: values})
    _refused(_main("--input", inputs, "--output", tmp_path / "out", config=config, metrics=None), capsys, loads, "config.yaml", fragment)


@pytest.mark.parametrize("kind", ["numpy-array", "torch-tensor", "pil-La"])
def test_library_accepts_arrays_tensors_and_every_pil_mode(tiny_pipeline, kind):
    pixels = _pixels(4, (32, 24))
    reference = Image.fromarray(pixels)
    if kind == "numpy-array":
        given = pixels
    elif kind == "torch-tensor":
        given = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0
    else:
        given = Image.fromarray(np.stack([pixels[..., 0], np.full_like(pixels[..., 0], 200)], axis=-1)).convert("La")
        on_white = pixels[..., 0] * (200 / 255) + 255 * (55 / 255)  # premultiplied alpha, composited on white
        assert np.abs(np.asarray(as_rgb_image(given))[..., 0] - on_white).max() <= 2
        reference = as_rgb_image(given.convert("LA"))
    assert np.array_equal(np.asarray(as_rgb_image(given)), np.asarray(reference))
    assert np.array_equal(tiny_pipeline.pq_map(given).map, tiny_pipeline.pq_map(reference).map)
    assert np.array_equal(tiny_pipeline.aq_map(given, "a red cube").defect_map, tiny_pipeline.aq_map(reference, "a red cube").defect_map)
    assert np.array_equal(np.asarray(tiny_pipeline(given, "a red cube", seed=0).image), np.asarray(tiny_pipeline(reference, "a red cube", seed=0).image))


def test_every_pil_mode_converts_and_bad_arrays_are_named():
    for mode in ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "I;16B", "F"]:
        image = as_rgb_image(Image.new(mode, (16, 12)))
        assert image.mode == "RGB" and image.size == (16, 12), mode
    with pytest.raises(ValueError, match="uint8"):
        as_rgb_image(np.zeros((12, 16, 3), np.float32))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        as_rgb_image(torch.full((3, 12, 16), 2.0))


# ------------------------------------------------------------------------- unbounded cost


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims ``width`` x ``height`` (its data would not decode)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("case", ["png-12000x12000-header", "jpeg-6000x4000", "cli-max-pixels"])
def test_images_above_max_pixels_are_refused_from_the_header(tmp_path, loads, case):
    inputs = _folder(tmp_path / "in", ("ok.png", "big.png" if case != "jpeg-6000x4000" else "big.jpg"))
    extra = []
    if case == "png-12000x12000-header":
        _png_header_only(inputs / "big.png", 12000, 12000)
    elif case == "jpeg-6000x4000":
        Image.new("RGB", (6000, 4000), (90, 120, 150)).save(inputs / "big.jpg", quality=50)
    else:
        _image(inputs / "big.png", size=(64, 64))
        extra = ["--max-pixels", "3000"]  # ok.png is 40x32 = 1280 px
    assert _main("--input", inputs, "--output", tmp_path / "out", *extra) == 1
    rows = _rows(tmp_path / "out" / "results.csv")
    assert "above max_pixels" in rows[next(n for n in rows if n.startswith("big"))]["error"]
    assert rows["ok.png"]["error"] == ""


def test_stage2_works_at_a_bounded_size_and_keeps_the_input_detail(monkeypatch):
    stage2 = build_tiny_pasd_stage2(max_resolution=64)
    sizes = []
    stage2.unet.register_forward_pre_hook(lambda module, args: sizes.append(tuple(args[0].shape[-2:])))
    image = Image.fromarray(_pixels(6, (200, 120)))
    out = stage2(image, "a cube", strength=0.5, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.size == image.size and sizes and max(max(s) for s in sizes) <= 64 // 8
    monkeypatch.setattr(stage2, "_restore", lambda pixels, *args: pixels)  # a restoration that changes nothing
    unchanged = stage2(image, "a cube", strength=0.5, num_inference_steps=2)
    assert np.array_equal(np.asarray(unchanged), np.asarray(image))  # detail above 64 px is the input's


def test_smoke_config_runs_a_1024_image_at_bounded_working_sizes(tiny_pipeline):
    sizes = {"stage1": [], "stage2": []}
    hooks = [
        tiny_pipeline.stage1.pipe.unet.register_forward_pre_hook(lambda m, args: sizes["stage1"].append(max(args[0].shape[-2:]))),
        tiny_pipeline.stage2.unet.register_forward_pre_hook(lambda m, args: sizes["stage2"].append(max(args[0].shape[-2:]))),
    ]
    try:
        out = tiny_pipeline(Image.fromarray(_pixels(7, (1024, 1024))), "a red cube on a blue table", seed=0)
    finally:
        for hook in hooks:
            hook.remove()
    assert out.image.size == (1024, 1024) and out.stage1.ran and out.stage2_steps > 0
    assert max(sizes["stage1"]) <= 64 // 2 and max(sizes["stage2"]) <= 64 // 8  # latents of 64 px working images


def test_metrics_score_at_a_bounded_size(tmp_path, tiny_pipeline):
    class Recorder:
        name = "sizes"

        def __init__(self):
            self.seen = []

        def __call__(self, image, prompt=None, reference=None):
            self.seen.append((image.size, reference.size))
            return 0.0

    inputs = tmp_path / "in"
    _image(inputs / "wide.png", size=(300, 100))
    (inputs / "wide.txt").write_text("a red cube")
    recorder = Recorder()
    summary = run_folder(tiny_pipeline, inputs, tmp_path / "out", metrics=[recorder], metric_names=["sizes"], metric_resolution=60, progress=False)
    assert summary.ok and recorder.seen == [((60, 20), (60, 20))] * 2  # before and after, downscaled alike
    assert Image.open(tmp_path / "out" / "wide.png").size == (300, 100)


@pytest.mark.parametrize("case", ["empty-folder", "only-unsupported-files"])
def test_nothing_to_refine_says_what_was_ignored(tmp_path, capsys, loads, case):
    inputs = tmp_path / "in"
    inputs.mkdir()
    if case == "only-unsupported-files":
        Image.new("RGB", (16, 16)).save(inputs / "anim.gif")
        (inputs / "sub").mkdir()
        fragments = ["no image found", "anim.gif (not a supported image type)", "sub/ (a folder", ".png"]
    else:
        fragments = ["no image found", "empty"]
    _refused(_main("--input", inputs, "--output", tmp_path / "out"), capsys, loads, *fragments)


# ------------------------------------------------------------------- one run per folder


def _lock(folder: Path, pid: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    record = {"host": socket.gethostname(), "pid": pid, "pid_started": psutil.Process(pid).create_time() if psutil.pid_exists(pid) else 0.0, "started": "earlier"}
    (folder / ".grefine.lock").write_text(json.dumps(record))


def test_concurrent_run_is_refused(tmp_path, capsys, loads):
    inputs = _folder(tmp_path / "in", ("a.png",))
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _lock(tmp_path / "out", owner.pid)
        _refused(_main("--input", inputs, "--output", tmp_path / "out"), capsys, loads, "in use by another grefine run", f"process {owner.pid}")
    finally:
        owner.kill()
        owner.wait()
    assert (tmp_path / "out" / ".grefine.lock").exists()  # not ours to remove


def test_stale_lock_of_a_killed_run_is_taken_over(tmp_path, loads):
    inputs = _folder(tmp_path / "in", ("a.png",))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _lock(tmp_path / "out", gone.pid)
    assert _main("--input", inputs, "--output", tmp_path / "out") == 0
    assert not (tmp_path / "out" / ".grefine.lock").exists() and len(loads) == 1


def test_two_cpu_processes_split_the_folder_and_merge(tmp_path):
    inputs = _folder(tmp_path / "in", ("a.png", "b.jpg", "c.png"))
    with open(os.fsencode(inputs) + b"/" + NON_UTF8, "wb") as handle:
        Image.fromarray(_pixels(8)).save(handle, format="PNG")
    (inputs / "prompts.csv").write_text("name,prompt\ncaf\\xe9.png,a yellow cup\n")  # named as results.csv shows it
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(REPO / "scripts" / "refine.py"),
               "--input", str(inputs), "--output", str(tmp_path / "out"), "--prompts", str(inputs / "prompts.csv"),
               "--config", str(TINY), "--metrics", "none"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _rows(tmp_path / "out" / "results.csv")
    assert sorted(rows) == ["a.png", "b.jpg", "c.png", "caf\\xe9.png"]
    assert all(row["error"] == "" for row in rows.values()), rows
    assert {row["process"] for row in rows.values()} == {"0", "1"}  # both processes refined
    assert "4 refined, 0 already done, 0 failed" in done.stdout
    assert not list((tmp_path / "out").glob("results.part*")) and not (tmp_path / "out" / ".grefine.lock").exists()
