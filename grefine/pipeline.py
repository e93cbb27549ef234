"""GRefinePipeline: image + prompt -> PQ/AQ maps -> mask and strengths -> stage 1 -> stage 2.

Eq. 9-10 of the paper::

    z1 = strength(p, a) · QKV(prompt', Bi(1 − P + D))     stage 1, n1 steps (SDXL inpainting)
    z2 = δ · QKV(prompt, 1)                               stage 2, n2 steps (PASD, whole image)
    R  = D^{z2}_{n2} ··· D^{z2}_1 ( D^{z1}_{n1} ··· D^{z1}_1 (I) )

with P the PQ-Map, D the AQ-Map's defect map, prompt' the cleaned prompt with Eq. 7's emphasis
(and the config's ``stage1.prompt_suffix``), prompt the cleaned prompt, and n1 = n2 = half of
``total_steps`` (20 in the paper) unless a stage sets its ``steps``. Both stages take the number
of steps to *run*; each derives its schedule length from its strength
(:func:`grefine.refine.stage1.inference_steps_for`). The ``ablation`` config section switches a
map or stage 2 off (Table 8). The ``gate`` section (off by default; not in the paper) decides
on (p, a) between the maps and the mask (:func:`gate_decision`): a hopeless image is rejected
and a good one skipped, both returned unchanged without running stage 1 or 2. Models load once
in :meth:`GRefinePipeline.from_pretrained`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Protocol, Sequence, Union

import torch
from PIL import Image

from grefine.config import GateBounds, GateConfig, GRefineConfig
from grefine.image_io import ImageInput, as_rgb_image
from grefine.maps.aq_map import AQMap, AQMapResult
from grefine.maps.clip_surgery import TowerPasses
from grefine.maps.pq_map import PQMap, PQMapResult, load_open_clip
from grefine.refine.mask import MaskResult, binarize, stage1_strength
from grefine.refine.speedups import apply_speed
from grefine.refine.stage1 import InpaintStage1, Stage1Result, place_pipeline
from grefine.weights import check_weights


class Stage2(Protocol):
    """Eq. 10's restoration stage ``D^{z2}_{n2} ··· D^{z2}_1``: a mild, global denoising with
    strength δ (Eq. 9's ``z2 = δ · QKV(prompt, 1)``); implemented by the PASD module."""

    def __call__(
        self,
        image: Image.Image,
        prompt: str,
        *,
        strength: float,
        num_inference_steps: int,
        generator: torch.Generator | None,
    ) -> Image.Image: ...


@dataclass(frozen=True)
class GateDecision:
    """The refiner gate's decision on (p, a): ``verdict`` is ``refined`` (refined as usual),
    ``skipped`` (good: left untouched) or ``rejected`` (hopeless: not refined, flagged), or ``""``
    when the config has no gate; ``reason`` names the bounds that decided."""

    verdict: str = ""
    reason: str = ""

    @property
    def refines(self) -> bool:
        return self.verdict in ("", "refined")


def gate_decision(p: float, a: float, gate: GateConfig) -> GateDecision:
    """The ``gate`` config section applied to the scores (see :class:`~grefine.config.GateConfig`):
    ``rejected`` when ``p < reject_below.p`` or ``a < reject_below.a``; else ``skipped`` when
    ``p ≥ skip_above.p`` and ``a ≥ skip_above.a`` (the bounds that are set); else ``refined``.
    A NaN score meets no bound (the image is refined)."""
    if not gate.enabled:
        return GateDecision()
    scores = {"p": p, "a": a}
    low = [f"{name} {scores[name]:.4g} < {bound:g}" for name, bound in _set_bounds(gate.reject_below) if scores[name] < bound]
    if low:
        return GateDecision("rejected", f"gate: rejected ({' or '.join(low)}): not refined, the input returned unchanged")
    high = _set_bounds(gate.skip_above)
    if high and all(scores[name] >= bound for name, bound in high):
        met = " and ".join(f"{name} {scores[name]:.4g} >= {bound:g}" for name, bound in high)
        return GateDecision("skipped", f"gate: skipped ({met}): left untouched, stages 1 and 2 not run")
    return GateDecision("refined")


def _set_bounds(bounds: GateBounds) -> list[tuple[str, float]]:
    return [(name, value) for name, value in (("p", bounds.p), ("a", bounds.a)) if value is not None]


@dataclass
class GRefineOutput:
    """One refined image with everything that led to it.

    ``timings`` holds seconds per step: ``maps`` (PQ + AQ), ``mask``, ``stage1``, ``stage2``.
    ``note`` says what was skipped and why (empty mask, no stage 2 configured, δ = 0, ablation,
    the gate). A map switched off by the ``ablation`` config is its neutral result (P = 1 / D = 0,
    score NaN). ``gate`` is the refiner gate's decision (verdict ``""`` when no gate is configured).
    """

    image: Image.Image
    pq: PQMapResult
    aq: AQMapResult
    mask: MaskResult
    strength1: float
    strength2: float
    stage1: Stage1Result
    stage2_steps: int
    timings: dict[str, float] = field(default_factory=dict)
    note: str = ""
    gate: GateDecision = field(default_factory=GateDecision)

    def summary(self) -> dict[str, object]:
        """The scalar columns of a ``results.csv`` row."""
        return {
            "p": self.pq.score,
            "a": self.aq.score,
            "mask_area": self.mask.coverage,
            "strength1": self.strength1,
            "strength2": self.strength2,
            "stage1_steps": self.stage1.steps_run,
            "stage2_steps": self.stage2_steps,
            "maps_seconds": self.timings.get("maps", 0.0),
            "stage1_seconds": self.timings.get("stage1", 0.0),
            "stage2_seconds": self.timings.get("stage2", 0.0),
            "note": self.note,
            "gate": self.gate.verdict,
        }


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: fp16 on CUDA, fp32 on CPU; else ``fp16``/``bf16``/``fp32``."""
    table = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in table:
        raise ValueError(f"dtype must be one of auto, {', '.join(table)}; got {name!r}")
    return table[name]


_PRECISION = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


class GRefinePipeline:
    """G-Refine (paper §3): PQ-Map, AQ-Map, stage 1 (SDXL inpainting) and stage 2 (PASD)."""

    def __init__(
        self,
        pq_map: PQMap,
        aq_map: AQMap,
        stage1: InpaintStage1,
        stage2: Optional[Stage2] = None,
        config: Optional[GRefineConfig] = None,
    ) -> None:
        self.pq_map = pq_map
        self.aq_map = aq_map
        self.stage1 = stage1
        self.stage2 = stage2
        self.config = config or GRefineConfig()

    @classmethod
    def from_pretrained(cls, config: Union[str, Path, dict, GRefineConfig] = "configs/default.yaml") -> "GRefinePipeline":
        """Build every component from a YAML config (path), a dict, or a :class:`GRefineConfig`.

        Checks all weights first and, when some are missing and the hub is unreachable, raises
        one :class:`~grefine.weights.WeightsUnavailableError` listing them all.
        """
        if isinstance(config, (str, Path)):
            config = GRefineConfig.from_yaml(config)
        elif isinstance(config, dict):
            config = GRefineConfig.from_dict(config)
        check_weights(config)
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        pq_map, aq_map = build_maps(config, device, dtype)
        stage1 = _build_stage1(config, device, dtype)
        stage2 = _build_stage2(config, device, dtype)
        apply_speed(config.speed, [stage1.pipe] + ([stage2] if stage2 is not None else []))
        return cls(pq_map, aq_map, stage1, stage2, config)

    def __call__(self, image: ImageInput, prompt: str, *, seed: Optional[int] = None) -> GRefineOutput:
        """Refine one image: a PIL image, a path, an H×W×3 uint8 array or a C×H×W float tensor
        in [0, 1] (:func:`~grefine.image_io.as_rgb_image`), at most ``config.max_pixels``.
        ``seed`` (default: the config's) makes the result reproducible."""
        config = self.config
        seed = config.seed if seed is None else seed
        n1, n2 = config.steps
        image = as_rgb_image(image, max_pixels=config.max_pixels)
        timings: dict[str, float] = {}

        start = time.perf_counter()
        [(pq, aq)] = self.maps([image], [prompt])
        timings["maps"] = time.perf_counter() - start

        gate = gate_decision(pq.score, aq.score, config.gate)
        if not gate.refines:
            return _unrefined(image, pq, aq, gate, timings)

        start = time.perf_counter()
        mask = binarize(
            pq.map,
            aq.defect_map,
            perceptual_bound=config.mask.perceptual_bound,
            alignment_bound=config.mask.alignment_bound,
            dilation=config.mask.dilation,
            feather=config.mask.feather,
        )
        strength1 = stage1_strength(
            None if config.ablation.drop_pq_map else pq.score,
            None if config.ablation.drop_aq_map else aq.score,
            min_strength=config.stage1.min_strength,
            max_strength=config.stage1.max_strength,
        )
        timings["mask"] = time.perf_counter() - start

        stage1_prompt = aq.emphasized_prompt.with_suffix(config.stage1.prompt_suffix)
        stage1 = self.stage1(
            image, stage1_prompt, mask, strength=strength1, num_steps=n1, guidance_scale=config.stage1.guidance_scale, seed=seed
        )
        timings["stage1"] = stage1.seconds
        notes = [] if stage1.ran else ["stage 1 skipped: empty mask"]

        refined, strength2, stage2_steps = stage1.image, config.stage2.strength, 0
        start = time.perf_counter()
        if config.ablation.drop_stage2:
            notes.append("stage 2 dropped (ablation)")
        elif self.stage2 is None:
            notes.append("stage 2 not configured: stage 1 only")
        elif strength2 <= 0:
            notes.append("stage 2 skipped: strength 0")
        else:
            # PASD runs round(δ·N) of an N-step schedule (like img2img): pick N so that n2 run.
            schedule = max(n2, round(n2 / strength2))
            generator = torch.Generator("cpu").manual_seed(seed + 1)
            refined = self.stage2(refined, aq.clean_prompt, strength=strength2, num_inference_steps=schedule, generator=generator)
            stage2_steps = round(strength2 * schedule)
        timings["stage2"] = time.perf_counter() - start
        return GRefineOutput(
            image=refined,
            pq=pq,
            aq=aq,
            mask=mask,
            strength1=strength1,
            strength2=strength2 if stage2_steps else 0.0,
            stage1=stage1,
            stage2_steps=stage2_steps,
            timings=timings,
            note="; ".join(notes),
            gate=gate,
        )

    def maps(
        self, images: Sequence[ImageInput], prompts: Sequence[str]
    ) -> list[tuple[PQMapResult, AQMapResult]]:
        """PQ-Map (Eq. 1-3) and AQ-Map (Eq. 4-8) of a batch of images, one (PQ, AQ) pair per image.

        The batch runs as one: the VVV image tower runs once per image for both maps when they
        read the same tower (one CLIP, equal VVV blocks, attention and input size: the default
        config), else once per map (:class:`~grefine.maps.clip_surgery.TowerPasses`); images are
        grouped by CLIP input size, one tower forward per group; the texts of all prompts go
        through the text tower as one batch. A map the ``ablation`` config drops is its neutral
        result (P = 1 / D = 0, score NaN) and is not computed.
        """
        if len(images) != len(prompts):
            raise ValueError(f"need one prompt per image: {len(images)} images, {len(prompts)} prompts")
        tower = TowerPasses([as_rgb_image(image, max_pixels=self.config.max_pixels) for image in images])
        sizes = [(image.height, image.width) for image in tower.images]
        ablation = self.config.ablation
        pq = [PQMapResult.neutral(size) for size in sizes] if ablation.drop_pq_map else self.pq_map.read(tower)
        if ablation.drop_aq_map:
            aq = [AQMapResult.neutral(prompt, size) for prompt, size in zip(prompts, sizes)]
        else:
            aq = self.aq_map.read(tower, prompts)
        return list(zip(pq, aq))


def _unrefined(image: Image.Image, pq: PQMapResult, aq: AQMapResult, gate: GateDecision, timings: dict[str, float]) -> GRefineOutput:
    """The output for an image the gate does not refine: the input unchanged, no mask, no stage run."""
    untouched = image.copy()
    timings.update(mask=0.0, stage1=0.0, stage2=0.0)
    return GRefineOutput(
        image=untouched,
        pq=pq,
        aq=aq,
        mask=MaskResult.empty((image.height, image.width)),
        strength1=0.0,
        strength2=0.0,
        stage1=Stage1Result(untouched, ran=False, steps_run=0, strength=0.0, seconds=0.0),
        stage2_steps=0,
        timings=timings,
        note=gate.reason,
        gate=gate,
    )


def build_maps(config: GRefineConfig, device: torch.device, dtype: torch.dtype) -> tuple[PQMap, AQMap]:
    """PQ-Map and AQ-Map; one CLIP is loaded when both use the same weights."""
    pq_cfg, aq_cfg = config.pq_map, config.aq_map
    loaded: dict[tuple, tuple] = {}

    def clip(model_name: str, pretrained: Optional[str], tiny: bool, text_width_512: bool):
        key = ("tiny", text_width_512) if tiny else (model_name, pretrained)
        if key not in loaded:
            if tiny:
                from grefine.tiny import build_tiny_open_clip, build_tiny_pq_clip

                build = build_tiny_pq_clip if text_width_512 else build_tiny_open_clip
                model, tokenizer = build(precision=_PRECISION[dtype])
                loaded[key] = model.to(device), tokenizer
            else:
                loaded[key] = load_open_clip(model_name, pretrained, device=device, precision=_PRECISION[dtype])
        return loaded[key]

    pq_model, pq_tokenizer = clip(pq_cfg.model_name, pq_cfg.pretrained, pq_cfg.tiny_random, bool(pq_cfg.embeddings))
    pq_map = PQMap(
        pq_model,
        pq_tokenizer,
        pq_cfg.embeddings,
        num_blocks=pq_cfg.num_blocks,
        attention=pq_cfg.attention,
        alpha=pq_cfg.alpha,
        input_size=pq_cfg.input_size,
        map_normalization=pq_cfg.map_normalization,
        feature_norm=pq_cfg.feature_norm,
    )
    aq_model, aq_tokenizer = clip(aq_cfg.model_name, aq_cfg.pretrained, aq_cfg.tiny_random, False)
    aq_map = AQMap(
        aq_model,
        aq_tokenizer,
        num_blocks=aq_cfg.num_blocks,
        a_bound=aq_cfg.a_bound,
        beta=aq_cfg.beta,
        margin=aq_cfg.margin,
        emphasis=aq_cfg.emphasis,
        feature_norm=aq_cfg.feature_norm,
        text_encoding=aq_cfg.text_encoding,
        text_cache=aq_cfg.text_cache,
    )
    return pq_map, aq_map


def _build_stage1(config: GRefineConfig, device: torch.device, dtype: torch.dtype) -> InpaintStage1:
    cfg = config.stage1
    if cfg.tiny_random:
        from grefine.tiny import build_tiny_sdxl_inpaint_pipeline

        pipe = build_tiny_sdxl_inpaint_pipeline(seed=config.seed).to(dtype=dtype)
        return InpaintStage1(place_pipeline(pipe, device, config.cpu_offload), resolution=cfg.resolution, **cfg.options)
    variant = cfg.variant if dtype == torch.float16 else None
    return InpaintStage1.from_pretrained(
        cfg.model,
        torch_dtype=dtype,
        device=device,
        variant=variant,
        cpu_offload=config.cpu_offload,
        resolution=cfg.resolution,
        vae=cfg.vae,
        options=cfg.options,
    )


def _build_stage2(config: GRefineConfig, device: torch.device, dtype: torch.dtype) -> Optional[Stage2]:
    cfg = config.stage2
    if not cfg.type or config.ablation.drop_stage2:
        return None
    if cfg.type != "pasd":
        raise ValueError(f"config {config.source}: stage2.type must be 'pasd' or null, got {cfg.type!r}")
    options = {"max_resolution": cfg.max_resolution, "input_jpeg_quality": cfg.input_jpeg_quality, **cfg.options}
    if cfg.tiny_random:
        from grefine.tiny import build_tiny_coca, build_tiny_pasd_stage2

        caption = build_tiny_coca(seed=config.seed) if cfg.caption_model else None
        stage2 = build_tiny_pasd_stage2(seed=config.seed, caption_model=caption, **options).to(dtype=dtype)
    else:
        from grefine.refine.pasd import PASDStage2
        from grefine.refine.pasd.caption import load_caption_model

        caption = load_caption_model(cfg.caption_model, cfg.caption_pretrained) if cfg.caption_model else None
        stage2 = PASDStage2.from_pretrained(
            base_model=cfg.base_model, pasd_model=cfg.pasd_model, torch_dtype=dtype, caption_model=caption, **options
        )
    stage2.set_progress_bar_config(disable=True)  # the runner shows one bar per folder
    return place_pipeline(stage2, device, config.cpu_offload)
