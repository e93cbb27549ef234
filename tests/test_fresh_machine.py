"""A fresh machine, as the README's main command meets it: empty caches, and every weight fetched
through the real loading code (hub ids, variants, subfolders, open_clip's and timm's hub files,
pyiqa's release URLs, PQ-Map's official embeddings from GitHub) from a stand-in hub on 127.0.0.1
(:mod:`tests.hub_standin`) that serves tiny random models in the real repositories' layouts,
under their real ids and file names. Only ``HF_ENDPOINT`` and ``GREFINE_PQ_EMBEDDINGS_URL``
point at it; the run's caches (``HOME``, ``HF_HOME``, ``TORCH_HOME``, ``XDG_CACHE_HOME``) are
empty folders of the test.

The runs use ``configs/default.yaml`` with only sizes and precision changed (a config file the
test writes: bf16, which reads the fp16 variant files of SDXL inpainting like a GPU run; 64-px
diffusion stages; 128-px metrics), and its default metrics (TOPIQ, MUSIQ: their weights are
served too; PIQE, PSNR, SSIM need none).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.hub_standin import StandInHub

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
COMMIT = "32b1bd2099802602bf6f8d7c6d0ba9b73c58a6a7"
RAW = f"/Q-Future/Q-Refine/raw/{COMMIT}/embeding"
SDXL = "diffusers/stable-diffusion-xl-1.0-inpainting-0.1"
SDXL_UNET_FP16 = f"/{SDXL}/resolve/{{commit}}/unet/diffusion_pytorch_model.fp16.safetensors"
DEMO_IMAGES = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.png")
TEST_CONFIG = f"""base: {REPO / 'configs' / 'default.yaml'}
dtype: bf16
total_steps: 4
stage1: {{resolution: 64}}
stage2: {{max_resolution: 64}}
metric_resolution: 128
"""


# ------------------------------------------------------------------- the served repositories


def _real_tokenizer(folder: Path) -> None:
    """Replace what ``save_pretrained`` wrote with the four files SD repositories ship."""
    from grefine.tiny import write_tiny_clip_tokenizer

    shutil.rmtree(folder)
    write_tiny_clip_tokenizer(folder)


def _sdxl_inpainting(root: Path) -> None:
    """The SDXL-inpainting pipeline with fp32 and fp16 variant files side by side, as on the hub."""
    import torch

    from grefine.tiny import build_tiny_sdxl_inpaint_pipeline

    pipe = build_tiny_sdxl_inpaint_pipeline(seed=0)
    pipe.save_pretrained(root)
    pipe.to(torch.float16).save_pretrained(root, variant="fp16")
    for name in ("tokenizer", "tokenizer_2"):
        _real_tokenizer(root / name)
    (root / "README.md").write_text("tiny stand-in of the SDXL inpainting 0.1 repository\n")


def _stable_diffusion_15(root: Path) -> None:
    """SD1.5's layout: component folders with fp32 and fp16 files, the PNDM scheduler config, and
    a checkpoint at the top that no loader reads."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from grefine.tiny import build_tiny_clip_tokenizer, write_tiny_clip_tokenizer

    torch.manual_seed(1)
    tokenizer = build_tiny_clip_tokenizer()
    text = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_attention_heads=2, num_hidden_layers=1,
        max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    models = {
        "vae": AutoencoderKL(
            block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4, norm_num_groups=4, layers_per_block=1, sample_size=64,
        ),  # fmt: skip
        "text_encoder": CLIPTextModel(text),
        "unet": UNet2DConditionModel(
            sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, cross_attention_dim=32,
            attention_head_dim=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        ),  # fmt: skip
    }
    for name, model in models.items():
        model.save_pretrained(root / name)
        model.to(torch.float16).save_pretrained(root / name, variant="fp16")
    write_tiny_clip_tokenizer(root / "tokenizer")
    PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False
    ).save_pretrained(root / "scheduler")
    index = {"_class_name": "StableDiffusionPipeline", "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}  # fmt: skip
    (root / "model_index.json").write_text(json.dumps(index))
    (root / "v1-5-pruned-emaonly.safetensors").write_bytes(bytes(4096))


def _pasd(root: Path) -> None:
    """The PASD authors' repository: ``pasd/checkpoint-100000/{unet,controlnet}/``."""
    from grefine.tiny import build_tiny_pasd_models

    unet, controlnet = build_tiny_pasd_models(seed=0)
    unet.save_pretrained(root / "pasd" / "checkpoint-100000" / "unet")
    controlnet.save_pretrained(root / "pasd" / "checkpoint-100000" / "controlnet")
    (root / "README.md").write_text("tiny stand-in of the PASD release\n")


def _open_clip_vit_b16(root: Path) -> None:
    """open_clip's ViT-B/16 ``openai`` file: full size (the architecture is fixed), random, fp16."""
    import open_clip
    import safetensors.torch

    model = open_clip.create_model("ViT-B-16", pretrained=None)
    root.mkdir(parents=True)
    safetensors.torch.save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, root / "open_clip_model.safetensors")
    (root / "open_clip_config.json").write_text(json.dumps({"model_cfg": open_clip.get_model_config("ViT-B-16")}))


def _metric_weights(timm_root: Path, pyiqa_root: Path) -> None:
    """The default metrics' files, full size and random: timm's ResNet-50, pyiqa's TOPIQ and MUSIQ."""
    import safetensors.torch
    import timm
    import torch
    from pyiqa.archs.musiq_arch import MUSIQ
    from pyiqa.archs.topiq_arch import CFANet

    timm_root.mkdir(parents=True)
    backbone = timm.create_model("resnet50", pretrained=False)
    safetensors.torch.save_file({k: v.half().contiguous() for k, v in backbone.state_dict().items()}, timm_root / "model.safetensors")
    (timm_root / "config.json").write_text(json.dumps({"architecture": "resnet50"}))
    pyiqa_root.mkdir(parents=True)
    topiq = CFANet(semantic_model_name="resnet50", model_name="cfanet_nr_koniq_res50", use_ref=False, pretrained=False, backbone_pretrain=False)
    torch.save({"params": {k: v.half() for k, v in topiq.state_dict().items()}}, pyiqa_root / "cfanet_nr_koniq_res50-9a73138b.pth")
    torch.save({k: v.half() for k, v in MUSIQ(pretrained=False).state_dict().items()}, pyiqa_root / "musiq_koniq_ckpt-e95806b9.pth")


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict[str, Path]:
    """Every repository the default config and its metrics read, by its real id."""
    root = tmp_path_factory.mktemp("served")
    repos = {
        SDXL: root / SDXL,
        "stable-diffusion-v1-5/stable-diffusion-v1-5": root / "sd15",
        "yangtao9009/PASD": root / "pasd",
        "timm/vit_base_patch16_clip_224.openai": root / "clip",
        "timm/resnet50.a1_in1k": root / "resnet50",
        "chaofengc/IQA-PyTorch-Weights": root / "pyiqa",
    }
    _sdxl_inpainting(repos[SDXL])
    _stable_diffusion_15(repos["stable-diffusion-v1-5/stable-diffusion-v1-5"])
    _pasd(repos["yangtao9009/PASD"])
    _open_clip_vit_b16(repos["timm/vit_base_patch16_clip_224.openai"])
    _metric_weights(repos["timm/resnet50.a1_in1k"], repos["chaofengc/IQA-PyTorch-Weights"])
    return repos


def _standin(served: dict[str, Path]) -> StandInHub:
    """A started stand-in hub serving ``served`` and the four official embeddings (from ../shared)."""
    standin = StandInHub()
    for repo_id, folder in served.items():
        standin.add_repo(repo_id, folder)
    for path in sorted((SHARED / "pq_embeddings").glob("PQ-*.pth")):
        standin.raw[f"{RAW}/{path.name}"] = path
    return standin.start()


@pytest.fixture
def hub(served):
    standin = _standin(served)
    yield standin
    standin.stop()


def _env(tmp: Path, hub: StandInHub, **extra: str) -> dict[str, str]:
    """A fresh machine's environment: empty caches under ``tmp``; the hub and the embeddings' base
    URL at the stand-in; NLTK's data from ../shared (not a weight)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    env.update(
        HOME=str(tmp / "home"),
        XDG_CACHE_HOME=str(tmp / "home" / ".cache"),
        HF_HOME=str(tmp / "home" / ".cache" / "huggingface"),
        TORCH_HOME=str(tmp / "home" / ".cache" / "torch"),
        HF_ENDPOINT=hub.url,
        GREFINE_PQ_EMBEDDINGS_URL=hub.url + RAW,
        NLTK_DATA=str(SHARED / "nltk_data"),
        PYTHONPATH=str(REPO),
        OMP_NUM_THREADS="1",
        OMP_WAIT_POLICY="PASSIVE",
        HF_HUB_DISABLE_TELEMETRY="1",
        **extra,
    )
    return env


def _run(script: str, *args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def _one_image(folder: Path) -> Path:
    """A folder with one small image and its prompt (runs after the first need not refine four)."""
    from PIL import Image

    folder.mkdir(parents=True)
    Image.new("RGB", (96, 64), (200, 120, 40)).save(folder / "box.png")
    (folder / "box.txt").write_text("an orange box on a table\n")
    return folder


def _rows(results: Path) -> list[dict[str, str]]:
    with open(results, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _scored(rows: list[dict[str, str]]) -> None:
    """Every row refined, every default metric scored before and after (weights served too)."""
    for row in rows:
        assert row["error"] == "" and row["metric_errors"] == "", row
        for metric in ("topiq_nr", "musiq", "piqe", "psnr", "ssim"):
            float(row[f"{metric}_after"])
        for metric in ("topiq_nr", "musiq", "piqe"):
            float(row[f"{metric}_before"])


# ------------------------------------------------------------------------------------ tests


@dataclass
class Scenario:
    """What one chain of commands did: each run, the files the hub sent during it, and facts
    about the caches taken between runs."""

    hub: StandInHub
    tmp: Path
    runs: dict[str, subprocess.CompletedProcess] = field(default_factory=dict)
    sent: dict[str, list[str]] = field(default_factory=dict)
    facts: dict[str, object] = field(default_factory=dict)

    def run(self, name: str, script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
        self.hub.reset()
        self.runs[name] = _run(script, "--config", str(self.config), *args, env=_env(self.tmp, self.hub, **env), cwd=self.tmp / "work")
        self.sent[name] = self.hub.downloads()
        return self.runs[name]

    @property
    def config(self) -> Path:
        return self.tmp / "fresh.yaml"

    @property
    def hub_cache(self) -> Path:
        return self.tmp / "home" / ".cache" / "huggingface" / "hub"


def _main_command(hub: StandInHub, tmp: Path) -> Scenario:
    """The README's main command on empty caches, then again on another folder."""
    scenario = Scenario(hub, tmp)
    scenario.config.write_text(TEST_CONFIG)
    scenario.run("first", "refine.py")
    scenario.run("second", "refine.py", "--input", str(_one_image(tmp / "one")))
    return scenario


def _download_weights_then_offline(hub: StandInHub, tmp: Path) -> Scenario:
    """download_weights.py cut in the middle of a file, run again, then the main command offline
    with the stand-in stopped."""
    scenario = Scenario(hub, tmp)
    scenario.config.write_text(TEST_CONFIG)
    unet = hub.repos[SDXL].files["unet/diffusion_pytorch_model.fp16.safetensors"]
    hub.cut(SDXL_UNET_FP16.format(commit=hub.repos[SDXL].commit))
    scenario.run("cut", "download_weights.py")
    repo = scenario.hub_cache / f"models--{SDXL.replace('/', '--')}"
    scenario.facts.update(
        blob_after_cut=(repo / "blobs" / unet.sha256).exists(),
        partial_after_cut=[str(path) for path in repo.rglob("*") if path.name.endswith((".incomplete", ".part", ".tmp"))],
        pointer_after_cut=list(repo.glob("snapshots/*/unet/diffusion_pytorch_model.fp16.safetensors")),
    )
    hub.heal()
    scenario.run("again", "download_weights.py")
    blob = repo / "blobs" / unet.sha256
    scenario.facts["blob_sha256"] = hashlib.sha256(blob.read_bytes()).hexdigest() if blob.is_file() else None
    hub.stop()
    scenario.run("offline", "refine.py", "--input", str(_one_image(tmp / "one")), HF_HUB_OFFLINE="1")
    return scenario


@pytest.fixture(scope="module")
def scenarios(served, tmp_path_factory) -> dict[str, Scenario]:
    """Both chains at once, each with its own stand-in hub and caches: every run is a fresh
    process that mostly imports and loads on one core, so two cores run them side by side."""
    hubs = [_standin(served), _standin(served)]
    try:
        with ThreadPoolExecutor(2) as pool:
            main = pool.submit(_main_command, hubs[0], tmp_path_factory.mktemp("main"))
            offline = pool.submit(_download_weights_then_offline, hubs[1], tmp_path_factory.mktemp("offline"))
            return {"main": main.result(), "offline": offline.result()}
    finally:
        for standin in hubs:
            standin.stop()


def test_main_command_on_a_fresh_machine_fetches_every_weight_once_and_runs_to_the_end(scenarios, served):
    scenario = scenarios["main"]
    first = scenario.runs["first"]
    assert first.returncode == 0, first.stderr[-3000:]
    assert "4 refined, 0 already done, 0 failed" in first.stdout
    output = scenario.tmp / "work" / "grefine-demo" / "output"
    rows = _rows(output / "results.csv")
    assert sorted(row["name"] for row in rows) == sorted(DEMO_IMAGES)
    _scored(rows)
    assert all((output / name).is_file() for name in DEMO_IMAGES)

    # The plan came first: every source, its origin and size, each cache and its free space.
    err = first.stderr
    plan = err[err.index("grefine: downloading the weights this run needs first"):err.index("grefine: fetching")]
    pyiqa = f"{scenario.hub.url}/chaofengc/IQA-PyTorch-Weights/resolve/main/"  # pyiqa's URLs follow HF_ENDPOINT
    for origin in [f"hub {repo}" for repo in served if not repo.startswith("chaofengc")] + [scenario.hub.url + RAW, pyiqa]:
        assert origin in plan, origin
    assert f"into {scenario.hub_cache}:" in plan and "free there" in plan and " MB from hub yangtao9009/PASD" in plan
    assert "QuickGELU mismatch" not in err  # OpenAI's CLIP runs with the activation it was trained with

    # Each file the loaders read came once; the files no loader reads never came.
    sent = scenario.sent["first"]
    assert len(sent) == len(set(sent)), sorted(sent)
    fetched = {path.split("/resolve/")[-1].split("/", 1)[-1] if "/resolve/" in path else path for path in sent}
    assert {"unet/diffusion_pytorch_model.fp16.safetensors", "text_encoder_2/model.fp16.safetensors"} <= fetched  # bf16 reads the fp16 files
    assert "unet/diffusion_pytorch_model.safetensors" not in fetched and "v1-5-pruned-emaonly.safetensors" not in fetched
    assert {"pasd/checkpoint-100000/unet/diffusion_pytorch_model.safetensors", "open_clip_model.safetensors", "model.safetensors"} <= fetched
    assert {f"{RAW}/PQ-{f}.pth" for f in ("overall", "technical", "rational", "natural")} <= fetched
    assert {"cfanet_nr_koniq_res50-9a73138b.pth", "musiq_koniq_ckpt-e95806b9.pth"} <= fetched
    assert not [path for path in sent if "/stable-diffusion-v1-5/" in path and "/unet/" in path]


def test_a_second_run_downloads_nothing(scenarios):
    scenario = scenarios["main"]
    second = scenario.runs["second"]
    assert second.returncode == 0, second.stderr[-3000:]
    assert scenario.sent["second"] == []
    assert "nothing to download" in second.stderr
    _scored(_rows(scenario.tmp / "one-refined" / "results.csv"))


def test_official_embeddings_are_checked_and_a_bad_or_cut_download_leaves_nothing(hub, tmp_path, monkeypatch):
    from grefine.maps import pq_embeddings
    from grefine.maps.pq_embeddings import EmbeddingHashError, EmbeddingsUnavailableError, official_folder

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("GREFINE_PQ_EMBEDDINGS_URL", hub.url + RAW)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = pq_embeddings.cache_folder()
    assert folder == tmp_path / "cache" / "grefine" / "pq_embeddings" / COMMIT

    wrong = b"not the released file"
    hub.corrupt(f"{RAW}/PQ-natural.pth", wrong)
    with pytest.raises(EmbeddingHashError) as refused:
        official_folder(progress=False)
    message = str(refused.value)
    assert "\n" not in message and "PQ-natural.pth" in message
    assert hashlib.sha256(wrong).hexdigest() in message and pq_embeddings.OFFICIAL_FILES[3].sha256 in message
    assert sorted(p.name for p in folder.iterdir()) == ["PQ-overall.pth", "PQ-rational.pth", "PQ-technical.pth"]  # nothing of the bad one

    hub.heal()
    hub.cut(f"{RAW}/PQ-natural.pth")
    with pytest.raises(EmbeddingsUnavailableError, match=r"cannot download PQ-natural\.pth from .*nothing was kept") as cut:
        official_folder(progress=False)
    assert "\n" not in str(cut.value)
    assert "PQ-natural.pth" not in [p.name for p in folder.iterdir()] and not list(folder.glob("*part*"))

    hub.heal()
    assert official_folder(progress=False) == folder  # the rerun completes
    for item in pq_embeddings.OFFICIAL_FILES:
        assert pq_embeddings.sha256_of(folder / item.name) == item.sha256
    (folder / "PQ-overall.pth").write_bytes(b"tampered")  # a cached file is checked on every use
    assert pq_embeddings.missing_files() == [pq_embeddings.OFFICIAL_FILES[0]] and not (folder / "PQ-overall.pth").exists()

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EmbeddingsUnavailableError, match="download_weights.py") as offline:
        official_folder(progress=False)
    assert hub.url + RAW in str(offline.value)


def test_a_download_cut_in_the_middle_leaves_nothing_trusted_and_the_rerun_completes(scenarios):
    scenario = scenarios["offline"]
    cut = scenario.runs["cut"]
    assert cut.returncode == 2
    refusal = [line for line in cut.stderr.splitlines() if line.startswith("grefine:") and "failed" in line]
    assert len(refusal) == 1 and f"from hub {SDXL} failed" in refusal[0] and "run the same command again" in refusal[0]
    # Nothing partial where huggingface_hub (or diffusers) would take it for the file.
    assert scenario.facts["blob_after_cut"] is False
    assert scenario.facts["partial_after_cut"] == [] and scenario.facts["pointer_after_cut"] == []

    again = scenario.runs["again"]
    assert again.returncode == 0, again.stderr[-3000:]
    assert "runs without network" in again.stdout
    unet = scenario.hub.repos[SDXL].files["unet/diffusion_pytorch_model.fp16.safetensors"]
    assert scenario.facts["blob_sha256"] == unet.sha256
    # The files complete before the cut are not fetched again (the CLIP came before the cut).
    clip = f"/timm/vit_base_patch16_clip_224.openai/resolve/{scenario.hub.repos['timm/vit_base_patch16_clip_224.openai'].commit}/open_clip_model.safetensors"
    assert clip in scenario.sent["cut"] and clip not in scenario.sent["again"]
    assert not set(scenario.sent["cut"]) & set(scenario.sent["again"]) - {SDXL_UNET_FP16.format(commit=scenario.hub.repos[SDXL].commit)}


def test_after_download_weights_the_main_command_runs_offline_without_the_server(scenarios):
    scenario = scenarios["offline"]
    offline = scenario.runs["offline"]
    assert offline.returncode == 0, offline.stderr[-3000:]
    assert scenario.sent["offline"] == [] and not scenario.hub.running
    _scored(_rows(scenario.tmp / "one-refined" / "results.csv"))

