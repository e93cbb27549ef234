"""One VVV image-tower pass shared by PQ-Map and AQ-Map, and the maps of a batch as one batch
(:meth:`GRefinePipeline.maps`), on the tiny CLIP of configs/tiny-random.yaml."""
from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import pytest
from PIL import Image

from grefine import GRefinePipeline
from grefine.maps.aq_map import AQMap
from grefine.maps.clip_surgery import TowerPasses
from grefine.maps.pq_map import PQMap
from tests.conftest import REPO

TINY = REPO / "configs" / "tiny-random.yaml"
PROMPTS = ["a red cube on a blue table", "a cat wearing a hat and a dog playing", "a castle on a hill"]


@pytest.fixture(scope="module")
def pipe():
    return GRefinePipeline.from_pretrained(TINY)


def _image(width, height, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@contextlib.contextmanager
def tower_passes(model):
    """Records the batch size of every image-tower forward of ``model`` (its patch embedding)."""
    batches: list[int] = []
    handle = model.visual.conv1.register_forward_hook(lambda module, args, out: batches.append(args[0].shape[0]))
    try:
        yield batches
    finally:
        handle.remove()


def _assert_same_maps(pq, aq, pq_ref, aq_ref, **tolerance):
    np.testing.assert_allclose(pq.map, pq_ref.map, **tolerance)
    np.testing.assert_allclose(aq.defect_map, aq_ref.defect_map, **tolerance)
    np.testing.assert_allclose([pq.score, aq.score], [pq_ref.score, aq_ref.score], **tolerance)
    assert [p.defect for p in aq.phrases] == [p.defect for p in aq_ref.phrases]
    assert str(aq.emphasized_prompt) == str(aq_ref.emphasized_prompt)


def test_the_default_maps_share_one_clip_and_one_tower(pipe):
    assert pipe.pq_map.surgery.tower_key == pipe.aq_map.surgery.tower_key


def test_a_shared_pass_gives_the_separate_passes_maps_exactly(pipe):
    image = _image(72, 48)
    with tower_passes(pipe.pq_map.surgery.model) as separate:
        pq_ref, aq_ref = pipe.pq_map(image), pipe.aq_map(image, PROMPTS[0])
    with tower_passes(pipe.pq_map.surgery.model) as shared:
        [(pq, aq)] = pipe.maps([image], [PROMPTS[0]])
    assert separate == [1, 1] and shared == [1]
    _assert_same_maps(pq, aq, pq_ref, aq_ref, rtol=0, atol=0)
    np.testing.assert_array_equal(aq.noun_maps, aq_ref.noun_maps)


def test_maps_with_other_tower_settings_get_their_own_pass(pipe):
    model, tokenizer = pipe.aq_map.surgery.model, pipe.aq_map.text_features.tokenizer
    other = AQMap(model, tokenizer, num_blocks=1)
    refiner = GRefinePipeline(pipe.pq_map, other, pipe.stage1, pipe.stage2, pipe.config)
    image = _image(40, 40, seed=1)
    with tower_passes(model) as passes:
        [(pq, aq)] = refiner.maps([image], [PROMPTS[1]])
    assert passes == [1, 1]
    _assert_same_maps(pq, aq, pipe.pq_map(image), other(image, PROMPTS[1]), rtol=0, atol=0)


def test_a_batch_is_one_tower_pass_and_each_text_once_and_equals_single_images(pipe, text_rows):
    images = [_image(72, 48, seed=2), _image(40, 40, seed=3), _image(30, 60, seed=4)]
    model = pipe.aq_map.surgery.model
    fresh = AQMap(model, pipe.aq_map.text_features.tokenizer, num_blocks=pipe.config.aq_map.num_blocks, text_cache=None)
    pipe = GRefinePipeline(pipe.pq_map, fresh, pipe.stage1, pipe.stage2, pipe.config)  # no text cached yet
    text_batches = text_rows(model)
    with tower_passes(model) as passes:
        batched = pipe.maps(images, PROMPTS)
    # the 15 distinct texts ("" and 14 of the prompts) once each, 85 template rows apiece, in
    # forwards of at most 1024 rows
    assert passes == [3] and text_batches == [1024, 15 * 85 - 1024]
    for image, prompt, (pq, aq) in zip(images, PROMPTS, batched):
        [(pq_ref, aq_ref)] = pipe.maps([image], [prompt])
        assert pq.map.shape == aq.defect_map.shape == (image.height, image.width)
        _assert_same_maps(pq, aq, pq_ref, aq_ref, rtol=1e-5, atol=1e-5)


def test_images_are_grouped_by_clip_input_size(pipe):
    model = pipe.pq_map.surgery.model
    native = PQMap(model, embeddings=pipe.pq_map.prompts, num_blocks=2, input_size="native")
    refiner = GRefinePipeline(native, pipe.aq_map, pipe.stage1, pipe.stage2, pipe.config)
    images = [_image(40, 40, seed=5), _image(64, 32, seed=6), _image(40, 40, seed=7)]
    with tower_passes(model) as passes:
        batched = refiner.maps(images, PROMPTS)
    # PQ-Map: one forward per native size (40², 64×32); AQ-Map at 32²: one more for all three
    assert sorted(passes) == [1, 2, 3]
    for image, (pq, _) in zip(images, batched):
        np.testing.assert_allclose(pq.map, native(image).map, atol=1e-5)
    assert TowerPasses(images).tokens(native.surgery, "native")[1].grid == (4, 8)


def test_dropped_maps_are_neutral_and_not_computed(pipe):
    config = dataclasses.replace(pipe.config, ablation=dataclasses.replace(pipe.config.ablation, drop_pq_map=True, drop_aq_map=True))
    refiner = GRefinePipeline(pipe.pq_map, pipe.aq_map, pipe.stage1, pipe.stage2, config)
    with tower_passes(pipe.pq_map.surgery.model) as passes:
        [(pq, aq)] = refiner.maps([_image(24, 16)], [PROMPTS[0]])
    assert passes == [] and (pq.map == 1).all() and not aq.defect_map.any() and np.isnan(aq.score)


def test_one_prompt_per_image(pipe):
    with pytest.raises(ValueError, match="one prompt per image"):
        pipe.maps([_image(16, 16)], PROMPTS[:2])
