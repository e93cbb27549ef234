"""Which files each weight source fetches (as the loaders pick them), the download plan and its
free-space refusal, and the sources of the default config and metrics. The downloads themselves,
against a stand-in hub, are in test_fresh_machine.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from grefine.config import GRefineConfig
from grefine.eval.metric_weights import ON_CREATION, metric_weights
from grefine.maps import pq_embeddings
from grefine.weights import (
    DownloadPlan,
    HubFiles,
    PlannedSource,
    WeightSource,
    WeightsUnavailableError,
    check_weights,
    format_size,
    open_clip_weights,
    required_weights,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "configs" / "default.yaml"

SDXL_INPAINTING = [  # diffusers/stable-diffusion-xl-1.0-inpainting-0.1 as the hub lists it
    ".gitattributes", "README.md", "inpaint-examples-min.png", "model_index.json", "scheduler/scheduler_config.json",
    *(f"{c}/{f}" for c in ("text_encoder", "text_encoder_2") for f in ("config.json", "model.fp16.safetensors", "model.safetensors")),
    *(f"{t}/{f}" for t in ("tokenizer", "tokenizer_2") for f in ("merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json")),
    *(f"{c}/{f}" for c in ("unet", "vae") for f in ("config.json", "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors")),
]  # fmt: skip
SDXL_COMPONENTS = ["scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "vae"]


def test_a_pipeline_reads_model_index_each_component_and_the_variant_files():
    fp16 = HubFiles("sdxl", "pipeline", variant="fp16").select(SDXL_INPAINTING, SDXL_COMPONENTS)
    weights = [name for name in fp16 if name.endswith(".safetensors")]
    assert sorted(weights) == sorted(
        f"{c}/{'model' if c.startswith('text') else 'diffusion_pytorch_model'}.fp16.safetensors"
        for c in ("text_encoder", "text_encoder_2", "unet", "vae")
    )
    assert {"model_index.json", "scheduler/scheduler_config.json", "unet/config.json", "tokenizer_2/vocab.json"} <= set(fp16)
    assert not {"README.md", "inpaint-examples-min.png", ".gitattributes"} & set(fp16)
    full = HubFiles("sdxl", "pipeline").select(SDXL_INPAINTING, SDXL_COMPONENTS)
    assert "unet/diffusion_pytorch_model.safetensors" in full and not [n for n in full if ".fp16." in n]
    assert len(full) == len(fp16) == 18  # model_index, the scheduler config, 8 tokenizer files, 4 configs, 4 weights


def test_weight_files_fall_back_like_the_loaders_and_keep_shards_with_their_index():
    listing = [
        "vae/config.json", "vae/diffusion_pytorch_model.bin",  # no fp16 file, no safetensors: the .bin
        "unet/config.json", "unet/diffusion_pytorch_model.non_ema.safetensors",  # another variant is never read
        "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors", "unet/diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
        "unet/diffusion_pytorch_model.safetensors.index.fp16.json", "unet/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json", "text_encoder/model.safetensors", "text_encoder/pytorch_model.bin", "text_encoder/flax_model.msgpack",
    ]  # fmt: skip
    chosen = HubFiles("x/y", folders=("vae", "unet", "text_encoder"), variant="fp16").select(listing)
    assert chosen == [
        "vae/config.json", "vae/diffusion_pytorch_model.bin",
        "unet/config.json", "unet/diffusion_pytorch_model.safetensors.index.fp16.json",
        "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors", "unet/diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
        "text_encoder/config.json", "text_encoder/model.safetensors",
    ]  # fmt: skip


def test_folders_files_and_what_a_repository_lacks():
    sd15 = ["model_index.json", "v1-5-pruned-emaonly.safetensors", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
            "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors",
            "tokenizer/vocab.json", "tokenizer/merges.txt", "scheduler/scheduler_config.json"]  # fmt: skip
    assert HubFiles("sd", folders=("vae", "tokenizer", "scheduler")).select(sd15) == [
        "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "tokenizer/merges.txt", "tokenizer/vocab.json", "scheduler/scheduler_config.json",
    ]  # fmt: skip
    pasd = ["README.md", *(f"pasd/checkpoint-100000/{c}/{f}" for c in ("unet", "controlnet") for f in ("config.json", "diffusion_pytorch_model.safetensors"))]
    nested = HubFiles("yangtao9009/PASD", folders=("pasd/checkpoint-100000/unet", "pasd/checkpoint-100000/controlnet")).select(pasd)
    assert nested == pasd[1:]
    with pytest.raises(LookupError, match="pasd_light/unet/"):
        HubFiles("yangtao9009/PASD", folders=("pasd_light/unet",)).select(pasd)
    clip = HubFiles("timm/x", "files", names=(("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),))
    assert clip.select(["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]) == ["open_clip_model.safetensors"]
    assert clip.select(["open_clip_pytorch_model.bin"]) == ["open_clip_pytorch_model.bin"]
    with pytest.raises(LookupError, match="none of open_clip_model.safetensors"):
        clip.select(["README.md"])


def test_open_clip_sources_name_the_hub_file_open_clip_reads():
    vit = open_clip_weights("CLIP", "ViT-B-16", "openai", "pq_map.pretrained")
    assert vit.hub == HubFiles("timm/vit_base_patch16_clip_224.openai", "files", names=(("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),))
    coca = open_clip_weights("caption", "coca_ViT-L-14", "mscoco_finetuned_laion2B-s13B-b90k", "k")
    assert coca.hub.repo_id == "laion/mscoco_finetuned_CoCa-ViT-L-14-laion2B-s13B-b90k"
    hub_model = open_clip_weights("x", "hf-hub:org/model", "whatever", "k")
    assert hub_model.hub.names == (("open_clip_config.json",), ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"))
    assert open_clip_weights("x", "ViT-B-16", None, "k") is None


def test_the_default_config_needs_the_authors_releases(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv(pq_embeddings.URL_ENV, "http://mirror.example/embeding/")
    config = GRefineConfig.from_yaml(DEFAULT)
    sources = {w.config_key: w for w in required_weights(config)}
    assert sources["stage2.pasd_model"].hub.folders == ("pasd/checkpoint-100000/unet", "pasd/checkpoint-100000/controlnet")
    embeddings = sources["pq_map.embeddings"]
    assert [u.url for u in embeddings.urls] == [f"http://mirror.example/embeding/PQ-{f}.pth" for f in ("overall", "technical", "rational", "natural")]
    assert [Path(u.target).parent for u in embeddings.urls] == [tmp_path / "grefine" / "pq_embeddings" / pq_embeddings.COMMIT] * 4
    for dtype, variant in (("fp16", "fp16"), ("bf16", "fp16"), ("fp32", None)):
        config.dtype = dtype
        assert {w.config_key: w for w in required_weights(config)}["stage1.model"].hub.variant == variant

    local = tmp_path / "pasd"
    (local / "nested" / "unet").mkdir(parents=True)
    config.stage2.pasd_model, config.stage2.pasd_subfolder = str(local), "nested"
    pasd = {w.config_key: w for w in required_weights(config)}["stage2.pasd_model"]
    assert pasd.hub is None and pasd.files == ("nested/unet", "nested/controlnet")
    with pytest.raises(WeightsUnavailableError, match="stage2.pasd_model"):  # controlnet/ is missing: refused at once
        check_weights(config, online=True)


def test_default_metrics_are_light_and_their_files_are_known(monkeypatch):
    config = GRefineConfig.from_yaml(DEFAULT)
    assert config.metrics == ["topiq_nr", "musiq", "piqe", "psnr", "ssim"] == GRefineConfig().metrics
    sources = metric_weights(config.metrics)
    assert [w.what for w in sources] == [
        "metric topiq_nr: resnet50 backbone (timm)", "metric topiq_nr: cfanet_nr_koniq_res50 weights (pyiqa)", "metric musiq: koniq10k weights (pyiqa)",
    ]  # fmt: skip
    assert sources[0].hub.repo_id == "timm/resnet50.a1_in1k"
    assert sources[1].urls[0].url.endswith("/chaofengc/IQA-PyTorch-Weights/resolve/main/cfanet_nr_koniq_res50-9a73138b.pth")
    assert Path(sources[2].urls[0].target).parent.name == "pyiqa"
    assert metric_weights(["QAlign"]) == [WeightSource("metric qalign", "qalign", "metrics", note=ON_CREATION)]


def test_the_plan_says_sizes_and_caches_and_refuses_what_cannot_fit(tmp_path):
    source = WeightSource("SDXL inpainting (stage 1)", "a/b", "stage1.model", hub=HubFiles("a/b"))
    fits = DownloadPlan([PlannedSource(source, [("unet/x.safetensors", 5_140_000_000), ("unet/config.json", 1930)], tmp_path / "hub")])
    lines = fits.lines()
    assert lines[1] == "  - SDXL inpainting (stage 1): 2 files, 5.1 GB from hub a/b"
    assert lines[2].startswith(f"  into {tmp_path / 'hub'}: 5.1 GB (") and lines[2].endswith("free there)")
    huge = DownloadPlan([PlannedSource(source, [("unet/x.safetensors", 10**18)], tmp_path / "not" / "yet")])
    with pytest.raises(WeightsUnavailableError) as refused:
        huge.check_space()
    message = str(refused.value)
    assert "\n" not in message and "1000000000.0 GB to download into" in message and str(tmp_path / "not" / "yet") in message
    assert "HF_HOME" in message
    fits.check_space()
    assert DownloadPlan().lines() == ["grefine: every weight is in its cache already; nothing to download."]
    assert [format_size(n) for n in (999, 1_300_000, 2_500_000_000)] == ["999 B", "1.3 MB", "2.5 GB"]
