"""A registry of image-quality metrics for G-Refine's evaluation (§4.2, Tables 2-5).

``create_metric(name)`` returns a :class:`Metric` scoring one image (optionally against a
prompt or a reference image) as a float. Names:

* every pyiqa metric (``pyiqa.list_models()``), created by ``pyiqa.create_metric``: the
  paper's perceptual indicators ``clipiqa, unique, liqe, dbcnn, topiq_nr, cnniqa, musiq,
  brisque, qalign`` and its ``clipscore``, plus weight-free ones such as ``piqe`` (no-reference)
  and ``psnr``/``ssim`` (full-reference: refined vs. original);
* the alignment scorers pyiqa lacks, through their own packages / weights: ``imagereward``
  (package ``image-reward``), ``pickscore`` (transformers, ``yuvalkirstain/PickScore_v1``),
  ``hpsv2`` (open_clip ViT-H-14 + the HPS v2 checkpoint) and ``hps`` (HPS v1: OpenAI CLIP
  ViT-L/14 + the ``hpc.pt`` checkpoint, in open_clip).

Scales, as the paper's Tables 2-5 report them (checked column by column against the tables):
pyiqa's own ranges for the nine perceptual indicators (CLIP-IQA, DBCNN, TOPIQ, CNNIQA in
[0, 1]; LIQE and Q-Align in [1, 5]; MUSIQ and BRISQUE in [0, 100]-ish; UNIQUE unbounded, ≈ 0-2);
``clipscore`` is pyiqa's ``2.5 · max(cos, 0)`` (ViT-B/32, "A photo depicts" prefix: the tables'
0.66-0.99); ImageReward is the raw reward (≈ −1.5-0.3); HPS v2 the raw cosine (≈ 0.25). The
paper does not say how its PickScore column (0.41-0.79) was computed, and the authors released no
evaluation code; ``pickscore`` applies CLIPScore's formula ``2.5 · max(cos, 0)`` to the
PickScore model (see :func:`_pickscore`), which lands on the tables' scale, while PickScore's own
``logit_scale · cos`` (≈ 20) stays available as ``form="logit"``. Means, improvements and the
negative-optimisation marks do not depend on this choice (it is increasing in the cosine).

A metric that cannot be created (weights neither cached nor downloadable, package missing)
raises :class:`MetricUnavailable`, and only that, so a runner can record it per metric.
Creation never waits long on the network: socket operations time out after
``NETWORK_TIMEOUT_S`` and ``HF_HUB_OFFLINE=1`` is honoured by the hub-based loaders.
"""

from __future__ import annotations

import contextlib
import difflib
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from grefine.errors import MissingWeightsError, RunInputError

#: The 13 indicators of the paper's tables, in column order.
PAPER_METRICS = (
    "clipiqa", "unique", "liqe", "dbcnn", "topiq_nr", "cnniqa", "musiq", "brisque", "qalign",
    "clipscore", "imagereward", "pickscore", "hpsv2",
)  # fmt: skip
NETWORK_TIMEOUT_S = 15.0
#: CLIPScore's ``w`` (Hessel et al., 2021; pyiqa's ``clipscore``), also applied to PickScore.
CLIPSCORE_WEIGHT = 2.5
# Import name → pip requirement, for the hint of MetricUnavailable. pyiqa's CLIP-based metrics
# (clipiqa, liqe, clipscore) import pkg_resources, which setuptools ≥ 81 no longer ships.
_PIP_NAMES = {"ImageReward": "image-reward", "pkg_resources": "setuptools<81"}
# pyiqa metrics that score a set of images, not one image.
_DATASET_METRICS = ("fid", "fid_dinov2", "inception_score")
# pyiqa metrics that score an image against its prompt.
_PYIQA_PROMPT_METRICS = ("clipscore",)

Scorer = Callable[[torch.Tensor, "str | None", "torch.Tensor | None"], float]


class MetricUnavailable(RuntimeError):
    """A metric cannot be created here: missing weights (offline), or a missing package."""


@dataclass(frozen=True)
class MetricTraits:
    """What a metric is, known without creating it (see :func:`describe_metric`); ``name`` is
    the registry's spelling."""

    name: str
    lower_better: bool
    needs_prompt: bool
    full_reference: bool


@dataclass(frozen=True)
class Metric:
    """One metric, ready to score.

    Attributes:
        name: registry name.
        lower_better: True for e.g. BRISQUE / PIQE (lower = better quality).
        needs_prompt: True for alignment metrics (CLIPScore, ImageReward, PickScore, HPSv2).
        full_reference: True for e.g. PSNR / SSIM, which compare with a ``reference`` image.
    """

    name: str
    lower_better: bool
    needs_prompt: bool
    full_reference: bool
    scorer: Scorer

    def __call__(
        self,
        image: Image.Image | np.ndarray,
        prompt: str | None = None,
        reference: Image.Image | np.ndarray | None = None,
    ) -> float:
        """Score ``image`` (PIL or H×W×3 uint8 array); ``prompt`` / ``reference`` as the
        metric needs (a ``reference`` must have the image's size)."""
        if self.needs_prompt and prompt is None:
            raise ValueError(f"metric {self.name!r} needs a prompt")
        if self.full_reference and reference is None:
            raise ValueError(f"metric {self.name!r} is full-reference: pass reference=")
        target = to_tensor(image)
        ref = to_tensor(reference) if self.full_reference else None
        if ref is not None and ref.shape != target.shape:
            raise ValueError(f"reference {tuple(ref.shape)} and image {tuple(target.shape)} differ")
        return float(self.scorer(target, prompt, ref))


def to_tensor(image: Image.Image | np.ndarray) -> torch.Tensor:
    """PIL / uint8 H×W×3 array → float tensor 1×3×H×W in [0, 1]."""
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an RGB image, got an array of shape {array.shape}")
    return torch.from_numpy(array.astype(np.float32) / 255.0).permute(2, 0, 1)[None]


def list_metrics() -> list[str]:
    """Every name :func:`create_metric` accepts (whether its weights are present or not)."""
    return sorted(set(_pyiqa_names()) | set(_OWN_METRICS))


def check_metric_names(names: Sequence[str], where: str) -> list[str]:
    """``names`` as given, once every one is known to :func:`list_metrics` (no model is built).

    Raises:
        RunInputError: one line naming ``where`` (e.g. ``--metrics``), the unknown names, the
            closest known ones and where the names come from.
    """
    known = list_metrics()
    unknown = [name for name in names if name.lower() not in known]
    if unknown:
        hints = [close[0] for name in unknown if (close := difflib.get_close_matches(name.lower(), known, n=1))]
        raise RunInputError(
            f"{where}: unknown metric(s) {', '.join(unknown)}{' (did you mean ' + ', '.join(hints) + '?)' if hints else ''}; "
            "the names are those of grefine.eval.metrics.list_metrics(), e.g. psnr, ssim, piqe, clipiqa, musiq."
        )
    return list(names)


def check_select_metric(name: str, where: str) -> str:
    """``name`` as the registry spells it, once it can rank refinements of one image (the config's
    ``verify.select``): a known metric that needs no reference image. No model is built.

    Raises:
        RunInputError: one line naming ``where``: an unknown name (as :func:`check_metric_names`),
            or a full-reference metric (it compares the refined image with the input, which
            scores best against itself: nothing could ever beat the input).
    """
    check_metric_names([name], where)
    traits = describe_metric(name)
    if traits.full_reference:
        raise RunInputError(
            f"{where}: {traits.name} is a full-reference metric (it compares the refined image with the input, which "
            "scores best against itself, so no refinement could beat it); choose pa, p, a or a no-reference metric, e.g. musiq, clipiqa, piqe."
        )
    return traits.name


def create_select_metric(name: str, device: str | torch.device | None = None) -> Metric:
    """The metric ``verify.select`` names (:func:`create_metric`); a run cannot verify without it,
    so one that cannot be created here raises :class:`~grefine.errors.MissingWeightsError` (the
    tools' refusal, exit 2) naming the config key."""
    try:
        return create_metric(name, device=device)
    except MetricUnavailable as err:
        raise MissingWeightsError(f"verify.select: {err}") from err


def describe_metric(name: str) -> MetricTraits:
    """The traits of metric ``name`` from the registries' own tables: no weights are loaded.

    Raises:
        KeyError: unknown name (the message lists the known ones).
    """
    key = _registry_name(name)
    if key in _OWN_METRICS:
        return MetricTraits(key, lower_better=False, needs_prompt=True, full_reference=False)
    import pyiqa
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    return MetricTraits(
        key,
        lower_better=bool(DEFAULT_CONFIGS[key].get("lower_better", False)),
        needs_prompt=key in _PYIQA_PROMPT_METRICS,
        full_reference=key in pyiqa.list_models(metric_mode="FR"),
    )


def create_metric(name: str, device: str | torch.device | None = None, **options) -> Metric:
    """Create the metric ``name`` (see :func:`list_metrics`) on ``device`` (default: CUDA if
    available). ``options`` go to ``pyiqa.create_metric`` for pyiqa metrics, or to the loader
    of ``imagereward`` (``model``), ``pickscore`` (``model``, ``processor``, ``form``) and ``hpsv2``
    (``checkpoint``: a local file, or ``repo_id:filename`` on the hub).

    Raises:
        KeyError: unknown name (the message lists the known ones).
        MetricUnavailable: the metric exists but cannot be created here.
    """
    key = _registry_name(name)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    build = _OWN_METRICS.get(key, _pyiqa_metric)
    try:
        with _network_timeout(NETWORK_TIMEOUT_S):
            return build(key, device, **options)
    except MetricUnavailable:
        raise
    except Exception as error:  # any creation failure means "unavailable here"
        raise MetricUnavailable(f"metric {key!r} is unavailable: {_explain(error)}") from error


def create_metrics(names: Sequence[str], device: str | torch.device | None = None) -> tuple[list[Metric], dict[str, str]]:
    """Create the named metrics (:func:`create_metric`); those that cannot be had here (missing
    weights, offline) are returned with their reason instead of raising, for a runner to record
    per row. An unknown name still raises; check names first with :func:`check_metric_names`."""
    metrics: list[Metric] = []
    failures: dict[str, str] = {}
    for name in names:
        try:
            metrics.append(create_metric(name, device=device))
        except MetricUnavailable as err:
            failures[name] = str(err)
    return metrics, failures


def _registry_name(name: str) -> str:
    """The registry's spelling of ``name`` (names match case-insensitively)."""
    names = {known.lower(): known for known in list_metrics()}
    if name.lower() not in names:
        raise KeyError(f"unknown metric {name!r}; known metrics: {', '.join(list_metrics())}")
    return names[name.lower()]


def _explain(error: Exception) -> str:
    text = f"{type(error).__name__}: {error}"
    if isinstance(error, ImportError):
        requirement = _PIP_NAMES.get(error.name, error.name)
        return f"{text} (a package is missing: pip install '{requirement}')"
    return (
        f"{text} (its weights are not cached and cannot be downloaded here; download them while "
        "online, see checkpoints/README.md)"
    )


@contextlib.contextmanager
def _network_timeout(seconds: float):
    """Bound every socket operation (pyiqa downloads plain URLs with urllib, which otherwise
    waits forever on a silent network); the previous default is restored afterwards."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


# --------------------------------------------------------------------------------- pyiqa


def _pyiqa_names() -> list[str]:
    import pyiqa

    return [name for name in pyiqa.list_models() if name not in _DATASET_METRICS]


def _pyiqa_metric(name: str, device: torch.device, **options) -> Metric:
    import pyiqa

    model = pyiqa.create_metric(name, device=device, **options)
    full_reference = model.metric_mode == "FR"
    needs_prompt = name in _PYIQA_PROMPT_METRICS

    @torch.no_grad()
    def score(image: torch.Tensor, prompt: str | None, reference: torch.Tensor | None) -> float:
        if needs_prompt:
            out = model(image, caption_list=[prompt])
        else:
            out = model(image, reference) if full_reference else model(image)
        return torch.as_tensor(out).float().flatten()[0].item()

    return Metric(name, bool(model.lower_better), needs_prompt, full_reference, score)


# ------------------------------------------------------------- alignment scorers of our own


def _to_pil(image: torch.Tensor) -> Image.Image:
    array = (image[0].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(array)


def _imagereward(name: str, device: torch.device, *, model: str = "ImageReward-v1.0") -> Metric:
    """ImageReward (Xu et al., 2023) through its own package ``image-reward``."""
    import ImageReward

    reward = ImageReward.load(model, device=str(device))

    @torch.no_grad()
    def score(image: torch.Tensor, prompt: str | None, reference: torch.Tensor | None) -> float:
        return float(reward.score(prompt, _to_pil(image)))

    return Metric(name, False, True, False, score)


def _pickscore(
    name: str,
    device: torch.device,
    *,
    model: str = "yuvalkirstain/PickScore_v1",
    processor: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
    form: str = "clipscore",
) -> Metric:
    """PickScore (Kirstain et al., 2023): the PickScore CLIP-H's cosine of image and prompt,

    * ``form="clipscore"`` (default): ``2.5 · max(cos, 0)``, CLIPScore's formula (pyiqa's
      ``clipscore``, the paper's CLIPS column) on the PickScore model — the scale of the paper's
      PicS column (0.41-0.79): PickScore's cosines are ≈ 0.2-0.3, and the tables' PicS/CLIPS
      ratio (≈ 0.72-0.75 on three databases) is that of PickScore to CLIP ViT-B/32 cosines;
    * ``form="logit"``: ``logit_scale · cos``, the score PickScore's authors report (≈ 20).
    """
    from transformers import AutoModel, AutoProcessor

    if form not in ("clipscore", "logit"):
        raise ValueError(f"pickscore form must be 'clipscore' or 'logit', got {form!r}")
    proc = AutoProcessor.from_pretrained(processor)
    clip = AutoModel.from_pretrained(model).eval().to(device)

    @torch.no_grad()
    def score(image: torch.Tensor, prompt: str | None, reference: torch.Tensor | None) -> float:
        inputs = proc(
            text=[prompt],
            images=[_to_pil(image)],
            padding=True,
            truncation=True,
            return_tensors="pt",
        ).to(device)
        image_embeds = _embedding(clip.get_image_features(pixel_values=inputs["pixel_values"]))
        text_embeds = _embedding(
            clip.get_text_features(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
            )
        )
        cosine = (image_embeds * text_embeds).sum()
        if form == "logit":
            return (clip.logit_scale.exp() * cosine).item()
        return (CLIPSCORE_WEIGHT * cosine.clamp(min=0)).item()

    return Metric(name, False, True, False, score)


def _embedding(features) -> torch.Tensor:
    """L2-normalised features (transformers ≥ 5 may wrap them in a model output)."""
    if not isinstance(features, torch.Tensor):
        features = features.pooler_output
    return torch.nn.functional.normalize(features.float(), dim=-1)


def _hpsv2(
    name: str, device: torch.device, *, checkpoint: str = "xswu/HPSv2:HPS_v2_compressed.pt"
) -> Metric:
    """HPS v2 (Wu et al., 2023): cosine of open_clip ViT-H-14 embeddings with the HPS v2
    checkpoint (≈ 0.25-0.30 for typical images, the scale of the paper's tables). The
    checkpoint is resolved first, so a missing one fails before the 1B-parameter model is built."""
    import open_clip

    path = _checkpoint_file(checkpoint)
    clip, _, preprocess = open_clip.create_model_and_transforms("ViT-H-14", pretrained=None)
    state = torch.load(path, map_location="cpu", weights_only=False)
    clip.load_state_dict(state.get("state_dict", state))
    return _clip_similarity(name, clip, preprocess, open_clip.get_tokenizer("ViT-H-14"), device, 1.0)


def _hps(name: str, device: torch.device, *, checkpoint: str = "checkpoints/hpc.pt") -> Metric:
    """HPS v1 (Wu et al., 2023, "Better aligning text-to-image models with human preference"):
    ``100 · cos`` of the embeddings of OpenAI's CLIP ViT-L/14 fine-tuned into the human
    preference classifier ``hpc.pt`` (an OpenAI-layout state dict under ``state_dict``). The
    architecture is read from the checkpoint by open_clip's loader for OpenAI state dicts."""
    import open_clip
    from open_clip.model import build_model_from_openai_state_dict

    state = torch.load(_checkpoint_file(checkpoint), map_location="cpu", weights_only=False)
    weights = state.get("state_dict", state)
    clip = build_model_from_openai_state_dict(weights, quick_gelu=True, cast_dtype=None).float()
    # The builder loads into fp16 parameters; load again in fp32 to keep the checkpoint's
    # precision (it has already removed the non-tensor entries from ``weights``).
    clip.load_state_dict(weights)
    preprocess = open_clip.image_transform(clip.visual.image_size, is_train=False)
    return _clip_similarity(name, clip, preprocess, open_clip.get_tokenizer("ViT-L-14"), device, 100.0)


def _checkpoint_file(checkpoint: str) -> str:
    """A local file, or ``repo_id:filename`` downloaded from (or found in the cache of) the hub."""
    import os

    if os.path.isfile(checkpoint):
        return checkpoint
    from huggingface_hub import hf_hub_download

    repo_id, _, filename = checkpoint.partition(":")
    if not filename:
        raise FileNotFoundError(f"checkpoint {checkpoint!r} is neither a file nor 'repo_id:filename' on the hub")
    return hf_hub_download(repo_id, filename)


def _clip_similarity(
    name: str, clip: torch.nn.Module, preprocess: Callable, tokenizer: Callable, device: torch.device, scale: float
) -> Metric:
    """``scale · cos(E_img, E_txt)`` of an open_clip model (HPS v1 and v2)."""
    clip = clip.eval().to(device)

    @torch.no_grad()
    def score(image: torch.Tensor, prompt: str | None, reference: torch.Tensor | None) -> float:
        pixels = preprocess(_to_pil(image))[None].to(device)
        image_embeds = torch.nn.functional.normalize(clip.encode_image(pixels).float(), dim=-1)
        text_embeds = torch.nn.functional.normalize(
            clip.encode_text(tokenizer([prompt]).to(device)).float(), dim=-1
        )
        return scale * (image_embeds * text_embeds).sum().item()

    return Metric(name, False, True, False, score)


_OWN_METRICS: dict[str, Callable[..., Metric]] = {
    "imagereward": _imagereward,
    "pickscore": _pickscore,
    "hpsv2": _hpsv2,
    "hps": _hps,
}
