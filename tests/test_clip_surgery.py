"""Eq. 1: the dual-path VVV image tower against an independent reference."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from grefine.maps.clip_surgery import (
    UnsupportedModelError,
    encode_text_embeddings,
    vvv_surgery,
)
from grefine.tiny import build_tiny_open_clip


def _layer_norm(x, ln):
    return F.layer_norm(x, (x.shape[-1],), ln.weight, ln.bias, ln.eps)


def _attention(x, attn, vvv: bool, l2: bool = False):
    """Multi-head attention written out from the raw in_proj/out_proj weights."""
    b, n, d = x.shape
    h = attn.num_heads
    q, k, v = (x @ attn.in_proj_weight.t() + attn.in_proj_bias).chunk(3, dim=-1)
    split = lambda t: t.reshape(b, n, h, d // h).permute(0, 2, 1, 3)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    if vvv:
        q, k = v, v
    logits = q @ k.transpose(-1, -2)
    if l2:
        logits = logits / v.norm(dim=-1, keepdim=True)
    else:
        logits = logits / (d // h) ** 0.5
    out = (logits.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(b, n, d)
    return out @ attn.out_proj.weight.t() + attn.out_proj.bias


def _mlp(x, mlp):
    return mlp.c_proj(F.gelu(mlp.c_fc(x)))


def reference_tokens(model, images, num_blocks, l2=False):
    """CLIP-Surgery's dual path, re-derived from the weights without grefine's code."""
    v = model.visual
    x = F.conv2d(images, v.conv1.weight, stride=v.conv1.stride)
    gh, gw = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)
    pos = v.positional_embedding
    if (gh, gw) != tuple(v.grid_size):
        side = v.grid_size
        grid = pos[1:].reshape(1, side[0], side[1], -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(gh * gw, -1)])
    x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + pos
    x = _layer_norm(x, v.ln_pre)
    blocks = list(v.transformer.resblocks)
    start = len(blocks) - num_blocks
    new = None
    for i, blk in enumerate(blocks):
        if i == start:
            new = x
        if i >= start:
            new = new + _attention(_layer_norm(x, blk.ln_1), blk.attn, vvv=True, l2=l2)
        x = x + _attention(_layer_norm(x, blk.ln_1), blk.attn, vvv=False)
        x = x + _mlp(_layer_norm(x, blk.ln_2), blk.mlp)
    cls = _layer_norm(x[:, 0], v.ln_post) @ v.proj
    patches = _layer_norm(new[:, 1:], v.ln_post) @ v.proj
    return torch.cat([cls[:, None], patches], dim=1)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_open_clip(vision_layers=4)


@pytest.mark.parametrize("num_blocks", [1, 2, 4])
def test_tokens_match_independent_reference(tiny, num_blocks):
    model, _ = tiny
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = vvv_surgery(model, num_blocks=num_blocks).forward_tokens(images)
        expected = reference_tokens(model, images, num_blocks)
    assert tokens.shape == (2, 1 + 16, 32)
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=1e-5)


def test_l2_variant_matches_reference_and_differs_from_default(tiny):
    model, _ = tiny
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        l2 = vvv_surgery(model, num_blocks=2, attention="vvv_l2").forward_tokens(images)
        default = vvv_surgery(model, num_blocks=2).forward_tokens(images)
        expected = reference_tokens(model, images, 2, l2=True)
    torch.testing.assert_close(l2, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(l2[:, 1:], default[:, 1:], atol=1e-4)


def test_cls_token_equals_encode_image(tiny):
    model, _ = tiny
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        tokens = vvv_surgery(model, num_blocks=3).forward_tokens(images)
        torch.testing.assert_close(tokens[:, 0], model.encode_image(images), atol=1e-6, rtol=1e-6)


def test_surgery_changes_patch_tokens_not_the_model(tiny):
    model, _ = tiny
    images = torch.randn(1, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        surgery = vvv_surgery(model, num_blocks=2)
        tokens = surgery.forward_tokens(images)
        model.visual.output_tokens = True
        _, plain_tokens = model.visual(images)
        model.visual.output_tokens = False
    plain = plain_tokens @ model.visual.proj
    assert not torch.allclose(tokens[:, 1:], plain, atol=1e-3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert sum(p.numel() for p in surgery.parameters()) == sum(p.numel() for p in model.parameters())


def test_any_input_size_interpolates_positions(tiny):
    model, _ = tiny
    images = torch.randn(1, 3, 40, 72)  # 5 x 9 patches of 8 px
    with torch.no_grad():
        tokens, grid = vvv_surgery(model, num_blocks=2).forward_tokens_with_grid(images)
        expected = reference_tokens(model, images, 2)
    assert grid == (5, 9)
    assert tokens.shape == (1, 1 + 45, 32)
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=1e-5)


def test_bad_arguments_are_rejected(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="num_blocks"):
        vvv_surgery(model, num_blocks=9)
    with pytest.raises(ValueError, match="attention"):
        vvv_surgery(model, num_blocks=2, attention="qkv")
    with pytest.raises(UnsupportedModelError):
        vvv_surgery(torch.nn.Linear(2, 2))


def test_text_embeddings_path_equals_encode_text(tiny):
    """Eq. 2 bypasses the token-embedding layer; fed the same embeddings it equals encode_text."""
    model, tokenizer = tiny
    tokens = tokenizer(["a photo of a cat", "blurry"])
    with torch.no_grad():
        embeddings = model.token_embedding(tokens)
        features = encode_text_embeddings(model, embeddings, tokens.argmax(dim=-1))
        torch.testing.assert_close(features, model.encode_text(tokens), atol=1e-5, rtol=1e-5)
