"""GRefinePipeline end to end with configs/tiny-random.yaml, the two presets on tiny models, the
refinement decisions with planted maps, the ablation switches, configs and the weights pre-flight."""
from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import pytest
import yaml
from PIL import Image

from grefine import GRefinePipeline, aq_map_from_aligner
from grefine.config import ConfigError, GateBounds, GateConfig, GRefineConfig
from grefine.maps.aq_map import Alignment
from grefine.maps.pq_map import PQMapResult
from grefine.maps.syntax_tree import parse_prompt
from grefine.run.runner import read_results, run_folder
from grefine.weights import WeightsUnavailableError, check_weights, map_weights, required_weights
from tests.conftest import REPO

TINY = REPO / "configs" / "tiny-random.yaml"
DEFAULT = REPO / "configs" / "default.yaml"
NOTEBOOK = REPO / "configs" / "authors-notebook.yaml"


@pytest.fixture(scope="module")
def pipe():
    return GRefinePipeline.from_pretrained(TINY)


def _image(width=72, height=48, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_tiny_pipeline_refines_and_reports(pipe):
    image = _image()
    out = pipe(image, "a red cube on a blue table", seed=3)
    assert out.image.size == image.size
    assert out.pq.map.shape == out.aq.defect_map.shape == out.mask.binary.shape == (48, 72)
    n1, n2 = pipe.config.steps
    assert out.stage1.ran and out.stage1.steps_run == n1
    assert out.stage2_steps == n2 and out.strength2 == pipe.config.stage2.strength
    assert set(out.timings) == {"maps", "mask", "stage1", "stage2"}
    row = out.summary()
    assert row["p"] == out.pq.score and row["stage1_steps"] == n1
    assert not np.array_equal(np.asarray(out.image), np.asarray(image))


def test_seed_reproduces(pipe):
    image = _image(seed=1)
    first = pipe(image, "a cat wearing a hat", seed=7).image
    again = pipe(image, "a cat wearing a hat", seed=7).image
    other = pipe(image, "a cat wearing a hat", seed=8).image
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(other))


def test_empty_mask_skips_stage_one_and_delta_zero_skips_stage_two(pipe, monkeypatch):
    monkeypatch.setattr(pipe.config.mask, "perceptual_bound", 0.0)  # P < 0 nowhere
    monkeypatch.setattr(pipe.config.mask, "alignment_bound", 1.0)  # D > 1 nowhere
    monkeypatch.setattr(pipe.config.stage2, "strength", 0.0)
    calls = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1)) for m in (pipe.stage1.pipe.unet, pipe.stage2.unet)]
    image = _image(seed=2)
    try:
        out = pipe(image, "a castle on a hill")
    finally:
        for hook in hooks:
            hook.remove()
    assert not out.stage1.ran and out.stage1.steps_run == 0 and calls == []
    assert out.stage2_steps == 0 and out.strength2 == 0.0
    assert "stage 1 skipped: empty mask" in out.note and "stage 2 skipped" in out.note
    assert np.array_equal(np.asarray(out.image), np.asarray(image))


def test_stage_one_alone_when_no_stage_two(pipe, monkeypatch):
    monkeypatch.setattr(pipe, "stage2", None)
    out = pipe(_image(seed=4), "a dog")
    assert out.stage2_steps == 0 and "stage 2 not configured" in out.note


def test_config_errors_name_the_key_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage1:\n  modle: x\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*'modle'.*section 'stage1'"):
        GRefineConfig.from_yaml(bad)
    with pytest.raises(ConfigError, match="no such file"):
        GRefineConfig.from_yaml(tmp_path / "missing.yaml")
    bad.write_text("total_steps: 1\n")
    with pytest.raises(ConfigError, match="total_steps"):
        GRefineConfig.from_yaml(bad)
    bad.write_text("mask:\n  threshold: 0.75\n")  # the old key is gone, not silently ignored
    with pytest.raises(ConfigError, match="'threshold'.*perceptual_bound"):
        GRefineConfig.from_yaml(bad)


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("mask", "perceptual_bound", 1.5),
        ("mask", "alignment_bound", -0.1),
        ("mask", "dilation", -2),
        ("aq_map", "margin", -0.01),
        ("aq_map", "emphasis", -1),
        ("aq_map", "beta", 0),
        ("stage1", "min_strength", 0.95),
        ("stage1", "steps", 0),
        ("stage2", "steps", 2.5),
        ("stage1", "prompt_suffix", 3),
    ],
)
def test_out_of_range_values_are_refused_at_load(section, key, value):
    with pytest.raises(ConfigError, match=rf"{section}\.{key}.*must"):
        GRefineConfig.from_dict({section: {key: value}})


def test_default_config_holds_the_paper_settings():
    config = GRefineConfig.from_yaml(DEFAULT)
    assert config.steps == (10, 10)
    assert config.stage1.model == "diffusers/stable-diffusion-xl-1.0-inpainting-0.1"
    assert config.stage2.type == "pasd" and 0 < config.stage2.strength <= 0.2
    assert config.pq_map.model_name == "ViT-B-16" and config.pq_map.pretrained == "openai"
    assert config.pq_map.map_normalization == "none"  # P = BIC(L_per), no forced minimum
    assert (config.mask.perceptual_bound, config.mask.alignment_bound) == (0.5, pytest.approx(2 / 3, abs=1e-5))
    assert (config.aq_map.a_bound, config.aq_map.margin, config.aq_map.emphasis) == (0.5, 0.05, 0.1)
    assert config.stage1.min_strength < config.stage1.max_strength and config.stage1.prompt_suffix == ""
    assert config.ablation == type(config.ablation)()  # nothing dropped


def test_notebook_config_holds_the_released_settings():
    config = GRefineConfig.from_yaml(NOTEBOOK)
    assert config.pq_map.map_normalization == "minmax"
    assert config.mask.perceptual_bound == 0.0  # cell 43: the alignment region alone is the mask
    assert config.mask.alignment_bound == pytest.approx(171 / 255, abs=1e-6)  # 255·D > 170 on 8-bit maps
    assert (config.mask.dilation, config.mask.feather) == (0, 0)
    assert config.stage1.min_strength == config.stage1.max_strength == 0.9
    assert config.steps == (36, 20) and config.stage1.prompt_suffix == ", high quality, hyper detail"
    assert config.stage1.options == {"paste_back": False, "working_size": "pipeline", "output_size": "working", "skip_empty_mask": False}
    assert (config.stage2.type, config.stage2.strength, config.stage2.options) == ("pasd", 1.0, {})
    assert (config.stage2.input_jpeg_quality, config.stage2.caption_model) == (75, "coca_ViT-L-14")
    assert (config.aq_map.margin, config.aq_map.emphasis) == (0.0, 0.0)


def test_missing_weights_are_listed_together_and_at_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no checkpoints/ here
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    config = GRefineConfig.from_yaml(DEFAULT)
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as info:
        check_weights(config, online=False)
    assert time.perf_counter() - start < 10
    message = str(info.value)
    for needed in required_weights(config):
        assert needed.source in message
    assert "checkpoints/README.md" in message and "stage1.model" in message and "pq_map.embeddings" in message
    with pytest.raises(WeightsUnavailableError):
        GRefinePipeline.from_pretrained(DEFAULT)  # HF_HUB_OFFLINE=1 in the tests: offline


def test_tiny_config_needs_no_weights():
    assert required_weights(GRefineConfig.from_yaml(TINY)) == []


def test_every_component_loading_error_is_a_missing_weights_error():
    from grefine.errors import MissingWeightsError
    from grefine.refine.pasd.loading import PASDWeightsNotFoundError
    from grefine.refine.stage1 import ModelUnavailable

    assert issubclass(ModelUnavailable, MissingWeightsError)
    assert issubclass(PASDWeightsNotFoundError, MissingWeightsError)
    assert issubclass(PASDWeightsNotFoundError, FileNotFoundError)


@pytest.mark.parametrize(
    "loader, error, listed",
    [
        ("load_tagger", "TaggerUnavailableError", "NLTK POS tagger.*nltk.downloader averaged_perceptron_tagger_eng"),
        ("load_stopwords", "StopwordsUnavailableError", "NLTK stop words.*nltk.downloader stopwords"),
    ],
)
def test_missing_nltk_data_is_reported_by_the_preflight(monkeypatch, loader, error, listed):
    import grefine.maps.syntax_tree as syntax_tree

    def unavailable():
        raise getattr(syntax_tree, error)("missing")

    monkeypatch.setattr(syntax_tree, loader, unavailable)
    with pytest.raises(WeightsUnavailableError, match=listed):
        check_weights(GRefineConfig.from_yaml(TINY), online=True)
    no_aq = GRefineConfig.from_yaml(TINY)
    no_aq.ablation.drop_aq_map = True
    check_weights(no_aq, online=True)  # without AQ-Map, no NLTK data is needed
    monkeypatch.undo()
    check_weights(GRefineConfig.from_yaml(TINY), online=False)  # tiny + NLTK data present: nothing missing


def test_dropping_stage_two_needs_no_stage_two_weights():
    config = GRefineConfig.from_yaml(DEFAULT)
    config.ablation.drop_stage2 = True
    keys = {w.config_key for w in required_weights(config)}
    assert "stage1.model" in keys and not keys & {"stage2.base_model", "stage2.pasd_model"}


def test_map_weights_are_the_maps_part_of_the_preflight():
    config = GRefineConfig.from_yaml(DEFAULT)
    keys = [w.config_key for w in map_weights(config)]
    assert keys == ["pq_map.pretrained", "pq_map.embeddings"]  # one CLIP for both maps, and the PQ embeddings
    assert set(map_weights(config)) < set(required_weights(config))
    assert map_weights(GRefineConfig.from_yaml(TINY)) == []


# --------------------------------------------------------------------------- the presets, tiny


def tiny_overlay(path, shared_dir) -> GRefineConfig:
    """A preset with every model section switched to its tiny random model (and the real PQ-Map
    embeddings from ../shared), so that it runs on a CPU in seconds; nothing else changes."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["pq_map"].update(tiny_random=True, num_blocks=2, embeddings=str(shared_dir / "pq_embeddings"))
    data["aq_map"].update(tiny_random=True, num_blocks=2)
    data["stage1"].update(tiny_random=True, resolution=None)
    data["stage2"].update(tiny_random=True)
    return GRefineConfig.from_dict(data, source=f"{path.name} (tiny overlay)")


class Recorder:
    """Wraps a stage: records the prompt of every call, then runs the stage."""

    def __init__(self, stage):
        self.stage, self.prompts = stage, []

    def __call__(self, image, prompt, *args, **kwargs):
        self.prompts.append(prompt)
        return self.stage(image, prompt, *args, **kwargs)


def test_paper_preset_runs_end_to_end_on_tiny_models(shared_dir):
    pipe = GRefinePipeline.from_pretrained(tiny_overlay(DEFAULT, shared_dir))
    pipe.stage2 = stage2 = Recorder(pipe.stage2)
    out = pipe(_image(seed=5), "a (red cube:1.2) on a blue table", seed=1)
    assert 0.3 <= out.strength1 <= 0.9
    assert out.stage1.ran == (not out.mask.is_empty)
    assert out.stage1.steps_run == (10 if out.stage1.ran else 0) and out.stage2_steps == 10
    assert stage2.prompts == ["a red cube on a blue table"]  # cleaned, without emphasis


def test_notebook_preset_runs_end_to_end_on_tiny_models(shared_dir):
    pipe = GRefinePipeline.from_pretrained(tiny_overlay(NOTEBOOK, shared_dir))
    pipe.stage1, pipe.stage2 = stage1, stage2 = Recorder(pipe.stage1), Recorder(pipe.stage2)
    out = pipe(_image(seed=6), "a red cube on a blue table", seed=1)
    assert out.pq.map.min() == pytest.approx(0.0, abs=1e-6)  # min-max P: its worst pixel is refined
    assert out.stage1.ran and out.stage1.steps_run == 36 and out.strength1 == pytest.approx(0.9)
    assert out.stage2_steps == 20 and out.strength2 == 1.0
    assert str(stage1.prompts[0]) == "a red cube on a blue table, high quality, hyper detail"
    assert stage2.prompts == ["a red cube on a blue table"]



# --------------------------------------------------------------------------- decisions, planted maps

H, W = 48, 72
PROMPT = "a red cube on a blue table"


class PlantedPQ:
    """PQ-Map stand-in: P = 0.9 (good) except, with ``bad=True``, a low-quality top-left block."""

    def __init__(self, bad: bool = False):
        self.bad, self.calls = bad, 0

    def read(self, tower):
        return [self(image) for image in tower.images]

    def __call__(self, image):
        self.calls += 1
        P = np.full((H, W), 0.9, np.float32)
        if self.bad:
            P[:12, :12] = 0.1
        return PQMapResult(map=P, score=0.5)


class PlantedAQ:
    """AQ-Map stand-in through ``aq_map_from_aligner``: the cube's map is a block at the bottom
    right; with ``missing_table=True`` the table's noun scores 0.3 (drawn on the cube)."""

    def __init__(self, missing_table: bool = False):
        self.missing_table, self.calls = missing_table, 0

    def read(self, tower, prompts):
        return [self(image, prompt) for image, prompt in zip(tower.images, prompts)]

    def __call__(self, image, prompt):
        self.calls += 1
        cube = np.zeros((H, W), np.float32)
        cube[30:, 50:] = 1.0
        scores = {PROMPT: 0.4, "red cube": 0.8, "cube": 0.8, "blue table": 0.8, "table": 0.3 if self.missing_table else 0.8}

        def aligner(image, texts):
            maps = [cube if text == "cube" else np.full((H, W), 0.5, np.float32) for text in texts]
            return Alignment(np.array([scores[t] for t in texts]), np.stack(maps))

        return aq_map_from_aligner(parse_prompt(prompt), image, aligner)


def planted(pipe, *, bad=False, missing_table=False, gate=None, **ablation) -> tuple[GRefinePipeline, Recorder, Recorder]:
    config = dataclasses.replace(
        pipe.config,
        gate=gate or GateConfig(),
        mask=dataclasses.replace(pipe.config.mask, perceptual_bound=0.5, alignment_bound=0.6, dilation=0, feather=0),
        stage1=dataclasses.replace(pipe.config.stage1, prompt_suffix=", sharp"),
        ablation=dataclasses.replace(pipe.config.ablation, **ablation),
    )
    stage1, stage2 = Recorder(pipe.stage1), Recorder(pipe.stage2)
    return GRefinePipeline(PlantedPQ(bad), PlantedAQ(missing_table), stage1, stage2, config), stage1, stage2


def test_a_good_image_with_nothing_missing_is_left_alone_by_stage_one(pipe):
    refiner, _, _ = planted(pipe)
    calls = []
    hook = pipe.stage1.pipe.unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        out = refiner(_image(), PROMPT, seed=0)
    finally:
        hook.remove()
    assert out.mask.is_empty and not out.stage1.ran and calls == []
    assert not out.aq.defect_map.any() and "stage 1 skipped" in out.note


def test_a_missing_object_adds_its_region_and_its_emphasis(pipe):
    refiner, stage1, stage2 = planted(pipe, missing_table=True)
    out = refiner(_image(), "a red cube on a (blue:1.4) table", seed=0)
    assert out.mask.binary[30:, 50:].all() and out.mask.binary.sum() == 18 * 22  # the cube's region only
    assert out.stage1.ran and out.stage1.steps_run == refiner.config.steps[0]
    assert str(stage1.prompts[0]) == "a red cube on a (blue table:1.1), sharp"
    assert stage2.prompts == [PROMPT]  # cleaned, no emphasis, no suffix
    before, after = np.asarray(_image()), np.asarray(out.image)
    assert not np.array_equal(before, after)


def _decisions(out):
    return out.mask.binary, out.strength1, str(out.aq.emphasized_prompt)


def test_dropping_pq_changes_only_the_perceptual_part(pipe):
    base, _, _ = planted(pipe, bad=True, missing_table=True)
    dropped, _, _ = planted(pipe, bad=True, missing_table=True, drop_pq_map=True)
    full, without = base(_image(), PROMPT, seed=0), dropped(_image(), PROMPT, seed=0)
    assert dropped.pq_map.calls == 0 and math.isnan(without.pq.score) and (without.pq.map == 1).all()
    assert full.mask.binary[:12, :12].all() and not without.mask.binary[:12, :12].any()  # P := 1
    assert np.array_equal(without.mask.binary, out_region := full.aq.defect_map > 0.6) and out_region.any()
    np.testing.assert_array_equal(without.aq.defect_map, full.aq.defect_map)
    assert str(without.aq.emphasized_prompt) == str(full.aq.emphasized_prompt)
    assert without.strength1 == pytest.approx(0.9 * (1 - full.aq.score))  # a alone sets the strength
    assert full.strength1 == pytest.approx(0.9 * (1 - (0.5 + 0.4) / 2))
    assert full.aq.score == pytest.approx(0.4)
    assert without.stage2_steps == full.stage2_steps > 0


def test_dropping_aq_changes_only_the_alignment_part(pipe):
    base, _, _ = planted(pipe, bad=True, missing_table=True)
    dropped, stage1, stage2 = planted(pipe, bad=True, missing_table=True, drop_aq_map=True)
    full, without = base(_image(), PROMPT, seed=0), dropped(_image(), PROMPT, seed=0)
    assert dropped.aq_map.calls == 0 and math.isnan(without.aq.score) and not without.aq.defect_map.any()
    assert np.array_equal(without.mask.binary, full.pq.map < 0.5)  # D := 0: the perceptual region alone
    assert str(stage1.prompts[0]) == PROMPT + ", sharp" and stage2.prompts == [PROMPT]  # no emphasis
    assert without.strength1 == pytest.approx(0.9 * (1 - 0.5))  # p alone sets the strength
    np.testing.assert_array_equal(without.pq.map, full.pq.map)
    assert without.stage2_steps == full.stage2_steps > 0


def test_dropping_stage_two_changes_only_stage_two(pipe):
    base, _, _ = planted(pipe, bad=True, missing_table=True)
    dropped, _, stage2 = planted(pipe, bad=True, missing_table=True, drop_stage2=True)
    full, without = base(_image(), PROMPT, seed=0), dropped(_image(), PROMPT, seed=0)
    assert stage2.prompts == [] and without.stage2_steps == 0 and "stage 2 dropped" in without.note
    assert np.array_equal(without.mask.binary, full.mask.binary) and without.strength1 == full.strength1
    assert np.array_equal(np.asarray(without.image), np.asarray(full.stage1.image))  # stage 1's output, as is


# --------------------------------------------------------------------------- the refiner gate


def _unet_calls(pipe):
    """Counts the forward calls of both stages' UNets; call ``.remove()`` on the hooks after."""
    calls = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1)) for m in (pipe.stage1.pipe.unet, pipe.stage2.unet)]
    return calls, hooks


def _gated(pipe, gate, **planted_options):
    refiner, _, _ = planted(pipe, bad=True, missing_table=True, gate=gate, **planted_options)  # p = 0.5, a = 0.4
    calls, hooks = _unet_calls(pipe)
    image = _image()
    try:
        out = refiner(image, PROMPT, seed=0)
    finally:
        for hook in hooks:
            hook.remove()
    return out, image, calls


def test_the_gate_skips_a_good_image_untouched(pipe):
    out, image, calls = _gated(pipe, GateConfig(skip_above=GateBounds(p=0.5, a=0.4)))  # bounds inclusive
    assert out.gate.verdict == "skipped" and calls == []
    assert np.array_equal(np.asarray(out.image), np.asarray(image)) and out.image is not image
    assert out.mask.is_empty and not out.stage1.ran and out.stage2_steps == 0 and out.strength1 == out.strength2 == 0
    row = out.summary()
    assert row["gate"] == "skipped" and row["p"] == 0.5 and row["a"] == pytest.approx(0.4)
    assert row["note"] == "gate: skipped (p 0.5 >= 0.5 and a 0.4 >= 0.4): left untouched, stages 1 and 2 not run"


def test_the_gate_rejects_a_hopeless_image_and_rejection_comes_first(pipe):
    gate = GateConfig(skip_above=GateBounds(p=0.0), reject_below=GateBounds(p=0.2, a=0.45))
    out, image, calls = _gated(pipe, gate)
    assert out.gate.verdict == "rejected" and out.summary()["gate"] == "rejected" and calls == []
    assert np.array_equal(np.asarray(out.image), np.asarray(image)) and not out.stage1.ran
    assert out.note == "gate: rejected (a 0.4 < 0.45): not refined, the input returned unchanged"


def test_an_image_between_the_bounds_is_refined_as_without_a_gate(pipe):
    gated, _, calls = _gated(pipe, GateConfig(skip_above=GateBounds(p=0.51, a=0.4), reject_below=GateBounds(p=0.5, a=0.4)))
    plain, _, _ = _gated(pipe, None)
    assert gated.gate.verdict == "refined" and calls and gated.stage1.ran
    assert plain.gate.verdict == "" and plain.summary()["gate"] == ""
    assert np.array_equal(np.asarray(gated.image), np.asarray(plain.image))
    assert np.array_equal(gated.mask.binary, plain.mask.binary) and gated.strength1 == plain.strength1
    assert gated.note == plain.note and "gate" not in plain.note


def test_the_gate_is_off_in_the_shipped_configs():
    for path in (REPO / "configs").glob("*.yaml"):
        assert not GRefineConfig.from_yaml(path).gate.enabled, path


@pytest.mark.parametrize(
    "gate, message",
    [
        ({"skip_above": {"p": 1.5}}, r"gate\.skip_above\.p must be in \[0, 1\], got 1.5"),
        ({"reject_below": {"a": -0.1}}, r"gate\.reject_below\.a must be in \[0, 1\]"),
        ({"reject_below": {"a": "low"}}, r"gate\.reject_below\.a must be a number or null"),
        ({"skip_above": 0.8}, r"'gate\.skip_above' must be a mapping"),
        ({"skip_above": {"q": 0.8}}, r"unknown key\(s\) \['q'\] at section 'gate\.skip_above'"),
        ({"skip_below": {"p": 0.8}}, r"unknown key\(s\) \['skip_below'\] at section 'gate'"),
        ({"skip_above": {"p": 0.4}, "reject_below": {"p": 0.6}}, r"gate\.reject_below\.p \(0.6\) must not exceed gate\.skip_above\.p \(0.4\)"),
    ],
)
def test_bad_gate_values_are_refused_at_load(gate, message):
    with pytest.raises(ConfigError, match=message):
        GRefineConfig.from_dict({"gate": gate})


def test_a_gate_on_a_dropped_map_is_refused():
    with pytest.raises(ConfigError, match=r"gate\.skip_above\.a is set but ablation\.drop_aq_map drops that map"):
        GRefineConfig.from_dict({"gate": {"skip_above": {"a": 0.9}}, "ablation": {"drop_aq_map": True}})
    config = GRefineConfig.from_dict({"gate": {"reject_below": {"a": 0.2}}, "ablation": {"drop_pq_map": True}})
    assert config.gate.enabled and config.gate.reject_below == GateBounds(a=0.2)


def test_the_runner_writes_an_untouched_image_and_the_gate_column(pipe, tmp_path, monkeypatch):
    monkeypatch.setattr(pipe.config, "gate", GateConfig(skip_above=GateBounds(p=0.0, a=0.0)))  # every image is good
    inputs = tmp_path / "in"
    inputs.mkdir()
    _image(seed=9).save(inputs / "x.jpg", quality=90)
    (inputs / "x.txt").write_text("a castle on a hill")
    summary = run_folder(pipe, inputs, tmp_path / "out", progress=False)
    assert summary.exit_code == 0
    row = read_results(tmp_path / "out" / "results.csv")["x.jpg"]
    assert row["gate"] == "skipped" and row["note"].startswith("gate: skipped") and row["stage1_steps"] == "0"
    assert (tmp_path / "out" / "x.jpg").read_bytes() == (inputs / "x.jpg").read_bytes()
