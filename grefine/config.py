"""YAML configuration of a G-Refine run (``configs/*.yaml``), as plain data classes.

Every section maps to one component; unknown keys are an error naming the key, the section and
the file, so that a typo never silently falls back to a default. ``tiny_random: true`` in a
section builds that component from :mod:`grefine.tiny` instead of loading weights (the
smoke configuration ``configs/tiny-random.yaml``); a real run never sets it.

Every value is checked when the config loads, before any model: its type is the field's
annotation (an ``int`` field refuses ``"four"``, a ``list[str]`` field refuses a bare string),
and a field declares its allowed values in its metadata, ``field(default=..., metadata=within(0, 1))``
or ``metadata=one_of("a", "b")``; a new field is checked by declaring them there.

A config may start from another: ``base: default.yaml`` (relative to the file) takes that
config's values and replaces those the file gives, section by section (mappings merge key by key;
lists and values replace), so that a variant (e.g. an ablation, ``configs/ablation/``) states
only what differs. Bases may chain; a cycle is an error.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from grefine.image_io import MIN_SIDE
from grefine.maps.aq_map import (
    DEFAULT_A_BOUND,
    DEFAULT_BETA,
    DEFAULT_MARGIN,
    EMPHASIS_WEIGHT,
)
from grefine.maps.clip_surgery import FEATURE_NORMS
from grefine.maps.pq_embeddings import OFFICIAL
from grefine.maps.pq_map import DEFAULT_ALPHA
from grefine.maps.text_features import TEXT_ENCODINGS

PASD_HUB_MODEL = "yangtao9009/PASD"
"""The PASD authors' hub repository (stage 2's default ``pasd_model``)."""

PASD_HUB_SUBFOLDER = "pasd/checkpoint-100000"
"""Its folder of the ``pasd`` checkpoint (``unet/`` and ``controlnet/``), stage 2's default ``pasd_subfolder``."""

DEFAULT_METRICS = ("topiq_nr", "musiq", "piqe", "psnr", "ssim")
"""``metrics`` when a config names none: a light set (each metric's weights well under 1 GB) that
fits beside the pipeline on a 24 GB GPU and still says whether an image got better — TOPIQ and
MUSIQ (learned no-reference quality), PIQE (no weights), PSNR and SSIM against the input (how much
changed). The paper's 13 indicators are :data:`grefine.eval.metrics.PAPER_METRICS`."""

DEFAULT_MAX_PIXELS = 4096 * 4096
"""Largest image (width × height) a run accepts by default: 16.8 Mpx, e.g. 4096×4096 or 5000×3300."""

MAX_SEED = 2**64 - 2
"""Largest seed: torch generators take 64-bit seeds, and stage 2 draws with ``seed + 1``."""


class ConfigError(ValueError):
    """A configuration file or value is wrong; the message names it."""


@dataclass(frozen=True)
class Bound:
    """The allowed range of a numeric config value (of each element, for a list)."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '≥'} {_number(self.low)}"
        return f"{'<' if self.high_open else '≤'} {_number(self.high)}"


def _number(value: float) -> str:
    """A bound or value as written: whole numbers in full (a 20-digit seed stays readable)."""
    return str(value) if isinstance(value, int) else f"{value:g}"


def within(low: Optional[float] = None, high: Optional[float] = None, *, low_open: bool = False, high_open: bool = False) -> dict:
    """Field metadata: the value (each element of a list) lies in this range; ``None`` = unbounded."""
    return {"bound": Bound(low, high, low_open, high_open)}


def weight_source() -> dict:
    """Field metadata: a hub id or a local path (of weights or a folder); a blank string is refused."""
    return {"not_blank": True}


def one_of(*choices: object) -> dict:
    """Field metadata: the value (each element of a list) is one of ``choices``."""
    return {"choices": choices}


@dataclass
class PQMapConfig:
    """PQ-Map (Eq. 1-3). ``embeddings``: ``official`` (the authors' four ``PQ-*.pth`` files,
    fetched from their repository at a pinned commit and checked against their SHA-256:
    :mod:`grefine.maps.pq_embeddings`), a folder holding such files, or None for the CLIP-IQA
    text-pair fallback; ``feature_norm``: the image tokens normalised per channel over the
    tokens (``tokens``, the authors' code) or per token (``channels``)."""

    model_name: str = field(default="ViT-B-16", metadata=weight_source())
    pretrained: Optional[str] = field(default="openai", metadata=weight_source())
    embeddings: Optional[str] = field(default=OFFICIAL, metadata=weight_source())
    num_blocks: int = field(default=6, metadata=within(1))
    attention: str = field(default="vvv", metadata=one_of("vvv", "vvv_l2"))
    alpha: list[float] = field(default_factory=lambda: list(DEFAULT_ALPHA), metadata=within(0, 1, low_open=True))
    input_size: Any = None
    map_normalization: str = field(default="none", metadata=one_of("none", "minmax"))
    feature_norm: str = field(default="tokens", metadata=one_of(*FEATURE_NORMS))
    tiny_random: bool = False


@dataclass
class AQMapConfig:
    """AQ-Map (Eq. 4-8): Eq. 6's ``a_bound`` and ``margin``, Eq. 8's ``beta``, Eq. 7's
    ``emphasis``; Eq. 5's ``feature_norm`` (``tokens``: the authors' code, ``channels``),
    ``text_encoding`` (``ensemble``: the authors' 85 templates, ``bare``) and ``text_cache``
    (the text features' disk cache: ``auto`` = ``$GREFINE_CACHE_DIR`` or ``~/.cache/grefine``,
    a folder, or null = memory only); see :class:`grefine.maps.aq_map.AQMap`."""

    model_name: str = field(default="ViT-B-16", metadata=weight_source())
    pretrained: Optional[str] = field(default="openai", metadata=weight_source())
    num_blocks: int = field(default=6, metadata=within(1))
    a_bound: float = field(default=DEFAULT_A_BOUND, metadata=within(0, 1))
    beta: float = field(default=DEFAULT_BETA, metadata=within(0, low_open=True))
    margin: float = field(default=DEFAULT_MARGIN, metadata=within(0))
    emphasis: float = field(default=EMPHASIS_WEIGHT, metadata=within(0))
    feature_norm: str = field(default="tokens", metadata=one_of(*FEATURE_NORMS))
    text_encoding: str = field(default="ensemble", metadata=one_of(*TEXT_ENCODINGS))
    text_cache: Optional[str] = field(default="auto", metadata=weight_source())
    tiny_random: bool = False


@dataclass
class MaskConfig:
    """Eq. 9's Bi(1 − P + D) = ``(P < perceptual_bound) | (D > alignment_bound)``, dilated and
    feathered; see :func:`grefine.refine.mask.binarize`."""

    perceptual_bound: float = field(default=0.5, metadata=within(0, 1))
    alignment_bound: float = field(default=2.0 / 3.0, metadata=within(0, 1))
    dilation: float = field(default=16.0, metadata=within(0))
    feather: float = field(default=4.0, metadata=within(0))


@dataclass
class Stage1Config:
    """Stage 1: SDXL inpainting; ``variant``: the weight files read in fp16 and bf16 (e.g.
    ``*.fp16.safetensors``; null: the fp32 files); strength from (p, a) within [min_strength, max_strength];
    ``steps``: denoising steps run (None = n1 of Eq. 10); ``prompt_suffix``: text appended to
    the (emphasised) prompt; ``vae``: hub id or folder of a VAE loaded in place of the model's
    own, e.g. ``madebyollin/sdxl-vae-fp16-fix`` for a checkpoint whose VAE overflows in fp16
    (None = the model's own; the default model already ships that fp16-fixed VAE).
    ``paste_back``, ``working_size`` (``fit`` | ``pipeline``), ``output_size`` (``input`` |
    ``working``) and ``skip_empty_mask`` reproduce the authors' notebook when set otherwise than
    the paper's defaults; see :class:`grefine.refine.stage1.InpaintStage1`."""

    model: str = field(default="diffusers/stable-diffusion-xl-1.0-inpainting-0.1", metadata=weight_source())
    variant: Optional[str] = "fp16"
    resolution: Optional[int] = field(default=1024, metadata=within(MIN_SIDE))
    guidance_scale: float = field(default=7.5, metadata=within(0))
    min_strength: float = field(default=0.3, metadata=within(0, 1, low_open=True))
    max_strength: float = field(default=0.9, metadata=within(0, 1, low_open=True))
    steps: Optional[int] = field(default=None, metadata=within(1))
    prompt_suffix: str = ""
    vae: Optional[str] = field(default=None, metadata=weight_source())
    paste_back: bool = True
    working_size: str = field(default="fit", metadata=one_of("fit", "pipeline"))
    output_size: str = field(default="input", metadata=one_of("input", "working"))
    skip_empty_mask: bool = True
    tiny_random: bool = False

    @property
    def options(self) -> dict[str, Any]:
        """The :class:`~grefine.refine.stage1.InpaintStage1` keyword options of this section."""
        return {
            "paste_back": self.paste_back,
            "working_size": self.working_size,
            "output_size": self.output_size,
            "skip_empty_mask": self.skip_empty_mask,
        }


@dataclass
class Stage2Config:
    """Stage 2: ``type: pasd`` (or null to run stage 1 alone) at strength δ for ``steps``
    denoising steps (None = n2 of Eq. 10); ``options`` go to
    :meth:`grefine.refine.pasd.PASDStage2.from_pretrained`. ``max_resolution`` bounds the long
    side PASD works at (null: the image's own, up to ``max_pixels``). ``pasd_model`` (hub id or
    folder) holds PASD's ``unet/`` and ``controlnet/`` inside ``pasd_subfolder`` (null: at its top);
    the default is the authors' hub release. ``input_jpeg_quality``: the image goes through a JPEG
    at that quality before stage 2 (the notebook's ``step-1.jpg``: 75); ``caption_model`` /
    ``caption_pretrained``: the open_clip CoCa whose caption starts PASD's prompt, as
    ``test_pasd.py`` does (null: no caption)."""

    type: Optional[str] = field(default="pasd", metadata=one_of("pasd", None))
    base_model: str = field(default="stable-diffusion-v1-5/stable-diffusion-v1-5", metadata=weight_source())
    pasd_model: str = field(default=PASD_HUB_MODEL, metadata=weight_source())
    pasd_subfolder: Optional[str] = PASD_HUB_SUBFOLDER
    strength: float = field(default=0.1, metadata=within(0, 1))
    steps: Optional[int] = field(default=None, metadata=within(1))
    max_resolution: Optional[int] = field(default=2048, metadata=within(MIN_SIDE))
    input_jpeg_quality: Optional[int] = field(default=None, metadata=within(1, 95))
    caption_model: Optional[str] = field(default=None, metadata=weight_source())
    caption_pretrained: Optional[str] = field(default="mscoco_finetuned_laion2B-s13B-b90k", metadata=weight_source())
    options: dict[str, Any] = field(default_factory=dict)
    tiny_random: bool = False


@dataclass
class AblationConfig:
    """The paper's Table 8 ablations. ``drop_pq_map``: P := 1 (no perceptual region) and p no
    longer sets the strength; ``drop_aq_map``: D := 0 (no alignment region), no emphasis, and a
    no longer sets the strength; ``drop_stage2``: stage 1 alone (its models are not loaded). A
    dropped map is not computed (its CLIP still loads)."""

    drop_pq_map: bool = False
    drop_aq_map: bool = False
    drop_stage2: bool = False


COMPILE_TARGETS = ("unet", "controlnet", "vae")
"""What ``speed.compile`` can name: both stages' UNets, PASD's ControlNet, both VAEs."""

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""``torch.compile``'s modes (``reduce-overhead`` adds CUDA graphs)."""


@dataclass
class SpeedConfig:
    """Speed switches of the diffusion models (:mod:`grefine.refine.speedups`), each off by default.

    ``compile``: the models to ``torch.compile``, any of :data:`COMPILE_TARGETS`, with
    ``compile_mode`` (None = torch's default), ``compile_fullgraph``, ``compile_dynamic`` (None =
    automatic) and ``compile_backend``; ``fuse_qkv``: diffusers' fused QKV projections in every
    attention of the UNets, the ControlNet and the VAEs; ``channels_last``: those models in
    channels-last memory format."""

    compile: list[str] = field(default_factory=list, metadata=one_of(*COMPILE_TARGETS))
    compile_mode: Optional[str] = field(default=None, metadata=one_of(None, *COMPILE_MODES))
    compile_fullgraph: bool = False
    compile_dynamic: Optional[bool] = None
    compile_backend: str = "inductor"
    fuse_qkv: bool = False
    channels_last: bool = False


@dataclass
class GateBounds:
    """A bound on each of the two scores, p (PQ-Map, Eq. 3) and a (AQ-Map, Eq. 8); null = no
    bound on that score."""

    p: Optional[float] = field(default=None, metadata=within(0, 1))
    a: Optional[float] = field(default=None, metadata=within(0, 1))

    @property
    def is_set(self) -> bool:
        return self.p is not None or self.a is not None


@dataclass
class GateConfig:
    """The refiner gate (not in the paper; off by default): a decision on the scores (p, a), taken
    after the maps and before the mask (:func:`grefine.pipeline.gate_decision`).

    * ``reject_below``: a hopeless image — ``p < reject_below.p`` **or** ``a < reject_below.a`` —
      is not refined; it is returned unchanged and flagged ``rejected``.
    * ``skip_above``: a good image — ``p ≥ skip_above.p`` **and** ``a ≥ skip_above.a`` (the
      bounds that are set) — is left untouched (stages 1 and 2 not run), flagged ``skipped``.

    Rejection is tested first. Any other image is refined as usual, flagged ``refined``."""

    skip_above: GateBounds = field(default_factory=GateBounds)
    reject_below: GateBounds = field(default_factory=GateBounds)

    @property
    def enabled(self) -> bool:
        return self.skip_above.is_set or self.reject_below.is_set


VERIFY_SCORES = ("pa", "p", "a")
"""The map scores ``verify.select`` can name besides a metric: p·a, p (PQ-Map, Eq. 3), a (AQ-Map, Eq. 8)."""


@dataclass
class VerifyConfig:
    """Verification after refining (not in the paper; off by default, on in
    ``configs/never-worse.yaml``; :mod:`grefine.refine.verify`).

    After stage 2 (stage 1 when there is none) PQ-Map and AQ-Map read the refined image again
    (``p_after``, ``a_after``). ``select`` compares images: ``pa`` (p·a), ``p``, ``a``, or the name
    of a no-reference metric of the registry (:func:`grefine.eval.metrics.list_metrics`, checked by
    the tools before any model loads; its direction is the metric's). ``candidates``: stage 1 makes
    N candidates with N seeds in one batched call, each goes through stage 2, and the best by
    ``select`` is kept. ``revert_if_worse``: when the best does not beat the input by more than
    ``margin`` the output is the input, unchanged. ``rounds``: while the kept result improved and
    its own maps still give a non-empty mask, it is refined again, at most ``rounds`` times."""

    enabled: bool = False
    select: str = "pa"
    candidates: int = field(default=1, metadata=within(1, 16))
    revert_if_worse: bool = True
    margin: float = field(default=0.0, metadata=within(0))
    rounds: int = field(default=1, metadata=within(1, 8))

    @property
    def metric(self) -> Optional[str]:
        """The metric ``select`` names, or None when it is a map score (or verification is off)."""
        return self.select if self.enabled and self.select not in VERIFY_SCORES else None


@dataclass
class GRefineConfig:
    """A whole run. ``total_steps`` is Eq. 10's n1 + n2 (half each, the paper's 20 in total);
    ``max_pixels`` refuses larger images (width × height) from their header, before decoding;
    ``metric_resolution`` is the long side the metrics score at most (larger images, refined and
    original alike, are downscaled for scoring; null: full size); ``prefetch``: in folder runs, how
    many images are decoded ahead of the refinement and written and scored behind it, in worker
    threads (0: each step in turn; :class:`grefine.run.runner.RunOptions`)."""

    device: str = "auto"
    dtype: str = field(default="auto", metadata=one_of("auto", "fp16", "bf16", "fp32"))
    seed: int = field(default=0, metadata=within(0, MAX_SEED))
    total_steps: int = field(default=20, metadata=within(2))
    max_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata=within(MIN_SIDE * MIN_SIDE))
    cpu_offload: bool = False
    pq_map: PQMapConfig = field(default_factory=PQMapConfig)
    aq_map: AQMapConfig = field(default_factory=AQMapConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    ablation: AblationConfig = field(default_factory=AblationConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))
    metric_resolution: Optional[int] = field(default=1024, metadata=within(MIN_SIDE))
    prefetch: int = field(default=2, metadata=within(0, 16))
    source: str = "<defaults>"

    @property
    def steps(self) -> tuple[int, int]:
        """(n1, n2) of Eq. 10: half of ``total_steps`` each, unless a stage sets its ``steps``."""
        first = self.total_steps // 2
        return self.stage1.steps or first, self.stage2.steps or self.total_steps - first

    @classmethod
    def from_yaml(cls, path: Union[str, Path]) -> "GRefineConfig":
        """Read a config file, and the ``base`` it names, if any (see the module docstring)."""
        return cls.from_dict(read_config_yaml(Path(path)), source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> "GRefineConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"config {source}: expected a mapping at the top level.")
        config = _build(cls, data, source, "")
        config.source = source
        if config.stage1.min_strength > config.stage1.max_strength:
            raise ConfigError(
                f"config {source}: stage1.min_strength ({config.stage1.min_strength:g}) must not exceed "
                f"stage1.max_strength ({config.stage1.max_strength:g})."
            )
        if config.stage1.paste_back and config.stage1.output_size == "working":
            raise ConfigError(
                f"config {source}: stage1.paste_back needs stage1.output_size: input (the input's pixels are pasted "
                "around the mask); set paste_back: false to keep SDXL's output at its working size."
            )
        if config.stage2.caption_model and not config.stage2.caption_pretrained:
            raise ConfigError(f"config {source}: stage2.caption_model is set but stage2.caption_pretrained is null; name its weights.")
        _check_gate(config, source)
        _check_speed(config, source)
        _check_verify(config, source)
        return config


def read_config_yaml(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping of a config file, its ``base`` (relative to it) merged under it."""
    if not path.is_file():
        where = f" (the base of {_chain[-1]})" if _chain else ""
        raise ConfigError(f"config {path}{where}: no such file (the shipped ones are in configs/).")
    if path.resolve() in _chain:
        raise ConfigError(f"config {path}: its bases form a cycle ({' -> '.join(str(p) for p in (*_chain, path.resolve()))}).")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"config {path}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8.") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path}: not valid YAML ({err}).") from err
    if not isinstance(data, dict) or "base" not in data:
        return data
    base = data.pop("base")
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"config {path}: base must be the path of another config (relative to this file), got {base!r}.")
    return _merged(read_config_yaml(path.parent / base, (*_chain, path.resolve())), data)


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over``'s values: mappings merged key by key, anything else replaced."""
    merged = dict(base)
    for key, value in over.items():
        merged[key] = _merged(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _check_gate(config: GRefineConfig, source: str) -> None:
    """Cross-field rules of the ``gate`` section: a bound on a score the ablation drops (its score
    is NaN) and a rejection bound above the skip bound of the same score are refused."""
    gate = config.gate
    dropped = {"p": config.ablation.drop_pq_map, "a": config.ablation.drop_aq_map}
    for score, drop in dropped.items():
        reject, skip = getattr(gate.reject_below, score), getattr(gate.skip_above, score)
        for key, value in (("reject_below", reject), ("skip_above", skip)):
            if drop and value is not None:
                ablation = "drop_pq_map" if score == "p" else "drop_aq_map"
                raise ConfigError(
                    f"config {source}: gate.{key}.{score} is set but ablation.{ablation} drops that map (its score is NaN); "
                    f"set gate.{key}.{score} to null."
                )
        if reject is not None and skip is not None and reject > skip:
            raise ConfigError(
                f"config {source}: gate.reject_below.{score} ({reject:g}) must not exceed gate.skip_above.{score} ({skip:g})."
            )


def _check_verify(config: GRefineConfig, source: str) -> None:
    """Cross-field rules of the ``verify`` section: ``select`` is a name (a map score or a metric,
    which the tools check against the registry), and not a score that the ``ablation`` drops
    (its score is NaN, so no image could ever beat another)."""
    verify = config.verify
    if not verify.select.strip() or verify.select != verify.select.strip():
        raise ConfigError(
            f"config {source}: verify.select must be {', '.join(VERIFY_SCORES)} or a metric name (e.g. musiq), got {verify.select!r}."
        )
    dropped = {"p": config.ablation.drop_pq_map, "a": config.ablation.drop_aq_map}
    needed = verify.select if verify.enabled and verify.select in VERIFY_SCORES else ""
    for score in needed:  # "pa" needs both maps
        if dropped[score]:
            ablation = "drop_pq_map" if score == "p" else "drop_aq_map"
            kept = [name for name in ("p", "a") if not dropped[name]]
            raise ConfigError(
                f"config {source}: verify.select is {verify.select} but ablation.{ablation} drops that map (its score is NaN); "
                f"select {kept[0] if kept else 'a metric'} instead."
            )


def check_value(kind: type, name: str, value: Any, where: str) -> Any:
    """``value`` checked against field ``name`` of the config dataclass ``kind``: its annotated
    type (an int given for a float field becomes a float) and its declared range or choices.
    Raises :class:`ConfigError` starting with ``where`` (e.g. ``config x.yaml: mask.perceptual_bound``)."""
    spec = next(f for f in dataclasses.fields(kind) if f.name == name)
    annotation = typing.get_type_hints(kind)[name]
    checked = _typed(value, annotation)
    if checked is _WRONG:
        hint = f"; write it as a list, e.g. [{value}]" if typing.get_origin(annotation) is list and isinstance(value, (str, int, float)) else ""
        raise ConfigError(f"{where} must be {_describe(annotation)}, got {value!r} ({_yaml_kind(value)}){hint}.")
    if spec.metadata.get("not_blank") and isinstance(checked, str) and not checked.strip():
        raise ConfigError(f"{where} must be a hub id or a local path (or null where allowed), got a blank string.")
    choices = spec.metadata.get("choices")
    if choices is not None and any(item not in choices for item in (checked if isinstance(checked, list) else [checked])):
        raise ConfigError(f"{where} must be one of {', '.join('null' if c is None else str(c) for c in choices)}; got {value!r}.")
    for number in checked if isinstance(checked, list) else [checked]:
        if isinstance(number, float) and not math.isfinite(number):
            raise ConfigError(f"{where} must be a finite number, got {number} (YAML's .nan / .inf are not values).")
    bound = spec.metadata.get("bound")
    if bound is not None:
        for number in checked if isinstance(checked, list) else [checked]:
            if number is not None and number not in bound:
                raise ConfigError(f"{where} must be {bound}, got {_number(number)}.")
    return checked


_WRONG = object()


def _typed(value: Any, annotation: Any) -> Any:
    """``value`` as ``annotation`` (int -> float where a float is wanted), or ``_WRONG``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin is Union:
        if value is None:
            return None if type(None) in args else _WRONG
        for arm in args:
            checked = _typed(value, arm) if arm is not type(None) else _WRONG
            if checked is not _WRONG:
                return checked
        return _WRONG
    if origin is list:
        if not isinstance(value, list):
            return _WRONG
        items = [_typed(item, args[0]) for item in value]
        return _WRONG if any(item is _WRONG for item in items) else items
    if origin is dict:
        return value if isinstance(value, dict) and all(isinstance(key, str) for key in value) else _WRONG
    if annotation is bool:
        return value if isinstance(value, bool) else _WRONG
    if isinstance(value, bool):  # YAML's true/false is no number
        return _WRONG
    if annotation is float:
        return float(value) if isinstance(value, (int, float)) else _WRONG
    return value if isinstance(value, annotation) else _WRONG


def _describe(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Union:
        return " or ".join("null" if arm is type(None) else _describe(arm) for arm in args)
    if origin is list:
        return f"a list of {_describe(args[0]).split(' ', 1)[1]}s"
    if origin is dict:
        return "a mapping"
    return {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}.get(annotation, str(annotation))


def _yaml_kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a whole number", float: "a number", str: "a string", list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


def _check_speed(config: GRefineConfig, source: str) -> None:
    """Cross-field rules of the ``speed`` section: a model named twice in ``compile``,
    ``compile`` with ``cpu_offload`` (the offload hooks move the weights on every call) and an
    unknown compile backend are refused."""
    speed = config.speed
    if len(set(speed.compile)) != len(speed.compile):
        raise ConfigError(f"config {source}: speed.compile names a model twice: {speed.compile}.")
    if speed.compile and config.cpu_offload:
        raise ConfigError(
            f"config {source}: speed.compile cannot be combined with cpu_offload (the offload hooks move the "
            "weights between devices on every call); turn one of them off."
        )
    if speed.compile:
        import torch._dynamo  # only when compiling: it takes seconds to import

        backends = torch._dynamo.list_backends(exclude_tags=())
        if speed.compile_backend not in backends:
            raise ConfigError(
                f"config {source}: speed.compile_backend must be a torch.compile backend ({', '.join(sorted(backends))}), "
                f"got {speed.compile_backend!r}."
            )


def _build(kind: type, data: dict[str, Any], source: str, section: str):
    known = {f.name: f for f in dataclasses.fields(kind) if f.name != "source"}
    unknown = sorted(set(data) - set(known))
    if unknown:
        where = f"section '{section}'" if section else "top level"
        raise ConfigError(f"config {source}: unknown key(s) {unknown} at {where}; valid keys: {sorted(known)}.")
    values = {}
    for name, value in data.items():
        default = known[name].default_factory() if known[name].default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ConfigError(f"config {source}: '{section + '.' if section else ''}{name}' must be a mapping (a section), got {value!r}.")
            values[name] = _build(type(default), value, source, f"{section}.{name}" if section else name)
        else:
            values[name] = check_value(kind, name, value, f"config {source}: {section + '.' if section else ''}{name}")
    return kind(**values)
