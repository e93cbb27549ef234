"""AQ-Map (Eq. 5-8): planted phrase scores, then a tiny random CLIP end to end."""
from __future__ import annotations

import csv
import importlib.util
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from grefine import aq_map_from_aligner
from grefine.errors import MissingWeightsError
from grefine.maps.aq_map import (
    Alignment,
    AQMap,
    AQMapResult,
    EmphasizedPrompt,
    cask_score,
    classify_defects,
    merge_defect_map,
    minmax_per_text,
    target_maps,
)
from grefine.maps.syntax_tree import add_nltk_data_dir, parse_prompt
from grefine.tiny import build_tiny_open_clip

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
CUBE = "a red cube on a blue table"


def cube_aligner(**scores: float) -> PlantedAligner:
    """The texts of CUBE, all well aligned unless overridden (keys: prompt, red_cube, cube, blue_table, table)."""
    values = {"prompt": 0.8, "red_cube": 0.7, "cube": 0.7, "blue_table": 0.7, "table": 0.7, **scores}
    texts = {"prompt": CUBE, "red_cube": "red cube", "cube": "cube", "blue_table": "blue table", "table": "table"}
    return PlantedAligner({texts[key]: value for key, value in values.items()})


def test_phrases_are_scored_without_stop_words_in_one_request():
    aligner = cube_aligner()
    result = aq_map_from_aligner(parse_prompt(CUBE), IMAGE, aligner)
    # one request, each distinct text once: the cleaned prompt, the phrase contents, the nouns
    assert aligner.calls == [[CUBE, "red cube", "blue table", "cube", "table"]]
    assert [(p.text, p.content, p.noun) for p in result.phrases] == [
        ("a red cube", "red cube", "cube"),
        ("on a blue table", "blue table", "table"),
    ]


def test_nothing_defective_gives_a_zero_defect_map_and_the_plain_prompt():
    result = aq_map_from_aligner(parse_prompt(CUBE), IMAGE, cube_aligner(red_cube=0.68))  # within the margin
    assert [p.defect for p in result.phrases] == ["none", "none"]
    assert result.defect_map.dtype == np.float32 and not result.defect_map.any()
    np.testing.assert_array_equal(result.alignment_map, np.ones(SIZE, np.float32))
    assert result.emphasized_prompt == EmphasizedPrompt(CUBE) and str(result.emphasized_prompt) == CUBE
    assert result.score == pytest.approx(0.8) and result.prompt_score == pytest.approx(0.8)


def test_noun_unmatched_is_drawn_on_its_ancestors_noun_map():
    aligner = cube_aligner(table=0.3)
    result = aq_map_from_aligner(parse_prompt(CUBE), IMAGE, aligner)
    assert [(p.ancestor, p.defect) for p in result.phrases] == [(0, "none"), (0, "noun_unmatched")]
    np.testing.assert_array_equal(result.defect_map, aligner.maps["cube"])  # where the table belongs
    assert str(result.emphasized_prompt) == "a red cube on a (blue table:1.1)"
    assert result.emphasized_prompt.phrases == ("blue table",)


def test_noun_unmatched_own_ancestor_is_drawn_on_its_own_noun_map():
    # The notebook (cell 39; AQ-Map.py's phrase_to_parent starts every phrase as its own parent):
    # a top-level phrase whose noun is missing draws its own noun's map, not the whole prompt's.
    aligner = cube_aligner(cube=0.2)
    result = aq_map_from_aligner(parse_prompt(CUBE), IMAGE, aligner)
    assert [(p.ancestor, p.defect) for p in result.phrases] == [(0, "noun_unmatched"), (0, "none")]
    np.testing.assert_array_equal(result.defect_map, aligner.maps["cube"])
    assert not np.array_equal(result.defect_map, aligner.maps[CUBE])
    np.testing.assert_array_equal(result.prompt_map, aligner.maps[CUBE])


def test_noun_unmatched_with_an_unscored_ancestor_is_drawn_on_the_whole_prompt_map():
    prompt_map, noun_maps = planted_map(7), np.stack([planted_map(8), planted_map(9)])
    targets = target_maps(prompt_map, noun_maps, [0, 0], [False, True], ["none", "noun_unmatched"])
    assert len(targets) == 1 and targets[0] is prompt_map


def test_adjective_unmatched_needs_the_margin_and_is_drawn_on_its_own_noun_map():
    aligner = cube_aligner(red_cube=0.6)  # 0.1 below its noun: beyond the 0.05 margin
    result = aq_map_from_aligner(parse_prompt(CUBE), IMAGE, aligner)
    assert [p.defect for p in result.phrases] == ["adjective_unmatched", "none"]
    np.testing.assert_array_equal(result.defect_map, aligner.maps["cube"])
    strict = aq_map_from_aligner(parse_prompt(CUBE), IMAGE, cube_aligner(red_cube=0.68), margin=0.0)
    assert [p.defect for p in strict.phrases] == ["adjective_unmatched", "none"]  # the notebook's rule
    assert [p.defect for p in aq_map_from_aligner(parse_prompt(CUBE), IMAGE, aligner, margin=0.2).phrases] == ["none", "none"]


def test_two_defects_take_the_pixelwise_maximum():
    aligner = cube_aligner(cube=0.2, blue_table=0.5)  # own-ancestor noun + adjective of the table
    result = aq_map_from_aligner(parse_prompt(CUBE), IMAGE, aligner)
    assert [p.defect for p in result.phrases] == ["noun_unmatched", "adjective_unmatched"]
    np.testing.assert_array_equal(result.defect_map, np.maximum(aligner.maps["cube"], aligner.maps["table"]))
    assert str(result.emphasized_prompt) == "a (red cube:1.1) on a (blue table:1.1)"
    assert result.score == pytest.approx(0.8 * 1.0 * 1.0)  # every phrase score ≥ β


def test_emphasis_spans_are_the_content_words_in_the_prompt():
    prompt = "photo of a scarecrow holding a gift"
    aligner = PlantedAligner(
        {prompt: 0.9, "photo": 0.9, "scarecrow": 0.9, "holding gift": 0.9, "gift": 0.1}
    )
    result = aq_map_from_aligner(parse_prompt(prompt), IMAGE, aligner, emphasis=0.2)
    assert [p.defect for p in result.phrases] == ["none", "none", "noun_unmatched"]
    np.testing.assert_array_equal(result.defect_map, aligner.maps["scarecrow"])  # its ancestor's noun
    emphasized = result.emphasized_prompt
    assert [emphasized.text[a:b] for a, b in emphasized.spans] == ["holding", "gift"]  # "a" between them stays 1
    assert emphasized.fragments() == [("photo of a scarecrow ", 1.0), ("holding", 1.2), (" a ", 1.0), ("gift", 1.2)]
    assert str(emphasized.with_suffix(", 4k")) == "photo of a scarecrow (holding:1.2) a (gift:1.2), 4k"
    no_emphasis = aq_map_from_aligner(parse_prompt(prompt), IMAGE, aligner, emphasis=0.0).emphasized_prompt
    assert no_emphasis.spans == () and str(no_emphasis) == prompt


def test_weighting_syntax_is_cleaned_before_scoring_and_emphasis():
    prompt = "a (red cube:1.3) on a [blue] table"
    aligner = cube_aligner(table=0.3)
    result = aq_map_from_aligner(parse_prompt(prompt), IMAGE, aligner)
    assert aligner.calls[0][0] == CUBE and result.clean_prompt == CUBE
    assert str(result.emphasized_prompt) == "a red cube on a (blue table:1.1)"


def test_a_stop_word_phrase_is_not_scored_and_never_defective():
    prompt = "it is what it is"
    aligner = PlantedAligner({prompt: 0.2})
    result = aq_map_from_aligner(parse_prompt(prompt), IMAGE, aligner, a_bound=0.9)
    (phrase,) = result.phrases
    assert phrase.content == "" and phrase.score is None and phrase.defect == "none"
    assert aligner.calls == [[prompt]] and not result.defect_map.any()
    assert result.score == pytest.approx(0.2)  # the cask ignores unscored phrases
    assert not result.phrase_maps.any()


def test_prompt_without_noun_is_its_own_noun():
    prompt = "highly detailed, 4k"
    aligner = PlantedAligner({prompt: 0.6, "highly detailed 4k": 0.2})
    result = aq_map_from_aligner(parse_prompt(prompt), IMAGE, aligner, a_bound=0.5, beta=0.4)
    (phrase,) = result.phrases
    assert phrase.noun is None and phrase.noun_score == phrase.score == pytest.approx(0.2)
    assert phrase.defect == "noun_unmatched"
    np.testing.assert_array_equal(result.defect_map, aligner.maps["highly detailed 4k"])  # its own ancestor and noun
    assert result.score == pytest.approx(0.6 * 0.2 / 0.4)


def test_eq6_eq8_building_blocks():
    assert classify_defects([0.4, 0.6, 0.5, 0.9, None, 0.5], [0.7, 0.3, 0.5, 0.5, None, 0.54], a_bound=0.5, margin=0.05) == [
        "adjective_unmatched",
        "noun_unmatched",
        "none",  # equal scores are not a defect, nor is a noun exactly at the bound
        "none",
        "none",  # not scored
        "none",  # within the margin
    ]
    prompt_map = np.full((2, 2), 0.9, np.float32)
    nouns = np.stack([np.full((2, 2), 0.5, np.float32), np.full((2, 2), 0.25, np.float32)])
    both_noun = target_maps(prompt_map, nouns, [0, 0], [True, True], ["noun_unmatched", "noun_unmatched"])
    assert [t[0, 0] for t in both_noun] == [pytest.approx(0.5), pytest.approx(0.5)]  # own ancestor → own noun
    unscored_ancestor = target_maps(prompt_map, nouns, [1, 1], [True, False], ["noun_unmatched", "none"])
    assert unscored_ancestor[0][0, 0] == pytest.approx(0.9)
    assert target_maps(prompt_map, nouns, [0, 0], [True, True], ["none", "adjective_unmatched"])[0][0, 0] == pytest.approx(0.25)
    assert not merge_defect_map([], (2, 2)).any()
    assert merge_defect_map([nouns[1], nouns[0]], (2, 2)) == pytest.approx(0.5)
    assert cask_score(0.8, [0.25, 1.0, 0.5], beta=0.5) == pytest.approx(0.8 * 0.5)
    rows = minmax_per_text(torch.tensor([[1.0, 3.0, 2.0], [4.0, 4.0, 4.0]]))
    assert rows.tolist() == [[0.0, 1.0, 0.5], [1.0, 1.0, 1.0]]


def test_neutral_result_has_no_defect_and_no_score():
    result = AQMapResult.neutral("a (red cube:1.2)", (3, 5))
    assert result.defect_map.shape == (3, 5) and not result.defect_map.any()
    assert math.isnan(result.score) and result.phrases == () and result.parse is None
    assert result.clean_prompt == "a red cube" and result.emphasized_prompt.spans == ()


# --------------------------------------------------------------------------- tiny CLIP end to end


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_open_clip()


def random_image(height: int, width: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_tiny_clip_map_has_image_size_and_all_matched_gives_zero(tiny):
    model, tokenizer = tiny
    image = random_image(30, 44)
    # Every phrase is its bare noun (a_phs = a_pns) and a_bound = 0: nothing can be unmatched.
    result = AQMap(model, tokenizer, num_blocks=2, a_bound=0.0)(image, "cat, dog")
    assert [p.text for p in result.phrases] == ["cat", "dog"]
    assert [p.defect for p in result.phrases] == ["none", "none"]
    assert result.defect_map.shape == (30, 44) and result.defect_map.dtype == np.float32
    assert not result.defect_map.any()
    assert result.phrase_maps.shape == (2, 30, 44)
    assert 0.0 < result.score < 1.0 and result.score <= result.prompt_score + 1e-7


def test_tiny_clip_unmatched_nouns_add_their_regions(tiny):
    model, tokenizer = tiny
    image = random_image(24, 40, seed=1)
    result = AQMap(model, tokenizer, num_blocks=2, a_bound=1.0)(image, CUBE)
    assert [p.defect for p in result.phrases] == ["noun_unmatched", "noun_unmatched"]
    assert result.defect_map.shape == (24, 40)
    assert result.defect_map.min() >= 0.0 and result.defect_map.max() == pytest.approx(1.0)
    # the cube is its own ancestor (→ its own noun map), the table belongs on the cube's noun map
    np.testing.assert_allclose(result.defect_map, result.noun_maps[0], rtol=1e-6)
    assert result.emphasized_prompt.phrases == ("red cube", "blue table")


@pytest.mark.parametrize("encoding, rows", [("ensemble", 85), ("bare", 1)])
def test_tiny_clip_texts_go_through_the_text_tower_once(tiny, text_rows, encoding, rows):
    model, tokenizer = tiny
    aq_map = AQMap(model, tokenizer, num_blocks=2, input_size=48, text_encoding=encoding, text_cache=None)
    batches = text_rows(model)
    result = aq_map(random_image(20, 20), "a cat wearing a hat and a dog playing")
    # "" + prompt + 3 phrase contents ("cat", "wearing hat", "dog playing") + 2 more nouns ("hat", "playing")
    assert batches == [7 * rows]
    assert len(result.phrases) == 3
    # a second prompt sharing "cat", "hat" and "": only its two new texts ("a cat with a red hat",
    # "red hat") are encoded; the same prompt again (a verification pass) encodes nothing
    aq_map(random_image(20, 20, seed=1), "a cat with a red hat")
    aq_map(random_image(20, 20, seed=2), "a cat with a red hat")
    assert batches == [7 * rows, 2 * rows]
    assert aq_map.text_features.encoded == 9


def test_channels_and_bare_options_restore_the_eq5_readout(tiny):
    """``feature_norm="channels"``, ``text_encoding="bare"``: the CLS score of a text is
    σ(10 · cos(I, text) − 10 · cos(I, "")) (grefine's readout before the authors' became the default)."""
    model, tokenizer = tiny
    aq_map = AQMap(model, tokenizer, num_blocks=2, feature_norm="channels", text_encoding="bare")
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


def _aq_script():
    spec = importlib.util.spec_from_file_location("aq_map_script", REPO / "scripts" / "aq_map.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_script_writes_overlays_and_scores(tiny, tmp_path):
    from grefine.run.sources import scan_folder

    script = _aq_script()
    images = tmp_path / "images"
    images.mkdir()
    random_image(20, 28).save(images / "one.png")
    random_image(20, 28).save(images / "one.jpg")  # same stem: its own folder
    (images / "broken.png").write_bytes(b"not an image")
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("name,prompt\none.png,a cat on a mat\none.jpg,a dog\nbroken.png,a dog\nmissing.png,a dog\n", encoding="utf-8")
    model, tokenizer = tiny
    scan = scan_folder(images, prompts)
    assert scan.unused_prompts == ["missing.png"]
    failures = script.run(AQMap(model, tokenizer, num_blocks=2), scan.items, tmp_path / "out")
    assert failures == 1
    folder = tmp_path / "out" / "one.png"
    assert Image.open(folder / "defect_map.png").size == (28, 20) and (tmp_path / "out" / "one.jpg" / "defect_map.png").is_file()
    assert sorted(p.name for p in folder.glob("phrase_*.png")) == ["phrase_00.png", "phrase_01.png"]
    table = json.loads((folder / "phrases.json").read_text(encoding="utf-8"))
    assert [(row["text"], row["content"]) for row in table] == [("a cat", "cat"), ("on a mat", "mat")]
    with open(tmp_path / "out" / "scores.csv", newline="", encoding="utf-8") as handle:
        rows = {row["name"]: row for row in csv.DictReader(handle)}
    assert sorted(rows) == ["broken.png", "one.jpg", "one.png"]
    assert 0.0 < float(rows["one.png"]["score"]) < 1.0 and rows["one.png"]["error"] == ""
    assert "cannot be read as an image" in rows["broken.png"]["error"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--a-bound", "1.5"], "--a-bound"),
        (["--num-blocks", "0"], "--num-blocks"),
        (["--output", "{in}"], "is the input folder"),
        (["--prompts", "{tmp}/absent.csv"], "absent.csv"),
        ([], r"ViT-B-16.*checkpoints/README\.md"),  # no weights here: refused, one line per missing item
    ],
)
def test_script_refuses_bad_input_before_work(tmp_path, capsys, extra, message):
    images = tmp_path / "in"
    images.mkdir()
    random_image(16, 16).save(images / "a.png")
    (images / "a.txt").write_text("a cat", encoding="utf-8")
    argv = ["--input", str(images), "--output", str(tmp_path / "out"), "--device", "cpu"]
    argv += [arg.format(**{"in": images, "tmp": tmp_path}) for arg in extra]
    assert _aq_script().main(argv) == 2
    err = capsys.readouterr().err
    lines = err.rstrip("\n").split("\n")  # one line, or a head, one line per missing weight and where to look
    assert re.search(message, err, flags=re.DOTALL) and (len(lines) == 1 or (extra == [] and lines[1].startswith("  - ")))
    assert not (tmp_path / "out").exists()
