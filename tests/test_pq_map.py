"""PQ-Map (Eq. 2-3) with tiny random CLIPs and the official embeddings from ../shared."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from grefine.image_io import ImageLoadError, resize_map
from grefine.maps.pq_map import (
    DEFAULT_ALPHA,
    EOT_POSITION,
    FALLBACK_TEXT_PAIRS,
    QUALITY_FACTORS,
    PQMap,
    PQMapResult,
    QualityEmbeddingError,
    cask_effect,
    load_embedding_file,
    load_quality_prompts,
)
from grefine.tiny import build_tiny_open_clip, build_tiny_pq_clip


@pytest.fixture(scope="module")
def tiny_pq(pq_embeddings_dir):
    model, tokenizer = build_tiny_pq_clip()
    return PQMap(model, tokenizer, pq_embeddings_dir, num_blocks=2)


@pytest.fixture(scope="module")
def tiny_text_pq():
    model, tokenizer = build_tiny_open_clip()
    return PQMap(model, tokenizer, num_blocks=2)


def _random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_official_embeddings_assemble_in_the_authors_layout(pq_embeddings_dir):
    raw = torch.load(pq_embeddings_dir / "PQ-overall.pth", weights_only=True)["params"]
    pair = load_embedding_file(pq_embeddings_dir / "PQ-overall.pth")
    ctx, prefix, suffix = raw["prompt_learner.ctx"], raw["prompt_learner.token_prefix"], raw["prompt_learner.token_suffix"]
    assert pair.shape == (2, 77, 512)
    assert torch.equal(pair[:, :1], prefix)
    assert torch.equal(pair[:, 1:9], ctx[:, :8])
    assert torch.equal(pair[:, 9:12], suffix[:, :3])
    assert torch.equal(pair[:, 12:20], ctx[:, 8:])
    assert torch.equal(pair[:, 20:], suffix[:, 3:])
    prompts = load_quality_prompts(pq_embeddings_dir)
    assert prompts.embeddings.shape == (4, 2, 77, 512)
    assert (prompts.eot_positions == EOT_POSITION).all() and EOT_POSITION == 20


def test_official_embeddings_flow_through_a_width_512_text_tower(tiny_pq, pq_embeddings_dir):
    from grefine.maps.clip_surgery import encode_text_embeddings

    direction = tiny_pq.text_direction
    assert direction.shape == (4, 32) and torch.isfinite(direction).all()
    # Reference: the natural pair encoded on its own, EOT read at position 20.
    pair = load_embedding_file(pq_embeddings_dir / "PQ-natural.pth")
    with torch.no_grad():
        feats = encode_text_embeddings(tiny_pq.surgery.model, pair, torch.tensor([20, 20]))
    torch.testing.assert_close(direction[3], feats[0] - feats[1], atol=1e-5, rtol=1e-5)
    # The four factors are different learned prompts.
    assert not torch.allclose(direction[0], direction[1])


def test_text_pair_fallback_equals_encode_text(tiny_text_pq):
    model = tiny_text_pq.surgery.model
    from grefine.tiny import build_tiny_open_clip as _build

    _, tokenizer = _build()
    texts = [t for f in QUALITY_FACTORS for t in FALLBACK_TEXT_PAIRS[f]]
    with torch.no_grad():
        feats = model.encode_text(tokenizer(texts)).view(4, 2, -1)
    torch.testing.assert_close(tiny_text_pq.text_direction, feats[:, 0] - feats[:, 1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "content, match",
    [
        (b"not a torch file at all", "not a readable torch file"),
        (None, "expected a dict with key 'params'"),
    ],
)
def test_corrupt_or_wrong_embedding_file_is_named(tmp_path, pq_embeddings_dir, content, match):
    for factor in QUALITY_FACTORS:
        (tmp_path / f"PQ-{factor}.pth").write_bytes((pq_embeddings_dir / f"PQ-{factor}.pth").read_bytes())
    bad = tmp_path / "PQ-rational.pth"
    if content is None:
        torch.save({"state_dict": {}}, bad)
    else:
        bad.write_bytes(content)
    with pytest.raises(QualityEmbeddingError, match=match) as info:
        load_quality_prompts(tmp_path)
    assert "PQ-rational.pth" in str(info.value)


def test_wrong_shapes_and_missing_files_are_named(tmp_path):
    torch.save({"params": {"prompt_learner.ctx": torch.zeros(2, 8, 512)}}, tmp_path / "PQ-overall.pth")
    with pytest.raises(QualityEmbeddingError, match=r"PQ-overall.pth.*prompt_learner.ctx"):
        load_embedding_file(tmp_path / "PQ-overall.pth")
    with pytest.raises(QualityEmbeddingError, match="PQ-technical.pth: PQ-Map embedding file not found"):
        load_embedding_file(tmp_path / "PQ-technical.pth")


def test_embeddings_of_the_wrong_width_are_rejected(pq_embeddings_dir):
    model, tokenizer = build_tiny_open_clip()  # text width 64, not 512
    with pytest.raises(ValueError, match="do not fit this text tower"):
        PQMap(model, tokenizer, pq_embeddings_dir, num_blocks=2)


def test_cask_effect():
    base = torch.tensor([0.8, 1.0, 1.0, 1.0])
    # Factors at or above their bounds leave the overall probability unchanged.
    above = torch.tensor([0.8, DEFAULT_ALPHA[0] + 0.01, DEFAULT_ALPHA[1], 0.99])
    assert cask_effect(above, DEFAULT_ALPHA).item() == pytest.approx(0.8)
    assert cask_effect(base, DEFAULT_ALPHA).item() == pytest.approx(0.8)
    # One factor below its bound lowers the score proportionally.
    below = torch.tensor([0.8, 1.0, DEFAULT_ALPHA[1] / 2, 1.0])
    assert cask_effect(below, DEFAULT_ALPHA).item() == pytest.approx(0.4)
    two_below = torch.tensor([0.8, DEFAULT_ALPHA[0] / 2, DEFAULT_ALPHA[1] / 2, 1.0])
    assert cask_effect(two_below, DEFAULT_ALPHA).item() == pytest.approx(0.2)


def test_channels_option_restores_the_channel_normalised_readout(tiny_text_pq):
    """``feature_norm="channels"``: each token L2-normalised (grefine's readout before the authors'
    token-axis normalisation became the default), computed here from ``encode_image``'s CLS."""
    model = tiny_text_pq.surgery.model
    image = _random_image(32, 32)
    result = PQMap(model, embeddings=tiny_text_pq.prompts, num_blocks=2, feature_norm="channels")(image)
    from grefine.image_io import to_clip_tensor

    batch = to_clip_tensor([image], (32, 32), tiny_text_pq.surgery.image_mean, tiny_text_pq.surgery.image_std)
    with torch.no_grad():
        cls = F.normalize(model.encode_image(batch), dim=-1)[0]
    probs = torch.sigmoid(cls @ tiny_text_pq.text_direction.t())
    expected = probs[0] * torch.clamp(probs[1:] / torch.tensor(DEFAULT_ALPHA), max=1).prod()
    assert result.score == pytest.approx(expected.item(), rel=1e-5)
    assert result.factor_scores["natural"] == pytest.approx(probs[3].item(), rel=1e-5)


@pytest.mark.parametrize("size", [(70, 50), (33, 90), (224, 224)])
def test_maps_have_the_image_size_and_range(tiny_pq, size):
    result = tiny_pq(_random_image(*size))
    assert result.map.shape == (size[1], size[0])
    assert result.map.dtype == np.float32
    assert 0.0 <= result.map.min() and result.map.max() <= 1.0
    assert 0.0 <= result.score <= 1.0


def test_map_normalizations(tiny_text_pq):
    model = tiny_text_pq.surgery.model
    image = _random_image(64, 48)
    paper = tiny_text_pq(image)  # default: P = BIC(L_per), Eq. 3 as defined
    expected = resize_map(torch.from_numpy(paper.grid), (48, 64)).clamp(0.0, 1.0).numpy()
    np.testing.assert_allclose(paper.map, expected, atol=1e-6)
    assert paper.grid.min() > 0.0 and paper.map.max() < 1.0  # no forced minimum, not stretched
    minmax = PQMap(model, embeddings=tiny_text_pq.prompts, num_blocks=2, map_normalization="minmax")(image)
    assert minmax.map.min() == pytest.approx(0.0, abs=1e-6) and minmax.map.max() == pytest.approx(1.0, abs=1e-6)
    for mode in ("score", "softmax"):
        with pytest.raises(ValueError, match="map_normalization"):
            PQMap(model, embeddings=tiny_text_pq.prompts, num_blocks=2, map_normalization=mode)


def test_neutral_result_is_perfect_everywhere_and_unscored():
    neutral = PQMapResult.neutral((4, 6))
    np.testing.assert_array_equal(neutral.map, np.ones((4, 6), np.float32))
    assert math.isnan(neutral.score)


def test_a_list_is_one_batched_forward(tiny_text_pq):
    images = [_random_image(40, 30, seed=i) for i in range(3)]
    calls = []
    handle = tiny_text_pq.surgery.visual.conv1.register_forward_hook(lambda *a: calls.append(a[1][0].shape[0]))
    try:
        batched = tiny_text_pq(images)
    finally:
        handle.remove()
    assert calls == [3]
    for image, result in zip(images, batched):
        single = tiny_text_pq(image)
        assert single.score == pytest.approx(result.score, rel=1e-4, abs=1e-6)
        np.testing.assert_allclose(single.map, result.map, atol=1e-4)


def test_native_input_size_uses_the_image_grid(tiny_text_pq):
    model = tiny_text_pq.surgery.model
    pq = PQMap(model, embeddings=tiny_text_pq.prompts, num_blocks=2, input_size="native")
    result = pq(_random_image(70, 45))
    assert result.grid.shape == (6, 9)  # round(45/8), round(70/8)
    assert result.map.shape == (45, 70)


def _save(tmp_path, name, image):
    path = tmp_path / name
    image.save(path)
    return path


def test_odd_image_files_work(tiny_text_pq, tmp_path):
    rgb = _random_image(40, 30)
    gray16 = Image.fromarray((np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50))
    paths = [
        _save(tmp_path, "gray.png", rgb.convert("L")),
        _save(tmp_path, "rgba.png", rgb.convert("RGBA")),
        _save(tmp_path, "palette.png", rgb.convert("P")),
        _save(tmp_path, "gray16.png", gray16),
    ]
    results = tiny_text_pq(paths)
    assert [r.map.shape for r in results] == [(30, 40)] * 4


def test_unreadable_file_is_named(tiny_text_pq, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageLoadError, match="broken.png"):
        tiny_text_pq(bad)
