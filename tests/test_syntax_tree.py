"""Prompt parsing (Eq. 4, Algorithm 1): hand-checked parses, messy prompts, all AGIQA-3K prompts."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import nltk
import pytest
from nltk.tree import ParentedTree

from grefine.maps.syntax_tree import (
    DOWNLOAD_COMMAND,
    STOPWORDS_DOWNLOAD_COMMAND,
    EmptyPromptError,
    StopwordsUnavailableError,
    TaggerUnavailableError,
    add_nltk_data_dir,
    break_cycles,
    clean_prompt,
    is_content_word,
    load_stopwords,
    load_tagger,
    parse_prompt,
)


@pytest.fixture(scope="module", autouse=True)
def nltk_data(shared_dir: Path) -> None:
    add_nltk_data_dir(shared_dir / "nltk_data")


def summary(text: str) -> list[tuple[str, str | None, int]]:
    return [(phrase.text, phrase.noun, phrase.ancestor) for phrase in parse_prompt(text).phrases]


def check_partition(parsed) -> None:
    indices = sorted(index for phrase in parsed.phrases for index in phrase.word_indices)
    assert indices == list(range(len(parsed.words)))
    assert [word for word, _ in parsed.tree.leaves()] == list(parsed.words)
    assert [parsed.clean_text[start:end] for start, end in parsed.word_spans] == list(parsed.words)
    for phrase in parsed.phrases:
        assert phrase.text == " ".join(parsed.words[i] for i in phrase.word_indices)
        assert set(phrase.content_indices) <= set(phrase.word_indices)
        assert phrase.content == " ".join(parsed.words[i] for i in phrase.content_indices)
        assert all(is_content_word(parsed.words[i]) == (i in phrase.content_indices) for i in phrase.word_indices)
        if phrase.noun is not None:
            assert phrase.noun_index in phrase.word_indices and parsed.words[phrase.noun_index] == phrase.noun
            assert parsed.tags[phrase.noun_index].startswith("NN")


def check_ancestors(parsed) -> None:
    ancestors = [phrase.ancestor for phrase in parsed.phrases]
    assert all(0 <= a < len(ancestors) for a in ancestors)
    for start in range(len(ancestors)):
        seen, node = {start}, start
        while ancestors[node] != node:
            node = ancestors[node]
            assert node not in seen, f"ancestor cycle through phrase {node}"
            seen.add(node)


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("a red cube on a blue table", [("a red cube", "cube", 0), ("on a blue table", "table", 0)]),
        (
            # The perceptron tags "playing" NN, so it heads "a dog playing" (a tagger limitation).
            "a cat wearing a hat and a dog playing",
            [("a cat", "cat", 0), ("wearing a hat", "hat", 0), ("and a dog playing", "playing", 2)],
        ),
        (
            "portrait of a tang dynasty empress, soft lighting",
            [("portrait", "portrait", 0), ("of a tang dynasty empress", "empress", 0), ("soft lighting", "lighting", 2)],
        ),
        (
            "(masterpiece:1.2), a castle on a hill, by greg rutkowski, trending on artstation",
            [
                ("masterpiece", "masterpiece", 0),
                ("a castle", "castle", 1),
                ("on a hill", "hill", 1),
                ("by greg rutkowski", "rutkowski", 3),
                ("trending on artstation", "artstation", 4),
            ],
        ),
        (
            "photo of a scarecrow holding a gift",
            [("photo", "photo", 0), ("of a scarecrow", "scarecrow", 0), ("holding a gift", "gift", 1)],
        ),
        ("a sleeping cat in a box", [("a sleeping cat", "cat", 0), ("in a box", "box", 0)]),
        ("a cat sits on a mat", [("a cat", "cat", 0), ("sits on a mat", "mat", 1)]),
        ("highly detailed, 4k", [("highly detailed 4k", None, 0)]),
    ],
)
def test_hand_checked_parses(prompt, expected):
    parsed = parse_prompt(prompt)
    assert summary(prompt) == expected
    check_partition(parsed)


def test_tree_is_a_parented_chunk_tree():
    parsed = parse_prompt("a cat wearing a hat on a sofa, oil painting")
    assert isinstance(parsed.tree, ParentedTree) and parsed.tree.label() == "S"
    labels = {subtree.label() for subtree in parsed.tree.subtrees()}
    assert {"NP", "PP", "VP"} <= labels <= {"S", "NP", "PP", "VP", "CLAUSE"}
    hat = next(t for t in parsed.tree.subtrees() if t.label() == "NP" and ("hat", "NN") in t)
    assert hat.parent().label() == "VP" and hat.parent()[0] == ("wearing", "VBG")


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("(masterpiece:1.2), a cat", "masterpiece , a cat"),
        ("[dog] {bird} ((cat)) <lora>", "dog bird cat lora"),
        ("a cat::2 dog:-0.5, (sky: 1.3)", "a cat dog , sky"),
        ('a "quoted" word at 12:30, 16:9', "a quoted word at 12:30, 16:9"),
        ("see https://example.com/a:2?(x) now", "see https://example.com/a:2?(x) now"),
    ],
)
def test_clean_prompt_removes_weight_syntax(raw, clean):
    assert clean_prompt(raw) == clean


@pytest.mark.parametrize(
    "prompt",
    [
        "((masterpiece)), [[best quality]], {{ultra detailed}}, 1girl, (blue eyes:1.3), cat::2 dog::-1",
        "a café in Zürich, 東京タワー at night, 🐱🐶 emoji party ✨",
        "see https://example.com/img.png?size=512:512 and www.artstation.com/artwork/xyz",
        "2 cats, 3.5 dogs, 1024x1024, 8k uhd, --ar 16:9 --v 5 | seed 1234",
        "by greg rutkowski, alphonse mucha, artgerm, wlop, trending on artstation, unreal engine 5, octane render",
        "don't stop; it's a dog's life... (really!) [[[",
        "word " * 300,
    ],
)
def test_messy_prompts_parse(prompt):
    parsed = parse_prompt(prompt)
    check_partition(parsed)
    check_ancestors(parsed)


def test_url_stays_one_word_and_is_never_a_noun():
    parsed = parse_prompt("a cat, https://example.com/cat.png")
    assert "https://example.com/cat.png" in parsed.words
    assert all(phrase.noun != "https://example.com/cat.png" for phrase in parsed.phrases)


def test_emoji_and_non_ascii_are_words():
    parsed = parse_prompt("a café with a 🐱")
    assert {"café", "🐱"} <= set(parsed.words)


@pytest.mark.parametrize("prompt", ["", "   \n\t", "(:1.2), ,, [] {}", "..."])
def test_prompt_without_words_is_an_error(prompt):
    with pytest.raises(EmptyPromptError, match="no words"):
        parse_prompt(prompt)


def test_non_string_prompt_is_an_error():
    with pytest.raises(TypeError):
        parse_prompt(None)  # type: ignore[arg-type]


def test_all_agiqa3k_prompts_parse(shared_dir):
    with open(shared_dir / "data" / "agiqa3k.csv", newline="", encoding="utf-8") as handle:
        prompts = list(dict.fromkeys(row["prompt"] for row in csv.DictReader(handle)))
    assert len(prompts) == 300
    nouns = 0
    for prompt in prompts:
        parsed = parse_prompt(prompt)
        check_partition(parsed)
        check_ancestors(parsed)
        nouns += sum(phrase.noun is not None for phrase in parsed.phrases)
    assert nouns >= 300  # nearly every prompt names at least one thing


def test_break_cycles_roots_the_shallowest_phrase():
    assert break_cycles([1, 2, 0, 3], depth=[3, 2, 4, 1]) == [1, 1, 0, 3]
    assert break_cycles([0, 0, 1], depth=[1, 2, 3]) == [0, 0, 1]


def test_missing_tagger_is_a_clear_error(monkeypatch, capsys):
    attempts = []

    def unavailable(*args, **kwargs):
        raise LookupError("Resource not found")

    def failed_download(resource, **kwargs):
        attempts.append(resource)
        print(f"[nltk_data] Error loading {resource}: <urlopen error>", file=kwargs.get("print_error_to", sys.stderr))  # NLTK's default
        return False

    load_tagger.cache_clear()
    monkeypatch.setattr(nltk.tag, "PerceptronTagger", unavailable)
    monkeypatch.setattr(nltk, "download", failed_download)
    try:
        with pytest.raises(TaggerUnavailableError) as error:
            parse_prompt("a cat")
    finally:
        load_tagger.cache_clear()
    assert attempts == ["averaged_perceptron_tagger_eng"]
    assert DOWNLOAD_COMMAND in str(error.value) and "NLTK_DATA" in str(error.value)
    assert capsys.readouterr().err == ""  # NLTK's own lines do not reach the user: the error says it all


def test_content_drops_stop_words_and_punctuation_in_any_case():
    parsed = parse_prompt("The cat's HAT, and A dog with the red ball")
    assert [(p.text, p.content) for p in parsed.phrases] == [
        ("The cat 's HAT and", "cat HAT"),
        ("A dog", "dog"),
        ("with the red ball", "red ball"),
    ]
    assert not is_content_word("'s") and not is_content_word("--") and is_content_word("4k")
    assert {"a", "the", "of", "and", "s"} <= load_stopwords()


def test_missing_stopwords_are_a_clear_error(monkeypatch):
    attempts = []

    class Unavailable:
        def words(self, language):
            raise LookupError("Resource stopwords not found")

    def failed_download(resource, **kwargs):
        attempts.append(resource)
        return False

    load_stopwords.cache_clear()
    monkeypatch.setattr(nltk.corpus, "stopwords", Unavailable())
    monkeypatch.setattr(nltk, "download", failed_download)
    try:
        with pytest.raises(StopwordsUnavailableError) as error:
            parse_prompt("a cat")
    finally:
        load_stopwords.cache_clear()
    assert attempts == ["stopwords"]
    assert STOPWORDS_DOWNLOAD_COMMAND in str(error.value) and "corpora/stopwords.zip" in str(error.value)
    assert "NLTK_DATA" in str(error.value)


def test_tagger_is_downloaded_on_first_use(monkeypatch, shared_dir):
    """Not found on the path → ``nltk.download`` is called, then the tagger loads."""
    real = nltk.tag.PerceptronTagger
    downloaded = []

    def tagger(**kwargs):
        if not downloaded:
            raise LookupError("Resource not found")
        return real(**kwargs)

    load_tagger.cache_clear()
    monkeypatch.setattr(nltk.tag, "PerceptronTagger", tagger)
    monkeypatch.setattr(nltk, "download", lambda resource, **kwargs: downloaded.append(resource) or True)
    try:
        assert summary("a red cube") == [("a red cube", "cube", 0)]
    finally:
        load_tagger.cache_clear()
    assert downloaded == ["averaged_perceptron_tagger_eng"]


def test_add_nltk_data_dir_rejects_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        add_nltk_data_dir(tmp_path / "absent")

