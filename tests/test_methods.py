"""The benchmark's methods: named YAML configs, tiny builds, the refiner contract, pre-flight."""
from __future__ import annotations

import dataclasses
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from grefine.config import ConfigError, GRefineConfig
from grefine.bench.methods import METHOD_TYPES, build_refiner, list_methods, load_method, tiny_random_overrides
from grefine.run.runner import BASE_COLUMNS
from grefine.weights import WeightsUnavailableError
from tests.conftest import REPO

TINY_GREFINE = str(REPO / "configs" / "tiny-random.yaml")
SUMMARY_COLUMNS = set(BASE_COLUMNS) - {"name", "output", "prompt", "total_seconds", "metric_errors", "error"}
"""The scalar columns of the runner's results.csv that a refiner's summary gives."""


def _tiny(name: str, **more):
    """A shipped method with tiny random models working at the image's size (G-Refine types:
    the tiny-random config); ``more`` overrides the diffusion baselines' settings."""
    kind = yaml.safe_load((REPO / "configs" / "methods" / f"{name}.yaml").read_text())["type"]
    if kind in ("g-refine", "identity"):
        return load_method(name, overrides={"config": TINY_GREFINE} if kind == "g-refine" else {})
    size = {} if kind == "pasd" else {"resolution": None}
    return load_method(name, overrides={"tiny_random": True, **size, **more})


def _image(width=48, height=32, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_the_issue_methods_are_shipped_with_the_paper_iterations():
    assert {"g-refine", "g-refine-notebook", "identity", "sdxl-refiner", "sdxl-img2img", "sdxl-inpaint-full", "pasd"} <= set(list_methods())
    refiner = load_method("sdxl-refiner").settings
    assert refiner.model == "stabilityai/stable-diffusion-xl-refiner-1.0" and refiner.steps == 20
    assert load_method("sdxl-img2img").settings.model == "stabilityai/stable-diffusion-xl-base-1.0"
    assert load_method("sdxl-inpaint-full").settings.model == "diffusers/stable-diffusion-xl-1.0-inpainting-0.1"
    pasd = load_method("pasd").settings
    assert pasd.strength == 1.0 and pasd.steps == 20
    assert all(load_method(name).settings.steps == 20 for name in ("sdxl-img2img", "sdxl-inpaint-full"))


def test_grefine_methods_use_the_paper_and_notebook_configs():
    assert load_method("g-refine").settings.config == str(REPO / "configs" / "default.yaml")
    notebook = REPO / "configs" / "authors-notebook.yaml"
    if notebook.is_file():
        assert load_method("g-refine-notebook").settings.config == str(notebook)
    else:  # written by issue 8 in parallel: until then, a clear error naming the file
        with pytest.raises(ConfigError, match="g-refine-notebook.yaml.*authors-notebook.yaml: no such file"):
            load_method("g-refine-notebook")


@pytest.mark.parametrize("name", [name for name in list_methods() if name != "g-refine-notebook"])  # = g-refine when tiny
def test_every_method_builds_tiny_and_refines(name):
    method = _tiny(name, steps=2)
    refiner = build_refiner(method)
    image = _image()
    out = refiner(image, "a red cube on a blue table", seed=1)
    assert out.image.size == image.size and out.image.mode == "RGB"
    row = out.summary()
    assert set(row) <= SUMMARY_COLUMNS and isinstance(out.timings, dict)
    changed = not np.array_equal(np.asarray(out.image), np.asarray(image))
    assert changed == (name != "identity")
    if METHOD_TYPES[method.type].weights(method):  # a diffusion baseline: its steps were run
        stage = 2 if method.type == "pasd" else 1
        assert row[f"stage{stage}_steps"] == 2 and row[f"strength{stage}"] == method.settings.strength
        again = refiner(image, "a red cube on a blue table", seed=1).image
        assert np.array_equal(np.asarray(again), np.asarray(out.image))  # the seed reproduces


def test_identity_returns_exactly_the_input():
    refiner = build_refiner("identity")
    for image in (_image(), _image(31, 17, seed=3)):
        out = refiner(image, "anything", seed=0)
        assert out.image is not image and out.image.tobytes() == image.tobytes() and out.image.size == image.size
        assert out.summary()["stage1_steps"] == 0


def test_the_sdxl_baselines_run_twenty_steps_at_their_strength():
    refiner = build_refiner(_tiny("sdxl-refiner"))
    out = refiner(_image(16, 16), "a cat", seed=0)
    assert out.steps_run == 20 and out.strength == 0.3


def test_every_method_places_on_a_device_and_has_tiny_overrides():
    for name in list_methods():
        method = load_method(name, overrides={"device": "cuda:1"})  # one GPU per process
        assert method.device == torch.device("cuda:1"), name
        tiny = load_method(name, overrides=tiny_random_overrides(method.type)).settings
        if method.type == "g-refine":
            assert tiny.tiny_random and tiny.config == method.settings.config
        elif method.type == "pasd":
            assert tiny.tiny_random and tiny.options == {"max_resolution": 64}
        elif method.type != "identity":
            assert tiny.tiny_random and tiny.resolution == 64


def test_method_errors_name_the_method_and_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown method 'nope'; known methods: .*g-refine.*identity"):
        load_method("nope")
    with pytest.raises(ConfigError, match="unknown key.*'strenght'"):
        load_method("sdxl-refiner", overrides={"strenght": 0.3})
    with pytest.raises(ConfigError, match="sdxl-img2img.yaml: strength must lie in"):
        load_method("sdxl-img2img", overrides={"strength": 1.5})
    with pytest.raises(ConfigError, match="steps must be at least 1"):
        load_method("pasd", overrides={"steps": 0})
    with pytest.raises(ConfigError, match="dtype must be one of"):
        load_method("pasd", overrides={"dtype": "fp8"})
    bad = tmp_path / "mine.yaml"
    bad.write_text("type: sdxl-turbo\n")
    with pytest.raises(ConfigError, match="mine.yaml: 'type' must be one of g-refine, identity"):
        load_method(bad)


def test_a_user_method_yaml_with_an_existing_type(tmp_path):
    mine = tmp_path / "sdxl-refiner-strong.yaml"
    mine.write_text("type: sdxl-refiner\nstrength: 0.6\nsteps: 3\nresolution: null\ntiny_random: true\n")
    assert list_methods(tmp_path) == ["sdxl-refiner-strong"]
    method = load_method("sdxl-refiner-strong", methods_dir=tmp_path)
    assert method.name == "sdxl-refiner-strong" and method.settings.model is None  # the type's default
    out = build_refiner(method)(_image(), "a dog", seed=0)
    assert out.steps_run == 3 and out.strength == 0.6


def test_missing_baseline_weights_give_the_one_preflight_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache; HF_HUB_OFFLINE=1
    pasd = load_method("pasd", overrides={"pasd_model": str(tmp_path / "no-pasd")})
    with pytest.raises(WeightsUnavailableError) as info:
        build_refiner(pasd)
    message = str(info.value)
    assert "method pasd" in message and "checkpoints/README.md" in message
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5' (config key base_model)" in message
    assert "no-pasd' (config key pasd_model)" in message
    with pytest.raises(WeightsUnavailableError, match="stable-diffusion-xl-refiner-1.0' \\(config key model\\)"):
        build_refiner("sdxl-refiner")


@pytest.mark.parametrize(
    "name, dropped",
    [("g-refine", None), ("g-refine-aq-only", "drop_pq_map"), ("g-refine-pq-only", "drop_aq_map"), ("g-refine-stage1-only", "drop_stage2")],
)
def test_table8_ablation_methods_drop_one_part_each(name, dropped):
    from grefine.bench.methods import _grefine_config

    default = GRefineConfig.from_yaml(REPO / "configs" / "default.yaml")
    method = load_method(name)
    config = _grefine_config(method)
    flags = {key: getattr(config.ablation, key) for key in ("drop_pq_map", "drop_aq_map", "drop_stage2")}
    assert flags == {key: key == dropped for key in flags}
    assert dataclasses.replace(config, ablation=default.ablation, source=default.source) == default  # nothing else differs
    tiny = _grefine_config(load_method(name, overrides=tiny_random_overrides("g-refine")))
    assert tiny.ablation == config.ablation and tiny.stage1.tiny_random and tiny.stage1.resolution == 64
