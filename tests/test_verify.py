"""Verification after refining (the ``verify`` config section, configs/never-worse.yaml): the
re-read, best-of-N candidates in one batched stage-1 call, revert, rounds, the outside-the-mask
proof, the results.csv columns, the refusals before any model loads, and scripts/refine.py end to
end on tiny models."""
from __future__ import annotations

import csv
import dataclasses
import importlib.util
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from grefine import GRefinePipeline, aq_map_from_aligner
from grefine.config import ConfigError, GRefineConfig, VerifyConfig
from grefine.maps.aq_map import Alignment
from grefine.maps.pq_map import PQMapResult
from grefine.maps.syntax_tree import parse_prompt
from grefine.refine.mask import binarize
from grefine.refine.verify import OutsideMask, Selector, judge, outside_mask
from grefine.run.runner import BASE_COLUMNS, run_folder
from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = REPO / "configs" / "tiny-random.yaml"
NEVER_WORSE = REPO / "configs" / "never-worse.yaml"
H, W = 48, 72
PROMPT = "a red cube on a blue table"
NEW_COLUMNS = ("p_after", "a_after", "verify", "candidates", "rounds", "changed_outside_mask", "psnr_outside_mask")


@pytest.fixture(scope="module")
def pipe():
    return GRefinePipeline.from_pretrained(TINY)


def _image(kind: str = "blocks", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    if kind == "blocks":
        return Image.fromarray(np.kron(rng.integers(0, 256, (6, 9, 3)), np.ones((8, 8, 1))).astype(np.uint8))
    return Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))


def _verified(pipe, **verify) -> GRefinePipeline:
    config = dataclasses.replace(pipe.config, verify=VerifyConfig(enabled=True, **verify))
    return GRefinePipeline(pipe.pq_map, pipe.aq_map, pipe.stage1, pipe.stage2, config)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


# ------------------------------------------------------------------------- the rules, alone


def test_outside_mask_counts_changes_above_two_levels_and_their_psnr():
    before = np.full((4, 5, 3), 100, np.uint8)
    after = before.copy()
    after[0, 0] = (103, 100, 100)  # > 2/255 in one channel: changed
    after[0, 1] = (102, 102, 98)  # 2/255 at most: not changed
    after[3, 4] = (0, 0, 0)  # inside the mask: ignored
    weight = np.zeros((4, 5), np.float32)
    weight[3, 4] = 0.01  # any paste-back weight puts a pixel inside
    proof = outside_mask(Image.fromarray(before), Image.fromarray(after), weight)
    assert proof.changed == pytest.approx(1 / 19)
    squared = (9 + 4 + 4 + 4) / (19 * 3)
    assert proof.psnr == pytest.approx(10 * math.log10(255**2 / squared))
    same = outside_mask(Image.fromarray(before), Image.fromarray(before), None)
    assert same == OutsideMask(0.0, math.inf)
    inside = outside_mask(Image.fromarray(before), Image.fromarray(after), np.ones((4, 5)))
    assert math.isnan(inside.changed) and math.isnan(inside.psnr)  # no pixel outside
    with pytest.raises(ValueError, match="differ in size"):
        outside_mask(Image.fromarray(before), Image.new("RGB", (4, 4)), None)


def test_judge_keeps_the_argmax_when_it_beats_the_input_by_more_than_the_margin():
    record = judge(0.5, [0.4, 0.7, 0.7, math.nan], margin=0.0, revert_if_worse=True, mask_area=0.25)
    assert (record.best, record.improved, record.kept, record.mask_area) == (1, True, True, 0.25)  # the first of equals
    assert not judge(0.5, [0.55], margin=0.05, revert_if_worse=True).improved  # not by more than the margin
    assert judge(0.5, [0.56], margin=0.05, revert_if_worse=True).improved
    worse = judge(0.5, [0.4, 0.45], margin=0.0, revert_if_worse=True)
    assert (worse.best, worse.improved, worse.kept) == (1, False, False)
    assert judge(0.5, [0.4, 0.45], margin=0.0, revert_if_worse=False).kept  # revert off: the best is kept anyway
    assert not judge(0.5, [0.5], margin=0.0, revert_if_worse=True).improved  # equal is no improvement
    assert not judge(math.nan, [0.9], margin=0.0, revert_if_worse=True).improved


class _Metric:
    """A no-reference metric stand-in: the mean brightness, with a direction and a call log."""

    def __init__(self, name="piqe", lower_better=True):
        self.name, self.lower_better, self.sizes = name, lower_better, []

    def __call__(self, image, prompt=None, reference=None):
        assert prompt == PROMPT and reference is None
        self.sizes.append(image.size)
        return float(np.asarray(image).mean())


def test_selector_reads_the_map_scores_or_a_metric_in_its_direction():
    image = Image.new("RGB", (400, 200), (10, 10, 10))
    assert Selector("pa")(image, PROMPT, 0.5, 0.4) == pytest.approx(0.2)
    assert (Selector("p")(image, PROMPT, 0.5, 0.4), Selector("a")(image, PROMPT, 0.5, 0.4)) == (0.5, 0.4)
    lower = _Metric(lower_better=True)
    assert Selector("PIQE", lower, resolution=100)(image, PROMPT, 0.5, 0.4) == pytest.approx(-10.0)  # negated
    assert lower.sizes == [(100, 50)]  # scored at the metric resolution
    assert Selector("musiq", _Metric("musiq", lower_better=False))(image, PROMPT, 0, 0) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="pass that metric"):
        Selector("musiq")
    with pytest.raises(ValueError, match="pass that metric"):
        Selector("musiq", _Metric("piqe"))
    with pytest.raises(ValueError, match="no metric is needed"):
        Selector("pa", _Metric())


# ------------------------------------------------------------------------------ the config


def test_the_section_is_off_in_the_paper_preset_and_on_in_never_worse():
    default = GRefineConfig.from_yaml(REPO / "configs" / "default.yaml").verify
    assert default == VerifyConfig() and not default.enabled and default.metric is None
    never = GRefineConfig.from_yaml(NEVER_WORSE)
    assert never.verify.enabled and never.verify.select == "pa" and never.verify.revert_if_worse
    assert never.verify.candidates >= 1 and never.verify.rounds >= 1
    assert dataclasses.replace(never, verify=VerifyConfig(), source="x") == dataclasses.replace(
        GRefineConfig.from_yaml(REPO / "configs" / "default.yaml"), source="x"
    )  # base: default.yaml plus the section, nothing else
    assert GRefineConfig.from_dict({"verify": {"enabled": True, "select": "musiq"}}).verify.metric == "musiq"


@pytest.mark.parametrize(
    "verify, error",
    [
        ({"candidates": 0}, r"verify\.candidates must be in \[1, 16\], got 0"),
        ({"rounds": 9}, r"verify\.rounds must be in \[1, 8\]"),
        ({"margin": -0.1}, r"verify\.margin must be ≥ 0"),
        ({"enabled": "yes"}, r"verify\.enabled must be true or false"),
        ({"select": " "}, r"verify\.select must be pa, p, a or a metric name"),
        ({"candidate": 2}, r"unknown key\(s\) \['candidate'\] at section 'verify'"),
    ],
)
def test_wrong_values_are_refused_with_the_key(verify, error):
    with pytest.raises(ConfigError, match=error):
        GRefineConfig.from_dict({"verify": verify})


def test_a_select_score_whose_map_is_dropped_is_refused():
    with pytest.raises(ConfigError, match=r"verify\.select is pa but ablation\.drop_aq_map drops that map.*select p instead"):
        GRefineConfig.from_dict({"verify": {"enabled": True}, "ablation": {"drop_aq_map": True}})
    GRefineConfig.from_dict({"verify": {"enabled": True, "select": "p"}, "ablation": {"drop_aq_map": True}})


def test_the_pipeline_refuses_to_run_without_the_metric_select_names(pipe):
    config = dataclasses.replace(pipe.config, verify=VerifyConfig(enabled=True, select="musiq"))
    with pytest.raises(ConfigError, match=r"verify\.select names the metric musiq.*select_metric="):
        GRefinePipeline.from_pretrained(config)  # before any model loads
    with pytest.raises(ConfigError, match="a select_metric .* was given but verify.select is not a metric"):
        GRefinePipeline(pipe.pq_map, pipe.aq_map, pipe.stage1, pipe.stage2, pipe.config, select_metric=_Metric())


# -------------------------------------------------------------------- N candidates, batched


def test_batched_candidates_are_the_sequential_runs_with_those_seeds(pipe):
    image = _image("noise", seed=3)
    P = np.ones((H, W), np.float32)
    P[8:30, 20:60] = 0.0
    mask = binarize(P, np.zeros_like(P), dilation=2, feather=1)
    options = {"strength": 0.6, "num_steps": 2, "guidance_scale": 7.5}
    batch = pipe.stage1.candidates(image, PROMPT, mask, seeds=[5, 6, 7], **options)
    for seed, candidate in zip([5, 6, 7], batch):
        alone = pipe.stage1(image, PROMPT, mask, seed=seed, **options)
        assert candidate.ran and candidate.steps_run == alone.steps_run == 2
        assert np.abs(_pixels(candidate.image) - _pixels(alone.image)).max() <= 1  # to 1/255
    assert np.abs(_pixels(batch[0].image) - _pixels(batch[1].image)).max() > 50  # three different candidates


def test_the_kept_candidate_is_the_argmax_and_is_a_sequential_run(pipe):
    image, seed, n = _image("blocks", seed=0), 4, 3
    out = _verified(pipe, candidates=n, revert_if_worse=False)(image, PROMPT, seed=seed)
    [record] = out.verify_rounds
    assert out.candidates == n and out.rounds == 1 and out.verify == "kept" and len(record.scores) == n
    sequential = [pipe(image, PROMPT, seed=seed + i).image for i in range(n)]  # verify off, one seed each
    reread = [p.score * a.score for p, a in pipe.maps(sequential, [PROMPT] * n)]
    assert int(np.argmax(reread)) == record.best == int(np.argmax(record.scores))
    # the batched candidates differ from the sequential runs by pixel rounding (1/255), which the
    # token-axis normalised readout turns into up to ~0.2 % of p·a on these tiny models
    np.testing.assert_allclose(record.scores, reread, rtol=5e-3)
    assert out.pq_after.score * out.aq_after.score == pytest.approx(record.scores[record.best])
    assert np.abs(_pixels(out.image) - _pixels(sequential[record.best])).max() <= 1  # stages 1 and 2: to 1/255


def test_the_re_read_is_one_batched_tower_pass_and_encodes_no_text(pipe, monkeypatch):
    verified = _verified(pipe, candidates=3)
    encoded, batches = [], []
    encode = pipe.aq_map.text_features.encode
    monkeypatch.setattr(pipe.aq_map.text_features, "encode", lambda texts: encoded.append(list(texts)) or encode(texts))
    convs = {id(m.surgery.visual.conv1): m.surgery.visual.conv1 for m in (pipe.pq_map, pipe.aq_map)}
    hooks = [conv.register_forward_hook(lambda module, args, output: batches.append(args[0].shape[0])) for conv in convs.values()]
    try:
        out = verified(_image("noise", seed=9), "a purple giraffe near a lighthouse", seed=0)
    finally:
        for hook in hooks:
            hook.remove()
    assert out.candidates == 3 and len(encoded) == 1  # the input's read encoded the texts; the re-read none
    towers = len(batches) // 2
    assert towers >= 1 and batches == [1] * towers + [3] * towers  # the input, then the 3 candidates at once


# ------------------------------------------------------------------- revert and the invariant


def test_with_revert_every_row_is_better_or_the_input_byte_for_byte(pipe, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for index, (kind, seed) in enumerate([("blocks", 7), ("blocks", 0), ("noise", 2), ("blocks", 3)]):
        _image(kind, seed=seed).save(inputs / f"img{index}.png")  # at seed 1 the first two beat the margin, the others not
        (inputs / f"img{index}.txt").write_text(PROMPT)
    _image("blocks", seed=1).save(inputs / "photo.jpg", quality=90)
    (inputs / "photo.txt").write_text(PROMPT)
    run_folder(_verified(pipe, candidates=2, margin=0.02), inputs, tmp_path / "out", progress=False, seed=1)
    with open(tmp_path / "out" / "results.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert set(NEW_COLUMNS) <= set(reader.fieldnames) and len(rows) == 5
    for row in rows:
        assert row["error"] == "" and row["candidates"] == "2" and row["rounds"] == "1"
        p, a, p_after, a_after = (float(row[key]) for key in ("p", "a", "p_after", "a_after"))
        written = (tmp_path / "out" / row["output"]).read_bytes()
        if row["verify"] == "reverted":
            assert written == (inputs / row["name"]).read_bytes()
            assert (p_after, a_after) == (p, a) and float(row["changed_outside_mask"]) == 0.0 and row["psnr_outside_mask"] == "inf"
        else:
            assert row["verify"] == "kept" and p_after * a_after > p * a
    assert {row["verify"] for row in rows} == {"kept", "reverted"}  # both branches ran


# --------------------------------------------------------------------- rounds, planted maps


class ScriptedPQ:
    """PQ-Map stand-in: each read of a batch takes the next entry of ``script``, one (p, bad)
    per image; ``bad`` puts a low-quality block (the stage-1 mask) in the top-left corner."""

    def __init__(self, script):
        self.script = list(script)

    def read(self, tower):
        entries = self.script.pop(0)
        assert len(entries) == len(tower.images)
        return [PQMapResult(map=self._map(bad), score=p) for p, bad in entries]

    @staticmethod
    def _map(bad: bool) -> np.ndarray:
        P = np.full((H, W), 0.9, np.float32)
        if bad:
            P[:16, :24] = 0.1
        return P


class GoodAQ:
    """AQ-Map stand-in: every text aligned (score 0.8): no defect, a = 0.8."""

    def read(self, tower, prompts):
        def aligner(image, texts):
            return Alignment(np.full(len(texts), 0.8), np.full((len(texts), H, W), 0.5, np.float32))

        return [aq_map_from_aligner(parse_prompt(prompt), image, aligner) for image, prompt in zip(tower.images, prompts)]


def _scripted(pipe, script, **verify):
    config = dataclasses.replace(
        pipe.config,
        mask=dataclasses.replace(pipe.config.mask, perceptual_bound=0.5, dilation=0, feather=0),
        verify=VerifyConfig(enabled=True, **verify),
    )
    return GRefinePipeline(ScriptedPQ(script), GoodAQ(), pipe.stage1, pipe.stage2, config)


def test_rounds_stop_when_the_kept_result_has_an_empty_mask(pipe):
    script = [[(0.3, True)], [(0.4, True), (0.5, True)], [(0.6, False), (0.55, True)]]
    refiner = _scripted(pipe, script, candidates=2, rounds=5)
    out = refiner(_image(), PROMPT, seed=0)
    assert refiner.pq_map.script == []  # no third round: its mask (from the kept result's maps) is empty
    assert out.rounds == 2 and out.candidates == 4 and out.verify == "kept"
    assert [(r.best, r.kept) for r in out.verify_rounds] == [(1, True), (0, True)]
    assert out.pq_after.score == 0.6 and "stopped after round 2: the result's mask is empty" in out.note


def test_rounds_stop_when_the_score_stops_improving_and_keep_the_last_better_result(pipe):
    first = [[(0.3, True)], [(0.5, True), (0.4, True)]]
    two = _scripted(pipe, first + [[(0.45, True), (0.2, True)]], candidates=2, rounds=4)
    out = two(_image(), PROMPT, seed=0)
    assert two.pq_map.script == [] and out.rounds == 2 and out.verify == "kept"
    assert [(r.improved, r.kept) for r in out.verify_rounds] == [(True, True), (False, False)]
    assert out.pq_after.score == 0.5 and "round 2 did not improve on pa" in out.note
    one = _scripted(pipe, first, candidates=2, rounds=1)(_image(), PROMPT, seed=0)
    assert np.array_equal(np.asarray(out.image), np.asarray(one.image))  # round 1's result, round 2 undone


def test_rounds_stop_at_the_limit(pipe):
    script = [[(0.3, True)], [(0.4, True), (0.35, True)], [(0.5, True), (0.6, True)]]
    refiner = _scripted(pipe, script, candidates=2, rounds=2)
    out = refiner(_image(), PROMPT, seed=0)
    assert refiner.pq_map.script == [] and out.rounds == 2 and out.pq_after.score == 0.6


def test_a_revert_returns_the_input_and_the_margin_and_switch_decide(pipe):
    image = _image()
    script = [[(0.5, True)], [(0.4, True), (0.45, True)]]
    out = _scripted(pipe, script, candidates=2)(image, PROMPT, seed=0)
    assert out.verify == "reverted" and np.array_equal(np.asarray(out.image), np.asarray(image))
    assert out.pq_after.score == out.pq.score == 0.5 and out.outside == OutsideMask(0.0, math.inf)
    assert out.stage1.ran and out.mask.coverage > 0 and "verify: reverted" in out.note
    kept = _scripted(pipe, script, candidates=2, revert_if_worse=False)(image, PROMPT, seed=0)
    assert kept.verify == "kept" and kept.pq_after.score == 0.45  # the best candidate, though worse
    narrow = [[(0.5, True)], [(0.54, True)]]
    assert _scripted(pipe, narrow, select="p", margin=0.05)(image, PROMPT, seed=0).verify == "reverted"
    assert _scripted(pipe, narrow, select="p", margin=0.03)(image, PROMPT, seed=0).verify == "kept"


def test_a_metric_selects_in_its_own_direction(pipe):
    metric = _Metric(lower_better=True)  # darker = better
    config = dataclasses.replace(pipe.config, verify=VerifyConfig(enabled=True, select="piqe", candidates=3, revert_if_worse=False))
    out = GRefinePipeline(pipe.pq_map, pipe.aq_map, pipe.stage1, pipe.stage2, config, select_metric=metric)(_image(), PROMPT, seed=2)
    [record] = out.verify_rounds
    assert len(metric.sizes) == 4  # the input and the 3 candidates
    assert record.scores[record.best] == max(record.scores) == -np.asarray(out.image).mean()


# --------------------------------------------------------------------- the outside-mask proof


def test_outside_the_mask_nothing_changes_without_stage_two(pipe):
    for verify in (VerifyConfig(), VerifyConfig(enabled=True, revert_if_worse=False)):
        config = dataclasses.replace(pipe.config, verify=verify, ablation=dataclasses.replace(pipe.config.ablation, drop_stage2=True))
        out = GRefinePipeline(pipe.pq_map, pipe.aq_map, pipe.stage1, None, config)(_image("noise", seed=1), PROMPT, seed=0)
        assert out.stage1.ran and 0 < out.mask.coverage < 0.95 and (out.mask.soft > 0).mean() < 1  # feathered, pixels outside
        assert out.outside == OutsideMask(0.0, math.inf)
        row = out.summary()
        assert (row["changed_outside_mask"], row["psnr_outside_mask"]) == (0.0, math.inf)
    with_stage2 = pipe(_image("noise", seed=1), PROMPT, seed=0)
    assert with_stage2.outside.changed > 0 and math.isfinite(with_stage2.outside.psnr)  # PASD touches everything


def test_the_columns_are_in_every_row_and_empty_when_off(pipe):
    row = pipe(_image(), PROMPT, seed=0).summary()
    assert set(NEW_COLUMNS) <= set(row) <= set(BASE_COLUMNS)
    assert (row["p_after"], row["a_after"], row["verify"], row["candidates"], row["rounds"]) == (None, None, "", 1, 1)


# ------------------------------------------------------------- scripts/refine.py, end to end


def _refine_script():
    spec = importlib.util.spec_from_file_location("script_refine_verify", REPO / "scripts" / "refine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_never_worse(tmp_path, shared_dir, **verify) -> str:
    """configs/never-worse.yaml with every model tiny and random (the real PQ-Map embeddings)."""
    data = {
        "base": str(NEVER_WORSE),
        "device": "cpu",
        "pq_map": {"tiny_random": True, "num_blocks": 2, "embeddings": str(shared_dir / "pq_embeddings")},
        "aq_map": {"tiny_random": True, "num_blocks": 2},
        "stage1": {"tiny_random": True, "resolution": 64},
        "stage2": {"tiny_random": True, "max_resolution": 64},
        "metrics": ["psnr"],
    }
    if verify:
        data["verify"] = verify
    path = tmp_path / "never-worse-tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_never_worse_preset_through_the_refine_script(tmp_path, shared_dir, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for index, name in enumerate(("a.png", "b.jpg", "c.png")):
        _image("blocks" if index != 1 else "noise", seed=index).save(inputs / name)
        (inputs / f"{name.rsplit('.', 1)[0]}.txt").write_text(PROMPT)
    config = _tiny_never_worse(tmp_path, shared_dir)
    assert _refine_script().main(["--input", str(inputs), "--output", str(tmp_path / "out"), "--config", config, "--no-progress"]) == 0
    assert "3 refined" in capsys.readouterr().out
    with open(tmp_path / "out" / "results.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = {row["name"]: row for row in reader}
    assert set(NEW_COLUMNS) <= set(reader.fieldnames) and set(rows) == {"a.png", "b.jpg", "c.png"}
    for name, row in rows.items():
        assert row["error"] == "" and row["verify"] in ("kept", "reverted") and row["candidates"] == "1"
        changed = float(row["changed_outside_mask"])  # NaN: the mask covers every pixel
        assert (math.isnan(changed) or changed >= 0) and row["psnr_outside_mask"]
        if row["verify"] == "reverted":
            assert (tmp_path / "out" / name).read_bytes() == (inputs / name).read_bytes()
            assert row["psnr_before"] == row["psnr_after"]
        else:
            assert float(row["p_after"]) * float(row["a_after"]) > float(row["p"]) * float(row["a"])


@pytest.mark.parametrize(
    "verify, message",
    [
        ({"candidates": 0}, r"verify\.candidates must be in \[1, 16\], got 0"),
        ({"select": "musiqq"}, r"verify\.select in .*unknown metric\(s\) musiqq \(did you mean musiq\?\)"),
        ({"select": "psnr"}, r"verify\.select in .*psnr is a full-reference metric"),
    ],
)
def test_a_wrong_verify_value_is_refused_before_models_load(tmp_path, shared_dir, capsys, monkeypatch, verify, message):
    def no_models(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(GRefinePipeline, "from_pretrained", no_models)
    inputs = tmp_path / "in"
    inputs.mkdir()
    _image().save(inputs / "a.png")
    (inputs / "a.txt").write_text(PROMPT)
    config = _tiny_never_worse(tmp_path, shared_dir, **verify)
    assert _refine_script().main(["--input", str(inputs), "--output", str(tmp_path / "out"), "--config", config, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("grefine: ")
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_a_select_metric_without_its_weights_is_refused_before_anything_is_written(tmp_path, shared_dir, capsys, monkeypatch):
    """Offline, a ``verify.select`` metric whose weights are not cached is listed by the pre-flight
    (its config key named), and the run writes nothing: no output folder, no demo inputs."""
    def no_models(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(GRefinePipeline, "from_pretrained", no_models)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("pyiqa.utils.download_util.DEFAULT_CACHE_DIR", str(tmp_path / "empty-pyiqa-cache"))
    config = _tiny_never_worse(tmp_path, shared_dir, select="musiq")
    monkeypatch.chdir(tmp_path)
    assert _refine_script().main(["--output", str(tmp_path / "out"), "--config", config, "--no-progress"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("grefine: cannot start with config") and "nothing can be downloaded" in lines[0]
    assert any("metric musiq" in line and "config key verify.select" in line for line in lines[1:]), lines
    assert not any("tiny-random" in line for line in lines)  # the config in use needs no other weights
    assert {p.name for p in tmp_path.iterdir()} == {Path(config).name}  # no output folder, no demo inputs
