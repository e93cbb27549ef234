"""CLIP-Surgery's dual-path image encoder with VVV self-attention (paper Eq. 1) and the
text-tower helpers that feed token embeddings straight into CLIP (paper Eq. 2).

Eq. 1 replaces CLIP's QKV attention by ``softmax(V Vᵀ / s) V`` in the last ``num_blocks``
residual blocks of the image encoder. As in CLIP-Surgery's released CS-ViT (which G-Refine's
authors use), this is a *second path* next to the unmodified one:

* the original path runs every block unchanged and gives the CLS token, so token 0 equals
  ``model.encode_image``;
* the new path starts as the original residual stream at the first surgery block and, in each
  surgery block, adds the block's own VVV attention of ``ln_1(original stream)`` (its own
  ``in_proj`` V weights and ``out_proj``, no new parameters) and skips the FFN;
* patch tokens are read from the new path, through the model's ``ln_post`` and ``proj``.

Two scalings ``s`` are offered: ``"vvv"`` (default, the released code: ``s = sqrt(head_dim)``)
and ``"vvv_l2"`` (Eq. 1 as printed: each query row divided by its own L2 norm, so that
``logits_ij = v_i·v_j / ||v_i||_2``).

Any input size works: the positional embeddings are interpolated bicubically to the patch grid.

:class:`TowerPasses` runs the tower for a batch of images and hands the same tokens to every map
that reads the same tower (PQ-Map and AQ-Map on one CLIP with the same surgery and input size):
one image-tower pass per image instead of one per map.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from grefine.image_io import to_clip_tensor

AttentionMode = Literal["vvv", "vvv_l2"]
InputSize = Union[None, int, tuple[int, int], Literal["native"]]
FeatureNorm = Literal["tokens", "channels"]
FEATURE_NORMS = ("tokens", "channels")

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class UnsupportedModelError(TypeError):
    """The open_clip model has no plain ViT image tower that VVV surgery can be applied to."""


def _check_vit(model: nn.Module, num_blocks: int) -> None:
    visual = getattr(model, "visual", None)
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if visual is None or blocks is None or not hasattr(visual, "conv1"):
        raise UnsupportedModelError(
            f"VVV surgery needs an open_clip ViT image tower; got {type(visual).__name__}. "
            "Use a ViT model (ViT-B-16, ViT-L-14, ViT-H-14, ...)."
        )
    if getattr(visual, "attn_pool", None) is not None:
        raise UnsupportedModelError("VVV surgery does not support attention-pooled towers (CoCa).")
    for block in blocks:
        if not isinstance(getattr(block, "attn", None), nn.MultiheadAttention):
            raise UnsupportedModelError(
                f"VVV surgery needs nn.MultiheadAttention blocks; found {type(block).__name__}."
            )
    if not 1 <= num_blocks <= len(blocks):
        raise ValueError(f"num_blocks must be in [1, {len(blocks)}] for this model, got {num_blocks}.")


def _value_projection(attn: nn.MultiheadAttention) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    dim = attn.embed_dim
    weight = attn.in_proj_weight[2 * dim:] if attn._qkv_same_embed_dim else attn.v_proj_weight
    bias = attn.in_proj_bias[2 * dim:] if attn.in_proj_bias is not None else None
    return weight, bias


def vvv_attention(attn: nn.MultiheadAttention, x: torch.Tensor, mode: AttentionMode = "vvv") -> torch.Tensor:
    """Eq. 1: ``softmax(V Vᵀ / s) V`` with the block's own V projection, then ``out_proj``.

    ``x`` is batch-first (B, N, width), already layer-normalised (``ln_1``).
    """
    batch, tokens, width = x.shape
    heads = attn.num_heads
    weight, bias = _value_projection(attn)
    v = F.linear(x, weight, bias).view(batch, tokens, heads, width // heads).transpose(1, 2)
    if mode == "vvv":
        out = F.scaled_dot_product_attention(v, v, v)
    elif mode == "vvv_l2":
        query = v / v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(v.dtype).eps)
        out = F.scaled_dot_product_attention(query, v, v, scale=1.0)
    else:
        raise ValueError(f"attention mode must be 'vvv' or 'vvv_l2', got {mode!r}")
    out = out.transpose(1, 2).reshape(batch, tokens, width)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)


def interpolate_positional_embedding(
    pos_embed: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]
) -> torch.Tensor:
    """Bicubic interpolation of a ViT's (1 + h·w, width) positional embedding to a new grid."""
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    cls_pos, patch_pos = pos_embed[:1], pos_embed[1:]
    width = patch_pos.shape[-1]
    grid = patch_pos.reshape(1, old_grid[0], old_grid[1], width).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", align_corners=False)
    patch_pos = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], width).to(pos_embed.dtype)
    return torch.cat([cls_pos, patch_pos], dim=0)


class VVVSurgery(nn.Module):
    """An open_clip CLIP whose image tower runs CLIP-Surgery's dual path (Eq. 1).

    Wraps, never modifies, the given model: ``model.encode_image`` keeps its behaviour.
    """

    def __init__(self, model: nn.Module, num_blocks: int = 6, attention: AttentionMode = "vvv") -> None:
        super().__init__()
        _check_vit(model, num_blocks)
        if attention not in ("vvv", "vvv_l2"):
            raise ValueError(f"attention must be 'vvv' or 'vvv_l2', got {attention!r}")
        self.model = model
        self.num_blocks = num_blocks
        self.attention = attention

    @property
    def visual(self) -> nn.Module:
        return self.model.visual

    @property
    def patch_size(self) -> tuple[int, int]:
        stride = self.visual.conv1.stride
        return (stride[0], stride[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """The input size the model was trained at (height, width)."""
        size = self.visual.image_size
        return (size, size) if isinstance(size, int) else (size[0], size[1])

    @property
    def image_mean(self) -> tuple[float, ...]:
        cfg = getattr(self.visual, "preprocess_cfg", None) or {}
        return tuple(cfg.get("mean", OPENAI_MEAN))

    @property
    def image_std(self) -> tuple[float, ...]:
        cfg = getattr(self.visual, "preprocess_cfg", None) or {}
        return tuple(cfg.get("std", OPENAI_STD))

    def input_size(self, image_size: tuple[int, int], requested: "InputSize" = None) -> tuple[int, int]:
        """The (height, width) to resize an image of ``image_size`` = (width, height) to:
        ``requested`` None = the model's own size, an int or (height, width), or ``"native"`` =
        the image's own size rounded to whole patches."""
        patch_h, patch_w = self.patch_size
        if requested is None:
            return self.image_size
        if requested == "native":
            width, height = image_size
            return (max(patch_h, round(height / patch_h) * patch_h), max(patch_w, round(width / patch_w) * patch_w))
        if isinstance(requested, int):
            return (requested, requested)
        return (int(requested[0]), int(requested[1]))

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    @property
    def tower_key(self) -> tuple:
        """What the tokens depend on besides the input: the model object, the number of VVV
        blocks and the attention mode. Two surgeries with equal keys give equal tokens."""
        return (self.model, self.num_blocks, self.attention)

    def _run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if getattr(self.visual.transformer, "batch_first", True):
            return block(x)
        return block(x.transpose(0, 1)).transpose(0, 1)

    def _embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        visual = self.visual
        x = visual.conv1(images.to(self.dtype))
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        pos = interpolate_positional_embedding(visual.positional_embedding, visual.grid_size, grid)
        x = torch.cat([cls, x], dim=1) + pos.to(x.dtype)
        x = visual.patch_dropout(x)
        return visual.ln_pre(x), grid

    def forward_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Projected, un-normalised token features (B, 1 + h·w, embed_dim).

        Token 0 is the original path's pooled output (``== model.encode_image(images)``);
        tokens 1.. are the VVV path's patch tokens, row-major over the (h, w) patch grid.
        """
        tokens, _ = self.forward_tokens_with_grid(images)
        return tokens

    def forward_tokens_with_grid(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """:meth:`forward_tokens` plus the (h, w) patch grid the tokens lie on."""
        visual = self.visual
        x, grid = self._embed(images)
        blocks = visual.transformer.resblocks
        start = len(blocks) - self.num_blocks
        for block in blocks[:start]:
            x = self._run_block(block, x)
        new_path = x
        for block in blocks[start:]:
            new_path = new_path + block.ls_1(vvv_attention(block.attn, block.ln_1(x), self.attention))
            x = self._run_block(block, x)
        pooled, _ = visual._pool(x)
        patches = visual.ln_post(new_path[:, 1:])
        if visual.proj is not None:
            pooled = pooled @ visual.proj
            patches = patches @ visual.proj
        return torch.cat([pooled.unsqueeze(1), patches], dim=1), grid

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(images)


def vvv_surgery(model: nn.Module, num_blocks: int = 6, attention: AttentionMode = "vvv") -> VVVSurgery:
    """Factory: wrap any open_clip ViT as CLIP-Surgery's dual-path model (Eq. 1)."""
    return VVVSurgery(model, num_blocks=num_blocks, attention=attention)


def normalize_tokens(tokens: torch.Tensor, mode: FeatureNorm = "tokens") -> torch.Tensor:
    """One image's projected token features (1 + h·w, embed_dim) normalised for the read-outs of
    Eq. 3 and Eq. 5, in float32.

    ``"tokens"`` (the authors' code: ``image_features / image_features.norm(dim=1, keepdim=True)``
    on a (B, 1 + h·w, C) tensor in ``PQ-Map.py``, ``AQ-Map.py`` and CLIP-Surgery's demo): each
    feature *channel* is divided by its L2 norm over the image's tokens, CLS included, so a
    token's similarity depends on the other tokens of the same image (never on other images of
    a batch). ``"channels"``: each token divided by its own L2 norm (the usual CLIP cosine).
    """
    tokens = tokens.float()
    if mode == "tokens":
        return tokens / tokens.norm(dim=0, keepdim=True).clamp_min(1e-12)
    if mode == "channels":
        return F.normalize(tokens, dim=-1)
    raise ValueError(f"feature_norm must be one of {', '.join(FEATURE_NORMS)}, got {mode!r}")


@dataclass(frozen=True)
class ImageTokens:
    """One image's VVV tokens: ``tokens`` (1 + h·w, embed_dim) as :meth:`VVVSurgery.forward_tokens`
    gives them (projected, un-normalised, token 0 the CLS), on the (h, w) patch ``grid``, for an
    image of ``image_size`` = (height, width), the size its maps are resized to."""

    tokens: torch.Tensor
    grid: tuple[int, int]
    image_size: tuple[int, int]


class TowerPasses:
    """The VVV image-tower passes (Eq. 1) of one batch of images, each computed once.

    :meth:`tokens` runs the tower on the images that have no tokens yet for that tower and input
    size, one batched forward per input size, and remembers them: PQ-Map and AQ-Map asking for the
    same :attr:`VVVSurgery.tower_key` and input size get the same pass; maps whose settings differ
    get passes of their own.
    """

    def __init__(self, images: Sequence[Image.Image]) -> None:
        self.images = list(images)
        self._tokens: dict[tuple, ImageTokens] = {}

    def tokens(self, surgery: VVVSurgery, input_size: InputSize = None) -> list[ImageTokens]:
        """Every image's tokens from ``surgery`` at ``input_size`` (see :meth:`VVVSurgery.input_size`)."""
        sizes = [surgery.input_size(image.size, input_size) for image in self.images]
        keys = [(surgery.tower_key, size, index) for index, size in enumerate(sizes)]
        missing: dict[tuple[int, int], list[int]] = {}
        for index, key in enumerate(keys):
            if key not in self._tokens:
                missing.setdefault(sizes[index], []).append(index)
        for size, indices in missing.items():
            self._run(surgery, size, indices)
        return [self._tokens[key] for key in keys]

    @torch.no_grad()
    def _run(self, surgery: VVVSurgery, size: tuple[int, int], indices: list[int]) -> None:
        images = [self.images[index] for index in indices]
        batch = to_clip_tensor(images, size, surgery.image_mean, surgery.image_std)
        device = surgery.visual.conv1.weight.device
        tokens, grid = surgery.forward_tokens_with_grid(batch.to(device))
        for index, image, image_tokens in zip(indices, images, tokens):
            key = (surgery.tower_key, size, index)
            self._tokens[key] = ImageTokens(image_tokens, grid, (image.height, image.width))


@dataclass
class TextTower:
    """The pieces of an open_clip text tower, for both ``CLIP`` and ``CustomTextCLIP``."""

    token_embedding: nn.Embedding
    positional_embedding: torch.Tensor
    transformer: nn.Module
    ln_final: nn.Module
    text_projection: Optional[torch.Tensor | nn.Module]
    attn_mask: Optional[torch.Tensor]

    @property
    def width(self) -> int:
        return self.token_embedding.embedding_dim

    @property
    def context_length(self) -> int:
        return self.positional_embedding.shape[0]


def text_tower(model: nn.Module) -> TextTower:
    """Locate the text tower of an open_clip model."""
    source = getattr(model, "text", model)
    if not hasattr(source, "token_embedding"):
        raise UnsupportedModelError(
            f"{type(model).__name__} has no open_clip transformer text tower (token_embedding)."
        )
    return TextTower(
        token_embedding=source.token_embedding,
        positional_embedding=source.positional_embedding,
        transformer=source.transformer,
        ln_final=source.ln_final,
        text_projection=source.text_projection,
        attn_mask=getattr(source, "attn_mask", None),
    )


def encode_text_embeddings(model: nn.Module, embeddings: torch.Tensor, eot_positions: torch.Tensor) -> torch.Tensor:
    """Eq. 2: run token *embeddings* (N, L, width) through the text tower, bypassing the
    token-embedding layer, and read the projected feature at each row's EOT position."""
    tower = text_tower(model)
    if embeddings.shape[-1] != tower.width or embeddings.shape[1] > tower.context_length:
        raise ValueError(
            f"prompt embeddings of shape {tuple(embeddings.shape)} do not fit this text tower "
            f"(width {tower.width}, context {tower.context_length})."
        )
    length = embeddings.shape[1]
    # The transformer's own weight dtype, as open_clip's encode_text casts: with precision
    # fp16/bf16 the positional embedding stays fp32 while the blocks are half precision.
    dtype = tower.transformer.get_cast_dtype()
    x = embeddings.to(dtype) + tower.positional_embedding[:length].to(dtype)
    mask = tower.attn_mask[:length, :length] if tower.attn_mask is not None else None
    if getattr(tower.transformer, "batch_first", True):
        x = tower.transformer(x, attn_mask=mask)
    else:
        x = tower.transformer(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)
    x = tower.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), eot_positions.to(x.device)]
    projection = tower.text_projection
    if isinstance(projection, nn.Module):
        return projection(x)
    return x @ projection if projection is not None else x
