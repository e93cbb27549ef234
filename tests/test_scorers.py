"""The scorer registry: names and kinds, the map scorers on tiny models, HPS v1 on a tiny
OpenAI-layout CLIP."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from grefine.config import GRefineConfig
from grefine.eval.metrics import create_metric
from grefine.eval.scorers import (
    MAP_SCORERS,
    TABLE6_SCORERS,
    TABLE7_SCORERS,
    MapScorer,
    create_scorers,
    list_scorers,
    scorer_spec,
)
from tests.conftest import REPO

PROMPT = "a red cat sitting on a wooden table"


@pytest.fixture(scope="module")
def tiny_config() -> GRefineConfig:
    return GRefineConfig.from_yaml(REPO / "configs" / "tiny-random.yaml")


@pytest.fixture(scope="module")
def tiny_maps(tiny_config) -> MapScorer:
    """A MapScorer on the tiny PQ-Map / AQ-Map pair of configs/tiny-random.yaml."""
    (scorer,), _ = create_scorers(["pq", "aq"], config=tiny_config)
    return scorer


@pytest.fixture
def image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))


def test_registry_holds_the_papers_indicators_and_only_no_reference_metrics():
    names = set(list_scorers())
    assert set(TABLE6_SCORERS) | set(TABLE7_SCORERS) | set(MAP_SCORERS) <= names
    assert {"piqe", "brisque", "musiq"} <= names
    assert not {"psnr", "ssim", "lpips", "fid"} & names


def test_each_scorer_is_compared_with_the_right_mos():
    assert [scorer_spec(n).kind for n in TABLE6_SCORERS] == ["perceptual"] * len(TABLE6_SCORERS)
    assert [scorer_spec(n).kind for n in TABLE7_SCORERS] == ["alignment"] * len(TABLE7_SCORERS)
    assert scorer_spec("pq_aq").kind == "combined" and scorer_spec("pq_aq").needs_prompt
    assert scorer_spec("PIQE").lower_better and scorer_spec("piqe").name == "piqe"
    assert scorer_spec("CLIPIQA+_vitl14_512").name == "clipiqa+_vitL14_512"  # the registry's spelling
    assert not scorer_spec("nima").lower_better and not scorer_spec("nima").needs_prompt
    with pytest.raises(KeyError, match="full-reference"):
        scorer_spec("psnr")
    with pytest.raises(KeyError, match="known scorers: .*pq_aq"):
        scorer_spec("no-such-scorer")


def test_names_are_checked_before_any_model_loads():
    # The default config needs real CLIP weights: a KeyError (not a weights error) proves
    # that nothing was built before the bad name was found.
    with pytest.raises(KeyError, match="unknown scorer 'nope'"):
        create_scorers(["pq", "aq", "nope"])


def test_map_scorers_share_one_clip_and_give_the_maps_scores(tiny_config, image):
    scorers, failures = create_scorers(["pq", "aq", "pq_aq", "clip_surgery", "pq"], config=tiny_config)
    assert failures == {} and len(scorers) == 1
    scorer = scorers[0]
    assert [s.name for s in scorer.specs] == ["pq", "aq", "pq_aq", "clip_surgery"]
    assert scorer.pq_map.surgery.model is scorer.aq_map.surgery.model  # build_maps shares the CLIP
    passes = []
    hook = scorer.pq_map.surgery.visual.conv1.register_forward_hook(lambda *args: passes.append(1))
    try:
        values = scorer(image, PROMPT)
    finally:
        hook.remove()
    assert passes == [1]  # PQ-Map and AQ-Map read one image-tower pass
    p, aq = scorer.pq_map(image).score, scorer.aq_map(image, PROMPT)
    assert values == pytest.approx({"pq": p, "aq": aq.score, "pq_aq": p * aq.score, "clip_surgery": aq.prompt_score})
    assert 0 < values["pq"] < 1 and 0 < values["clip_surgery"] < 1


class _Refuses:
    """A map that must not run."""

    def read(self, *args, **kwargs):
        raise AssertionError("this map was not needed")


def test_map_scorer_runs_only_the_maps_it_needs(tiny_maps, image):
    full = tiny_maps
    only_pq = MapScorer(full.pq_map, _Refuses(), ["pq"])
    assert only_pq(image, PROMPT) == {"pq": pytest.approx(full.pq_map(image).score)}
    only_aq = MapScorer(_Refuses(), full.aq_map, ["aq", "clip_surgery"])
    assert set(only_aq(image, PROMPT)) == {"aq", "clip_surgery"}


def test_given_maps_and_weight_free_metrics_are_used_and_missing_ones_reported(tiny_maps, image, tmp_path):
    maps = (tiny_maps.pq_map, tiny_maps.aq_map)
    scorers, failures = create_scorers(
        ["pq", "piqe", "hps"], maps=maps, device="cpu", metric_options={"hps": {"checkpoint": str(tmp_path / "hpc.pt")}}
    )
    assert scorers[0].pq_map is maps[0]
    assert set(failures) == {"hps"} and "hpc.pt" in failures["hps"]
    piqe = scorers[1]
    assert piqe.specs[0].name == "piqe"
    assert piqe(image, PROMPT)["piqe"] == pytest.approx(create_metric("piqe", device="cpu")(image))


def _tiny_openai_layout_clip() -> torch.nn.Module:
    """A tiny CLIP in OpenAI's layout (QuickGELU, 64-wide heads), like HPS v1's ViT-L/14."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    vision = CLIPVisionCfg(layers=2, width=64, head_width=64, image_size=32, patch_size=8)
    text = CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=2)
    model = CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text, quick_gelu=True).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    return model


def test_hps_v1_loads_an_openai_layout_checkpoint_and_scores_100_cos(tmp_path, image):
    import open_clip

    clip = _tiny_openai_layout_clip()
    torch.save({"state_dict": clip.state_dict()}, tmp_path / "hpc.pt")
    hps = create_metric("hps", device="cpu", checkpoint=str(tmp_path / "hpc.pt"))
    assert hps.needs_prompt and not hps.lower_better

    pixels = open_clip.image_transform(32, is_train=False)(image)[None]
    tokens = open_clip.get_tokenizer("ViT-L-14")([PROMPT])
    with torch.no_grad():
        cosine = torch.nn.functional.cosine_similarity(clip.encode_image(pixels), clip.encode_text(tokens)).item()
    assert hps(image, prompt=PROMPT) == pytest.approx(100.0 * cosine, abs=1e-4)
    assert hps(image, prompt="a blue dog") != hps(image, prompt=PROMPT)
