"""The app's steps without a browser (tests/test_browser.py drives the page): the maps, the live
mask and its painted edits, refining with an edited mask, the downloads, scripts/app.py's refusals."""
from __future__ import annotations

import copy
import importlib.util
import json
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from grefine import GRefinePipeline
from grefine.app import (
    ADD_COLOUR,
    REMOVE_COLOUR,
    MaskSettings,
    RefineSettings,
    analyze,
    export,
    mask_of,
    phrase_rows,
    refine_masked,
    strokes_of,
)
from grefine.config import GateBounds, GateConfig, VerifyConfig
from grefine.refine.mask import binarize, stage1_strength
from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = REPO / "configs" / "tiny-random.yaml"
PROMPT = "a red cube on a blue table"


@pytest.fixture(scope="module")
def pipe(one_thread):
    return GRefinePipeline.from_pretrained(TINY)


@pytest.fixture(scope="module")
def analysis(pipe):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    return analyze(pipe, image, PROMPT)


def _layer(size, box, colour):
    """An RGBA layer with ``box`` (top, bottom, left, right) painted in ``colour`` (hex)."""
    layer = np.zeros((*size, 4), np.uint8)
    top, bottom, left, right = box
    layer[top:bottom, left:right, :3] = [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
    layer[top:bottom, left:right, 3] = 255
    return layer


def test_the_analysis_is_the_pipelines_maps_and_eq9_strength(pipe, analysis):
    [(pq, aq)] = pipe.maps([analysis.image], [PROMPT])
    assert analysis.pq.score == pq.score and np.array_equal(analysis.aq.defect_map, aq.defect_map)
    assert analysis.strength1 == stage1_strength(pq.score, aq.score, min_strength=0.3, max_strength=0.9)
    assert analysis.gate.verdict == ""  # no gate in the tiny config
    rows = phrase_rows(analysis.aq)
    assert [row[0] for row in rows] == [phrase.text for phrase in aq.phrases]
    assert {row[5] for row in rows} <= {"matched", "noun-unmatched", "adjective-unmatched"}
    with pytest.raises(ValueError, match="prompt"):
        analyze(pipe, analysis.image, "  ")
    assert analysis.matches(analysis.image.copy(), PROMPT)
    assert not analysis.matches(analysis.image, PROMPT + " again") and not analysis.matches(analysis.image.rotate(180), PROMPT)


def test_the_live_mask_is_eq9s_at_the_chosen_settings(analysis):
    settings = MaskSettings(0.6, 0.5, 3, 1.5)
    expected = binarize(analysis.pq.map, analysis.aq.defect_map, perceptual_bound=0.6, alignment_bound=0.5, dilation=3, feather=1.5)
    mask = mask_of(analysis, settings)
    assert np.array_equal(mask.binary, expected.binary) and np.allclose(mask.soft, expected.soft)
    looser = mask_of(analysis, MaskSettings(0.9, 0.5, 3, 1.5))
    assert looser.coverage >= mask.coverage and not (mask.binary & ~looser.binary).any()  # a higher bound only adds
    assert mask_of(analysis, MaskSettings(0.6, 0.5, 3, 1.5, automatic=False)).coverage == 0.0


def test_painted_strokes_add_and_remove_regions(analysis):
    size = analysis.size
    add, remove = strokes_of([_layer(size, (0, 10, 0, 20), ADD_COLOUR), _layer(size, (5, 10, 10, 20), REMOVE_COLOUR)], size)
    assert add[:10, :20].all() and add.sum() == 10 * 20
    assert remove[5:10, 10:20].all() and remove.sum() == 5 * 10
    empty = mask_of(analysis, MaskSettings(0.5, 0.5, 0, 0, automatic=False), add, remove)
    expected = np.zeros(size, bool)
    expected[:10, :20] = True
    expected[5:10, 10:20] = False
    assert np.array_equal(empty.binary, expected) and np.array_equal(empty.soft, expected.astype(np.float32))
    # a layer of another size (the editor's canvas) is scaled to the image; a transparent one adds nothing
    small = _layer((24, 32), (0, 12, 0, 16), ADD_COLOUR)
    scaled, _ = strokes_of([small, np.zeros((*size, 4), np.uint8), None], size)
    assert scaled[:24, :32].all() and scaled.sum() == 24 * 32


def test_refining_with_an_edited_mask_changes_only_inside_it_without_stage_two(pipe, analysis):
    size = analysis.size
    add, _ = strokes_of([_layer(size, (8, 24, 10, 40), ADD_COLOUR)], size)
    mask = mask_of(analysis, MaskSettings(0.5, 0.5, 0, 0, automatic=False), add)
    settings = RefineSettings(strength1=0.8, steps1=2, strength2=0.0, steps2=2, seed=1)
    config_before = copy.deepcopy(pipe.config)
    out = refine_masked(pipe, analysis, mask, settings)
    changed = np.abs(np.asarray(out.image, np.int16) - np.asarray(analysis.image, np.int16)).max(axis=2) > 0
    assert changed.any() and not (changed & ~mask.binary).any()
    assert out.stage1.ran and out.stage1.steps_run == 2 and out.strength1 == pytest.approx(0.8) and out.stage2_steps == 0
    assert "stage 2 skipped: strength 0" in out.note
    assert pipe.config == config_before  # the app refines with a copy of the config


def test_with_verify_on_the_edited_mask_still_bounds_every_change(pipe, analysis, monkeypatch):
    monkeypatch.setattr(pipe.config, "verify", VerifyConfig(enabled=True, candidates=2, revert_if_worse=False, rounds=3))
    size = analysis.size
    add, _ = strokes_of([_layer(size, (0, 20, 0, 30), ADD_COLOUR)], size)
    mask = mask_of(analysis, MaskSettings(0.5, 0.5, 0, 0, automatic=False), add)
    out = refine_masked(pipe, analysis, mask, RefineSettings(0.8, 2, 0.0, 2, seed=2))
    changed = np.abs(np.asarray(out.image, np.int16) - np.asarray(analysis.image, np.int16)).max(axis=2) > 0
    assert out.verify == "kept" and out.rounds == 1 and out.candidates == 2
    assert changed.any() and not (changed & ~mask.binary).any()
    assert pipe.config.verify.rounds == 3  # the pipeline's own config is untouched


def test_the_app_refines_what_the_gate_would_skip(pipe, analysis, monkeypatch):
    monkeypatch.setattr(pipe.config, "gate", GateConfig(skip_above=GateBounds(p=0.0, a=0.0)))  # skips every image
    assert pipe(analysis.image, PROMPT).gate.verdict == "skipped"
    mask = mask_of(analysis, MaskSettings(1.0, 0.0, 0, 0))  # everything
    out = refine_masked(pipe, analysis, mask, RefineSettings(0.5, 1, 0.0, 1))
    assert out.gate.verdict == "" and out.stage1.ran


def test_export_writes_the_image_the_maps_the_mask_and_the_phrase_table(pipe, analysis, tmp_path):
    mask = mask_of(analysis, MaskSettings(0.5, 0.5, 0, 0))
    out = refine_masked(pipe, analysis, mask, RefineSettings(0.5, 1, 0.0, 1))
    paths = export(tmp_path, analysis, mask, out)
    assert [p.name for p in paths] == ["refined.png", "pq.png", "pq_overlay.png", "aq_defect.png", "mask.png", "phrases.json"]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "refined.png")), np.asarray(out.image))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "mask.png")) > 127, mask.binary)
    assert len(json.loads((tmp_path / "phrases.json").read_text(encoding="utf-8"))["phrases"]) == len(analysis.aq.phrases)


def test_grefine_imports_without_gradio():
    code = "import sys, grefine, grefine.app; assert 'gradio' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def _script():
    spec = importlib.util.spec_from_file_location("app_script", REPO / "scripts" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_script_refuses_a_bad_port_or_config_before_loading_anything(tmp_path, capsys):
    app = _script()
    assert app.main(["--config", str(TINY), "--port", "0"]) == 2
    assert "--port 0: a port is a number from 1 to 65535" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert app.main(["--config", str(TINY), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"--port {port}: cannot listen on 127.0.0.1:{port}" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "bad.yaml").write_text("mask:\n  dilaton: 3\n")
    assert app.main(["--config", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert "dilaton" in err and len(err.strip().splitlines()) == 1


def test_the_live_mask_updates_never_wait_for_a_queue_slot(pipe, tmp_path):
    """The settings and the editor share two handlers over six events; with the queue's default
    of one call at a time per handler, an "always_last" update could stay queued for good (seen in
    the browser test: the editor spinning at "queue: 1/1"). They are cheap: no limit."""
    from grefine.app import build_app  # gradio comes with the test extra

    app = build_app(pipe, tmp_path)
    live = [fn for fn in app.fns.values() if getattr(fn.fn, "__name__", "") in ("on_settings", "on_edit")]
    assert len(live) == 6 and all(fn.concurrency_limit is None and fn.trigger_mode == "always_last" for fn in live)
