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
and a good one skipped, both returned unchanged without running stage 1 or 2. The ``verify``
section (off by default; not in the paper; :mod:`grefine.refine.verify`) re-reads each refined
image with both maps, keeps the best of N stage-1 candidates, returns the input when nothing beat
it, and refines again for more rounds. Models load once in :meth:`GRefinePipeline.from_pretrained`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Protocol, Sequence, Union

import numpy as np
import torch
from PIL import Image

from grefine.config import ConfigError, GateBounds, GateConfig, GRefineConfig
from grefine.image_io import ImageInput, as_rgb_image
from grefine.maps.aq_map import AQMap, AQMapResult
from grefine.maps.clip_surgery import TowerPasses
from grefine.maps.pq_map import PQMap, PQMapResult, load_open_clip
from grefine.refine.mask import MaskResult, binarize, stage1_strength
from grefine.refine.speedups import apply_speed
from grefine.refine.stage1 import InpaintStage1, Stage1Result, place_pipeline
from grefine.refine.verify import OutsideMask, SelectMetric, Selector, VerifyRound, judge, outside_mask
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

    ``timings`` holds seconds per step: ``maps`` (PQ + AQ of the input), ``mask``, ``stage1``,
    ``stage2`` (over every round and candidate) and, with ``verify`` on, ``verify`` (the re-reads
    of the candidates and the ``select`` scores). ``note`` says what was skipped and why (empty
    mask, no stage 2 configured, δ = 0, ablation, the gate, a revert). A map switched off by the
    ``ablation`` config is its neutral result (P = 1 / D = 0, score NaN). ``gate`` is the refiner
    gate's decision (verdict ``""`` when no gate is configured). ``pq``, ``aq``, ``mask``, the
    strengths and the stage results are those of the input and the first round.

    Verification (:class:`~grefine.config.VerifyConfig`): ``pq_after`` / ``aq_after`` are the maps
    of the output (None when ``verify`` is off; the input's own when the output is the input);
    ``verify`` is ``kept``, ``reverted`` (the output is the input, unchanged) or ``""`` (off, or not
    refined by the gate); ``candidates`` counts the images refined (N per round, one when stage 1
    had an empty mask), ``rounds`` the rounds run, ``verify_rounds`` their verdicts. ``outside``:
    the share of the pixels outside the stage-1 mask that changed, and their PSNR
    (:func:`~grefine.refine.verify.outside_mask`), for every image.
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
    pq_after: Optional[PQMapResult] = None
    aq_after: Optional[AQMapResult] = None
    verify: str = ""
    candidates: int = 0
    rounds: int = 0
    verify_rounds: tuple[VerifyRound, ...] = ()
    outside: OutsideMask = OutsideMask(math.nan, math.nan)

    def summary(self) -> dict[str, object]:
        """The scalar columns of a ``results.csv`` row (``p_after``/``a_after`` empty when
        ``verify`` is off)."""
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
            "verify_seconds": self.timings.get("verify", 0.0),
            "note": self.note,
            "gate": self.gate.verdict,
            "p_after": None if self.pq_after is None else self.pq_after.score,
            "a_after": None if self.aq_after is None else self.aq_after.score,
            "verify": self.verify,
            "candidates": self.candidates,
            "rounds": self.rounds,
            "changed_outside_mask": self.outside.changed,
            "psnr_outside_mask": self.outside.psnr,
        }


@dataclass
class _Candidate:
    """One refinement of a round's input: stage 1 with ``seed``, then stage 2 with ``seed + 1``."""

    image: Image.Image
    stage1: Stage1Result
    seed: int


@dataclass
class _Round:
    """One pass of Eq. 9-10 over an image: its mask and strengths, and its candidates."""

    mask: MaskResult
    strength1: float
    strength2: float
    stage2_steps: int
    candidates: list[_Candidate]
    notes: list[str]


@dataclass
class _Read:
    """An image with its maps and its ``verify.select`` score."""

    image: Image.Image
    pq: PQMapResult
    aq: AQMapResult
    score: float


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

HALF_DTYPES = (torch.float16, torch.bfloat16)
"""The dtypes that read a checkpoint's ``variant`` files (``stage1.variant``, e.g. ``*.fp16.safetensors``:
half the download of the fp32 files; bf16 models are cast from them)."""


class GRefinePipeline:
    """G-Refine (paper §3): PQ-Map, AQ-Map, stage 1 (SDXL inpainting) and stage 2 (PASD)."""

    def __init__(
        self,
        pq_map: PQMap,
        aq_map: AQMap,
        stage1: InpaintStage1,
        stage2: Optional[Stage2] = None,
        config: Optional[GRefineConfig] = None,
        select_metric: Optional[SelectMetric] = None,
    ) -> None:
        self.pq_map = pq_map
        self.aq_map = aq_map
        self.stage1 = stage1
        self.stage2 = stage2
        self.config = config or GRefineConfig()
        self.select_metric = select_metric
        _require_select_metric(self.config, select_metric)

    @classmethod
    def from_pretrained(
        cls, config: Union[str, Path, dict, GRefineConfig] = "configs/default.yaml", *, select_metric: Optional[SelectMetric] = None
    ) -> "GRefinePipeline":
        """Build every component from a YAML config (path), a dict, or a :class:`GRefineConfig`.

        ``select_metric``: the metric that ``verify.select`` names, when it names one (e.g.
        ``grefine.eval.metrics.create_metric("musiq")``); checked before any model loads. Checks
        all weights first and, when some are missing and the hub is unreachable, raises one
        :class:`~grefine.weights.WeightsUnavailableError` listing them all.
        """
        if isinstance(config, (str, Path)):
            config = GRefineConfig.from_yaml(config)
        elif isinstance(config, dict):
            config = GRefineConfig.from_dict(config)
        _require_select_metric(config, select_metric)
        check_weights(config)
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        pq_map, aq_map = build_maps(config, device, dtype)
        stage1 = _build_stage1(config, device, dtype)
        stage2 = _build_stage2(config, device, dtype)
        apply_speed(config.speed, [stage1.pipe] + ([stage2] if stage2 is not None else []))
        return cls(pq_map, aq_map, stage1, stage2, config, select_metric)

    def __call__(
        self, image: ImageInput, prompt: str, *, seed: Optional[int] = None, mask: Optional[MaskResult] = None
    ) -> GRefineOutput:
        """Refine one image: a PIL image, a path, an H×W×3 uint8 array or a C×H×W float tensor
        in [0, 1] (:func:`~grefine.image_io.as_rgb_image`), at most ``config.max_pixels``.
        ``seed`` (default: the config's) makes the result reproducible; with ``verify`` on, the
        candidates of round r (from 0) take the seeds ``seed + r·N + i``, i < N. ``mask``
        replaces Eq. 9's stage-1 mask of the first round (e.g. one edited by hand,
        :func:`~grefine.refine.mask.feathered`), at the image's size; the maps, the strength, the
        gate and the verification are as usual."""
        config = self.config
        seed = config.seed if seed is None else seed
        image = as_rgb_image(image, max_pixels=config.max_pixels)
        if mask is not None and mask.binary.shape != (image.height, image.width):
            raise ValueError(f"mask is {mask.binary.shape[1]}x{mask.binary.shape[0]}, the image {image.width}x{image.height}: give a mask of the image's size")
        timings: dict[str, float] = {}

        start = time.perf_counter()
        [(pq, aq)] = self.maps([image], [prompt])
        timings["maps"] = time.perf_counter() - start

        gate = gate_decision(pq.score, aq.score, config.gate)
        if not gate.refines:
            return _unrefined(image, pq, aq, gate, timings, verified=config.verify.enabled)
        if config.verify.enabled:
            return self._verified(image, prompt, pq, aq, seed, gate, timings, mask)
        first = self._refine(image, aq, *self._decide(pq, aq, timings, mask), [seed], timings)
        [candidate] = first.candidates
        return _output(image, candidate.image, first, pq, aq, gate, timings, weight=first.mask.soft, rounds=1)

    def _decide(
        self, pq: PQMapResult, aq: AQMapResult, timings: dict[str, float], mask: Optional[MaskResult] = None
    ) -> tuple[MaskResult, float]:
        """Eq. 9's decisions from the maps: the mask ``Bi(1 − P + D)`` (unless one is given) and
        the stage-1 strength."""
        config = self.config
        start = time.perf_counter()
        if mask is None:
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
        _add(timings, "mask", time.perf_counter() - start)
        return mask, strength1

    def _refine(
        self, image: Image.Image, aq: AQMapResult, mask: MaskResult, strength1: float, seeds: list[int], timings: dict[str, float]
    ) -> _Round:
        """Eq. 10 on ``image``: stage 1 once per seed (several seeds: one batched call,
        :meth:`~grefine.refine.stage1.InpaintStage1.candidates`; an empty mask: one candidate,
        stage 1 has nothing to vary), then stage 2 on each candidate with its seed + 1."""
        config = self.config
        n1, n2 = config.steps
        stage1_prompt = aq.emphasized_prompt.with_suffix(config.stage1.prompt_suffix)
        options = {"strength": strength1, "num_steps": n1, "guidance_scale": config.stage1.guidance_scale}
        if mask.is_empty or len(seeds) == 1:
            seeds = seeds[:1]
            firsts = [self.stage1(image, stage1_prompt, mask, seed=seeds[0], **options)]
        else:
            firsts = self.stage1.candidates(image, stage1_prompt, mask, seeds=seeds, **options)
        _add(timings, "stage1", firsts[0].seconds)
        notes = [] if firsts[0].ran else ["stage 1 skipped: empty mask"]

        images, strength2, stage2_steps = [first.image for first in firsts], config.stage2.strength, 0
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
            images = [
                self.stage2(
                    first.image,
                    aq.clean_prompt,
                    strength=strength2,
                    num_inference_steps=schedule,
                    generator=torch.Generator("cpu").manual_seed(seed + 1),
                )
                for first, seed in zip(firsts, seeds)
            ]
            stage2_steps = round(strength2 * schedule)
        _add(timings, "stage2", time.perf_counter() - start)
        candidates = [_Candidate(refined, first, seed) for refined, first, seed in zip(images, firsts, seeds)]
        return _Round(mask, strength1, strength2 if stage2_steps else 0.0, stage2_steps, candidates, notes)

    def _verified(
        self,
        image: Image.Image,
        prompt: str,
        pq: PQMapResult,
        aq: AQMapResult,
        seed: int,
        gate: GateDecision,
        timings: dict[str, float],
        first_mask: Optional[MaskResult] = None,
    ) -> GRefineOutput:
        """The ``verify`` section (:class:`~grefine.config.VerifyConfig`): rounds of N candidates,
        each re-read by both maps in one batch (one image-tower pass per candidate; the texts are
        those of the input, already encoded) and scored by ``select``; the best is kept when it
        beats the round's input by more than ``margin`` (or ``revert_if_worse`` is off). A next
        round starts from the kept result and its new maps, when it improved and its mask is not
        empty. ``first_mask`` replaces the first round's Eq. 9 mask."""
        verify = self.config.verify
        select = Selector(verify.select, self.select_metric, self.config.metric_resolution)
        start = time.perf_counter()
        current = _Read(image, pq, aq, select(image, prompt, pq.score, aq.score))
        timings["verify"] = time.perf_counter() - start
        rounds: list[tuple[_Round, VerifyRound]] = []
        weights: list[np.ndarray] = []
        notes: list[str] = []
        for index in range(verify.rounds):
            mask, strength1 = self._decide(current.pq, current.aq, timings, first_mask if index == 0 else None)
            if index and mask.is_empty:
                notes.append(f"verify: stopped after round {index}: the result's mask is empty")
                break
            seeds = [seed + index * verify.candidates + i for i in range(verify.candidates)]
            made = self._refine(current.image, current.aq, mask, strength1, seeds, timings)
            start = time.perf_counter()
            refined = [candidate.image for candidate in made.candidates]
            maps = self.maps(refined, [prompt] * len(refined))  # one batch: one tower pass per candidate
            reads = [_Read(after, p, a, select(after, prompt, p.score, a.score)) for after, (p, a) in zip(refined, maps)]
            scores = [read.score for read in reads]
            record = judge(current.score, scores, margin=verify.margin, revert_if_worse=verify.revert_if_worse, mask_area=mask.coverage)
            timings["verify"] += time.perf_counter() - start
            rounds.append((made, record))
            if record.kept:
                current = reads[record.best]
                weights.append(mask.soft)
            if not record.improved:
                if index:
                    notes.append(f"verify: round {index + 1} did not improve on {verify.select}: stopped")
                break
        if not weights:
            notes.append(f"verify: reverted (no candidate beat the input on {verify.select} by more than {verify.margin:g}): the input returned unchanged")
        first, first_record = rounds[0]
        return _output(
            image,
            current.image if weights else image.copy(),
            first,
            pq,
            aq,
            gate,
            timings,
            weight=np.maximum.reduce(weights) if weights else None,
            rounds=len(rounds),
            notes=notes,
            after=(current.pq, current.aq),
            verdict="kept" if weights else "reverted",
            made=sum(len(made.candidates) for made, _ in rounds),
            records=tuple(record for _, record in rounds),
            stage1=first.candidates[first_record.best].stage1,
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


def _unrefined(
    image: Image.Image, pq: PQMapResult, aq: AQMapResult, gate: GateDecision, timings: dict[str, float], *, verified: bool
) -> GRefineOutput:
    """The output for an image the gate does not refine: the input unchanged, no mask, no stage
    run (with ``verify`` on, its scores after are its own)."""
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
        pq_after=pq if verified else None,
        aq_after=aq if verified else None,
        outside=outside_mask(image, untouched, None),
    )


def _output(
    image: Image.Image,
    output: Image.Image,
    first: _Round,
    pq: PQMapResult,
    aq: AQMapResult,
    gate: GateDecision,
    timings: dict[str, float],
    *,
    weight: Optional[np.ndarray],
    rounds: int,
    notes: Sequence[str] = (),
    after: tuple[Optional[PQMapResult], Optional[AQMapResult]] = (None, None),
    verdict: str = "",
    made: int = 1,
    records: tuple[VerifyRound, ...] = (),
    stage1: Optional[Stage1Result] = None,
) -> GRefineOutput:
    """The output of a refined image: the first round's decisions, ``output``, and the proof
    outside ``weight`` (the union of the kept rounds' paste-back weights; None: nothing kept),
    judged at the input's size (an output of another size, ``stage1.output_size: working`` as
    in the authors' notebook, is resized to it first)."""
    judged = output if output.size == image.size else output.resize(image.size, Image.LANCZOS)
    return GRefineOutput(
        image=output,
        pq=pq,
        aq=aq,
        mask=first.mask,
        strength1=first.strength1,
        strength2=first.strength2,
        stage1=stage1 or first.candidates[0].stage1,
        stage2_steps=first.stage2_steps,
        timings=timings,
        note="; ".join([*first.notes, *notes]),
        gate=gate,
        pq_after=after[0],
        aq_after=after[1],
        verify=verdict,
        candidates=made,
        rounds=rounds,
        verify_rounds=records,
        outside=outside_mask(image, judged, weight),
    )


def _add(timings: dict[str, float], key: str, seconds: float) -> None:
    timings[key] = timings.get(key, 0.0) + seconds


def _require_select_metric(config: GRefineConfig, metric: Optional[SelectMetric]) -> None:
    """A metric is given exactly when ``verify.select`` names one, and it is that metric (before
    any model loads: a pipeline never runs without the scorer its config asks for)."""
    wanted = config.verify.metric
    if wanted is None and metric is not None:
        raise ConfigError(f"config {config.source}: a select_metric ({metric.name}) was given but verify.select is not a metric (verify: enabled {config.verify.enabled}, select {config.verify.select}).")
    if wanted is not None and (metric is None or metric.name.lower() != wanted.lower()):
        raise ConfigError(
            f"config {config.source}: verify.select names the metric {wanted}: create it and pass it, "
            f"GRefinePipeline.from_pretrained(config, select_metric=grefine.eval.metrics.create_metric({wanted!r})) "
            "(scripts/refine.py and scripts/benchmark.py do)."
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
        from grefine.tiny import build_tiny_sdxl_inpaint_pipeline, cast_tiny

        pipe = cast_tiny(build_tiny_sdxl_inpaint_pipeline(seed=config.seed), dtype)
        return InpaintStage1(place_pipeline(pipe, device, config.cpu_offload), resolution=cfg.resolution, **cfg.options)
    variant = cfg.variant if dtype in HALF_DTYPES else None
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
        from grefine.tiny import build_tiny_coca, build_tiny_pasd_stage2, cast_tiny

        caption = build_tiny_coca(seed=config.seed) if cfg.caption_model else None
        stage2 = cast_tiny(build_tiny_pasd_stage2(seed=config.seed, caption_model=caption, **options), dtype)
    else:
        from grefine.refine.pasd import PASDStage2
        from grefine.refine.pasd.caption import load_caption_model

        caption = load_caption_model(cfg.caption_model, cfg.caption_pretrained) if cfg.caption_model else None
        stage2 = PASDStage2.from_pretrained(
            base_model=cfg.base_model,
            pasd_model=cfg.pasd_model,
            pasd_subfolder=cfg.pasd_subfolder,
            torch_dtype=dtype,
            caption_model=caption,
            **options,
        )
    stage2.set_progress_bar_config(disable=True)  # the runner shows one bar per folder
    return place_pipeline(stage2, device, config.cpu_offload)
