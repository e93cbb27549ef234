"""AQ-Map: the alignment quality map and score (paper §3.2, Eq. 4-8, Algorithm 1).

Pipeline of one call ``AQMap(model, tokenizer)(image, prompt)``:

1. the prompt is split into phrases, each with a head noun and an ancestor phrase
   (Eq. 4, Algorithm 1: :func:`grefine.maps.syntax_tree.parse_prompt`);
2. Eq. 5 for every phrase ``phs[j]``, every noun ``pns[j]`` and the whole prompt, with the VVV
   image tokens (Eq. 1) L2-normalised and the text features L2-normalised:
   ``s = tokens · (C_T(text) − C_T(""))`` — the empty string's feature is CLIP-Surgery's redundant
   feature, removed by subtraction. All texts of a prompt (and ``""``) go through the text tower
   as one batch; each text is encoded on its own, so a prompt longer than CLIP's context only
   truncates the whole-prompt term (with a warning).
3. the score of a text is ``σ(10·s_CLS)`` and its map is ``s`` over the patch grid, min-max
   normalised per text and resized bicubically to the image (BIC);
4. Eq. 6-8 (:func:`classify_defects`, :func:`merge_alignment_map`, :func:`emphasize_defects`,
   :func:`cask_score`).

Interpretations written down here (and in the README):

* Eq. 5's "softmax" is read as the authors' released script computes it: a logistic score
  ``σ(10·s)`` at the CLS token and a per-text min-max normalised patch map (a constant map
  becomes all ones). Their script also averages each text over 85 ImageNet prompt templates; we
  encode the text itself, as Eq. 5 is printed.
* Eq. 6 is printed with its two cases the other way round than the text describes them. We follow
  the text (and the issue): a *noun-unmatched* phrase (``a_pns[j] < a_bound``, checked first) is
  drawn on its ancestor's noun map, ``A ← A · A_pns[ancestor(j)]``; an *adjective-unmatched*
  phrase (``a_phs[j] < a_pns[j]``) on its own noun map, ``A ← A · A_pns[j]``. ``A`` starts at 1,
  so a prompt whose phrases all match leaves ``A = 1``. A phrase that is its own ancestor and
  misses its noun is drawn on its own noun map.
* A phrase without a noun (a prompt with no noun at all) plays its own noun: ``a_pns = a_phs``
  and ``A_pns = A_phs``.
* Eq. 7 (``prompt + 0.1·phs[j]``) is carried by :class:`EmphasizedPrompt`: the refiner adds
  ``0.1 · E(phs[j])`` to the diffusion model's prompt embeddings ``E(prompt)`` (token and pooled
  embeddings alike) for every defective phrase, in phrase order.
* Eq. 8: ``a = σ(10·s_CLS(prompt)) · Π_j min(a_phs[j] / β, 1)`` over all phrases.
* ``a_bound`` and ``β`` are not given by the paper nor its code; both default to 0.5, the score
  of a text exactly as similar to the image as the empty string (``s = 0``).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Literal, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from grefine.image_io import PathLike, as_rgb_image, resize_map, to_clip_tensor
from grefine.maps.clip_surgery import InputSize, vvv_surgery
from grefine.maps.syntax_tree import ParsedPrompt, parse_prompt

DefectKind = Literal["none", "noun_unmatched", "adjective_unmatched"]

SCORE_TEMPERATURE = 10.0
"""The authors' alignment score is ``σ(10·s)``."""

DEFAULT_A_BOUND = 0.5
DEFAULT_BETA = 0.5
EMPHASIS_WEIGHT = 0.1
"""The 0.1 of Eq. 7."""


@dataclass(frozen=True)
class EmphasizedPrompt:
    """Eq. 7, ``prompt = prompt + 0.1·phs[j]`` for every defective phrase j.

    The emphasis is applied in the diffusion model's text-embedding space by the refiner:
    ``E(prompt) + weight · Σ_j E(phrases[j])`` (token embeddings and pooled embeddings alike).
    ``str()`` renders it in the common ``(phrase:1.1)`` prompt-weighting notation for logs.
    """

    prompt: str
    phrases: tuple[str, ...] = ()
    weight: float = 0.1

    def __str__(self) -> str:
        if not self.phrases:
            return self.prompt
        emphasis = ", ".join(f"({phrase}:{1 + self.weight:g})" for phrase in self.phrases)
        return f"{self.prompt}, {emphasis}"


@dataclass(frozen=True)
class Alignment:
    """Eq. 5 for a list of texts: ``scores`` (K,) in (0, 1) and ``maps`` (K, H, W) in [0, 1]."""

    scores: np.ndarray
    maps: np.ndarray


Aligner = Callable[[Image.Image, Sequence[str]], Alignment]
"""Anything that gives Eq. 5's scores and maps of an image for several texts."""


@dataclass(frozen=True)
class PhraseAlignment:
    """One phrase's Eq. 5 results and its defect kind (Eq. 6).

    ``score`` is a_phs[j]; ``noun_score`` is a_pns[j] (equal to ``score`` for a phrase without a
    noun); ``ancestor`` indexes :attr:`AQMapResult.phrases`.
    """

    text: str
    noun: Optional[str]
    ancestor: int
    score: float
    noun_score: float
    defect: DefectKind


@dataclass
class AQMapResult:
    """AQ-Map output for one image and prompt.

    ``map``: A of Eq. 6, float32 H×W, the image's size (1 = no defect drawn there);
    ``score``: a of Eq. 8; ``prompt_score``: the whole-prompt term of Eq. 8;
    ``phrase_maps`` / ``noun_maps``: A_phs / A_pns of Eq. 5, (P, H, W) float32;
    ``emphasized_prompt``: Eq. 7; ``parse``: the phrases and tree of Eq. 4.
    """

    map: np.ndarray
    score: float
    prompt_score: float
    phrases: tuple[PhraseAlignment, ...]
    emphasized_prompt: EmphasizedPrompt
    phrase_maps: np.ndarray
    noun_maps: np.ndarray
    parse: ParsedPrompt


# --------------------------------------------------------------------------- Eq. 6-8


def classify_defects(
    phrase_scores: Sequence[float], noun_scores: Sequence[float], a_bound: float
) -> list[DefectKind]:
    """Eq. 6's two alignment defects per phrase: ``noun_unmatched`` when a_pns < a_bound (checked
    first), else ``adjective_unmatched`` when a_phs < a_pns, else ``none``."""
    defects: list[DefectKind] = []
    for phrase_score, noun_score in zip(phrase_scores, noun_scores, strict=True):
        if noun_score < a_bound:
            defects.append("noun_unmatched")
        elif phrase_score < noun_score:
            defects.append("adjective_unmatched")
        else:
            defects.append("none")
    return defects


def merge_alignment_map(
    noun_maps: np.ndarray, ancestors: Sequence[int], defects: Sequence[DefectKind]
) -> np.ndarray:
    """Eq. 6 (as the paper's text describes it): ``A = 1``, then for each defective phrase j,
    ``A ← A · A_pns[ancestor(j)]`` (noun unmatched) or ``A ← A · A_pns[j]`` (adjective unmatched)."""
    merged = np.ones(noun_maps.shape[1:], dtype=np.float32)
    for j, (ancestor, defect) in enumerate(zip(ancestors, defects, strict=True)):
        if defect == "noun_unmatched":
            merged *= noun_maps[ancestor]
        elif defect == "adjective_unmatched":
            merged *= noun_maps[j]
    return merged


def emphasize_defects(
    prompt: str, phrases: Sequence[str], defects: Sequence[DefectKind], weight: float = EMPHASIS_WEIGHT
) -> EmphasizedPrompt:
    """Eq. 7: the prompt plus ``weight`` times every defective phrase (in phrase order)."""
    chosen = tuple(text for text, defect in zip(phrases, defects, strict=True) if defect != "none")
    return EmphasizedPrompt(prompt, chosen, weight)


def cask_score(prompt_score: float, phrase_scores: Sequence[float], beta: float) -> float:
    """Eq. 8: ``a = prompt_score · Π_j min(a_phs[j] / β, 1)``."""
    penalty = np.prod([min(score / beta, 1.0) for score in phrase_scores])
    return float(prompt_score * penalty)


def aq_map_from_aligner(
    parsed: ParsedPrompt,
    image: Image.Image,
    aligner: Aligner,
    *,
    a_bound: float = DEFAULT_A_BOUND,
    beta: float = DEFAULT_BETA,
) -> AQMapResult:
    """Eq. 5-8 for a parsed prompt, with Eq. 5 given by ``aligner``.

    The aligner is asked once, for the distinct texts among the whole prompt, the phrases and
    the nouns (a phrase without a noun stands for its noun).
    """
    phrase_texts = [phrase.text for phrase in parsed.phrases]
    noun_texts = [phrase.noun if phrase.noun is not None else phrase.text for phrase in parsed.phrases]
    texts = list(dict.fromkeys([parsed.clean_text, *phrase_texts, *noun_texts]))
    alignment = aligner(image, texts)
    row = {text: k for k, text in enumerate(texts)}
    phrase_rows = [row[text] for text in phrase_texts]
    noun_rows = [row[text] for text in noun_texts]
    phrase_scores = [float(alignment.scores[k]) for k in phrase_rows]
    noun_scores = [float(alignment.scores[k]) for k in noun_rows]
    noun_maps = alignment.maps[noun_rows].astype(np.float32)
    ancestors = [phrase.ancestor for phrase in parsed.phrases]
    defects = classify_defects(phrase_scores, noun_scores, a_bound)
    prompt_score = float(alignment.scores[row[parsed.clean_text]])
    phrases = tuple(
        PhraseAlignment(phrase.text, phrase.noun, phrase.ancestor, score, noun_score, defect)
        for phrase, score, noun_score, defect in zip(parsed.phrases, phrase_scores, noun_scores, defects, strict=True)
    )
    return AQMapResult(
        map=merge_alignment_map(noun_maps, ancestors, defects),
        score=cask_score(prompt_score, phrase_scores, beta),
        prompt_score=prompt_score,
        phrases=phrases,
        emphasized_prompt=emphasize_defects(parsed.text, phrase_texts, defects),
        phrase_maps=alignment.maps[phrase_rows].astype(np.float32),
        noun_maps=noun_maps,
        parse=parsed,
    )


# --------------------------------------------------------------------------- Eq. 5 with CLIP


def minmax_per_text(similarity: torch.Tensor) -> torch.Tensor:
    """Min-max normalise (K, N) patch similarities per text (row); a constant row becomes 1."""
    low = similarity.min(dim=-1, keepdim=True).values
    span = similarity.max(dim=-1, keepdim=True).values - low
    return torch.where(span > 0, (similarity - low) / span.clamp_min(1e-12), torch.ones_like(similarity))


def _token_count(tokenizer, text: str) -> Optional[int]:
    encode = getattr(tokenizer, "encode", None)
    return len(encode(text)) + 2 if callable(encode) else None  # + start and end tokens


class AQMap(nn.Module):
    """Alignment quality map (Eq. 4-8) for any open_clip ViT.

    Args:
        model: an open_clip CLIP with a ViT image tower (e.g. ViT-B/16 ``openai``, or an HPSv2 /
            PickScore style checkpoint loaded into open_clip).
        tokenizer: its tokenizer (``open_clip.get_tokenizer``).
        num_blocks: how many final blocks get the VVV path (Eq. 1).
        a_bound: noun-unmatched threshold of Eq. 6 on a_pns.
        beta: cask-effect bound β of Eq. 8.
        input_size: CLIP input size; None = the model's own, an int or (height, width), or
            ``"native"`` = each image's own size rounded to the patch.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        *,
        num_blocks: int = 6,
        a_bound: float = DEFAULT_A_BOUND,
        beta: float = DEFAULT_BETA,
        input_size: InputSize = None,
    ) -> None:
        super().__init__()
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta}")
        self.surgery = vvv_surgery(model, num_blocks=num_blocks)
        self.tokenizer = tokenizer
        self.a_bound = float(a_bound)
        self.beta = float(beta)
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

    @property
    def context_length(self) -> int:
        return int(getattr(self.tokenizer, "context_length", 77))

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text features (K, D), all texts in one batch; texts longer than the
        context are truncated by the tokenizer, with a warning."""
        for text in texts:
            count = _token_count(self.tokenizer, text)
            if count is not None and count > self.context_length:
                warnings.warn(
                    f"text of {count} tokens is longer than CLIP's {self.context_length}-token context and is "
                    f"truncated for its alignment score: {text[:60]!r}...",
                    stacklevel=3,
                )
        device = next(self.surgery.model.parameters()).device
        features = self.surgery.model.encode_text(self.tokenizer(list(texts)).to(device))
        return F.normalize(features.float(), dim=-1)

    @torch.no_grad()
    def align(self, image: Image.Image, texts: Sequence[str]) -> Alignment:
        """Eq. 5 for ``texts``: ``s = tokens · (C_T(text) − C_T(""))``, scores ``σ(10·s_CLS)``,
        maps min-max normalised per text over the patches and resized (BIC) to the image."""
        features = self.encode_texts(["", *texts])
        directions = features[1:] - features[:1]
        batch = to_clip_tensor([image], self.surgery.input_size(image.size, self.input_size), self.surgery.image_mean, self.surgery.image_std)
        tokens, grid = self.surgery.forward_tokens_with_grid(batch.to(directions.device))
        similarity = F.normalize(tokens[0].float(), dim=-1) @ directions.t()  # (1 + h·w, K)
        scores = torch.sigmoid(SCORE_TEMPERATURE * similarity[0])
        patches = minmax_per_text(similarity[1:].t()).view(len(texts), *grid)
        maps = resize_map(patches, (image.size[1], image.size[0])).clamp(0.0, 1.0)
        return Alignment(scores=scores.cpu().numpy(), maps=maps.cpu().numpy().astype(np.float32))

    def forward(self, image: Union[Image.Image, PathLike], prompt: str) -> AQMapResult:
        """AQ-Map of one image for its prompt (Eq. 4-8)."""
        rgb = as_rgb_image(image)
        return aq_map_from_aligner(parse_prompt(prompt), rgb, self.align, a_bound=self.a_bound, beta=self.beta)

