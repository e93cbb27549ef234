"""The maps read the CLIP features as the authors' released code does (Q-Future/Q-Refine
``PQ-Map.py``, ``AQ-Map.py``, CLIP-Surgery's ``encode_text_with_prompt_ensemble``), each compared
with an independent re-computation of their readout on a tiny CLIP; the ``channels`` / ``bare``
switches give back grefine's earlier readout, recomputed here on its own."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from grefine.config import GRefineConfig
from grefine.image_io import resize_map, to_clip_tensor
from grefine.maps.aq_map import AQMap
from grefine.maps.pq_map import DEFAULT_ALPHA, QUALITY_FACTORS, PQMap
from grefine.maps.syntax_tree import add_nltk_data_dir
from grefine.maps.text_features import PROMPT_TEMPLATES
from grefine.tiny import build_tiny_open_clip, build_tiny_pq_clip
from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")

AUTHORS_TEMPLATES_SHA256 = "f87d863dc7a96d46812438cf13a8a071e340f7be26222d17a0b61d41d28c0984"
"""SHA-256 of "\\n".join(the 85 templates) of ``clip/clip.py`` l. 255 in Q-Future/Q-Refine."""


@pytest.fixture(scope="module", autouse=True)
def nltk_data(shared_dir: Path) -> None:
    add_nltk_data_dir(shared_dir / "nltk_data")


def _image(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _tokens(maps, images: list[Image.Image]) -> torch.Tensor:
    """The VVV tokens (B, 1 + h·w, C) of ``images`` at the model's input size (one batch)."""
    surgery = maps.surgery
    batch = to_clip_tensor(images, surgery.image_size, surgery.image_mean, surgery.image_std)
    with torch.no_grad():
        return surgery.forward_tokens(batch).float()


def _authors_norm(tokens: torch.Tensor) -> torch.Tensor:
    """``image_features / image_features.norm(dim=1, keepdim=True)`` on (B, 1 + h·w, C)."""
    return tokens / tokens.norm(dim=1, keepdim=True)


# --------------------------------------------------------------------------- the templates


def test_the_templates_are_clip_surgerys_85_in_order():
    assert len(PROMPT_TEMPLATES) == 85 == len(set(PROMPT_TEMPLATES))
    assert hashlib.sha256("\n".join(PROMPT_TEMPLATES).encode()).hexdigest() == AUTHORS_TEMPLATES_SHA256
    assert PROMPT_TEMPLATES[-5:] == tuple(
        f"{start} {{}} in the scene." for start in ("there is a", "there is the", "this is a", "this is the", "this is one")
    )


# --------------------------------------------------------------------------- PQ-Map


@pytest.fixture(scope="module")
def pq(pq_embeddings_dir):
    model, tokenizer = build_tiny_pq_clip()
    return PQMap(model, tokenizer, pq_embeddings_dir, num_blocks=2)


def _authors_pq_text_features(model, path: Path) -> torch.Tensor:
    """``PQ-Map.py``'s ``load_embed`` + ``encode_text``: the pair's 77 embeddings in the CoOp
    layout through the text tower, read at position 20, projected, not normalised."""
    params = torch.load(path, weights_only=True)["params"]
    ctx, prefix, suffix = (params[f"prompt_learner.{key}"].float() for key in ("ctx", "token_prefix", "token_suffix"))
    embed = torch.cat([prefix, ctx[:, :8], suffix[:, :3], ctx[:, 8:], suffix[:, 3:]], dim=1)
    with torch.no_grad():
        x = embed + model.positional_embedding
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
        return x[torch.arange(2), torch.tensor([20, 20])] @ model.text_projection


def test_pq_factor_scores_are_the_authors_readout(pq, pq_embeddings_dir):
    """Token-axis normalised image features @ unnormalised text features, softmax of the pair at
    the CLS token (``PQ-Map.py`` l. 53-71), per image of a batch; p keeps Eq. 3's own α_i."""
    model = pq.surgery.model
    images = [_image(40, 28, seed=0), _image(32, 32, seed=1)]
    results = pq(images)
    features = _authors_norm(_tokens(pq, images))
    for image_index, result in enumerate(results):
        expected = {}
        for factor in QUALITY_FACTORS:
            text = _authors_pq_text_features(model, pq_embeddings_dir / f"PQ-{factor}.pth")
            logits = features[image_index] @ text.t()
            expected[factor] = float(torch.softmax(logits[0], dim=-1)[0])
        assert result.factor_scores == pytest.approx(expected, abs=1e-5)
        cask = np.prod([min(expected[f] / a, 1.0) for f, a in zip(QUALITY_FACTORS[1:], DEFAULT_ALPHA)])
        assert result.score == pytest.approx(expected["overall"] * cask, abs=1e-5)
    # per image: the first image alone reads the same
    assert pq(images[0]).factor_scores == pytest.approx(results[0].factor_scores, abs=1e-6)


def test_pq_channels_switch_restores_the_channel_normalised_maps(pq):
    image = _image(40, 28, seed=2)
    result = PQMap(pq.surgery.model, embeddings=pq.prompts, num_blocks=2, feature_norm="channels")(image)
    tokens = F.normalize(_tokens(pq, [image])[0], dim=-1)
    probabilities = torch.sigmoid(tokens @ pq.text_direction.t())
    per_token = probabilities[:, 0] * torch.clamp(probabilities[:, 1:] / torch.tensor(DEFAULT_ALPHA), max=1).prod(dim=-1)
    grid = per_token[1:].view(*pq.surgery.visual.grid_size)
    np.testing.assert_allclose(result.grid, grid.numpy(), atol=1e-6)
    np.testing.assert_allclose(result.map, resize_map(grid, (28, 40)).clamp(0, 1).numpy(), atol=1e-6)
    assert result.score == pytest.approx(float(per_token[0]), abs=1e-6)
    assert abs(result.score - pq(image).score) > 1e-4  # the switch matters


# --------------------------------------------------------------------------- AQ-Map


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_open_clip()


def _ensemble(model, tokenizer, text: str) -> torch.Tensor:
    """CLIP-Surgery's ``encode_text_with_prompt_ensemble`` for one text."""
    with torch.no_grad():
        rows = model.encode_text(tokenizer([template.format(text) for template in PROMPT_TEMPLATES]))
    rows = rows / rows.norm(dim=-1, keepdim=True)
    mean = rows.mean(dim=0)
    return mean / mean.norm()


def test_aq_text_scores_and_maps_are_the_authors_readout(tiny, tmp_path):
    """``AQ-Map.py``'s ``alignment_map``: token-axis normalised image features @ (ensemble(text) −
    ensemble("")), ``σ(10·s)`` at the CLS token, each text's patch map min-max normalised."""
    model, tokenizer = tiny
    aq_map = AQMap(model, tokenizer, num_blocks=2, text_cache=tmp_path)
    image = _image(36, 30, seed=3)
    prompt = "a red cube on a blue table"
    result = aq_map(image, prompt)
    redundant = _ensemble(model, tokenizer, "")
    features = _authors_norm(_tokens(aq_map, [image]))[0]
    grid = aq_map.surgery.visual.grid_size

    def authors(text: str) -> tuple[float, np.ndarray]:
        s = features @ (_ensemble(model, tokenizer, text) - redundant)
        patches = s[1:]
        normalised = ((patches - patches.min()) / (patches.max() - patches.min())).view(*grid)
        return float(torch.sigmoid(10 * s[0])), resize_map(normalised, (30, 36)).clamp(0, 1).numpy()

    score, prompt_map = authors(prompt)
    assert result.prompt_score == pytest.approx(score, abs=1e-5)
    np.testing.assert_allclose(result.prompt_map, prompt_map, atol=1e-5)
    for j, phrase in enumerate(result.phrases):
        phrase_score, _ = authors(phrase.content)
        noun_score, noun_map = authors(phrase.noun)
        assert phrase.score == pytest.approx(phrase_score, abs=1e-5)
        assert phrase.noun_score == pytest.approx(noun_score, abs=1e-5)
        np.testing.assert_allclose(result.noun_maps[j], noun_map, atol=1e-5)


def test_aq_channels_and_bare_switches_restore_the_earlier_readout(tiny):
    """Each token L2-normalised, each text encoded alone: grefine's readout before this issue."""
    model, tokenizer = tiny
    image = _image(36, 30, seed=4)
    texts = ["a cat", "cat"]
    earlier = AQMap(model, tokenizer, num_blocks=2, feature_norm="channels", text_encoding="bare", text_cache=None)
    alignment = earlier.align(image, texts)
    with torch.no_grad():
        text = F.normalize(model.encode_text(tokenizer(["", *texts])).float(), dim=-1)
    s = F.normalize(_tokens(earlier, [image])[0], dim=-1) @ (text[1:] - text[:1]).t()
    np.testing.assert_allclose(alignment.scores, torch.sigmoid(10 * s[0]).numpy(), atol=1e-6)
    patches = s[1:].t()
    low, high = patches.min(dim=1, keepdim=True).values, patches.max(dim=1, keepdim=True).values
    grid = ((patches - low) / (high - low)).view(2, *earlier.surgery.visual.grid_size)
    np.testing.assert_allclose(alignment.maps, resize_map(grid, (30, 36)).clamp(0, 1).numpy(), atol=1e-6)
    authors = AQMap(model, tokenizer, num_blocks=2, text_cache=None).align(image, texts)
    assert np.abs(authors.scores - alignment.scores).max() > 1e-4  # the switches matter


def test_both_presets_read_the_features_as_the_authors():
    for name in ("default.yaml", "authors-notebook.yaml"):
        config = GRefineConfig.from_yaml(REPO / "configs" / name)
        assert (config.pq_map.feature_norm, config.aq_map.feature_norm, config.aq_map.text_encoding) == ("tokens", "tokens", "ensemble")
    assert GRefineConfig.from_yaml(REPO / "configs" / "default.yaml").pq_map.alpha == pytest.approx(list(DEFAULT_ALPHA))
