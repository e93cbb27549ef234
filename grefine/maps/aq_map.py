"""AQ-Map: the alignment defect map and the alignment score (paper §3.2, Eq. 4-8, Algorithm 1).

Pipeline of one call ``AQMap(model, tokenizer)(image, prompt)``:

1. the prompt is cleaned of weighting syntax and split into phrases, each with a head noun, an
   ancestor phrase and its *content* — its words without NLTK's English stop words and
   punctuation (Eq. 4, Algorithm 1: :func:`grefine.maps.syntax_tree.parse_prompt`);
2. Eq. 5 for the whole cleaned prompt, every phrase content ``phs[j]`` and every noun ``pns[j]``,
   with the VVV image tokens (Eq. 1) normalised as the authors' code does (``feature_norm``,
   :func:`~grefine.maps.clip_surgery.normalize_tokens`: each channel over the image's tokens by
   default) and L2-normalised text features: ``s = tokens · (C_T(text) − C_T(""))`` — the empty
   string's feature is CLIP-Surgery's redundant feature, removed by subtraction. ``C_T`` is the
   authors' 85-template prompt ensemble by default (``text_encoding="ensemble"``; ``"bare"``:
   the text alone), :class:`~grefine.maps.text_features.TextFeatures`: the distinct texts of all
   prompts of a batch (and ``""``) go through the text tower together, each once, and are kept
   in memory and on disk for later images and runs (:meth:`AQMap.read`, whose VVV tokens may come
   from a tower pass shared with PQ-Map); each text is encoded on its own, so a prompt longer
   than CLIP's context only truncates the whole-prompt term (with a warning).
3. the score of a text is ``σ(10·s_CLS)`` and its map is ``s`` over the patch grid, min-max
   normalised per text and resized bicubically to the image (BIC);
4. Eq. 6-8 (:func:`classify_defects`, :func:`merge_defect_map`, :func:`emphasize_defects`,
   :func:`cask_score`).

Any other aligner (an ImageReward-initialised tower, §4.2) plugs in through
:func:`aq_map_from_aligner`: a callable ``aligner(image, texts)`` returning an object with
``.scores`` (K,) in [0, 1] and ``.maps`` (K, H, W) in [0, 1] at the image's size, for the K texts
it is given — the cleaned prompt, the non-empty phrase contents and the nouns, each once.

Interpretations written down here (and in the README):

* Eq. 5's "softmax" is read as the authors' released code computes it: a logistic score
  ``σ(10·s)`` at the CLS token and a per-text min-max normalised patch map (a constant map
  becomes all ones), each text averaged over the 85 prompt templates as their code does.
  Phrases and nouns are scored without stop words and punctuation, as in their notebook, so
  that "a cat" is not compared with "cat".
* Eq. 6 is printed with its two cases the other way round than the text describes them. We follow
  the text and the released notebook. A phrase is *noun-unmatched* when ``a_pns[j] < a_bound``
  (checked first), *adjective-unmatched* when ``a_phs[j] < a_pns[j] − margin``. The defect map
  ``D`` starts at 0 and takes the pixel-wise maximum (the notebook's ``np.maximum``) of each
  defective phrase's *target map*: a noun-unmatched phrase's target is its ancestor's noun map
  (the missing object belongs in its ancestor's region) — its own noun's map when the phrase
  is its own ancestor (a top-level phrase, usually the subject: the notebook's parent of such a
  phrase is the phrase itself), the whole-prompt map when its ancestor is not scored; an
  adjective-unmatched phrase's target is its own noun map. So ``D = 0`` exactly when nothing is defective, and adding a defect never
  lowers ``D``. The alignment *quality* view ``A = 1 − D`` is :attr:`AQMapResult.alignment_map`.
* A phrase whose content is empty (only stop words) is not scored and never defective. A phrase
  without a noun (a prompt with no noun at all) plays its own noun: ``a_pns = a_phs`` and
  ``A_pns = A_phs``.
* Eq. 7 (``prompt + 0.1·phs[j]``) is carried by :class:`EmphasizedPrompt`: the diffusion model
  reads the cleaned prompt with the content words of every defective phrase weighted by
  ``1 + emphasis`` on their own tokens, what ``(phrase:1.1)`` means in prompt weighting (see
  :class:`grefine.refine.stage1.InpaintStage1`).
* Eq. 8: ``a = σ(10·s_CLS(prompt)) · Π_j min(a_phs[j] / β, 1)`` over the scored phrases.
* ``a_bound`` = 0.5 is the notebook's bound (and the score of a text exactly as similar to the
  image as the empty string, ``s = 0``); ``β`` = 0.5 likewise. ``margin`` (default 0.05) is ours:
  the notebook uses 0; σ(10·s) has slope 2.5 at s = 0, so 0.05 asks the phrase to score at least
  0.02 in cosine similarity below its noun before its modifiers count as missing, instead of
  flagging any phrase whose extra words move the score by a rounding-level amount.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional, Protocol, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from grefine.image_io import PathLike, as_rgb_image, resize_map
from grefine.maps.clip_surgery import FeatureNorm, ImageTokens, InputSize, TowerPasses, normalize_tokens, vvv_surgery
from grefine.maps.syntax_tree import (
    ParsedPrompt,
    clean_prompt,
    is_content_word,
    parse_prompt,
)
from grefine.maps.text_features import TextCache, TextEncoding, TextFeatures, resolve_text_cache

DefectKind = Literal["none", "noun_unmatched", "adjective_unmatched"]

SCORE_TEMPERATURE = 10.0
"""The authors' alignment score is ``σ(10·s)``."""

DEFAULT_A_BOUND = 0.5
DEFAULT_BETA = 0.5
DEFAULT_MARGIN = 0.05
EMPHASIS_WEIGHT = 0.1
"""The 0.1 of Eq. 7."""


@dataclass(frozen=True)
class EmphasizedPrompt:
    """Eq. 7: the cleaned prompt with the defective phrases' content words emphasised in place.

    ``text`` is the prompt the diffusion model reads; ``spans`` are ``(start, end)`` character
    ranges of ``text`` whose tokens get the weight ``1 + weight`` (the rest keep 1); ``phrases``
    are the emphasised phrase contents (for the pooled embedding, see
    :class:`grefine.refine.stage1.InpaintStage1`). ``str()`` renders it in the common
    ``(phrase:1.1)`` prompt-weighting notation for logs.
    """

    text: str
    spans: tuple[tuple[int, int], ...] = ()
    phrases: tuple[str, ...] = ()
    weight: float = EMPHASIS_WEIGHT

    def fragments(self) -> list[tuple[str, float]]:
        """``text`` cut at the span boundaries, each piece with its weight (1 or 1 + weight)."""
        pieces, last = [], 0
        for start, end in self.spans:
            pieces += [(self.text[last:start], 1.0), (self.text[start:end], 1.0 + self.weight)]
            last = end
        pieces.append((self.text[last:], 1.0))
        return [(text, weight) for text, weight in pieces if text]

    def with_suffix(self, suffix: str) -> "EmphasizedPrompt":
        """The same emphasis with ``suffix`` appended to the text (unweighted)."""
        return EmphasizedPrompt(self.text + suffix, self.spans, self.phrases, self.weight)

    def __str__(self) -> str:
        if not self.weight:
            return self.text
        return "".join(text if weight == 1.0 else f"({text}:{weight:g})" for text, weight in self.fragments())


@dataclass(frozen=True)
class Alignment:
    """Eq. 5 for a list of texts: ``scores`` (K,) in (0, 1) and ``maps`` (K, H, W) in [0, 1]."""

    scores: np.ndarray
    maps: np.ndarray


class Aligner(Protocol):
    """Eq. 5 for an image and K texts: an object with ``.scores`` (K,) and ``.maps`` (K, H, W),
    H×W being the image's size, both in [0, 1] (higher = better aligned)."""

    def __call__(self, image: Image.Image, texts: Sequence[str]) -> Alignment: ...


@dataclass(frozen=True)
class PhraseAlignment:
    """One phrase's Eq. 5 results and its defect kind (Eq. 6).

    ``content`` is the scored text (the phrase without stop words); ``noun`` the scored noun
    (None when the phrase has none, then it plays its own noun). ``score`` is a_phs[j] and
    ``noun_score`` a_pns[j], both None for a phrase with empty content (not scored, never
    defective); ``ancestor`` indexes :attr:`AQMapResult.phrases`.
    """

    text: str
    content: str
    noun: Optional[str]
    ancestor: int
    score: Optional[float]
    noun_score: Optional[float]
    defect: DefectKind


@dataclass
class AQMapResult:
    """AQ-Map output for one image and prompt.

    ``defect_map``: D of Eq. 6, float32 H×W in [0, 1], the image's size: 0 where no defective
    phrase is drawn (everywhere when none is defective), high on the regions to redraw;
    ``score``: a of Eq. 8; ``prompt_score``: its whole-prompt term; ``prompt_map``: the
    whole-prompt map; ``phrase_maps`` / ``noun_maps``: A_phs / A_pns of Eq. 5, (P, H, W) float32
    (all zero for a phrase that is not scored); ``emphasized_prompt``: Eq. 7; ``parse``: the
    phrases and tree of Eq. 4 (None for :meth:`neutral`).
    """

    defect_map: np.ndarray
    score: float
    prompt_score: float
    phrases: tuple[PhraseAlignment, ...]
    emphasized_prompt: EmphasizedPrompt
    prompt_map: np.ndarray
    phrase_maps: np.ndarray
    noun_maps: np.ndarray
    parse: Optional[ParsedPrompt]

    @property
    def alignment_map(self) -> np.ndarray:
        """The alignment quality view ``A = 1 − D`` (1 = nothing to redraw there), for plots."""
        return 1.0 - self.defect_map

    @property
    def clean_prompt(self) -> str:
        """The prompt without weighting syntax and without emphasis (what stage 2 reads)."""
        return self.emphasized_prompt.text

    @classmethod
    def neutral(cls, prompt: str, size: tuple[int, int]) -> "AQMapResult":
        """What stands for AQ-Map when it is switched off (Table 8 ablation): ``D = 0``, no
        phrase, no emphasis, no score (NaN). ``size`` is (height, width)."""
        empty = np.zeros((0, *size), np.float32)
        return cls(
            defect_map=np.zeros(size, np.float32),
            score=math.nan,
            prompt_score=math.nan,
            phrases=(),
            emphasized_prompt=EmphasizedPrompt(clean_prompt(prompt)),
            prompt_map=np.zeros(size, np.float32),
            phrase_maps=empty,
            noun_maps=empty,
            parse=None,
        )


# --------------------------------------------------------------------------- Eq. 6-8


def classify_defects(
    phrase_scores: Sequence[Optional[float]],
    noun_scores: Sequence[Optional[float]],
    a_bound: float,
    margin: float = DEFAULT_MARGIN,
) -> list[DefectKind]:
    """Eq. 6's two alignment defects per phrase: ``noun_unmatched`` when a_pns < a_bound (checked
    first), else ``adjective_unmatched`` when a_phs < a_pns − margin, else ``none``; a phrase
    without a score (None) is ``none``."""
    defects: list[DefectKind] = []
    for phrase_score, noun_score in zip(phrase_scores, noun_scores, strict=True):
        if phrase_score is None or noun_score is None:
            defects.append("none")
        elif noun_score < a_bound:
            defects.append("noun_unmatched")
        elif phrase_score < noun_score - margin:
            defects.append("adjective_unmatched")
        else:
            defects.append("none")
    return defects


def target_maps(
    prompt_map: np.ndarray,
    noun_maps: np.ndarray,
    ancestors: Sequence[int],
    scored: Sequence[bool],
    defects: Sequence[DefectKind],
) -> list[np.ndarray]:
    """Each defective phrase's region (Eq. 6, as the paper's text and the notebook describe it):
    noun-unmatched → the ancestor's noun map (the phrase's own noun map when it is its own
    ancestor, as in the notebook), or the whole-prompt map when its ancestor is not scored;
    adjective-unmatched → its own noun map."""
    targets = []
    for j, (ancestor, defect) in enumerate(zip(ancestors, defects, strict=True)):
        if defect == "noun_unmatched":
            targets.append(noun_maps[ancestor] if scored[ancestor] else prompt_map)
        elif defect == "adjective_unmatched":
            targets.append(noun_maps[j])
    return targets


def merge_defect_map(targets: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Eq. 6's merge: ``D = 0``, then ``D ← max(D, target)`` for every defective phrase."""
    merged = np.zeros(shape, np.float32)
    for target in targets:
        np.maximum(merged, target, out=merged)
    return merged


def emphasize_defects(
    parsed: ParsedPrompt, defects: Sequence[DefectKind], weight: float = EMPHASIS_WEIGHT
) -> EmphasizedPrompt:
    """Eq. 7: the cleaned prompt with each defective phrase's content words (runs of adjacent
    words as one span) weighted by ``1 + weight``, in the prompt's own token positions."""
    spans, phrases = [], []
    for phrase, defect in zip(parsed.phrases, defects, strict=True):
        if defect == "none" or not weight:
            continue
        phrases.append(phrase.content)
        run_start = previous = phrase.content_indices[0]
        for index in (*phrase.content_indices[1:], None):
            if index is not None and index == previous + 1:
                previous = index
                continue
            spans.append((parsed.word_spans[run_start][0], parsed.word_spans[previous][1]))
            if index is not None:
                run_start = previous = index
    return EmphasizedPrompt(parsed.clean_text, tuple(sorted(spans)), tuple(phrases), weight)


def cask_score(prompt_score: float, phrase_scores: Sequence[float], beta: float) -> float:
    """Eq. 8: ``a = prompt_score · Π_j min(a_phs[j] / β, 1)``."""
    penalty = np.prod([min(score / beta, 1.0) for score in phrase_scores])
    return float(prompt_score * penalty)


def _scored_noun(phrase) -> Optional[str]:
    return phrase.noun if phrase.noun is not None and is_content_word(phrase.noun) else None


def alignment_texts(parsed: ParsedPrompt) -> list[str]:
    """The texts Eq. 5 scores for a parsed prompt, each once: the cleaned prompt, the non-empty
    phrase contents (stop words and punctuation removed) and the phrases' nouns (a phrase without
    a scored noun stands for its noun)."""
    contents = [phrase.content for phrase in parsed.phrases]
    nouns = [_scored_noun(phrase) or phrase.content for phrase in parsed.phrases]
    return list(dict.fromkeys([parsed.clean_text, *(t for t in contents if t), *(t for t in nouns if t)]))


def aq_map_from_aligner(
    parsed: ParsedPrompt,
    image: Image.Image,
    aligner: Aligner,
    *,
    a_bound: float = DEFAULT_A_BOUND,
    beta: float = DEFAULT_BETA,
    margin: float = DEFAULT_MARGIN,
    emphasis: float = EMPHASIS_WEIGHT,
) -> AQMapResult:
    """Eq. 5-8 for a parsed prompt, with Eq. 5 given by ``aligner``.

    ``aligner(image, texts)`` must return an object with ``.scores`` (K,) and ``.maps`` (K, H, W)
    (H×W = the image's size, values in [0, 1], higher = better aligned) for the K ``texts``. It is
    called once, with :func:`alignment_texts` of ``parsed``. ``a_bound``, ``beta`` and ``margin`` are
    Eq. 6-8's bounds, ``emphasis`` Eq. 7's weight (see the module docstring).
    """
    scored = [bool(phrase.content) for phrase in parsed.phrases]
    nouns = [_scored_noun(phrase) or phrase.content for phrase in parsed.phrases]
    contents = [phrase.content for phrase in parsed.phrases]
    texts = alignment_texts(parsed)
    alignment = aligner(image, texts)
    row = {text: k for k, text in enumerate(texts)}
    size = tuple(alignment.maps.shape[1:])

    def scores_of(keys: list[str]) -> list[Optional[float]]:
        return [float(alignment.scores[row[key]]) if ok else None for key, ok in zip(keys, scored, strict=True)]

    def maps_of(keys: list[str]) -> np.ndarray:
        rows = [alignment.maps[row[key]] if ok else np.zeros(size) for key, ok in zip(keys, scored, strict=True)]
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, *size), np.float32)

    phrase_scores, noun_scores = scores_of(contents), scores_of(nouns)
    noun_maps = maps_of(nouns)
    prompt_map = alignment.maps[row[parsed.clean_text]].astype(np.float32)
    defects = classify_defects(phrase_scores, noun_scores, a_bound, margin)
    ancestors = [phrase.ancestor for phrase in parsed.phrases]
    prompt_score = float(alignment.scores[row[parsed.clean_text]])
    phrases = tuple(
        PhraseAlignment(phrase.text, phrase.content, _scored_noun(phrase), phrase.ancestor, score, noun_score, defect)
        for phrase, score, noun_score, defect in zip(parsed.phrases, phrase_scores, noun_scores, defects, strict=True)
    )
    return AQMapResult(
        defect_map=merge_defect_map(target_maps(prompt_map, noun_maps, ancestors, scored, defects), size),
        score=cask_score(prompt_score, [s for s in phrase_scores if s is not None], beta),
        prompt_score=prompt_score,
        phrases=phrases,
        emphasized_prompt=emphasize_defects(parsed, defects, emphasis),
        prompt_map=prompt_map,
        phrase_maps=maps_of(contents),
        noun_maps=noun_maps,
        parse=parsed,
    )


# --------------------------------------------------------------------------- Eq. 5 with CLIP


def minmax_per_text(similarity: torch.Tensor) -> torch.Tensor:
    """Min-max normalise (K, N) patch similarities per text (row); a constant row becomes 1."""
    low = similarity.min(dim=-1, keepdim=True).values
    span = similarity.max(dim=-1, keepdim=True).values - low
    return torch.where(span > 0, (similarity - low) / span.clamp_min(1e-12), torch.ones_like(similarity))


class AQMap(nn.Module):
    """Alignment defect map (Eq. 4-8) for any open_clip ViT.

    Args:
        model: an open_clip CLIP with a ViT image tower (e.g. ViT-B/16 ``openai``, or an HPSv2 /
            PickScore style checkpoint loaded into open_clip).
        tokenizer: its tokenizer (``open_clip.get_tokenizer``).
        num_blocks: how many final blocks get the VVV path (Eq. 1).
        a_bound: noun-unmatched bound of Eq. 6 on a_pns.
        beta: cask-effect bound β of Eq. 8.
        margin: adjective-unmatched margin of Eq. 6 (a_phs < a_pns − margin).
        emphasis: Eq. 7's weight (0.1); 0 emphasises nothing.
        input_size: CLIP input size; None = the model's own, an int or (height, width), or
            ``"native"`` = each image's own size rounded to the patch.
        feature_norm: how the image tokens are normalised before Eq. 5: ``"tokens"`` (the
            authors' code, default) or ``"channels"``; see
            :func:`~grefine.maps.clip_surgery.normalize_tokens`.
        text_encoding: ``"ensemble"`` (the authors' 85 prompt templates, default) or ``"bare"``.
        text_cache: the text features' disk cache: ``"auto"`` (grefine's cache folder,
            ``$GREFINE_CACHE_DIR`` or ``~/.cache/grefine``), a folder, or None (memory only);
            :class:`~grefine.maps.text_features.TextFeatures`.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        *,
        num_blocks: int = 6,
        a_bound: float = DEFAULT_A_BOUND,
        beta: float = DEFAULT_BETA,
        margin: float = DEFAULT_MARGIN,
        emphasis: float = EMPHASIS_WEIGHT,
        input_size: InputSize = None,
        feature_norm: FeatureNorm = "tokens",
        text_encoding: TextEncoding = "ensemble",
        text_cache: TextCache = "auto",
    ) -> None:
        super().__init__()
        if beta <= 0 or margin < 0 or emphasis < 0:
            raise ValueError(f"need beta > 0, margin ≥ 0 and emphasis ≥ 0, got {beta}, {margin}, {emphasis}")
        normalize_tokens(torch.ones(1, 1), feature_norm)  # validates the mode early
        self.surgery = vvv_surgery(model, num_blocks=num_blocks)
        self.text_features = TextFeatures(model, tokenizer, encoding=text_encoding, cache_dir=resolve_text_cache(text_cache))
        self.feature_norm = feature_norm
        self.a_bound = float(a_bound)
        self.beta = float(beta)
        self.margin = float(margin)
        self.emphasis = float(emphasis)
        self.input_size = input_size

    @classmethod
    def from_pretrained(
        cls,
        model_name: str = "ViT-B-16",
        pretrained: Optional[str] = "openai",
        *,
        device: Union[str, torch.device, None] = None,
        precision: Optional[str] = None,
        **kwargs,
    ) -> "AQMap":
        """Build AQ-Map on a real open_clip model (default ViT-B/16 ``openai``, the authors'
        CS-ViT-B/16). Missing weights raise :class:`~grefine.errors.MissingWeightsError`
        naming the model and pointing at ``checkpoints/README.md``."""
        from grefine.maps.pq_map import load_open_clip

        model, tokenizer = load_open_clip(model_name, pretrained, device=device, precision=precision)
        return cls(model, tokenizer, **kwargs).to(next(model.parameters()).device)

    def text_directions(self, texts: Sequence[str]) -> torch.Tensor:
        """Eq. 5's ``C_T(text) − C_T("")`` for ``texts`` (K, D): the features of the texts and
        ``""`` that are not cached yet are encoded together, each once; every text's features are
        kept, so reading an image again for the same prompt (the re-read after refining) encodes
        nothing."""
        features = self.text_features(["", *texts])
        return features[1:] - features[:1]

    @torch.no_grad()
    def align(self, image: Image.Image, texts: Sequence[str]) -> Alignment:
        """Eq. 5 for ``texts``: ``s = tokens · (C_T(text) − C_T(""))``, scores ``σ(10·s_CLS)``,
        maps min-max normalised per text over the patches and resized (BIC) to the image."""
        tokens = TowerPasses([image]).tokens(self.surgery, self.input_size)[0]
        return self._alignment(tokens, self.text_directions(texts))

    def _alignment(self, image: ImageTokens, directions: torch.Tensor) -> Alignment:
        """Eq. 5 read out of one image's VVV tokens for the K text ``directions`` (K, D)."""
        tokens = normalize_tokens(image.tokens.to(directions.device), self.feature_norm)
        similarity = tokens @ directions.t()  # (1 + h·w, K)
        scores = torch.sigmoid(SCORE_TEMPERATURE * similarity[0])
        patches = minmax_per_text(similarity[1:].t()).view(len(directions), *image.grid)
        maps = resize_map(patches, image.image_size).clamp(0.0, 1.0)
        return Alignment(scores=scores.cpu().numpy(), maps=maps.cpu().numpy().astype(np.float32))

    @torch.no_grad()
    def read(self, tower: TowerPasses, prompts: Sequence[str]) -> list[AQMapResult]:
        """AQ-Map of every image of ``tower`` for its prompt (Eq. 4-8): the VVV tokens come from
        ``tower`` (shared with any other map reading the same tower) and the texts of all prompts
        that are not cached yet go through the text tower together, each distinct text once."""
        if len(prompts) != len(tower.images):
            raise ValueError(f"need one prompt per image: {len(tower.images)} images, {len(prompts)} prompts")
        parsed = [parse_prompt(prompt) for prompt in prompts]
        texts = list(dict.fromkeys(text for parse in parsed for text in alignment_texts(parse)))
        directions = dict(zip(texts, self.text_directions(texts)))
        results = []
        for parse, image, tokens in zip(parsed, tower.images, tower.tokens(self.surgery, self.input_size)):

            def aligner(_image: Image.Image, wanted: Sequence[str], tokens: ImageTokens = tokens) -> Alignment:
                return self._alignment(tokens, torch.stack([directions[text] for text in wanted]))

            results.append(
                aq_map_from_aligner(
                    parse, image, aligner, a_bound=self.a_bound, beta=self.beta, margin=self.margin, emphasis=self.emphasis
                )
            )
        return results

    def forward(self, image: Union[Image.Image, PathLike], prompt: str) -> AQMapResult:
        """AQ-Map of one image for its prompt (Eq. 4-8)."""
        return self.read(TowerPasses([as_rgb_image(image)]), [prompt])[0]
