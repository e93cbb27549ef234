"""The metric registry: names, weight-free pyiqa metrics, and unavailability without weights."""

import socket
import time

import numpy as np
import pytest
import torch
from PIL import Image

from grefine.eval.metrics import (
    CLIPSCORE_WEIGHT,
    PAPER_METRICS,
    MetricUnavailable,
    create_metric,
    describe_metric,
    list_metrics,
    to_tensor,
)

H, W = 48, 64


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    smooth = np.linspace(0, 255, W)[None, :, None] * np.ones((H, 1, 3))
    return Image.fromarray((smooth + rng.normal(0, 5, (H, W, 3))).clip(0, 255).astype(np.uint8))


def noisy(image, sigma, seed=1):
    array = np.asarray(image, dtype=np.float64)
    array = array + np.random.default_rng(seed).normal(0, sigma, array.shape)
    return Image.fromarray(array.clip(0, 255).astype(np.uint8))


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network at all (DNS fails), and empty weight caches."""
    from pyiqa.utils import download_util

    def no_dns(*args, **kwargs):
        raise socket.gaierror("network disabled by the test")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(download_util, "DEFAULT_CACHE_DIR", str(tmp_path / "pyiqa"))


def test_registry_lists_paper_metrics_and_weight_free_ones():
    names = list_metrics()
    assert set(PAPER_METRICS) <= set(names) and len(PAPER_METRICS) == 13
    assert {"psnr", "ssim", "piqe", "imagereward", "pickscore", "hpsv2"} <= set(names)
    assert "fid" not in names  # a data-set metric, not a per-image one


def test_unknown_metric_names_the_known_ones():
    with pytest.raises(KeyError, match="known metrics: .*psnr"):
        create_metric("no-such-metric", device="cpu")


def test_psnr_and_ssim_compare_refined_with_original(image):
    psnr = create_metric("PSNR", device="cpu")
    ssim = create_metric("ssim", device="cpu")
    assert psnr.full_reference and not psnr.lower_better and not psnr.needs_prompt
    slightly, strongly = noisy(image, 3), noisy(image, 30)
    assert (
        psnr(image, reference=image)
        > psnr(slightly, reference=image)
        > psnr(strongly, reference=image)
    )
    assert ssim(image, reference=image) == pytest.approx(1.0)
    assert 1.0 > ssim(slightly, reference=image) > ssim(strongly, reference=image)
    assert psnr(np.asarray(slightly), reference=np.asarray(image)) == psnr(
        slightly, reference=image
    )
    with pytest.raises(ValueError, match="full-reference"):
        psnr(image)
    with pytest.raises(ValueError, match="differ"):
        psnr(image, reference=image.resize((W, H + 1)))


def test_piqe_is_a_weight_free_no_reference_score(image, offline):
    piqe = create_metric("piqe", device="cpu")
    assert piqe.lower_better and not piqe.full_reference and not piqe.needs_prompt
    score = piqe(image)
    assert np.isfinite(score) and score == piqe(image)
    assert piqe(noisy(image, 40)) > score  # noise is worse quality


@pytest.mark.parametrize("name", ["cnniqa", "brisque", "musiq", "topiq_nr", "hpsv2", "imagereward"])
def test_missing_weights_raise_metric_unavailable_fast(name, offline):
    start = time.perf_counter()
    with pytest.raises(MetricUnavailable, match=name):
        create_metric(name, device="cpu")
    assert time.perf_counter() - start < 20


def test_prompt_metric_requires_a_prompt(tmp_path, image):
    pickscore = create_metric("pickscore", device="cpu", **_tiny_pickscore(tmp_path))
    assert pickscore.needs_prompt and not pickscore.lower_better
    with pytest.raises(ValueError, match="prompt"):
        pickscore(image)


def test_pickscore_loads_local_folders_and_scores(tmp_path, image):
    """The PickScore loader on a tiny random CLIP saved in transformers layout."""
    pickscore = create_metric("pickscore", device="cpu", form="logit", **_tiny_pickscore(tmp_path))
    red, blue = pickscore(image, prompt="a red cat"), pickscore(image, prompt="a blue dog")
    assert np.isfinite(red) and red != blue and red == pickscore(image, prompt="a red cat")


def test_pickscore_forms_are_clipscore_scaled_and_logit_scaled_cosines(tmp_path, image):
    """Default: CLIPScore's 2.5·max(cos, 0) on the PickScore CLIP (the tables' PicS scale);
    ``form="logit"``: PickScore's own logit_scale·cos. Checked against an independent cosine."""
    from transformers import CLIPModel, CLIPProcessor

    folders = _tiny_pickscore(tmp_path)
    paper = create_metric("pickscore", device="cpu", **folders)
    logit = create_metric("pickscore", device="cpu", form="logit", **folders)
    model, processor = CLIPModel.from_pretrained(tmp_path).eval(), CLIPProcessor.from_pretrained(tmp_path)
    cosines = {}
    for prompt in ("hello world", "a red cat"):  # with this random CLIP: cos > 0, cos < 0
        inputs = processor(text=[prompt], images=[image], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model(**inputs)
        cosine = cosines[prompt] = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds).item()
        assert paper(image, prompt=prompt) == pytest.approx(CLIPSCORE_WEIGHT * max(cosine, 0.0), abs=1e-5)
        assert logit(image, prompt=prompt) == pytest.approx(model.logit_scale.exp().item() * cosine, rel=1e-4)
    assert cosines["hello world"] > 0 > cosines["a red cat"]  # both branches of max(cos, 0) ran
    with pytest.raises(MetricUnavailable, match="form"):
        create_metric("pickscore", device="cpu", form="softmax", **folders)


def test_traits_are_known_without_creating_the_metric(offline):
    lower = describe_metric("brisque").lower_better and describe_metric("PIQE").lower_better
    assert lower and describe_metric("lpips").lower_better
    higher = [name for name in PAPER_METRICS if name != "brisque"] + ["psnr", "ssim"]
    assert not any(describe_metric(name).lower_better for name in higher)
    piqe = create_metric("piqe", device="cpu")
    assert describe_metric("piqe").lower_better == piqe.lower_better
    assert describe_metric("psnr").full_reference and not describe_metric("piqe").full_reference
    assert describe_metric("clipscore").needs_prompt and describe_metric("pickscore").needs_prompt
    assert not describe_metric("brisque").needs_prompt
    with pytest.raises(KeyError, match="known metrics"):
        describe_metric("no-such-metric")


def test_pickscore_missing_model_is_unavailable(tmp_path, offline):
    with pytest.raises(MetricUnavailable, match="pickscore"):
        create_metric("pickscore", device="cpu", model=str(tmp_path / "absent"))


def test_to_tensor_layout(image):
    tensor = to_tensor(image)
    assert tensor.shape == (1, 3, H, W) and tensor.dtype == torch.float32
    assert tensor.min() >= 0 and tensor.max() <= 1
    with pytest.raises(ValueError):
        to_tensor(np.zeros((H, W)))


def _tiny_pickscore(folder):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from grefine.tiny import build_tiny_clip_tokenizer

    tokenizer = build_tiny_clip_tokenizer()
    torch.manual_seed(0)
    common = {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 1,
    }
    text = {
        **common,
        "vocab_size": len(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {**common, "image_size": 32, "patch_size": 8}
    CLIPModel(
        CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    ).save_pretrained(folder)
    processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)
    return {"model": str(folder), "processor": str(folder)}
