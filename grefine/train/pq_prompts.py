"""The learnable quality-prompt pair of one PQ-Map factor (paper §3.1, Eq. 2; Fig. 3).

A CoOp-style prompt learner in the layout of IQA-PyTorch's CLIP-IQA+ ``PromptLearner``
(pyiqa/archs/clipiqa_arch.py), which is the layout of the official ``PQ-<factor>.pth`` files:

* ``ctx`` (2, 16, width), learned: 16 context tokens per prompt (row 0 positive, row 1 negative);
* ``token_prefix`` (2, 1, width), fixed: the start-of-text token;
* ``token_suffix`` (2, 60, width), fixed: the 3 class-name tokens, end-of-text, padding.

The text tower sees ``prefix + ctx[:8] + class tokens + ctx[8:] + suffix[3:]``
(:func:`grefine.maps.pq_map.assemble_pair`) and is read out at the end-of-text token,
position :data:`~grefine.maps.pq_map.EOT_POSITION` = 20.

Initialisation from text, as pyiqa does: each class text gets pyiqa's extra ``"."`` and 16
``"X"`` context tokens in front (``"X X … X Good photo.."``); the tokenised texts go through
the token-embedding layer, ``ctx`` starts as the embeddings of the 16 ``X`` tokens, the
prefix is the start token and the suffix everything after the context. ``"Good photo."`` /
``"Bad photo."`` give the class tokens ``good|bad, photo, ..``; the four official files share
one prefix and one suffix whose class tokens 2-3 agree between the rows, as this initialisation
produces. Alternatively the learner starts from an existing ``PQ-*.pth`` (fine-tuning).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn

from grefine.image_io import PathLike, atomic_write
from grefine.maps.clip_surgery import text_tower
from grefine.maps.pq_map import (
    CLASS_NAME_TOKENS,
    EMBEDDING_SHAPES,
    EOT_POSITION,
    N_CTX_HALF,
    QualityEmbeddingError,
    assemble_pair,
    load_embedding_params,
    quality_direction,
)

N_CTX = 2 * N_CTX_HALF
DEFAULT_CLASS_TEXTS = ("Good photo.", "Bad photo.")
"""pyiqa's CLIP-IQA+ class texts (positive, negative), used for every factor."""

CTX_KEY, PREFIX_KEY, SUFFIX_KEY = EMBEDDING_SHAPES
"""``prompt_learner.ctx``, ``prompt_learner.token_prefix``, ``prompt_learner.token_suffix``."""


def pyiqa_prompt_texts(class_texts: Sequence[str]) -> list[str]:
    """pyiqa's initial prompts: 16 ``X`` context tokens, the class text and an extra ``"."``."""
    return [" ".join(["X"] * N_CTX) + " " + text + "." for text in class_texts]


def class_text_problem(tokenizer: Callable, class_texts: Sequence[str]) -> str | None:
    """Why ``class_texts`` cannot initialise the official layout (None when they can): there
    must be two, and each (with pyiqa's extra ``"."``) must tokenise to exactly 3 tokens, so
    that the end-of-text token lands at position 20."""
    if len(class_texts) != 2:
        return f"need a (positive, negative) pair of class texts, got {len(class_texts)}"
    tokens = tokenizer(pyiqa_prompt_texts(class_texts))
    for text, eot in zip(class_texts, tokens.argmax(dim=-1).tolist()):
        count = eot - 1 - N_CTX
        if count != CLASS_NAME_TOKENS:
            return (
                f"class text {text!r} (+ pyiqa's extra '.') tokenises to {count} tokens; the official "
                f"layout holds exactly {CLASS_NAME_TOKENS} (e.g. 'Good photo.', 'Sharp photo.')"
            )
    return None


class QualityPromptLearner(nn.Module):
    """One learnable prompt pair (positive, negative) in the official PQ-Map layout.

    ``forward(model)`` runs the pair through ``model``'s (frozen) text tower and returns Eq. 3's
    direction ``T_p[0] − T_p[1]`` (embed_dim,), differentiable in ``ctx``; the frozen CLIP is an
    argument, not a sub-module (as in pyiqa's ``PromptLearner.forward(clip_model)``), so that
    distributed data-parallel wrapping syncs only the prompts.
    """

    def __init__(self, ctx: torch.Tensor, token_prefix: torch.Tensor, token_suffix: torch.Tensor) -> None:
        super().__init__()
        params = {CTX_KEY: ctx, PREFIX_KEY: token_prefix, SUFFIX_KEY: token_suffix}
        for key, (rows, length, _) in EMBEDDING_SHAPES.items():
            value = params[key]
            if value.ndim != 3 or value.shape[:2] != (rows, length) or value.shape[2] != ctx.shape[-1]:
                raise ValueError(f"{key} must have shape ({rows}, {length}, width), got {tuple(value.shape)}")
        self.ctx = nn.Parameter(ctx.detach().float().clone())
        self.register_buffer("token_prefix", token_prefix.detach().float().clone())
        self.register_buffer("token_suffix", token_suffix.detach().float().clone())
        self.register_buffer("eot_positions", torch.full((2,), EOT_POSITION, dtype=torch.long), persistent=False)

    @classmethod
    def from_text_pair(
        cls, model: nn.Module, tokenizer: Callable, class_texts: Sequence[str] = DEFAULT_CLASS_TEXTS
    ) -> "QualityPromptLearner":
        """pyiqa's CLIP-IQA+ initialisation (see the module docstring)."""
        problem = class_text_problem(tokenizer, class_texts)
        if problem:
            raise ValueError(problem)
        embedding_layer = text_tower(model).token_embedding
        tokens = tokenizer(pyiqa_prompt_texts(class_texts)).to(embedding_layer.weight.device)
        with torch.no_grad():
            embedded = embedding_layer(tokens).float().cpu()
        return cls(embedded[:, 1:1 + N_CTX], embedded[:, :1], embedded[:, 1 + N_CTX:])

    @classmethod
    def from_file(cls, path: PathLike) -> "QualityPromptLearner":
        """Start from an official-format ``PQ-*.pth`` (fine-tuning); raises
        :class:`~grefine.maps.pq_map.QualityEmbeddingError` naming a bad file."""
        params = load_embedding_params(path)
        return cls(params[CTX_KEY], params[PREFIX_KEY], params[SUFFIX_KEY])

    @property
    def width(self) -> int:
        return self.ctx.shape[-1]

    def embeddings(self) -> torch.Tensor:
        """The pair's (2, 77, width) token embeddings in the authors' layout."""
        return assemble_pair({CTX_KEY: self.ctx, PREFIX_KEY: self.token_prefix, SUFFIX_KEY: self.token_suffix})

    def forward(self, model: nn.Module) -> torch.Tensor:
        tower = text_tower(model)
        if tower.width != self.width:
            raise QualityEmbeddingError(
                f"the prompts have width {self.width} but the text tower's token width is {tower.width}; "
                "start from text (--init text) or from a PQ-*.pth made for this CLIP."
            )
        embeddings = self.embeddings().to(tower.positional_embedding.dtype)
        if tower.attn_mask is not None:
            # open_clip's text mask is causal: the read-out at EOT sees only the tokens up to
            # it, so the padding after it can be left out (exact; 21 instead of 77 tokens).
            embeddings = embeddings[:, : EOT_POSITION + 1]
        return quality_direction(model, embeddings, self.eot_positions)

    def official_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """``{"params": {ctx, token_prefix, token_suffix}}`` as the official files hold it:
        float32 CPU tensors with storages of their own (no views of bigger tensors)."""
        values = (self.ctx, self.token_prefix, self.token_suffix)
        return {"params": {key: value.detach().float().cpu().clone() for key, value in zip(EMBEDDING_SHAPES, values)}}

    @torch.no_grad()
    def load_official_params(self, params: dict[str, torch.Tensor]) -> None:
        """Copy ``official_state()["params"]``-style tensors into this learner, in place."""
        for tensor, key in zip((self.ctx, self.token_prefix, self.token_suffix), EMBEDDING_SHAPES):
            tensor.copy_(params[key])

    def save(self, path: PathLike) -> Path:
        """Write ``official_state()`` atomically; it loads with ``torch.load(weights_only=True)``
        and :func:`grefine.maps.pq_map.load_embedding_file`."""
        path = Path(path)
        state = self.official_state()
        atomic_write(path, lambda tmp: torch.save(state, tmp))
        return path
