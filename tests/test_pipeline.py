"""GRefinePipeline end to end with configs/tiny-random.yaml, configs and the weights pre-flight."""
from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from grefine import GRefinePipeline
from grefine.config import ConfigError, GRefineConfig
from grefine.weights import WeightsUnavailableError, check_weights, required_weights
from tests.conftest import REPO

TINY = REPO / "configs" / "tiny-random.yaml"
DEFAULT = REPO / "configs" / "default.yaml"


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
    assert out.pq.map.shape == out.aq.map.shape == out.mask.binary.shape == (48, 72)
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
    monkeypatch.setattr(pipe.config.mask, "threshold", 1.0)  # (1 - P + A)/2 never exceeds 1
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


def test_default_config_holds_the_paper_settings():
    config = GRefineConfig.from_yaml(DEFAULT)
    assert config.steps == (10, 10)
    assert config.stage1.model == "diffusers/stable-diffusion-xl-1.0-inpainting-0.1"
    assert config.stage2.type == "pasd" and 0 < config.stage2.strength <= 0.2
    assert config.pq_map.model_name == "ViT-B-16" and config.pq_map.pretrained == "openai"


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


def test_a_missing_tagger_is_reported_by_the_preflight(monkeypatch):
    import grefine.maps.syntax_tree as syntax_tree

    def unavailable():
        raise syntax_tree.TaggerUnavailableError("no tagger")

    monkeypatch.setattr(syntax_tree, "load_tagger", unavailable)
    with pytest.raises(WeightsUnavailableError, match="NLTK POS tagger.*nltk.downloader averaged_perceptron_tagger_eng"):
        check_weights(GRefineConfig.from_yaml(TINY), online=True)
    monkeypatch.undo()
    check_weights(GRefineConfig.from_yaml(TINY), online=False)  # tiny + tagger present: nothing missing
