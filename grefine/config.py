"""YAML configuration of a G-Refine run (``configs/*.yaml``), as plain data classes.

Every section maps to one component; unknown keys are an error naming the key, the section and
the file, so that a typo never silently falls back to a default. ``tiny_random: true`` in a
section builds that component from :mod:`grefine.testing` instead of loading weights (the
smoke configuration ``configs/tiny-random.yaml``); a real run never sets it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from grefine.maps.aq_map import (
    DEFAULT_A_BOUND,
    DEFAULT_BETA,
    DEFAULT_MARGIN,
    EMPHASIS_WEIGHT,
)
from grefine.maps.pq_map import DEFAULT_ALPHA


class ConfigError(ValueError):
    """A configuration file or value is wrong; the message names it."""


@dataclass
class PQMapConfig:
    """PQ-Map (Eq. 1-3). ``embeddings``: folder with the official ``PQ-*.pth`` files, or None
    for the CLIP-IQA text-pair fallback."""

    model_name: str = "ViT-B-16"
    pretrained: Optional[str] = "openai"
    embeddings: Optional[str] = "checkpoints/pq_embeddings"
    num_blocks: int = 6
    attention: str = "vvv"
    alpha: list[float] = field(default_factory=lambda: list(DEFAULT_ALPHA))
    input_size: Any = None
    map_normalization: str = "none"
    tiny_random: bool = False


@dataclass
class AQMapConfig:
    """AQ-Map (Eq. 4-8): Eq. 6's ``a_bound`` and ``margin``, Eq. 8's ``beta``, Eq. 7's
    ``emphasis``; see :class:`grefine.maps.aq_map.AQMap`."""

    model_name: str = "ViT-B-16"
    pretrained: Optional[str] = "openai"
    num_blocks: int = 6
    a_bound: float = DEFAULT_A_BOUND
    beta: float = DEFAULT_BETA
    margin: float = DEFAULT_MARGIN
    emphasis: float = EMPHASIS_WEIGHT
    tiny_random: bool = False


@dataclass
class MaskConfig:
    """Eq. 9's Bi(1 − P + D) = ``(P < perceptual_bound) | (D > alignment_bound)``, dilated and
    feathered; see :func:`grefine.refine.mask.binarize`."""

    perceptual_bound: float = 0.5
    alignment_bound: float = 2.0 / 3.0
    dilation: float = 16.0
    feather: float = 4.0


@dataclass
class Stage1Config:
    """Stage 1: SDXL inpainting; strength from (p, a) within [min_strength, max_strength];
    ``steps``: denoising steps run (None = n1 of Eq. 10); ``prompt_suffix``: text appended to
    the (emphasised) prompt; ``vae``: hub id or folder of a VAE loaded in place of the model's
    own, e.g. ``madebyollin/sdxl-vae-fp16-fix`` for a checkpoint whose VAE overflows in fp16
    (None = the model's own; the default model already ships that fp16-fixed VAE)."""

    model: str = "diffusers/stable-diffusion-xl-1.0-inpainting-0.1"
    variant: Optional[str] = "fp16"
    resolution: Optional[int] = 1024
    guidance_scale: float = 7.5
    min_strength: float = 0.3
    max_strength: float = 0.9
    steps: Optional[int] = None
    prompt_suffix: str = ""
    vae: Optional[str] = None
    tiny_random: bool = False


@dataclass
class Stage2Config:
    """Stage 2: ``type: pasd`` (or null to run stage 1 alone) at strength δ for ``steps``
    denoising steps (None = n2 of Eq. 10); ``options`` go to
    :meth:`grefine.refine.pasd.PASDStage2.from_pretrained`."""

    type: Optional[str] = "pasd"
    base_model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    pasd_model: str = "checkpoints/pasd"
    strength: float = 0.1
    steps: Optional[int] = None
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

    compile: list[str] = field(default_factory=list)
    compile_mode: Optional[str] = None
    compile_fullgraph: bool = False
    compile_dynamic: Optional[bool] = None
    compile_backend: str = "inductor"
    fuse_qkv: bool = False
    channels_last: bool = False


@dataclass
class GRefineConfig:
    """A whole run. ``total_steps`` is Eq. 10's n1 + n2 (half each, the paper's 20 in total)."""

    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    total_steps: int = 20
    cpu_offload: bool = False
    pq_map: PQMapConfig = field(default_factory=PQMapConfig)
    aq_map: AQMapConfig = field(default_factory=AQMapConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    ablation: AblationConfig = field(default_factory=AblationConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    metrics: list[str] = field(default_factory=list)
    source: str = "<defaults>"

    @property
    def steps(self) -> tuple[int, int]:
        """(n1, n2) of Eq. 10: half of ``total_steps`` each, unless a stage sets its ``steps``."""
        first = self.total_steps // 2
        return self.stage1.steps or first, self.stage2.steps or self.total_steps - first

    @classmethod
    def from_yaml(cls, path: Union[str, Path]) -> "GRefineConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config {path}: no such file (the shipped ones are in configs/).")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config {path}: not valid YAML ({err}).") from err
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> "GRefineConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"config {source}: expected a mapping at the top level.")
        config = _build(cls, {k: v for k, v in data.items()}, source, "")
        config.source = source
        if config.total_steps < 2:
            raise ConfigError(f"config {source}: total_steps must be at least 2 (one per stage).")
        if not 0.0 <= config.stage2.strength <= 1.0:
            raise ConfigError(f"config {source}: stage2.strength (δ) must lie in [0, 1].")
        _check_refinement(config, source)
        _check_speed(config, source)
        return config


def _check_refinement(config: GRefineConfig, source: str) -> None:
    """Range checks of the mask bounds, AQ-Map bounds, stage-1 strengths and per-stage steps."""

    def unit(value) -> bool:
        return 0.0 <= value <= 1.0

    def optional_count(value) -> bool:
        return value is None or (isinstance(value, int) and value >= 1)

    mask, aq, stage1 = config.mask, config.aq_map, config.stage1
    checks = [
        ("mask.perceptual_bound", mask.perceptual_bound, unit, "lie in [0, 1]"),
        ("mask.alignment_bound", mask.alignment_bound, unit, "lie in [0, 1]"),
        ("mask.dilation", mask.dilation, lambda v: v >= 0, "be ≥ 0 (pixels)"),
        ("mask.feather", mask.feather, lambda v: v >= 0, "be ≥ 0 (pixels)"),
        ("aq_map.a_bound", aq.a_bound, unit, "lie in [0, 1]"),
        ("aq_map.beta", aq.beta, lambda v: v > 0, "be > 0"),
        ("aq_map.margin", aq.margin, lambda v: v >= 0, "be ≥ 0"),
        ("aq_map.emphasis", aq.emphasis, lambda v: v >= 0, "be ≥ 0"),
        (
            "stage1.min_strength, stage1.max_strength",
            (stage1.min_strength, stage1.max_strength),
            lambda v: 0.0 < v[0] <= v[1] <= 1.0,
            "satisfy 0 < min_strength ≤ max_strength ≤ 1",
        ),
        ("stage1.prompt_suffix", stage1.prompt_suffix, lambda v: isinstance(v, str), "be a string"),
        ("stage1.vae", stage1.vae, lambda v: v is None or (isinstance(v, str) and v.strip()), "be null or a hub id / folder"),
        ("stage1.steps", stage1.steps, optional_count, "be null or an integer ≥ 1"),
        ("stage2.steps", config.stage2.steps, optional_count, "be null or an integer ≥ 1"),
    ]
    _refuse_invalid(checks, source)


DTYPES = ("auto", "fp16", "bf16", "fp32")


def _check_speed(config: GRefineConfig, source: str) -> None:
    """Types and ranges of ``dtype`` and the ``speed`` section; ``speed.compile`` with
    ``cpu_offload`` is refused (the offload hooks move the weights on every call)."""
    speed = config.speed

    def flag(value) -> bool:
        return isinstance(value, bool)

    def targets(value) -> bool:
        return isinstance(value, list) and len(set(value)) == len(value) and all(v in COMPILE_TARGETS for v in value)

    checks = [
        ("dtype", config.dtype, lambda v: v in DTYPES, f"be one of {', '.join(DTYPES)}"),
        ("speed.compile", speed.compile, targets, f"be a list of distinct names from {list(COMPILE_TARGETS)}"),
        ("speed.compile_mode", speed.compile_mode, lambda v: v is None or v in COMPILE_MODES, f"be null or one of {list(COMPILE_MODES)}"),
        ("speed.compile_fullgraph", speed.compile_fullgraph, flag, "be true or false"),
        ("speed.compile_dynamic", speed.compile_dynamic, lambda v: v is None or flag(v), "be null, true or false"),
        ("speed.fuse_qkv", speed.fuse_qkv, flag, "be true or false"),
        ("speed.channels_last", speed.channels_last, flag, "be true or false"),
    ]
    _refuse_invalid(checks, source)
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


def _refuse_invalid(checks: list, source: str) -> None:
    """Raise :class:`ConfigError` for the first ``(key, value, valid, rule)`` whose value is not valid."""
    for key, value, valid, rule in checks:
        try:
            ok = bool(valid(value))
        except TypeError:
            ok = False
        if not ok:
            raise ConfigError(f"config {source}: {key} must {rule}, got {value!r}.")


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
                raise ConfigError(f"config {source}: '{name}' must be a mapping.")
            value = _build(type(default), value, source, name)
        values[name] = value
    return kind(**values)
