"""PQ-Map: the perceptual quality map and score (paper §3.1, Eq. 1-3).

Pipeline of one call:

1. the image is resized (bicubic, no crop) to the CLIP input size and encoded by the
   VVV-surgery image tower (Eq. 1, :mod:`grefine.maps.clip_surgery`; :meth:`PQMap.read` takes
   the tokens of a :class:`~grefine.maps.clip_surgery.TowerPasses`, whose pass AQ-Map may share);
   the token features are normalised as the authors' script does (``feature_norm="tokens"``:
   each feature channel divided by its L2 norm over the image's tokens, ``PQ-Map.py`` l. 61;
   ``"channels"``: each token L2-normalised, :func:`~grefine.maps.clip_surgery.normalize_tokens`);
2. four quality-prompt pairs T_p (overall, technical, rational, natural; row 0 positive, row 1
   negative) are encoded by the text tower from their *token embeddings* (Eq. 2) — the official
   learned embeddings — or, when none are given, from plain CLIP-IQA style antonym texts;
3. Eq. 3 per token: ``L_raw[i] = tokens · (T_p[i, 0] − T_p[i, 1])``, a logit difference whose
   sigmoid is the softmax probability of the positive prompt (the authors' score);
   ``L_per = σ(L_raw[0]) · Π_{i=1..3} min(σ(L_raw[i]) / α_i, 1)`` (cask effect);
   ``p = L_per`` at the CLS token; ``P = BIC(L_per over the patch grid)`` resized to the image.

Interpretations written down here (and in the README):

* Eq. 3 is applied to the sigmoid probabilities (the quantity the authors' script thresholds),
  not to raw logits, and to every token, so the map carries the cask effect too (the authors'
  script only applies it to the score).
* α defaults are the authors' ``bound_i × AGIN mean``: (0.935·1.0, 0.892·0.6, 0.826·0.8). Their
  script divides all three factors by the first bound (a slip); we use each factor's own bound.
* Map normalisation (``map_normalization``): ``"none"`` (default) is ``P = BIC(L_per)`` as Eq. 3
  defines it: the per-token cask probabilities, already in [0, 1], resized, with only the bicubic
  overshoot clipped — so a high-quality image has a high map everywhere and nothing below the
  mask's perceptual bound. ``"minmax"`` is the authors' per-image min-max (their notebook),
  which puts every image's worst pixel at 0.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from grefine.errors import MissingWeightsError
from grefine.image_io import ImageInput, PathLike, as_rgb_image, resize_map
from grefine.maps.pq_embeddings import OFFICIAL, official_folder
from grefine.maps.clip_surgery import (
    AttentionMode,
    FeatureNorm,
    ImageTokens,
    InputSize,
    TowerPasses,
    encode_text_embeddings,
    normalize_tokens,
    vvv_surgery,
)

QUALITY_FACTORS = ("overall", "technical", "rational", "natural")
"""The four prompt pairs of Eq. 2, in order: t_0 overall, t_1..3 the three defect factors."""

DEFAULT_ALPHA = (0.935 * 1.0, 0.892 * 0.6, 0.826 * 0.8)
"""α_1..3 of Eq. 3 (technical, rational, natural), from the authors' PQ-Map script."""

FALLBACK_TEXT_PAIRS = {
    "overall": ("Good photo.", "Bad photo."),
    "technical": ("Sharp and clear photo.", "Blurry and noisy photo."),
    "rational": ("Reasonable and coherent photo.", "Distorted and illogical photo."),
    "natural": ("Natural photo.", "Unnatural photo."),
}
"""Plain CLIP-IQA style antonym pairs used when no learned embeddings are given."""

EMBEDDING_SHAPES = {
    "prompt_learner.ctx": (2, 16, None),
    "prompt_learner.token_prefix": (2, 1, None),
    "prompt_learner.token_suffix": (2, 60, None),
}
N_CTX_HALF = 8
CLASS_NAME_TOKENS = 3
EOT_POSITION = 1 + 2 * N_CTX_HALF + CLASS_NAME_TOKENS  # = 20, the authors' fixed read-out index

MapNormalization = Literal["none", "minmax"]


class QualityEmbeddingError(ValueError):
    """A PQ-Map embedding file is missing, unreadable or of the wrong format."""


@dataclass(frozen=True)
class QualityPrompts:
    """The 4×2 quality prompts of Eq. 2 as token embeddings plus their EOT read-out positions.

    ``embeddings``: (4, 2, L, width); ``eot_positions``: (4, 2) long.
    """

    embeddings: torch.Tensor
    eot_positions: torch.Tensor
    source: str


def assemble_pair(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """The authors' 77-token layout: prefix(1) + ctx[:8] + class-name tokens suffix[:3] +
    ctx[8:] + suffix[3:]; returns (2, 77, width). Differentiable in ``ctx`` (the trainer of
    :mod:`grefine.train` learns through it)."""
    ctx = params["prompt_learner.ctx"]
    prefix = params["prompt_learner.token_prefix"]
    suffix = params["prompt_learner.token_suffix"]
    return torch.cat(
        [prefix, ctx[:, :N_CTX_HALF], suffix[:, :CLASS_NAME_TOKENS], ctx[:, N_CTX_HALF:], suffix[:, CLASS_NAME_TOKENS:]],
        dim=1,
    )


def load_embedding_params(path: PathLike) -> dict[str, torch.Tensor]:
    """The three float32 tensors of one official ``PQ-<factor>.pth`` file, by their keys.

    Raises :class:`QualityEmbeddingError` naming the file when it is missing, not a torch file,
    or does not hold ``{"params": {ctx (2,16,w), token_prefix (2,1,w), token_suffix (2,60,w)}}``.
    """
    path = Path(path)
    if not path.is_file():
        raise QualityEmbeddingError(
            f"{path}: PQ-Map embedding file not found. Set pq_map.embeddings to 'official' (fetched from "
            "github.com/Q-Future/Q-Refine, folder embeding/) or to a folder holding the four PQ-*.pth files; see checkpoints/README.md."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt files
        raise QualityEmbeddingError(f"{path}: not a readable torch file ({err}). Re-download it.") from err
    params = state.get("params") if isinstance(state, dict) else None
    if not isinstance(params, dict):
        raise QualityEmbeddingError(f"{path}: expected a dict with key 'params' (a Q-Refine PQ-Map embedding file).")
    width = None
    for key, (rows, length, _) in EMBEDDING_SHAPES.items():
        value = params.get(key)
        if not isinstance(value, torch.Tensor) or value.ndim != 3 or value.shape[:2] != (rows, length):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else None
            raise QualityEmbeddingError(f"{path}: '{key}' must have shape ({rows}, {length}, width), got {shape}.")
        if width is not None and value.shape[2] != width:
            raise QualityEmbeddingError(f"{path}: inconsistent widths across the prompt tensors.")
        width = value.shape[2]
    return {k: params[k].float() for k in EMBEDDING_SHAPES}


def load_embedding_file(path: PathLike) -> torch.Tensor:
    """Load one official ``PQ-<factor>.pth`` file as a (2, 77, width) float32 tensor
    (see :func:`load_embedding_params` for the checks)."""
    return assemble_pair(load_embedding_params(path))


def load_quality_prompts(folder: PathLike) -> QualityPrompts:
    """Load ``PQ-{overall,technical,rational,natural}.pth`` from ``folder`` (Eq. 2's T_p);
    ``"official"``: the authors' released files, fetched and checked on first use
    (:func:`grefine.maps.pq_embeddings.official_folder`)."""
    folder = official_folder() if str(folder) == OFFICIAL else Path(folder)
    pairs = [load_embedding_file(folder / f"PQ-{factor}.pth") for factor in QUALITY_FACTORS]
    embeddings = torch.stack(pairs)
    eot = torch.full(embeddings.shape[:2], EOT_POSITION, dtype=torch.long)
    return QualityPrompts(embeddings=embeddings, eot_positions=eot, source=str(folder))


def text_pair_prompts(model: nn.Module, tokenizer, pairs: dict[str, tuple[str, str]] = FALLBACK_TEXT_PAIRS) -> QualityPrompts:
    """Quality prompts from plain texts (the CLIP-IQA fallback), as token embeddings."""
    texts = [text for factor in QUALITY_FACTORS for text in pairs[factor]]
    tokens = tokenizer(texts)
    embedding_layer = getattr(model, "text", model).token_embedding
    with torch.no_grad():
        embeddings = embedding_layer(tokens.to(embedding_layer.weight.device)).float().cpu()
    eot = tokens.argmax(dim=-1)
    return QualityPrompts(
        embeddings=embeddings.view(len(QUALITY_FACTORS), 2, *embeddings.shape[1:]),
        eot_positions=eot.view(len(QUALITY_FACTORS), 2),
        source="text pairs",
    )


def quality_direction(model: nn.Module, embeddings: torch.Tensor, eot_positions: torch.Tensor) -> torch.Tensor:
    """Eq. 3's text side ``T_p[..., 0] − T_p[..., 1]``: prompt pairs as token embeddings
    (..., 2, L, width) with their EOT positions (..., 2) through the text tower (Eq. 2);
    returns float32 (..., embed_dim). The text features are not normalised, as in the authors'
    script, so that ``σ(normalised image token · direction)`` is the positive prompt's softmax
    probability."""
    lead = embeddings.shape[:-3]
    flat = embeddings.reshape(-1, *embeddings.shape[-2:])
    features = encode_text_embeddings(model, flat, eot_positions.reshape(-1)).float()
    features = features.view(*lead, 2, features.shape[-1])
    return features[..., 0, :] - features[..., 1, :]


def cask_effect(probabilities: torch.Tensor, alpha: Sequence[float]) -> torch.Tensor:
    """Eq. 3's ``L_per = s_0 · Π_{i=1..3} min(s_i / α_i, 1)`` over the last dimension (4 factors).

    A factor at or above its bound α_i leaves the overall value unchanged; one below lowers it
    proportionally.
    """
    bounds = torch.as_tensor(alpha, dtype=probabilities.dtype, device=probabilities.device)
    penalty = torch.clamp(probabilities[..., 1:] / bounds, max=1.0).prod(dim=-1)
    return probabilities[..., 0] * penalty


def normalize_map(values: torch.Tensor, mode: MapNormalization) -> torch.Tensor:
    """Bring a resized (H, W) L_per map to [0, 1]; see the module docstring for the modes."""
    if mode == "none":
        return values.clamp(0.0, 1.0)
    if mode == "minmax":
        low, high = values.min(), values.max()
        return (values - low) / (high - low) if high > low else torch.ones_like(values)
    raise ValueError(f"map_normalization must be 'none' or 'minmax', got {mode!r}")


@dataclass
class PQMapResult:
    """PQ-Map output for one image.

    ``map``: float32 H×W in [0, 1] (high = good perceptual quality), the image's size;
    ``score``: p of Eq. 3; ``factor_scores``: the softmax probability of each positive prompt at
    the CLS token; ``grid``: the un-resized L_per over the patch grid.
    """

    map: np.ndarray
    score: float
    factor_scores: dict[str, float] = field(default_factory=dict)
    grid: Optional[np.ndarray] = None

    @classmethod
    def neutral(cls, size: tuple[int, int]) -> "PQMapResult":
        """What stands for PQ-Map when it is switched off (Table 8 ablation): ``P = 1``
        everywhere, no score (NaN). ``size`` is (height, width)."""
        return cls(map=np.ones(size, np.float32), score=math.nan)


class PQMap(nn.Module):
    """Perceptual quality map (Eq. 1-3) for any open_clip ViT.

    Args:
        model: an open_clip CLIP with a ViT image tower.
        tokenizer: its tokenizer (used only for the text-pair fallback).
        embeddings: a folder with the four official ``PQ-*.pth`` files, ``"official"`` (the
            authors' files, fetched and checked on first use), a :class:`QualityPrompts`, or None
            for the CLIP-IQA text-pair fallback.
        num_blocks: how many final blocks get the VVV path (Eq. 1).
        attention: ``"vvv"`` (released code) or ``"vvv_l2"`` (Eq. 1 as printed).
        alpha: α_1..3 of Eq. 3.
        input_size: CLIP input size; None = the model's own (224² for ViT-B/16, as the authors),
            an int or (height, width), or ``"native"`` = each image's own size rounded to the patch.
        map_normalization: see the module docstring.
        feature_norm: how the image tokens are normalised before Eq. 3: ``"tokens"`` (the
            authors' script, default) or ``"channels"`` (each token's own L2 norm);
            :func:`~grefine.maps.clip_surgery.normalize_tokens`.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer=None,
        embeddings: Union[None, PathLike, QualityPrompts] = None,
        *,
        num_blocks: int = 6,
        attention: AttentionMode = "vvv",
        alpha: Sequence[float] = DEFAULT_ALPHA,
        input_size: InputSize = None,
        map_normalization: MapNormalization = "none",
        feature_norm: FeatureNorm = "tokens",
    ) -> None:
        super().__init__()
        if len(alpha) != 3 or min(alpha) <= 0:
            raise ValueError(f"alpha must be three positive bounds (technical, rational, natural), got {alpha}")
        normalize_map(torch.zeros(1, 1), map_normalization)  # validates the modes early
        normalize_tokens(torch.ones(1, 1), feature_norm)
        self.surgery = vvv_surgery(model, num_blocks=num_blocks, attention=attention)
        self.alpha = tuple(float(a) for a in alpha)
        self.input_size = input_size
        self.map_normalization = map_normalization
        self.feature_norm = feature_norm
        if embeddings is None:
            if tokenizer is None:
                raise ValueError("PQMap needs either quality embeddings or a tokenizer for the text-pair fallback.")
            prompts = text_pair_prompts(model, tokenizer)
        elif isinstance(embeddings, QualityPrompts):
            prompts = embeddings
        else:
            prompts = load_quality_prompts(embeddings)
        self.prompts = prompts
        self.register_buffer("text_direction", self._text_direction(prompts), persistent=False)

    @classmethod
    def from_pretrained(
        cls,
        model_name: str = "ViT-B-16",
        pretrained: Optional[str] = "openai",
        embeddings: Union[None, PathLike, QualityPrompts] = None,
        *,
        device: Union[str, torch.device, None] = None,
        precision: Optional[str] = None,
        **kwargs,
    ) -> "PQMap":
        """Build PQ-Map on a real open_clip model (default ViT-B/16 ``openai``, the authors' CS-ViT-B/16).

        ``embeddings``: ``"official"`` (the authors' files, fetched and checked on first use), a
        folder holding the ``PQ-*.pth`` files (see ``checkpoints/README.md``), or None for plain
        text pairs.
        """
        model, tokenizer = load_open_clip(model_name, pretrained, device=device, precision=precision)
        return cls(model, tokenizer, embeddings, **kwargs).to(next(model.parameters()).device)

    @torch.no_grad()
    def _text_direction(self, prompts: QualityPrompts) -> torch.Tensor:
        """T_p[:, 0] − T_p[:, 1] for the 4 factors: (4, embed_dim)."""
        model = self.surgery.model
        weight = getattr(model, "text", model).token_embedding.weight
        embeddings = prompts.embeddings.to(device=weight.device, dtype=weight.dtype)
        return quality_direction(model, embeddings, prompts.eot_positions)

    @torch.no_grad()
    def read(self, tower: TowerPasses) -> list[PQMapResult]:
        """PQ-Map of every image of ``tower`` (Eq. 3 read out of the VVV tokens; the tower pass is
        shared with any other map reading the same tower, see :class:`TowerPasses`)."""
        return [self._result(tokens) for tokens in tower.tokens(self.surgery, self.input_size)]

    def _result(self, image: ImageTokens) -> PQMapResult:
        tokens = normalize_tokens(image.tokens.to(self.text_direction.device), self.feature_norm)
        probabilities = torch.sigmoid(tokens @ self.text_direction.t())  # Eq. 3's L_raw → σ
        per_token = cask_effect(probabilities, self.alpha)
        grid_map = per_token[1:].view(*image.grid)
        quality_map = normalize_map(resize_map(grid_map, image.image_size), self.map_normalization)
        return PQMapResult(
            map=quality_map.cpu().numpy().astype(np.float32),
            score=float(per_token[0]),
            factor_scores={name: float(p) for name, p in zip(QUALITY_FACTORS, probabilities[0])},
            grid=grid_map.cpu().numpy(),
        )

    def forward(self, images: Union[ImageInput, Sequence[ImageInput]]) -> Union[PQMapResult, list[PQMapResult]]:
        """PQ-Map of one image (→ :class:`PQMapResult`) or a list/tuple of them (→ list, one batched
        image-encoder forward per distinct input size); an image is anything
        :func:`~grefine.image_io.as_rgb_image` takes (PIL, path, uint8 array, [0, 1] tensor)."""
        single = not isinstance(images, (list, tuple))
        rgb = [as_rgb_image(image) for image in ([images] if single else images)]
        results = self.read(TowerPasses(rgb))
        return results[0] if single else results


def load_open_clip(
    model_name: str,
    pretrained: Optional[str],
    *,
    device: Union[str, torch.device, None] = None,
    precision: Optional[str] = None,
) -> tuple[nn.Module, object]:
    """``open_clip.create_model`` + tokenizer, in eval mode, with a clear error when the
    weights cannot be had (offline, wrong name or path). Weights trained with QuickGELU (OpenAI's,
    e.g. ``ViT-B-16`` / ``openai``, as the authors' CLIP-Surgery runs them) get QuickGELU: open_clip
    builds ``ViT-B-16`` with GELU unless told."""
    import open_clip

    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = precision or ("fp16" if device.type == "cuda" else "fp32")
    quick_gelu = bool(pretrained and (open_clip.get_pretrained_cfg(model_name, pretrained) or {}).get("quick_gelu"))
    try:
        model = open_clip.create_model(
            model_name, pretrained=pretrained, device=device, precision=precision, force_quick_gelu=quick_gelu
        )
        tokenizer = open_clip.get_tokenizer(model_name)
    except Exception as err:  # open_clip raises RuntimeError/OSError/HF errors depending on the source
        raise MissingWeightsError.for_source(f"open_clip model {model_name}", str(pretrained), err) from err
    if pretrained is None:
        warnings.warn(f"open_clip {model_name} was created without pretrained weights: its outputs are random.")
    return model.eval(), tokenizer
