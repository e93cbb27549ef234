"""The refinement methods of the benchmark (paper §4.2, Tables 2-5), each a named YAML config.

A method is ``configs/methods/<name>.yaml``: a ``type`` (a key of :data:`METHOD_TYPES`) and that
type's settings. :func:`load_method` reads and checks it (no model is loaded);
:func:`build_refiner` runs the one weights pre-flight and builds a *refiner*: a callable
``refiner(image, prompt, *, seed=None)`` returning an object with ``.image`` (the refined RGB
image, the input's size), ``.summary()`` (the scalar columns of a ``results.csv`` row) and
``.timings`` — the contract of :class:`~grefine.pipeline.GRefinePipeline`.

==================== ================= ======================================================
method               type              what
==================== ================= ======================================================
g-refine             g-refine          :class:`~grefine.pipeline.GRefinePipeline`, configs/default.yaml
g-refine-notebook    g-refine          the same, configs/authors-notebook.yaml
g-refine-never-worse g-refine          the same, configs/never-worse.yaml (``verify`` on)
identity             identity          the input unchanged (checks the harness: every change 0)
sdxl-refiner         sdxl-refiner      SDXL-Refiner img2img over the whole image
sdxl-img2img         sdxl-img2img      SDXL base img2img over the whole image
sdxl-inpaint-full    sdxl-inpaint-full stage 1 (SDXL inpainting) with a whole-image mask
pasd                 pasd              stage 2 (PASD) alone at full strength
==================== ================= ======================================================

The diffusion baselines run the paper's 20 iterations: 20 denoising steps *run* (like G-Refine's
n1 + n2), the schedule being ``steps / strength`` long; their strengths are set, and explained, in
their YAML files. Their results are reported under G-Refine's stage columns (``strength1``,
``stage1_steps``, ``stage1_seconds`` for the SDXL passes; ``*2`` for PASD, G-Refine's stage 2).

To add a method, write ``configs/methods/<name>.yaml`` with an existing ``type`` (e.g. another
SDXL model or strength), or register a new type in :data:`METHOD_TYPES`: its settings dataclass
(the YAML keys), a builder ``MethodConfig -> refiner`` and the weights it needs. Every setting
can be overridden (``load_method(name, overrides={...})``), e.g. ``tiny_random: true`` builds
tiny random models (a smoke test without weights, never a result;
:func:`tiny_random_overrides` gives every type's), and ``device`` (every type) places a method,
e.g. one GPU per process.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
import yaml
from PIL import Image

from grefine.config import PASD_HUB_MODEL, PASD_HUB_SUBFOLDER, ConfigError, GRefineConfig, _build
from grefine.eval.metrics import check_select_metric, create_select_metric
from grefine.image_io import PathLike, as_rgb_image
from grefine.pipeline import HALF_DTYPES, GRefinePipeline, resolve_device, resolve_dtype
from grefine.refine.mask import MaskResult
from grefine.refine.stage1 import (
    DEFAULT_INPAINT_MODEL,
    InpaintStage1,
    ModelUnavailable,
    StepCounter,
    inference_steps_for,
    working_size,
)
from grefine.weights import WeightSource, check_weights, require_weights

METHODS_DIR = Path(__file__).resolve().parents[2] / "configs" / "methods"
"""The shipped method configs (``configs/methods/`` of the repository)."""
TINY_RANDOM_CONFIG = METHODS_DIR.parent / "tiny-random.yaml"
"""The G-Refine config of ``tiny_random: true`` (its models and sizes)."""


# ------------------------------------------------------------------------------ settings


@dataclass
class GRefineSettings:
    """``type: g-refine``: ``config`` is a G-Refine YAML (relative to the method file);
    ``device``, when set, replaces the config's; ``tiny_random`` runs ``configs/tiny-random.yaml``'s
    tiny models and sizes with the decisions of ``config`` (its ``ablation``, ``gate`` and ``verify``)."""

    config: str = "../default.yaml"
    device: Optional[str] = None
    tiny_random: bool = False


@dataclass
class IdentitySettings:
    """``type: identity``: ``device`` only says where the metrics run."""

    device: str = "auto"


@dataclass
class DiffusionSettings:
    """What every diffusion baseline shares: where it runs, its seed, and ``tiny_random``
    (tiny random models of the same layout, for smoke tests)."""

    device: str = "auto"
    dtype: str = "auto"
    cpu_offload: bool = False
    seed: int = 0
    tiny_random: bool = False
    strength: float = 0.5
    steps: int = 20


@dataclass
class SDXLSettings(DiffusionSettings):
    """``type: sdxl-refiner | sdxl-img2img | sdxl-inpaint-full``: a diffusers SDXL pipeline over the
    whole image. ``model``: hub id or local folder (default: the type's model); ``resolution``:
    working long side (None keeps the image size)."""

    model: Optional[str] = None
    variant: Optional[str] = "fp16"
    guidance_scale: float = 7.5
    resolution: Optional[int] = 1024


@dataclass
class PASDSettings(DiffusionSettings):
    """``type: pasd``: PASD (stage 2) alone; ``options`` go to
    :meth:`~grefine.refine.pasd.PASDStage2.from_pretrained`."""

    base_model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    pasd_model: str = PASD_HUB_MODEL
    pasd_subfolder: Optional[str] = PASD_HUB_SUBFOLDER
    strength: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class MethodConfig:
    """A method: its ``name`` (the YAML's stem), ``type``, checked ``settings`` and ``source``."""

    name: str
    type: str
    settings: Any
    source: str

    @property
    def device(self) -> torch.device:
        """Where the method runs (and where its metrics should run)."""
        if isinstance(self.settings, GRefineSettings):
            return resolve_device(_grefine_config(self).device)
        return resolve_device(self.settings.device)


# ------------------------------------------------------------------------------ refiners


@dataclass
class RefinerOutput:
    """One image refined by a baseline: one diffusion pass (or none, for ``identity``).

    ``stage`` is the G-Refine stage whose ``results.csv`` columns report the pass (1 for the
    SDXL passes, 2 for PASD)."""

    image: Image.Image
    strength: float = 0.0
    steps_run: int = 0
    seconds: float = 0.0
    stage: int = 1
    note: str = ""

    @property
    def timings(self) -> dict[str, float]:
        return {f"stage{self.stage}": self.seconds}

    def summary(self) -> dict[str, object]:
        """The scalar columns of a ``results.csv`` row."""
        return {
            f"strength{self.stage}": self.strength,
            f"stage{self.stage}_steps": self.steps_run,
            f"stage{self.stage}_seconds": self.seconds,
            "note": self.note,
        }


class IdentityRefiner:
    """Returns every image unchanged (RGB): the harness check, where every metric's change is 0."""

    def __call__(self, image: Union[Image.Image, PathLike], prompt: str, *, seed: Optional[int] = None) -> RefinerOutput:
        return RefinerOutput(as_rgb_image(image).copy(), note="identity: the input unchanged")


class SDXLImg2ImgRefiner:
    """A whole-image SDXL img2img pass (base or refiner model) with the prompt: ``steps``
    denoising steps run at ``strength``, at ``resolution`` (long side), resized back."""

    def __init__(self, pipe, *, strength: float, steps: int, guidance_scale: float, resolution: Optional[int], seed: int = 0):
        self.pipe = pipe
        self.strength, self.steps, self.guidance_scale = strength, steps, guidance_scale
        self.resolution, self.seed = resolution, seed
        pipe.set_progress_bar_config(disable=True)

    def __call__(self, image: Union[Image.Image, PathLike], prompt: str, *, seed: Optional[int] = None) -> RefinerOutput:
        image = as_rgb_image(image)
        start = time.perf_counter()
        size = working_size(image.size, self.resolution, self.pipe.vae_scale_factor)
        counter = StepCounter()
        generated = self.pipe(
            prompt=prompt,
            image=image.resize(size, Image.LANCZOS),
            strength=self.strength,
            num_inference_steps=inference_steps_for(self.steps, self.strength),
            guidance_scale=self.guidance_scale,
            generator=torch.Generator("cpu").manual_seed(self.seed if seed is None else seed),
            callback_on_step_end=counter,
        ).images[0]
        refined = generated.resize(image.size, Image.LANCZOS) if generated.size != image.size else generated
        return RefinerOutput(refined, self.strength, counter.steps, time.perf_counter() - start, stage=1)


class WholeImageInpaintRefiner:
    """G-Refine's stage 1 (:class:`~grefine.refine.stage1.InpaintStage1`) with a whole-image mask
    and the plain prompt, at a fixed strength: SDXL inpainting without PQ/AQ-Map guidance."""

    def __init__(self, stage1: InpaintStage1, *, strength: float, steps: int, guidance_scale: float, seed: int = 0):
        self.stage1 = stage1
        self.strength, self.steps, self.guidance_scale, self.seed = strength, steps, guidance_scale, seed

    def __call__(self, image: Union[Image.Image, PathLike], prompt: str, *, seed: Optional[int] = None) -> RefinerOutput:
        image = as_rgb_image(image)
        whole = np.ones((image.height, image.width), dtype=bool)
        result = self.stage1(
            image,
            prompt,
            MaskResult(binary=whole, soft=whole.astype(np.float32)),
            strength=self.strength,
            num_steps=self.steps,
            guidance_scale=self.guidance_scale,
            seed=self.seed if seed is None else seed,
        )
        return RefinerOutput(result.image, result.strength, result.steps_run, result.seconds, stage=1)


class PASDRefiner:
    """G-Refine's stage 2 (:class:`~grefine.refine.pasd.PASDStage2`) alone, over the whole image:
    ``steps`` PASD steps run at ``strength`` (1.0 = PASD's own restoration)."""

    def __init__(self, stage2, *, strength: float, steps: int, seed: int = 0):
        self.stage2 = stage2
        self.strength, self.steps, self.seed = strength, steps, seed
        stage2.set_progress_bar_config(disable=True)

    def __call__(self, image: Union[Image.Image, PathLike], prompt: str, *, seed: Optional[int] = None) -> RefinerOutput:
        image = as_rgb_image(image)
        start = time.perf_counter()
        schedule = max(self.steps, round(self.steps / self.strength))  # PASD runs round(strength · schedule)
        generator = torch.Generator("cpu").manual_seed(self.seed if seed is None else seed)
        refined = self.stage2(image, prompt, strength=self.strength, num_inference_steps=schedule, generator=generator)
        steps_run = round(self.strength * schedule)
        return RefinerOutput(refined, self.strength, steps_run, time.perf_counter() - start, stage=2)


# ------------------------------------------------------------------------------ builders


def _grefine_config(method: MethodConfig) -> GRefineConfig:
    """The G-Refine config of a ``g-refine`` method, with the method's ``device`` when set
    (``tiny_random``: the tiny config with the method's ablation, gate and verify)."""
    config = GRefineConfig.from_yaml(method.settings.config)
    if method.settings.tiny_random:
        tiny = GRefineConfig.from_yaml(TINY_RANDOM_CONFIG)
        config = dataclasses.replace(tiny, ablation=config.ablation, gate=config.gate, verify=config.verify)
    if method.settings.device:
        config.device = method.settings.device
    return config


def _build_grefine(method: MethodConfig) -> GRefinePipeline:
    config = _grefine_config(method)
    select = config.verify.metric
    select_metric = create_select_metric(select, device=resolve_device(config.device)) if select else None
    return GRefinePipeline.from_pretrained(config, select_metric=select_metric)


def _build_identity(method: MethodConfig) -> IdentityRefiner:
    return IdentityRefiner()


def _sdxl_img2img_builder(tiny_builder: str) -> Callable[[MethodConfig], SDXLImg2ImgRefiner]:
    def build(method: MethodConfig) -> SDXLImg2ImgRefiner:
        s = method.settings
        if s.tiny_random:
            from grefine import tiny

            pipe = getattr(tiny, tiny_builder)(seed=s.seed)
        else:
            from diffusers import StableDiffusionXLImg2ImgPipeline

            pipe = _load_diffusers(StableDiffusionXLImg2ImgPipeline, s, _model(method))
        return SDXLImg2ImgRefiner(pipe, strength=s.strength, steps=s.steps, guidance_scale=s.guidance_scale, resolution=s.resolution, seed=s.seed)

    return build


def _build_inpaint_full(method: MethodConfig) -> WholeImageInpaintRefiner:
    s = method.settings
    if s.tiny_random:
        from grefine.tiny import build_tiny_sdxl_inpaint_pipeline

        stage1 = InpaintStage1(build_tiny_sdxl_inpaint_pipeline(seed=s.seed), resolution=s.resolution)
    else:
        device = resolve_device(s.device)
        dtype = resolve_dtype(s.dtype, device)
        stage1 = InpaintStage1.from_pretrained(
            _model(method),
            torch_dtype=dtype,
            device=device,
            variant=s.variant if dtype in HALF_DTYPES else None,
            cpu_offload=s.cpu_offload,
            resolution=s.resolution,
        )
    return WholeImageInpaintRefiner(stage1, strength=s.strength, steps=s.steps, guidance_scale=s.guidance_scale, seed=s.seed)


def _build_pasd(method: MethodConfig) -> PASDRefiner:
    s = method.settings
    if s.tiny_random:
        from grefine.tiny import build_tiny_pasd_stage2

        stage2 = build_tiny_pasd_stage2(seed=s.seed, **s.options)
    else:
        from grefine.refine.pasd import PASDStage2

        device = resolve_device(s.device)
        dtype = resolve_dtype(s.dtype, device)
        stage2 = PASDStage2.from_pretrained(
            s.base_model,
            s.pasd_model,
            pasd_subfolder=s.pasd_subfolder,
            torch_dtype=dtype,
            device=None if s.cpu_offload else device,
            **s.options,
        )
        if s.cpu_offload:
            stage2.enable_model_cpu_offload(device=device)
    return PASDRefiner(stage2, strength=s.strength, steps=s.steps, seed=s.seed)


def _load_diffusers(pipeline_class, s: SDXLSettings, model: str):
    """A diffusers pipeline on the settings' device and dtype (the fp16 variant in fp16 and bf16)."""
    device = resolve_device(s.device)
    dtype = resolve_dtype(s.dtype, device)
    variant = s.variant if dtype in HALF_DTYPES else None
    try:
        pipe = pipeline_class.from_pretrained(model, torch_dtype=dtype, variant=variant)
    except (OSError, ValueError) as error:
        raise ModelUnavailable(
            f"cannot load {pipeline_class.__name__} weights {model!r} (variant={variant!r}): {error}. "
            "Download them while online or point the method's 'model' at a local folder; see checkpoints/README.md."
        ) from error
    if s.cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    return pipe


# ------------------------------------------------------------------------------ registry


@dataclass(frozen=True)
class MethodType:
    """A kind of method: its settings dataclass (the YAML keys), its builder, its default model
    (for ``model: null``) and the weights it needs (for the pre-flight; G-Refine checks its own)."""

    settings: type
    build: Callable[[MethodConfig], Callable]
    default_model: Optional[str] = None
    weights: Callable[[MethodConfig], list[WeightSource]] = lambda method: []


def _model(method: MethodConfig) -> str:
    return method.settings.model or METHOD_TYPES[method.type].default_model


def _diffusers_weights(what: str) -> Callable[[MethodConfig], list[WeightSource]]:
    return lambda method: [WeightSource(what, _model(method), "model")]


def _pasd_weights(method: MethodConfig) -> list[WeightSource]:
    s = method.settings
    return [
        WeightSource("Stable Diffusion 1.5 base (PASD)", s.base_model, "base_model"),
        WeightSource("PASD unet + controlnet", s.pasd_model, "pasd_model"),
    ]


METHOD_TYPES: dict[str, MethodType] = {
    "g-refine": MethodType(GRefineSettings, _build_grefine),
    "identity": MethodType(IdentitySettings, _build_identity),
    "sdxl-refiner": MethodType(
        SDXLSettings,
        _sdxl_img2img_builder("build_tiny_sdxl_refiner_pipeline"),
        "stabilityai/stable-diffusion-xl-refiner-1.0",
        _diffusers_weights("SDXL refiner"),
    ),
    "sdxl-img2img": MethodType(
        SDXLSettings,
        _sdxl_img2img_builder("build_tiny_sdxl_img2img_pipeline"),
        "stabilityai/stable-diffusion-xl-base-1.0",
        _diffusers_weights("SDXL base"),
    ),
    "sdxl-inpaint-full": MethodType(SDXLSettings, _build_inpaint_full, DEFAULT_INPAINT_MODEL, _diffusers_weights("SDXL inpainting")),
    "pasd": MethodType(PASDSettings, _build_pasd, weights=_pasd_weights),
}
"""Method types by name (a method YAML's ``type``)."""


def list_methods(methods_dir: Union[str, Path, None] = None) -> list[str]:
    """The method names of ``methods_dir`` (default: the shipped ``configs/methods/``)."""
    folder = Path(methods_dir) if methods_dir else METHODS_DIR
    return sorted(path.stem for path in folder.glob("*.yaml"))


def load_method(
    name_or_path: Union[str, Path],
    *,
    overrides: Optional[Mapping[str, Any]] = None,
    methods_dir: Union[str, Path, None] = None,
) -> MethodConfig:
    """Read and check a method: a name of ``methods_dir`` (default ``configs/methods/``) or a
    YAML path. ``overrides`` replace settings (paths in them are relative to the working
    directory; in the YAML, ``config`` is relative to the YAML). Loads no model.

    Raises:
        ConfigError: unknown method or type, unknown or bad setting, missing G-Refine config.
    """
    path = Path(name_or_path)
    if path.suffix.lower() not in (".yaml", ".yml"):
        path = (Path(methods_dir) if methods_dir else METHODS_DIR) / f"{name_or_path}.yaml"
        if not path.is_file():
            known = ", ".join(list_methods(methods_dir))
            raise ConfigError(f"unknown method {str(name_or_path)!r}; known methods: {known} (or give a method YAML path)")
    if not path.is_file():
        raise ConfigError(f"method config {path}: no such file.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"method config {path}: not valid YAML ({err}).") from err
    if not isinstance(data, dict) or data.get("type") not in METHOD_TYPES:
        got = data.get("type") if isinstance(data, dict) else data
        raise ConfigError(f"method config {path}: 'type' must be one of {', '.join(METHOD_TYPES)}; got {got!r}.")
    type_name = data.pop("type")
    if "config" in data:
        data["config"] = str(path.parent / str(data["config"]))
    settings = _build(METHOD_TYPES[type_name].settings, {**data, **dict(overrides or {})}, str(path), "")
    _check(settings, f"method config {path}")
    return MethodConfig(path.stem, type_name, settings, str(path))


def _check(s: Any, where: str) -> None:
    """Refuse bad settings before any model loads (the message names the file and key)."""
    if isinstance(s, GRefineSettings):
        try:
            config = GRefineConfig.from_yaml(s.config)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from err
        if config.verify.metric is not None:
            check_select_metric(config.verify.metric, f"{where}: verify.select in {s.config}")
        s.config = str(Path(s.config).resolve())
    if not isinstance(s, DiffusionSettings):
        return
    if not 0.0 < s.strength <= 1.0:
        raise ConfigError(f"{where}: strength must lie in (0, 1], got {s.strength}.")
    if s.steps < 1:
        raise ConfigError(f"{where}: steps must be at least 1, got {s.steps}.")
    try:
        resolve_dtype(s.dtype, torch.device("cpu"))
    except ValueError as err:
        raise ConfigError(f"{where}: {err}.") from err
    if isinstance(s, SDXLSettings) and s.resolution is not None and s.resolution < 8:
        raise ConfigError(f"{where}: resolution must be at least 8 pixels (or null), got {s.resolution}.")


def tiny_random_overrides(method_type: str) -> dict[str, Any]:
    """The overrides that run a method of ``method_type`` with tiny random models, working at 64 px
    as ``configs/tiny-random.yaml`` does (a smoke test without weights; its outputs are noise)."""
    if method_type == "g-refine":
        return {"tiny_random": True}
    if method_type == "pasd":
        return {"tiny_random": True, "options": {"max_resolution": 64}}
    if issubclass(METHOD_TYPES[method_type].settings, SDXLSettings):
        return {"tiny_random": True, "resolution": 64}
    return {}


def check_method_weights(method: MethodConfig) -> None:
    """The one weights pre-flight of a method (a ``g-refine`` method: that of its config); nothing
    to check for tiny random models or ``identity``.

    Raises:
        WeightsUnavailableError: weights are missing and cannot be downloaded (one message
            listing them all, with their config keys).
    """
    if isinstance(method.settings, GRefineSettings):
        check_weights(_grefine_config(method))
    elif not getattr(method.settings, "tiny_random", False):
        require_weights(
            METHOD_TYPES[method.type].weights(method),
            f"method {method.name} ({method.source})",
            hint="For a smoke test without weights set tiny_random: true.",
        )


def build_refiner(method: Union[MethodConfig, str, Path]) -> Callable:
    """The method's refiner (see the module docstring), after the weights pre-flight
    (:func:`check_method_weights`).

    Raises:
        WeightsUnavailableError: weights are missing and cannot be downloaded (one message
            listing them all, with their config keys).
    """
    if not isinstance(method, MethodConfig):
        method = load_method(method)
    check_method_weights(method)
    return METHOD_TYPES[method.type].build(method)
