"""``configs/authors-notebook.yaml`` runs refine.ipynb: the alignment region alone as the mask,
SDXL called as the notebook calls it, a JPEG between the stages and PASD with test_pasd.py's
prompt (the CoCa caption, the prompt, "clean, high-resolution, 8k"); tiny random models."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from grefine import GRefinePipeline
from grefine.config import ConfigError, GRefineConfig
from grefine.maps.syntax_tree import add_nltk_data_dir
from grefine.refine.mask import binarize
from grefine.refine.pasd import PASD_ADDED_PROMPT, PASDStage2
from grefine.refine.pasd.caption import EOT_TOKEN, SOT_TOKEN, caption_image, caption_tokens, decode_caption, pasd_prompt
from grefine.refine.pasd.stage2 import jpeg_round_trip
from grefine.tiny import build_tiny_coca, build_tiny_pasd_stage2
from grefine.weights import WeightsUnavailableError, check_weights, required_weights
from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")
NOTEBOOK = REPO / "configs" / "authors-notebook.yaml"
COCA_REPO = "laion/mscoco_finetuned_CoCa-ViT-L-14-laion2B-s13B-b90k"


@pytest.fixture(scope="module", autouse=True)
def nltk_data(shared_dir: Path) -> None:
    add_nltk_data_dir(shared_dir / "nltk_data")


@pytest.fixture(scope="module")
def coca():
    return build_tiny_coca()


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_the_notebook_mask_is_the_alignment_region_alone():
    mask = GRefineConfig.from_yaml(NOTEBOOK).mask
    P = np.zeros((20, 30), np.float32)  # the worst perceptual quality everywhere
    D = np.zeros((20, 30), np.float32)
    D[5:9, 10:20] = 171 / 255  # 255·D > 170
    D[12:14, 3:6] = 170 / 255
    result = binarize(P, D, **dataclasses.asdict(mask))
    np.testing.assert_array_equal(result.binary, D >= 171 / 255)  # P plays no part
    np.testing.assert_array_equal(result.soft, result.binary.astype(np.float32))
    paper = GRefineConfig.from_yaml(REPO / "configs" / "default.yaml").mask
    assert binarize(P, D, **dataclasses.asdict(paper)).binary.all()  # the union: P counts


def test_the_jpeg_between_the_stages_is_pils_default_quality(tmp_path):
    image = _image(40, 30)
    image.save(tmp_path / "step-1.jpg")  # what the notebook writes and PASD reads
    with Image.open(tmp_path / "step-1.jpg") as saved:
        np.testing.assert_array_equal(np.asarray(jpeg_round_trip(image, 75)), np.asarray(saved.convert("RGB")))
    stage = build_tiny_pasd_stage2(input_jpeg_quality=75)
    plain = build_tiny_pasd_stage2()
    run = lambda stage2, picture: np.asarray(  # noqa: E731
        stage2(picture, "a cat", strength=0.5, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    )
    np.testing.assert_array_equal(run(stage, image), run(plain, jpeg_round_trip(image, 75)))
    assert not np.array_equal(run(stage, image), run(plain, image))
    with pytest.raises(ValueError, match="input_jpeg_quality"):
        build_tiny_pasd_stage2(input_jpeg_quality=100)


def test_test_pasd_prompts():
    caption = "a dog sitting on a couch "  # open_clip's decoding ends with a space
    assert pasd_prompt("a cat", PASD_ADDED_PROMPT, caption) == "a dog sitting on a couch  a catclean, high-resolution, 8k"
    assert pasd_prompt("", PASD_ADDED_PROMPT, caption) == "a dog sitting on a couch clean, high-resolution, 8k"
    assert pasd_prompt("a cat", PASD_ADDED_PROMPT) == "a cat, clean, high-resolution, 8k"  # no caption: the paper preset
    assert pasd_prompt("  ", PASD_ADDED_PROMPT) == PASD_ADDED_PROMPT
    tokens = open_clip.tokenize(["a blurry noisy dog"])[0]
    tokens = [t for t in tokens.tolist() if t] + [EOT_TOKEN, 320]  # anything after the end is dropped
    assert decode_caption(tokens) == "a clear clean dog "


def _greedy(model, pixels: torch.Tensor, seq_len: int, min_seq_len: int) -> list[int]:
    """Greedy decoding, written out: the search with one beam in one group must equal it."""
    ids = [SOT_TOKEN]
    with torch.no_grad():
        while len(ids) < seq_len:
            logits = model(pixels, torch.tensor([ids]), output_labels=False)["logits"][0, -1].float()
            if len(ids) < min_seq_len:
                logits[EOT_TOKEN] = -float("inf")
            token = int(logits.argmax())
            if token == EOT_TOKEN:
                break
            ids.append(token)
    return ids


def test_the_caption_search(coca):
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for seed in range(3):  # an end-of-text made likely, so that some captions end before the limit
        model = build_tiny_coca(seed=seed)
        with torch.no_grad():
            column = model.text_decoder.text_projection
            column[:, EOT_TOKEN] = column[:, 4] * (1 + seed)
        one_beam = caption_tokens(model, pixels, seq_len=12, num_beams=1, num_beam_groups=1, min_seq_len=3)
        assert one_beam == _greedy(model, pixels, seq_len=12, min_seq_len=3)
    tokens = caption_tokens(coca, pixels)  # CoCa.generate's defaults: 6 beams in 3 groups
    assert tokens[0] == SOT_TOKEN and 5 <= len(tokens) <= 30 and EOT_TOKEN not in tokens
    assert caption_tokens(coca, pixels) == tokens


def test_stage2_starts_its_prompt_with_the_caption(coca, monkeypatch):
    stage2 = build_tiny_pasd_stage2(caption_model=coca, input_jpeg_quality=75)
    prompts = []
    encode = stage2._encode_prompt
    monkeypatch.setattr(stage2, "_encode_prompt", lambda prompt, guidance: prompts.append(prompt) or encode(prompt, guidance))
    image = _image(40, 32, seed=1)
    stage2(image, "a red car", strength=0.5, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    caption = caption_image(coca, jpeg_round_trip(image, 75), torch.device("cpu"))  # of what PASD reads
    assert prompts == [f"{caption} a red car{PASD_ADDED_PROMPT}"] and caption.strip()


def test_the_notebook_preset_runs_end_to_end_on_tiny_models(monkeypatch):
    data = GRefineConfig.from_yaml(NOTEBOOK)
    for section in (data.pq_map, data.aq_map, data.stage1, data.stage2):
        section.tiny_random = True
    data.pq_map.embeddings = None
    data.pq_map.num_blocks = data.aq_map.num_blocks = 2
    data.stage1.resolution, data.stage1.steps, data.stage2.steps = 64, 2, 2
    data.aq_map.a_bound = 1.0  # every noun missing: an alignment region
    data.device, data.dtype = "cpu", "fp32"
    prompts = []
    encode = PASDStage2._encode_prompt
    monkeypatch.setattr(PASDStage2, "_encode_prompt", lambda self, prompt, guidance: prompts.append(prompt) or encode(self, prompt, guidance))
    pipe = GRefinePipeline.from_pretrained(data)
    assert pipe.stage2.caption_model is not None and pipe.stage2.config.input_jpeg_quality == 75
    out = pipe(_image(48, 40, seed=2), "a red cube on a blue table", seed=0)
    np.testing.assert_array_equal(out.mask.binary, out.aq.defect_map > data.mask.alignment_bound)
    default_size = pipe.stage1.pipe.unet.config.sample_size * pipe.stage1.pipe.vae_scale_factor
    assert out.stage1.ran and out.stage1.image.size == (default_size, default_size) == out.image.size
    assert len(prompts) == 1 and prompts[0].endswith(f" a red cube on a blue table{PASD_ADDED_PROMPT}")
    assert str(out.aq.emphasized_prompt) == "a red cube on a blue table"  # emphasis 0


def test_the_caption_model_is_a_checked_weight(tmp_path):
    notebook = GRefineConfig.from_yaml(NOTEBOOK)
    listed = {w.source: w.config_key for w in required_weights(notebook)}
    assert listed[COCA_REPO] == "stage2.caption_pretrained"
    assert COCA_REPO not in {w.source for w in required_weights(GRefineConfig.from_yaml(REPO / "configs" / "default.yaml"))}
    with pytest.raises(WeightsUnavailableError, match=r"caption model coca_ViT-L-14.*stage2\.caption_pretrained"):
        check_weights(notebook, online=False)


@pytest.mark.parametrize(
    "stage1, stage2, message",
    [
        ({"paste_back": True, "output_size": "working"}, {}, "paste_back needs stage1.output_size: input"),
        ({"working_size": "square"}, {}, "fit, pipeline"),
        ({}, {"caption_model": "coca_ViT-L-14", "caption_pretrained": None}, "caption_pretrained is null"),
        ({}, {"input_jpeg_quality": 100}, r"\[1, 95\]"),
    ],
)
def test_config_checks_the_notebook_keys(stage1, stage2, message):
    with pytest.raises(ConfigError, match=message):
        GRefineConfig.from_dict({"stage1": stage1, "stage2": stage2})
