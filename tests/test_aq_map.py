"""AQ-Map (Eq. 5-8): planted phrase scores, then a tiny random CLIP end to end."""
from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from grefine.errors import MissingWeightsError
from grefine.maps.aq_map import (
    Alignment,
    AQMap,
    EmphasizedPrompt,
    aq_map_from_aligner,
    cask_score,
    classify_defects,
    merge_alignment_map,
    minmax_per_text,
)
from grefine.maps.syntax_tree import add_nltk_data_dir, parse_prompt
from grefine.testing import build_tiny_open_clip

REPO = Path(__file__).resolve().parents[1]
SIZE = (6, 8)  # (H, W) of the planted maps


@pytest.fixture(scope="module", autouse=True)
def nltk_data(shared_dir: Path) -> None:
    add_nltk_data_dir(shared_dir / "nltk_data")


def planted_map(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.1, 1.0, SIZE).astype(np.float32)


class PlantedAligner:
    """Eq. 5 stand-in: fixed scores and maps per text; records what it was asked."""

    def __init__(self, scores: dict[str, float]):
        self.scores = scores
        self.maps = {text: planted_map(seed) for seed, text in enumerate(scores)}
        self.calls: list[list[str]] = []

    def __call__(self, image, texts):
        self.calls.append(list(texts))
        return Alignment(np.array([self.scores[t] for t in texts]), np.stack([self.maps[t] for t in texts]))


IMAGE = Image.new("RGB", (SIZE[1], SIZE[0]))


def test_planted_scores_give_expected_defects_map_prompt_and_score():
    prompt = "a red cube on a blue table"
    aligner = PlantedAligner(
        {prompt: 0.8, "a red cube": 0.4, "cube": 0.7, "on a blue table": 0.6, "table": 0.3}
    )
    result = aq_map_from_aligner(parse_prompt(prompt), IMAGE, aligner, a_bound=0.5, beta=0.5)
    assert [(p.text, p.ancestor, p.defect) for p in result.phrases] == [
        ("a red cube", 0, "adjective_unmatched"),  # 0.4 < 0.7: drawn on its own noun's region
        ("on a blue table", 0, "noun_unmatched"),  # 0.3 < a_bound: drawn on its ancestor's (cube)
    ]
    cube = aligner.maps["cube"]
    np.testing.assert_allclose(result.map, cube * cube, rtol=1e-6)
    assert result.map.dtype == np.float32
    assert result.prompt_score == pytest.approx(0.8)
    assert result.score == pytest.approx(0.8 * (0.4 / 0.5) * 1.0)
    assert result.emphasized_prompt == EmphasizedPrompt(prompt, ("a red cube", "on a blue table"), 0.1)
    assert [p.score for p in result.phrases] == pytest.approx([0.4, 0.6])
    assert [p.noun_score for p in result.phrases] == pytest.approx([0.7, 0.3])
    np.testing.assert_array_equal(result.phrase_maps[1], aligner.maps["on a blue table"])
    # one request, holding each distinct text once: the prompt, the phrases, the nouns
    assert aligner.calls == [[prompt, "a red cube", "on a blue table", "cube", "table"]]


def test_noun_unmatched_uses_the_ancestor_region_not_its_own():
    prompt = "photo of a scarecrow holding a gift"
    scores = {prompt: 0.9, "photo": 0.9, "of a scarecrow": 0.9, "scarecrow": 0.9, "holding a gift": 0.9, "gift": 0.1}
    aligner = PlantedAligner(scores)
    result = aq_map_from_aligner(parse_prompt(prompt), IMAGE, aligner, a_bound=0.5, beta=0.5)
    assert [p.defect for p in result.phrases] == ["none", "none", "noun_unmatched"]
    assert result.phrases[2].ancestor == 1
    np.testing.assert_allclose(result.map, aligner.maps["scarecrow"], rtol=1e-6)
    assert result.emphasized_prompt.phrases == ("holding a gift",)
    assert str(result.emphasized_prompt) == f"{prompt}, (holding a gift:1.1)"
    assert result.score == pytest.approx(0.9)  # every a_phs ≥ β: no penalty


def test_all_matched_leaves_map_at_one_and_prompt_unchanged():
    prompt = "a cat wearing a hat"
    aligner = PlantedAligner({prompt: 0.7, "a cat": 0.8, "cat": 0.6, "wearing a hat": 0.9, "hat": 0.9})
    result = aq_map_from_aligner(parse_prompt(prompt), IMAGE, aligner, a_bound=0.5, beta=0.5)
    assert [p.defect for p in result.phrases] == ["none", "none"]
    np.testing.assert_array_equal(result.map, np.ones(SIZE, np.float32))
    assert result.emphasized_prompt == EmphasizedPrompt(prompt)
    assert str(result.emphasized_prompt) == prompt
    assert result.score == pytest.approx(0.7)


def test_prompt_without_noun_is_its_own_noun():
    prompt = "highly detailed, 4k"
    aligner = PlantedAligner({prompt: 0.6, "highly detailed 4k": 0.2})
    result = aq_map_from_aligner(parse_prompt(prompt), IMAGE, aligner, a_bound=0.5, beta=0.4)
    (phrase,) = result.phrases
    assert phrase.noun is None and phrase.noun_score == phrase.score == pytest.approx(0.2)
    assert phrase.defect == "noun_unmatched"
    np.testing.assert_allclose(result.map, aligner.maps["highly detailed 4k"], rtol=1e-6)
    assert result.score == pytest.approx(0.6 * 0.2 / 0.4)


def test_eq6_eq8_building_blocks():
    assert classify_defects([0.4, 0.6, 0.5, 0.9], [0.7, 0.3, 0.5, 0.5], a_bound=0.5) == [
        "adjective_unmatched",
        "noun_unmatched",
        "none",  # equal scores are not a defect, nor is a noun exactly at the bound
        "none",
    ]
    maps = np.stack([np.full((2, 2), 0.5, np.float32), np.full((2, 2), 0.25, np.float32)])
    assert merge_alignment_map(maps, [0, 0], ["noun_unmatched", "noun_unmatched"]) == pytest.approx(0.25)
    assert merge_alignment_map(maps, [0, 0], ["none", "adjective_unmatched"]) == pytest.approx(0.25)
    assert merge_alignment_map(maps, [0, 0], ["none", "noun_unmatched"]) == pytest.approx(0.5)
    assert cask_score(0.8, [0.25, 1.0, 0.5], beta=0.5) == pytest.approx(0.8 * 0.5)
    rows = minmax_per_text(torch.tensor([[1.0, 3.0, 2.0], [4.0, 4.0, 4.0]]))
    assert rows.tolist() == [[0.0, 1.0, 0.5], [1.0, 1.0, 1.0]]


# --------------------------------------------------------------------------- tiny CLIP end to end


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_open_clip()


def random_image(height: int, width: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_tiny_clip_map_has_image_size_and_all_matched_gives_one(tiny):
    model, tokenizer = tiny
    image = random_image(30, 44)
    # Every phrase is its bare noun (a_phs = a_pns) and a_bound = 0: nothing can be unmatched.
    result = AQMap(model, tokenizer, num_blocks=2, a_bound=0.0)(image, "cat, dog")
    assert [p.text for p in result.phrases] == ["cat", "dog"]
    assert [p.defect for p in result.phrases] == ["none", "none"]
    assert result.map.shape == (30, 44) and result.map.dtype == np.float32
    np.testing.assert_array_equal(result.map, np.ones((30, 44), np.float32))
    assert result.phrase_maps.shape == (2, 30, 44)
    assert 0.0 < result.score < 1.0 and result.score <= result.prompt_score + 1e-7


def test_tiny_clip_unmatched_nouns_darken_the_map(tiny):
    model, tokenizer = tiny
    image = random_image(24, 40, seed=1)
    result = AQMap(model, tokenizer, num_blocks=2, a_bound=1.0)(image, "a red cube on a blue table")
    assert [p.defect for p in result.phrases] == ["noun_unmatched", "noun_unmatched"]
    assert result.map.shape == (24, 40)
    assert result.map.min() >= 0.0 and result.map.max() <= 1.0 and result.map.min() < 1.0
    np.testing.assert_allclose(result.map, result.noun_maps[0] ** 2, rtol=1e-5)  # both on the cube
    assert result.emphasized_prompt.phrases == ("a red cube", "on a blue table")


def test_tiny_clip_texts_go_through_the_text_tower_once(tiny, monkeypatch):
    model, tokenizer = tiny
    aq_map = AQMap(model, tokenizer, num_blocks=2, input_size=48)
    batches = []
    original = model.encode_text
    monkeypatch.setattr(model, "encode_text", lambda tokens, **kw: batches.append(len(tokens)) or original(tokens, **kw))
    result = aq_map(random_image(20, 20), "a cat wearing a hat and a dog playing")
    # "" + prompt + 3 phrases + 3 nouns, in one batch
    assert batches == [8]
    assert len(result.phrases) == 3


def test_tiny_clip_scores_match_eq5(tiny):
    """The CLS score of a text is σ(10 · cos(I, text) − 10 · cos(I, ""))."""
    model, tokenizer = tiny
    aq_map = AQMap(model, tokenizer, num_blocks=2)
    image = random_image(32, 32, seed=2)
    alignment = aq_map.align(image, ["a cat"])
    with torch.no_grad():
        batch = torch.from_numpy(np.asarray(image, np.float32) / 255.0).permute(2, 0, 1)[None]
        mean = torch.tensor(aq_map.surgery.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(aq_map.surgery.image_std).view(1, 3, 1, 1)
        image_feature = torch.nn.functional.normalize(model.encode_image((batch - mean) / std), dim=-1)
        text = torch.nn.functional.normalize(model.encode_text(tokenizer(["", "a cat"])), dim=-1)
    expected = torch.sigmoid(10 * image_feature[0] @ (text[1] - text[0]))
    assert alignment.scores[0] == pytest.approx(float(expected), abs=1e-5)
    assert alignment.maps.shape == (1, 32, 32)
    assert alignment.maps.min() == pytest.approx(0.0, abs=1e-6) and alignment.maps.max() <= 1.0


def test_long_prompt_warns_and_still_works(tiny):
    model, tokenizer = tiny
    prompt = ", ".join(["a small red cat on a wooden table"] * 12)
    with pytest.warns(UserWarning, match="truncated"):
        result = AQMap(model, tokenizer, num_blocks=2)(random_image(16, 16), prompt)
    assert len(result.phrases) == 24


def test_empty_prompt_is_an_error(tiny):
    from grefine.maps.syntax_tree import EmptyPromptError

    model, tokenizer = tiny
    with pytest.raises(EmptyPromptError):
        AQMap(model, tokenizer, num_blocks=2)(random_image(16, 16), "  ")


def test_missing_weights_name_the_model():
    with pytest.raises(MissingWeightsError, match=r"ViT-B-16.*checkpoints/README\.md"):
        AQMap.from_pretrained("ViT-B-16", "openai", device="cpu")


def test_script_writes_overlays_and_scores(tiny, tmp_path):
    spec = importlib.util.spec_from_file_location("aq_map_script", REPO / "scripts" / "aq_map.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    images = tmp_path / "images"
    images.mkdir()
    random_image(20, 28).save(images / "one.png")
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("name,prompt\none.png,a cat on a mat\nmissing.png,a dog\n", encoding="utf-8")
    model, tokenizer = tiny
    failures = script.run(AQMap(model, tokenizer, num_blocks=2), images, prompts, tmp_path / "out")
    assert failures == 1
    folder = tmp_path / "out" / "one"
    assert Image.open(folder / "aq_map.png").size == (28, 20)
    assert sorted(p.name for p in folder.glob("phrase_*.png")) == ["phrase_00.png", "phrase_01.png"]
    table = json.loads((folder / "phrases.json").read_text(encoding="utf-8"))
    assert [row["text"] for row in table] == ["a cat", "on a mat"]
    with open(tmp_path / "out" / "scores.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["name"] for row in rows] == ["one.png"] and 0.0 < float(rows[0]["score"]) < 1.0
