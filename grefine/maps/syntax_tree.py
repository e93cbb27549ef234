"""Prompt parsing for AQ-Map (paper §3.2, Eq. 4 and Algorithm 1).

Pipeline of :func:`parse_prompt`:

1. **Clean** (:func:`clean_prompt`): prompt-weighting syntax is removed — ``(word:1.3)``,
   ``[word]``, ``{word}``, ``<word>``, ``word::2``, ``word:-0.5`` (a ``:``/``::`` weight right after
   a word or bracket; ``12:30`` and ``16:9`` are kept) — and double quotes become spaces.
   URLs (``http(s)://…``, ``www.…``) are kept whole.
2. **Tokenise** with NLTK's Treebank tokenizer (no data needed); each URL is one token.
   A *word* is a token with at least one letter, digit or pictographic symbol (emoji); the other
   tokens (punctuation) are tagged and chunked, because commas delimit constituents, and then
   dropped from the tree, so that leaf ``i`` of :attr:`ParsedPrompt.tree` is word ``i``.
3. **POS-tag** with NLTK's averaged perceptron (``averaged_perceptron_tagger_eng``); URLs are
   tagged ``SYM`` (never a noun). The tagger's mistakes are kept (e.g. "a dog playing" tags
   *playing* ``NN``, so that phrase's head noun is *playing*).
4. **Chunk** with the cascaded :data:`GRAMMAR` (``nltk.RegexpParser``) into an
   ``nltk.tree.ParentedTree`` labelled ``S`` (root), ``NP``, ``PP``, ``VP``, ``CLAUSE``; a
   modifier following another modifier is then attached to the nearest noun before it
   (:func:`attach_low`).

Eq. 4, as implemented:

* the cluster centres ``pns`` are the *base noun phrases* (the innermost ``NP`` chunks; all
  words of a compound such as "tang dynasty empress" lie in one); a centre's noun is the last
  ``NN*`` word of its chunk (the English head, as in the authors' script, which keeps the last
  noun of each noun chunk);
* every other word joins the centre whose noun is nearest in the tree: the number of edges
  between the two leaves. Ties are broken by the deeper lowest common ancestor (the noun inside
  the word's own constituent: "of" in "photo of a scarecrow holding a gift" goes with the
  scarecrow), then by the smaller distance in word order, then by the later noun (a determiner,
  preposition or conjunction introduces the noun that follows it);
* a prompt without a noun is one phrase holding every word, with ``noun=None``;
* each phrase also gets its *content* (:attr:`Phrase.content`): its words without NLTK's English
  stop words and punctuation (:func:`is_content_word`), the text AQ-Map scores, as in the authors'
  notebook (which keeps a word unless it is literally in ``stopwords.words("english")``; we compare
  in lower case and ignore punctuation at a word's ends, so "A" and "'s" are stop words too).

Algorithm 1, as implemented on the constituency tree (the authors walk spaCy's dependency tree,
whose nodes are words):

* the phrase of a leaf is its word's phrase; the phrase of an internal node is that of its head
  noun: the noun of a base ``NP``, else the head of its first child subtree that has one;
* the tree is walked breadth-first from the root; wherever a child's phrase differs from its
  parent's, that phrase's ancestor becomes the phrase of the child's first ``NP``-labelled
  ancestor (the "NOUN"-tagged node of the paper); later, deeper, assignments overwrite earlier
  ones, as the pseudo-code's dictionary does;
* a phrase with no ``NP`` above it (or whose first ``NP`` above is its own) is its own ancestor;
* should the assignments form a cycle (they cannot from head nodes, but can from stray words),
  the phrase in the cycle whose noun is shallowest in the tree (then leftmost) becomes its own
  ancestor, so that ancestors always form a forest.
"""
from __future__ import annotations

import functools
import io
import os
import re
import string
import unicodedata
from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, TypeVar, Union

import nltk
from nltk.tokenize.util import align_tokens
from nltk.tree import ParentedTree, Tree

TAGGER_RESOURCE = "averaged_perceptron_tagger_eng"
"""NLTK data package of the English averaged-perceptron POS tagger."""

DOWNLOAD_COMMAND = f"python -m nltk.downloader {TAGGER_RESOURCE}"

STOPWORDS_RESOURCE = "stopwords"
"""NLTK data package of the stop-word lists (``corpora/stopwords.zip``)."""

STOPWORDS_DOWNLOAD_COMMAND = f"python -m nltk.downloader {STOPWORDS_RESOURCE}"

GRAMMAR = r"""
NP:     {<DT|PDT|PRP\$|WDT>+<RB.*|JJ.*|CD|VBG|VBN>*<NN.*|POS|JJ.*|CD>*<NN.*>}
        {<RB.*|JJ.*|CD>*<NN.*|POS|JJ.*|CD>*<NN.*>}
PP:     {<IN|TO><NP>}
VP:     {<VBG|VBN><RP|RB.*>*<NP|PP>*}
NP:     {<NP><PP|VP>+}
VP:     {<MD>?<RB.*>*<VB|VBD|VBP|VBZ><RP|RB.*>*<NP|PP|VP>*}
CLAUSE: {<NP><VP>}
"""
"""Cascaded chunk grammar, in order: base noun phrases (determiners, modifiers, nouns, ending
in a noun; participles are modifiers only after a determiner, "a sleeping cat", since after a noun
they usually start a participle phrase, "a cat wearing a hat"); prepositional phrases; participle phrases ("wearing a hat", "made of glass");
noun phrases with their prepositional/participle modifiers ("a castle on a hill", "a cat
wearing a hat"); finite verb phrases; clauses (subject + predicate)."""

NOUN_PHRASE = "NP"
URL_TAG = "SYM"

_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_WEIGHT = re.compile(r"(?<=[^\s\d:])::?\s*[-+]?(?:\d+\.?\d*|\.\d+)(?=[\s)\]}>,;|]|$)")
_BRACKETS_AND_QUOTES = re.compile(r"[()\[\]{}<>\"]")


class EmptyPromptError(ValueError):
    """The prompt has no word to parse (empty, blank, or punctuation/weight syntax only)."""


class NLTKDataUnavailableError(LookupError):
    """An NLTK data package is neither installed nor downloadable."""


class TaggerUnavailableError(NLTKDataUnavailableError):
    """NLTK's POS tagger data is neither installed nor downloadable."""


class StopwordsUnavailableError(NLTKDataUnavailableError):
    """NLTK's stop-word lists are neither installed nor downloadable."""


@dataclass(frozen=True)
class Phrase:
    """One phrase of Eq. 4: a noun (cluster centre) and the words nearest to it.

    ``word_indices`` index :attr:`ParsedPrompt.words` (ascending); ``noun`` is the head noun
    (None only for a prompt without nouns) and ``noun_index`` its word index; ``ancestor``
    indexes :attr:`ParsedPrompt.phrases` (Algorithm 1; equal to the phrase's own index at a root).
    ``content`` is ``text`` without stop words and punctuation (:func:`is_content_word`), ``""``
    when nothing is left; ``content_indices`` are the word indices it keeps.
    """

    text: str
    word_indices: tuple[int, ...]
    noun: Optional[str]
    noun_index: Optional[int]
    ancestor: int
    content: str
    content_indices: tuple[int, ...]


@dataclass(frozen=True)
class ParsedPrompt:
    """A prompt split into phrases (Eq. 4) with their ancestors (Algorithm 1).

    ``tree`` leaves are ``(word, tag)`` tuples, leaf ``i`` being ``words[i]``; ``clean_text`` is
    the prompt without weighting syntax (what CLIP and the diffusion models read for the whole
    prompt); ``word_spans[i]`` is the ``(start, end)`` character span of ``words[i]`` in it.
    """

    text: str
    clean_text: str
    words: tuple[str, ...]
    word_spans: tuple[tuple[int, int], ...]
    tags: tuple[str, ...]
    tree: ParentedTree
    phrases: tuple[Phrase, ...]


# --------------------------------------------------------------------------- NLTK data


def add_nltk_data_dir(path: Union[str, os.PathLike]) -> None:
    """Put a folder holding NLTK data (e.g. ``../shared/nltk_data``) first on ``nltk.data.path``.

    ``NLTK_DATA`` set before NLTK is imported is honoured by NLTK itself.
    """
    folder = os.fspath(path)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"NLTK data folder {folder!r} does not exist.")
    if folder in nltk.data.path:
        nltk.data.path.remove(folder)
    nltk.data.path.insert(0, folder)


Loaded = TypeVar("Loaded")


def _load_nltk_data(
    load: Callable[[], Loaded], resource: str, what: str, folder: str, error: type[NLTKDataUnavailableError]
) -> Loaded:
    """``load()`` from ``nltk.data.path`` or, failing that, after one ``nltk.download(resource)``;
    raises ``error`` naming the command to run and the folder NLTK_DATA must hold."""
    try:
        return load()
    except LookupError:
        pass
    # NLTK's own error lines go to a sink (it prints them even when quiet): the error below says it all
    if nltk.download(resource, quiet=True, raise_on_error=False, print_error_to=io.StringIO()):
        try:
            return load()
        except LookupError:
            pass
    raise error(
        f"NLTK's {what} '{resource}' is not installed and could not be downloaded. "
        f"Run `python -m nltk.downloader {resource}` on a machine with internet, or point the NLTK_DATA environment "
        f"variable at a folder holding {folder} (searched: {list(nltk.data.path)})."
    )


@functools.lru_cache(maxsize=1)
def load_tagger() -> nltk.tag.PerceptronTagger:
    """The averaged-perceptron tagger, from ``nltk.data.path`` or, failing that, downloaded once
    with ``nltk.download``; raises :class:`TaggerUnavailableError` with the command to run."""
    return _load_nltk_data(
        lambda: nltk.tag.PerceptronTagger(lang="eng"),
        TAGGER_RESOURCE,
        "POS tagger",
        f"taggers/{TAGGER_RESOURCE}/",
        TaggerUnavailableError,
    )


@functools.lru_cache(maxsize=1)
def load_stopwords() -> frozenset[str]:
    """NLTK's English stop words (lower case), from ``nltk.data.path`` or downloaded once;
    raises :class:`StopwordsUnavailableError` with the command to run."""
    return _load_nltk_data(
        lambda: frozenset(nltk.corpus.stopwords.words("english")),
        STOPWORDS_RESOURCE,
        "stop-word list",
        f"corpora/{STOPWORDS_RESOURCE}.zip",
        StopwordsUnavailableError,
    )


def is_content_word(word: str) -> bool:
    """False for an NLTK English stop word or a punctuation-only token: the word is compared in
    lower case with the punctuation at its ends removed (so "A", "the," and "'s" are stop words)."""
    core = word.strip(string.punctuation).lower()
    return bool(core) and core not in load_stopwords()


@functools.lru_cache(maxsize=1)
def _chunker() -> nltk.RegexpParser:
    return nltk.RegexpParser(GRAMMAR)


@functools.lru_cache(maxsize=1)
def _tokenizer() -> nltk.tokenize.TreebankWordTokenizer:
    return nltk.tokenize.TreebankWordTokenizer()


# --------------------------------------------------------------------------- tokens and tags


def clean_prompt(text: str) -> str:
    """Remove prompt-weighting syntax and double quotes; URLs are left untouched."""
    pieces, last = [], 0
    for url in _URL.finditer(text):
        pieces.append(_clean_segment(text[last:url.start()]))
        pieces.append(url.group())
        last = url.end()
    pieces.append(_clean_segment(text[last:]))
    return " ".join("".join(pieces).split())


def _clean_segment(segment: str) -> str:
    return _BRACKETS_AND_QUOTES.sub(" ", _WEIGHT.sub(" ", segment))


def _tokenize(clean_text: str) -> list[str]:
    tokens, last = [], 0
    for url in _URL.finditer(clean_text):
        tokens.extend(_tokenizer().tokenize(clean_text[last:url.start()]))
        tokens.append(url.group())
        last = url.end()
    tokens.extend(_tokenizer().tokenize(clean_text[last:]))
    return tokens


def is_word(token: str) -> bool:
    """A token with a letter, a digit or a pictographic symbol (emoji) is a word."""
    return any(char.isalnum() or unicodedata.category(char) == "So" for char in token)


def _tag(tokens: Sequence[str]) -> list[tuple[str, str]]:
    tagged = load_tagger().tag(list(tokens))
    return [(token, URL_TAG if _URL.fullmatch(token) else tag) for token, tag in tagged]


def _is_noun(tag: str) -> bool:
    return tag.startswith("NN")


# --------------------------------------------------------------------------- the tree


def _drop_punctuation(tree: Tree) -> Tree:
    """A copy of the chunk tree without non-word leaves and without emptied subtrees."""
    children = []
    for child in tree:
        if isinstance(child, Tree):
            pruned = _drop_punctuation(child)
            if len(pruned):
                children.append(pruned)
        elif is_word(child[0]):
            children.append(child)
    return Tree(tree.label(), children)


def _is_modifier(node: Union[Tree, tuple]) -> bool:
    """A prepositional phrase or a participle phrase (a VP opening with VBG/VBN)."""
    if not isinstance(node, Tree):
        return False
    return node.label() == "PP" or (node.label() == "VP" and node.leaves()[0][1] in ("VBG", "VBN"))


def _attach_to_lowest_noun(host: Tree, modifier: Tree) -> bool:
    """Attach ``modifier`` to the lowest noun phrase at the right edge of ``host`` (a PP, a
    participle VP or an NP); False when that edge ends in no noun phrase."""
    last = host[-1]
    if not isinstance(last, Tree):
        return False
    if _is_modifier(last) and _attach_to_lowest_noun(last, modifier):
        return True
    if last.label() != NOUN_PHRASE:
        return False
    if _is_base_np(last):
        host[-1] = Tree(NOUN_PHRASE, [last, modifier])
    else:
        last.append(modifier)
    return True


def attach_low(node: Tree) -> None:
    """Right-branching attachment, in place: a modifier (PP or participle phrase) that follows a
    PP or participle phrase attaches to the nearest noun before it ("a scarecrow holding a gift"
    in "photo of a scarecrow holding a gift", "of a tree" in "in the hollow of a tree"), as the
    chunk grammar alone can only attach modifiers flatly to the first noun phrase."""
    kept: list = []
    for child in node:
        if isinstance(child, Tree):
            attach_low(child)
        previous = kept[-1] if kept else None
        if not (_is_modifier(child) and _is_modifier(previous) and _attach_to_lowest_noun(previous, child)):
            kept.append(child)
    node[:] = kept


def build_tree(tagged: Sequence[tuple[str, str]]) -> ParentedTree:
    """Chunk ``(token, tag)`` pairs with :data:`GRAMMAR`, attach modifiers low
    (:func:`attach_low`); punctuation is used, then dropped."""
    tree = _chunker().parse(list(tagged))
    attach_low(tree)
    return ParentedTree.convert(_drop_punctuation(tree))


def _is_base_np(node: Tree) -> bool:
    return node.label() == NOUN_PHRASE and not any(isinstance(child, Tree) for child in node)


def _heads(tree: Tree, leaf_index: dict[tuple[int, ...], int]) -> dict[tuple[int, ...], Optional[int]]:
    """Head noun (word index) of every subtree, by tree position; see the module docstring."""
    heads: dict[tuple[int, ...], Optional[int]] = {}
    for position in sorted(tree.treepositions(), key=len, reverse=True):
        node = tree[position]
        if not isinstance(node, Tree):
            continue
        if _is_base_np(node):
            nouns = [leaf_index[position + (k,)] for k, (_, tag) in enumerate(node) if _is_noun(tag)]
            heads[position] = nouns[-1] if nouns else None
        else:
            child_heads = (heads[position + (k,)] for k, child in enumerate(node) if isinstance(child, Tree))
            heads[position] = next((head for head in child_heads if head is not None), None)
    return heads


def _common_depth(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """Depth of the lowest common ancestor of two tree positions."""
    common = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        common += 1
    return common


def assign_words(
    leaf_positions: Sequence[tuple[int, ...]], nouns: Sequence[int]
) -> list[int]:
    """Eq. 4: for each word, the index (into ``nouns``) of its nearest noun in the tree
    (edges between the two leaves).

    Ties: the noun sharing the deeper common ancestor with the word (the one inside the word's
    own constituent), then the smaller distance in word order, then the later noun.
    """
    assignment = []
    for word in range(len(leaf_positions)):
        keys = [_nearness(word, noun, leaf_positions) for noun in nouns]
        assignment.append(keys.index(min(keys)))
    return assignment


def _nearness(word: int, noun: int, leaf_positions: Sequence[tuple[int, ...]]) -> tuple[int, int, int, int]:
    """Sort key of a noun for a word: tree distance, then the tie-breaks of :func:`assign_words`."""
    common = _common_depth(leaf_positions[word], leaf_positions[noun])
    distance = len(leaf_positions[word]) + len(leaf_positions[noun]) - 2 * common
    return (distance, -common, abs(word - noun), -noun)


def phrase_ancestors(
    tree: Tree,
    leaf_index: dict[tuple[int, ...], int],
    word_phrase: Sequence[int],
    heads: dict[tuple[int, ...], Optional[int]],
    n_phrases: int,
) -> list[int]:
    """Algorithm 1 on the constituency tree (see the module docstring); returns ``ans``.

    ``leaf_index`` maps leaf positions to word indices, ``heads`` subtree positions to head nouns.
    """

    def phrase_at(position: tuple[int, ...]) -> Optional[int]:
        if position in leaf_index:
            return word_phrase[leaf_index[position]]
        head = heads[position]
        return None if head is None else word_phrase[head]

    ancestors = list(range(n_phrases))
    queue = deque([()])
    while queue:
        parent = queue.popleft()
        parent_phrase = phrase_at(parent)
        for k, child in enumerate(tree[parent]):
            position = parent + (k,)
            if isinstance(child, Tree):
                queue.append(position)
            child_phrase = phrase_at(position)
            if child_phrase is None or child_phrase == parent_phrase:
                continue
            above = next(
                (position[:depth] for depth in range(len(position) - 1, -1, -1)
                 if tree[position[:depth]].label() == NOUN_PHRASE),
                None,
            )
            if above is not None and phrase_at(above) not in (None, child_phrase):
                ancestors[child_phrase] = phrase_at(above)
    return ancestors


def break_cycles(ancestors: list[int], depth: Sequence[int]) -> list[int]:
    """Make ``ancestors`` a forest: in every cycle, the phrase of smallest ``depth`` (then
    smallest index) becomes its own ancestor."""
    result = list(ancestors)
    for start in range(len(result)):
        seen: list[int] = []
        node = start
        while node not in seen and result[node] != node:
            seen.append(node)
            node = result[node]
        if node in seen:
            cycle = seen[seen.index(node):]
            root = min(cycle, key=lambda phrase: (depth[phrase], phrase))
            result[root] = root
    return result


# --------------------------------------------------------------------------- entry point


def parse_prompt(text: str) -> ParsedPrompt:
    """Split a text-to-image prompt into phrases (Eq. 4) and give each an ancestor (Algorithm 1).

    Every word of the prompt is in exactly one phrase. Raises :class:`EmptyPromptError` when
    the prompt has no word, :class:`TaggerUnavailableError` / :class:`StopwordsUnavailableError`
    when NLTK's tagger / stop words are missing.
    """
    if not isinstance(text, str):
        raise TypeError(f"prompt must be a str, got {type(text).__name__}")
    clean_text = clean_prompt(text)
    tokens = _tokenize(clean_text)
    if not any(is_word(token) for token in tokens):
        raise EmptyPromptError(f"prompt {text!r} has no words to parse; give a non-empty prompt.")
    spans = tuple(span for token, span in zip(tokens, align_tokens(tokens, clean_text), strict=True) if is_word(token))
    tree = build_tree(_tag(tokens))
    leaf_positions = tree.treepositions("leaves")
    words = tuple(word for word, _ in tree.leaves())
    tags = tuple(tag for _, tag in tree.leaves())
    leaf_index = {position: index for index, position in enumerate(leaf_positions)}
    heads = _heads(tree, leaf_index)
    nouns = sorted(
        heads[position] for position in tree.treepositions()
        if isinstance(tree[position], Tree) and _is_base_np(tree[position]) and heads[position] is not None
    )
    if not nouns:
        phrases = [_phrase(words, tuple(range(len(words))), None, 0)]
    else:
        word_phrase = assign_words(leaf_positions, nouns)
        ancestors = phrase_ancestors(tree, leaf_index, word_phrase, heads, len(nouns))
        ancestors = break_cycles(ancestors, [len(leaf_positions[noun]) for noun in nouns])
        phrases = [
            _phrase(words, tuple(word for word, phrase in enumerate(word_phrase) if phrase == index), noun, ancestors[index])
            for index, noun in enumerate(nouns)
        ]
    return ParsedPrompt(text, clean_text, words, spans, tags, tree, tuple(phrases))


def _phrase(words: Sequence[str], members: tuple[int, ...], noun: Optional[int], ancestor: int) -> Phrase:
    content = tuple(index for index in members if is_content_word(words[index]))
    return Phrase(
        text=" ".join(words[index] for index in members),
        word_indices=members,
        noun=None if noun is None else words[noun],
        noun_index=noun,
        ancestor=ancestor,
        content=" ".join(words[index] for index in content),
        content_indices=content,
    )
