"""Stage 1 of G-Refine's quality refiner (§3.3, Eq. 9-10): SDXL inpainting of the mask.

Eq. 10 runs ``D^{z1}_{n1} ··· D^{z1}_1`` on the image with ``z1`` of Eq. 9, whose mask and
strength come from :mod:`grefine.refine.mask`:

* :func:`inference_steps_for` turns "run n1 denoising steps" into diffusers' step arguments;
* :class:`InpaintStage1` runs the steps and pastes the result back (the paper preset), or, with
  the authors' notebook's options, returns SDXL's whole regenerated image at its own size;
* :func:`working_size` and :class:`StepCounter` are shared with the benchmark's SDXL baselines
  (:mod:`grefine.bench.methods`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Sequence

import numpy as np
import torch
from PIL import Image

from grefine.errors import MissingWeightsError, NonFiniteImageError
from grefine.maps.aq_map import EmphasizedPrompt
from grefine.refine.mask import MaskResult

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline, StableDiffusionXLInpaintPipeline

DEFAULT_INPAINT_MODEL = "diffusers/stable-diffusion-xl-1.0-inpainting-0.1"


class ModelUnavailable(MissingWeightsError):
    """The weights of a diffusion model cannot be loaded (not cached, offline, bad folder)."""


def inference_steps_for(steps_to_run: int, strength: float) -> int:
    """The ``num_inference_steps`` that makes a diffusers img2img/inpaint pipeline run exactly
    ``steps_to_run`` denoising steps at ``strength`` (Eq. 10's n1).

    Diffusers runs the last ``min(int(num_inference_steps · strength), num_inference_steps)``
    steps of a ``num_inference_steps`` schedule; the answer is the smallest schedule for which
    that count reaches ``steps_to_run`` (≈ ``ceil(steps_to_run / strength)``, computed with the
    same float arithmetic as diffusers).
    """
    if steps_to_run < 1 or not 0.0 < strength <= 1.0:
        raise ValueError(
            f"need steps_to_run ≥ 1 and 0 < strength ≤ 1, got {steps_to_run}, {strength}"
        )
    total = math.ceil(steps_to_run / strength)
    while min(int(total * strength), total) < steps_to_run:
        total += 1
    return total


WorkingSize = Literal["fit", "pipeline"]
OutputSize = Literal["input", "working"]
NOTEBOOK_MULTIPLE = 32
"""The authors' notebook resizes the image to long side 1024 in multiples of 32 before SDXL."""


def working_size(
    size: tuple[int, int], resolution: int | None, vae_scale_factor: int, multiple: int | None = None
) -> tuple[int, int]:
    """The ``(width, height)`` at which an SDXL pipeline processes an image of ``size``: long side
    ``resolution`` (``None`` keeps the size), each side rounded to a multiple of ``multiple``
    (default ``2 · vae_scale_factor``, at least 8, which diffusers checks)."""
    multiple = multiple or max(8, 2 * vae_scale_factor)
    scale = 1.0 if resolution is None else resolution / max(size)
    return tuple(max(multiple, round(side * scale / multiple) * multiple) for side in size)


class StepCounter:
    """A diffusers ``callback_on_step_end`` that counts the denoising steps actually run."""

    def __init__(self) -> None:
        self.steps = 0

    def __call__(self, pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        self.steps += 1
        return callback_kwargs


@dataclass(frozen=True)
class Stage1Result:
    """Output of :class:`InpaintStage1`.

    Attributes:
        image: the refined image (RGB), the input's size — equal to the input where the mask's
            soft weight is 0 when pasted back — or, with ``output_size="working"``, SDXL's own
            output size; the input itself (a copy) when ``ran`` is False.
        ran: False when the mask was empty and stage 1 was skipped (no model call at all).
        steps_run: denoising steps actually run (UNet evaluations per CFG branch); 0 if skipped.
        strength: the denoising strength requested.
        seconds: wall-clock time of the stage.
    """

    image: Image.Image
    ran: bool
    steps_run: int
    strength: float
    seconds: float


class InpaintStage1:
    """Stage 1 of G-Refine (Eq. 9-10): SDXL-inpainting of ``Bi(1 − P + D)`` with the
    AQ-Map-emphasised prompt, at a strength from (p, a), for n1 denoising steps.

    Resolution: the image is resized so that its long side is ``resolution`` (SDXL's native
    1024 by default; ``None`` keeps the input size), each side rounded to a multiple of
    ``2 · vae_scale_factor`` (16 for SDXL), and the result is resized back to the input size.

    Paste-back: the output is ``original · (1 − soft) + generated · soft`` with the mask's soft
    weight, so every pixel whose weight is 0 is bit-for-bit the input pixel.

    The authors' notebook calls SDXL otherwise (``configs/authors-notebook.yaml``), and these
    options reproduce it: ``working_size="pipeline"`` resizes the image (and mask) to long side
    ``resolution`` in multiples of 32 and calls the pipeline without ``height``/``width``, so
    diffusers works at its default size (1024×1024 for SDXL, whatever the aspect ratio);
    ``paste_back=False`` keeps SDXL's whole regenerated image (its 9-channel inpainting UNet
    redraws every pixel, the mask only conditions it); ``output_size="working"`` returns it at
    that size instead of the input's; ``skip_empty_mask=False`` runs stage 1 on an empty mask too.
    The defaults are the paper preset's.

    Prompt emphasis (Eq. 7): an :class:`~grefine.maps.aq_map.EmphasizedPrompt` is encoded with
    ``compel`` (the prompt-weighting library; :func:`emphasized_embeddings`): for both SDXL text
    encoders, the tokens of each emphasised span get ``E_∅ + w·(E − E_∅)`` with ``w = 1 + weight``
    and ``E_∅`` the empty prompt's embedding at that position — what ``(phrase:1.1)`` means in
    prompt weighting — and every other token keeps the pipeline's own ``encode_prompt`` embedding.
    The pooled embedding, which has no token positions, becomes
    ``pooled + weight · Σ_j (pooled(phrase_j) − pooled(""))``. The negative (unconditional)
    embeddings are the pipeline's own (zeros for SDXL-inpainting). Prompts are truncated to the
    77-token context, as ``encode_prompt`` does.
    """

    def __init__(
        self,
        pipe: StableDiffusionXLInpaintPipeline,
        *,
        resolution: int | None = 1024,
        paste_back: bool = True,
        working_size: WorkingSize = "fit",
        output_size: OutputSize = "input",
        skip_empty_mask: bool = True,
    ):
        if working_size not in ("fit", "pipeline") or output_size not in ("input", "working"):
            raise ValueError(
                f"working_size must be 'fit' or 'pipeline' and output_size 'input' or 'working', got {working_size!r}, {output_size!r}"
            )
        if paste_back and output_size == "working":
            raise ValueError("paste_back needs output_size='input' (the input's pixels are pasted around the mask)")
        self.pipe = pipe
        self.resolution = resolution
        self.paste_back = paste_back
        self.working_mode = working_size
        self.output_size = output_size
        self.skip_empty_mask = skip_empty_mask
        pipe.set_progress_bar_config(disable=True)  # the runner shows one bar per folder

    @classmethod
    def from_pretrained(
        cls,
        model_id_or_dir: str = DEFAULT_INPAINT_MODEL,
        *,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        variant: str | None = None,
        cpu_offload: bool = False,
        resolution: int | None = 1024,
        vae: str | None = None,
        options: dict | None = None,
        **kwargs,
    ) -> InpaintStage1:
        """Load a ``StableDiffusionXLInpaintPipeline`` from a hub id or a local folder.

        Args:
            model_id_or_dir: hub id (default ``diffusers/stable-diffusion-xl-1.0-inpainting-0.1``)
                or a folder in diffusers layout.
            torch_dtype: default fp16 on CUDA, fp32 on CPU (pass ``torch.bfloat16`` for bf16).
            device: default CUDA when available, else CPU.
            variant: weight-file variant, e.g. ``"fp16"``.
            cpu_offload: ``enable_model_cpu_offload`` (accelerate) instead of moving the whole
                pipeline to the device: one sub-model at a time on the GPU, for small GPUs.
            resolution: working long side, see the class docstring.
            options: the class's other keyword options (``paste_back``, ``working_size``,
                ``output_size``, ``skip_empty_mask``).
            vae: hub id or folder of an ``AutoencoderKL`` loaded in place of the model's own VAE,
                e.g. ``madebyollin/sdxl-vae-fp16-fix`` for a checkpoint whose VAE overflows in
                fp16. In fp16, diffusers runs a VAE whose config sets ``force_upcast`` in fp32;
                the fp16-fixed VAE (which the default model already ships) runs in fp16.
            **kwargs: passed to ``StableDiffusionXLInpaintPipeline.from_pretrained``.

        Raises:
            ModelUnavailable: the weights are neither cached nor downloadable.
        """
        from diffusers import AutoencoderKL, StableDiffusionXLInpaintPipeline

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if torch_dtype is None:
            torch_dtype = torch.float16 if device.type == "cuda" else torch.float32
        if vae is not None:
            try:
                kwargs["vae"] = AutoencoderKL.from_pretrained(vae, torch_dtype=torch_dtype)
            except (OSError, ValueError) as error:
                raise ModelUnavailable(
                    f"cannot load the VAE {vae!r} (config key stage1.vae): {error}. Download it while online or "
                    "point stage1.vae at a local folder with config.json and the weights; see checkpoints/README.md."
                ) from error
        try:
            pipe = StableDiffusionXLInpaintPipeline.from_pretrained(
                model_id_or_dir, torch_dtype=torch_dtype, variant=variant, **kwargs
            )
        except (OSError, ValueError) as error:
            raise ModelUnavailable(
                f"cannot load the SDXL-inpainting weights {model_id_or_dir!r} (variant={variant!r}): "
                f"{error}. Download them while online or point the config at a local folder; "
                "see checkpoints/README.md."
            ) from error
        return cls(place_pipeline(pipe, device, cpu_offload), resolution=resolution, **(options or {}))

    def __call__(
        self,
        image: Image.Image,
        prompt: str | EmphasizedPrompt,
        mask: MaskResult,
        *,
        strength: float,
        num_steps: int = 10,
        guidance_scale: float = 7.5,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Stage1Result:
        """Run ``D^{z1}_{n1} ··· D^{z1}_1`` (Eq. 10) on the masked region of ``image``.

        Args:
            image: the image to refine (any mode; treated as RGB).
            prompt: the generation prompt, or AQ-Map's emphasised prompt (Eq. 7).
            mask: :func:`binarize`'s output at the image size.
            strength: denoising strength, e.g. :func:`stage1_strength`.
            num_steps: n1, the denoising steps to *run* (default 10: half the paper's 20);
                ``num_inference_steps`` is derived by :func:`inference_steps_for`.
            guidance_scale: classifier-free guidance scale.
            seed: seed of a CPU ``torch.Generator`` (reproducible on every device).
            generator: alternatively, a generator of your own (not both).
        """
        if seed is not None and generator is not None:
            raise ValueError("pass either seed or generator, not both")
        if seed is not None:
            generator = torch.Generator("cpu").manual_seed(seed)
        return self._run(image, prompt, mask, strength, num_steps, guidance_scale, [generator])[0]

    def candidates(
        self,
        image: Image.Image,
        prompt: str | EmphasizedPrompt,
        mask: MaskResult,
        *,
        strength: float,
        seeds: Sequence[int],
        num_steps: int = 10,
        guidance_scale: float = 7.5,
    ) -> list[Stage1Result]:
        """N refinements of ``image`` with the N ``seeds``, in one batched pipeline call
        (``num_images_per_prompt = N``): candidate ``i`` is, to rounding, what
        ``self(image, prompt, mask, seed=seeds[i], ...)`` returns.

        Why they agree: diffusers draws every random tensor of a batch from a list of
        generators one sample at a time (``randn_tensor`` with a list: sample ``i`` from
        generator ``i``, shape (1, ...)), the VAE-encoding samples included, as long as the image
        batch holds one image per generator (``_encode_vae_image`` walks the image batch); so the
        image is passed N times. Each generator then sees the draws of a single run in the same
        order: image latents, noise, masked-image latents, then each scheduler step. Only the
        batched arithmetic differs (rounding: 1/255 at most on the tiny models of the tests; an
        image batch of one would leave generators 2..N without their VAE draws, and their
        candidates would differ wholly). Each result's ``seconds`` is that of the whole batch.
        """
        if not seeds:
            raise ValueError("need at least one seed")
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        return self._run(image, prompt, mask, strength, num_steps, guidance_scale, generators)

    def _run(
        self,
        image: Image.Image,
        prompt: str | EmphasizedPrompt,
        mask: MaskResult,
        strength: float,
        num_steps: int,
        guidance_scale: float,
        generators: list[torch.Generator | None],
    ) -> list[Stage1Result]:
        """One pipeline call making ``len(generators)`` refinements (see :meth:`candidates`)."""
        image = image.convert("RGB")
        if mask.binary.shape != (image.height, image.width):
            raise ValueError(f"mask {mask.binary.shape} does not match image {image.size[::-1]}")
        start = time.perf_counter()
        count = len(generators)
        if mask.is_empty and self.skip_empty_mask:
            return [Stage1Result(image.copy(), False, 0, strength, time.perf_counter() - start) for _ in range(count)]

        width, height = self._working_size(image.size)
        mask_image = Image.fromarray(mask.binary.astype(np.uint8) * 255)
        # BILINEAR then "> 0": any working pixel that touches the mask is redrawn.
        mask_image = mask_image.resize((width, height), Image.BILINEAR).point(
            lambda v: 255 * (v > 0)
        )
        working = image.resize((width, height), Image.LANCZOS)
        # "pipeline": no height/width, diffusers works at its default size (the notebook)
        size = {"height": height, "width": width} if self.working_mode == "fit" else {}
        counter = StepCounter()
        pixels = self.pipe(
            image=working if count == 1 else [working] * count,
            mask_image=mask_image,
            **size,
            strength=strength,
            num_inference_steps=inference_steps_for(num_steps, strength),
            guidance_scale=guidance_scale,
            num_images_per_prompt=count,
            generator=generators[0] if count == 1 else generators,
            callback_on_step_end=counter,
            output_type="np",
            **self._prompt_embeds(prompt),
        ).images
        if not np.isfinite(pixels).all():
            raise NonFiniteImageError.for_stage("stage 1 (SDXL inpainting)", self.pipe.unet.dtype)
        seconds = time.perf_counter() - start
        return [
            Stage1Result(self._output(image, generated, mask), True, counter.steps, strength, seconds)
            for generated in self.pipe.image_processor.numpy_to_pil(pixels)
        ]

    def _output(self, image: Image.Image, generated: Image.Image, mask: MaskResult) -> Image.Image:
        """Stage 1's image from SDXL's output: pasted back at the input's size (the paper
        preset), SDXL's whole image at the input's size, or at its own (``output_size="working"``)."""
        if self.output_size == "working":
            return generated
        if self.paste_back:
            return paste_back(image, generated.resize(image.size, Image.LANCZOS), mask.soft)
        return generated.resize(image.size, Image.LANCZOS)

    def _working_size(self, size: tuple[int, int]) -> tuple[int, int]:
        multiple = NOTEBOOK_MULTIPLE if self.working_mode == "pipeline" else None
        return working_size(size, self.resolution, self.pipe.vae_scale_factor, multiple)

    def _prompt_embeds(self, prompt: str | EmphasizedPrompt) -> dict:
        """The prompt arguments of the pipeline call: plain text, or Eq. 7's embeddings."""
        if isinstance(prompt, str):
            return {"prompt": prompt}
        if not prompt.spans:
            return {"prompt": prompt.text}
        embeds, pooled = emphasized_embeddings(self.pipe, prompt)
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}


def place_pipeline(pipe: DiffusionPipeline, device: torch.device, cpu_offload: bool) -> DiffusionPipeline:
    """Move a diffusers pipeline to ``device``; with ``cpu_offload``, accelerate's model CPU
    offload instead: one model at a time is moved onto ``device`` when it runs."""
    if cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    return pipe


@torch.no_grad()
def emphasized_embeddings(pipe: StableDiffusionXLInpaintPipeline, prompt: EmphasizedPrompt) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 7 for an SDXL pipeline: ``(prompt_embeds (1, 77, 2048), pooled_prompt_embeds (1, 1280))``
    with the emphasis of the class docstring, built with ``compel`` from ``prompt.fragments()``
    (no prompt-syntax parsing, so the prompt's own characters are never read as weights)."""
    from compel import Compel, ReturnedEmbeddingsType
    from compel.prompt_parser import FlattenedPrompt

    device = pipe._execution_device
    dtype = pipe.text_encoder_2.dtype
    encoders = [
        Compel(
            tokenizer=tokenizer,
            text_encoder=encoder,
            returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
            dtype_for_device_getter=lambda _: dtype,
            truncate_long_prompts=True,
            device=str(device),
        )
        for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2))
    ]
    weighted = FlattenedPrompt(prompt.fragments())
    embeds = torch.cat([compel.build_conditioning_tensor_for_prompt_object(weighted)[0][0] for compel in encoders], dim=-1)
    pooled_of = encoders[1].conditioning_provider.get_pooled_embeddings
    pooled = pooled_of([prompt.text], device=str(device))
    if prompt.phrases:
        phrases = pooled_of(list(prompt.phrases), device=str(device))
        pooled = pooled + prompt.weight * (phrases - pooled_of([""], device=str(device))).sum(dim=0, keepdim=True)
    return embeds.to(device=device, dtype=dtype), pooled.to(device=device, dtype=dtype)


def paste_back(original: Image.Image, generated: Image.Image, weight: np.ndarray) -> Image.Image:
    """``original · (1 − weight) + generated · weight`` (RGB, same size); pixels of weight 0
    are exactly the original's."""
    base = np.asarray(original.convert("RGB"), dtype=np.float32)
    new = np.asarray(generated.convert("RGB"), dtype=np.float32)
    blended = base + (new - base) * weight[..., None]
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))
