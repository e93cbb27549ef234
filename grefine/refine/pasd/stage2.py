"""G-Refine stage 2: a mild, global PASD restoration pass.

G-Refine's quality refiner (paper §3.3) ends with a restoration stage that denoises the whole
image with an extremely small strength δ (Eq. 9: ``z_2 = δ · QKV(prompt, 1)``, i.e. the full
image is the mask) for ``n_2`` iterations (Eq. 10: ``R = D^{z_2}_{n_2} ⋯ D^{z_2}_1(...)``); the
model is PASD (Yang et al., ECCV 2024), run with half of the iterations (§4.2).

:class:`PASDStage2` reproduces PASD's inference loop (``pipelines/pipeline_pasd.py`` and
``test_pasd.py``) on diffusers components, with δ read like diffusers' img2img ``strength``:

* ``k = round(δ · num_inference_steps)`` denoising steps are run, the last ``k`` of a
  ``num_inference_steps`` schedule; ``k = 0`` (e.g. δ = 0) returns the input image unchanged.
* Latents start from the VAE posterior sample of the image, noised to the first of those ``k``
  timesteps; then, as in PASD, ``scheduler.add_noise`` is applied once more with the timestep
  ``added_noise_level`` (default 900). With PASD's UniPC scheduler a timestep that is not on the
  inference schedule maps to the schedule's *last* (smallest) noise level, so this adds a small
  amount of noise — the behaviour of the authors' code, kept as is. With δ = 1 the loop is PASD's.
* Each step runs the PASD ControlNet on the (padded) input image in ``[0, 1]`` and the
  pixel-aware UNet, with classifier-free guidance (PASD's negative prompt, ``guidance_scale`` 9).
* The VAE is tiled for large images, the result is colour-corrected against the input
  (wavelet by default) and returned at the input size (times ``upscale``).
* Working size: images whose long side exceeds ``max_resolution`` are restored downscaled to it,
  and the restoration's *change* (restored − downscaled input) is upscaled and added to the
  full-size input, so the input's finer detail is kept and the UNet, ControlNet and VAE never
  run above ``max_resolution`` — the memory of a call is bounded whatever the image size.
* The prompt is ``test_pasd.py``'s (:func:`~grefine.refine.pasd.caption.pasd_prompt`): the
  prompt, then ``added_prompt``; with a ``caption_model`` (CoCa, ``test_pasd.py``'s default), the
  image's caption first and ``added_prompt`` appended without a separator.
* ``input_jpeg_quality``: the input first goes through a JPEG at that quality, as the authors'
  notebook hands stage 1's result to PASD as ``step-1.jpg`` (PIL's default quality 75).

Not reproduced: PASD's tiling of the UNet over latents larger than 320×320 (images above
2560 px a side run in one pass) and its GroupNorm-synchronised VAE tiles (see
:mod:`grefine.refine.pasd.vae_tiling`).
"""
from __future__ import annotations

import io
import os

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DiffusionPipeline, UniPCMultistepScheduler
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizer

from grefine.errors import NonFiniteImageError
from grefine.image_io import fit_long_side

from .caption import caption_image, pasd_prompt
from .color_fix import ColorFix, apply_color_fix
from .controlnet import PASDControlNetModel
from .loading import load_component, load_pasd_model, pasd_component
from .unet import PASDUNet2DConditionModel
from .vae_tiling import decode_latents, encode_latent_distribution, vae_scale_factor

PASD_NEGATIVE_PROMPT = "blurry, dotted, noise, raster lines, unclear, lowres, over-smoothed"
"""``test_pasd.py``'s default negative prompt."""

PASD_ADDED_PROMPT = "clean, high-resolution, 8k"
"""``test_pasd.py``'s default text appended to every prompt."""


class PASDStage2(DiffusionPipeline):
    """PASD restoration with strength δ, as G-Refine's stage 2 (Eq. 9–10).

    Args:
        vae, text_encoder, tokenizer, scheduler: Stable Diffusion 1.5 components (PASD uses
            ``UniPCMultistepScheduler`` built from SD1.5's scheduler config).
        unet, controlnet: the PASD models.
        added_noise_level: timestep passed to the extra ``scheduler.add_noise`` (PASD: 900).
        conditioning_scale: ControlNet residual scale (PASD: 1.0).
        guidance_scale: classifier-free guidance weight; ``<= 1`` disables guidance (PASD: 9.0).
        negative_prompt: PASD's default negative prompt.
        added_prompt: text appended to the prompt (PASD: ``"clean, high-resolution, 8k"``).
        process_size: images whose shorter side (after ``upscale``) is below this are enlarged
            to it for restoration and resized back afterwards (PASD: 768); ``None`` disables.
        encoder_tile_size: VAE encoder tile side in pixels (PASD: 1024; multiple of 8).
        decoder_tile_size: VAE decoder tile side in latent pixels (PASD: 224).
        color_fix: ``'wavelet'`` (PASD), ``'adain'`` or ``None``.
        upscale: integer output scale; G-Refine keeps the size (1).
        max_resolution: longest side PASD works at (see above); ``None``: the image's own.
        caption_model: an open_clip CoCa whose caption of the image starts the prompt
            (``test_pasd.py``'s default; :mod:`grefine.refine.pasd.caption`); None: no caption.
        input_jpeg_quality: the input goes through a JPEG at this quality (1-95) first; None: not.
    """

    model_cpu_offload_seq = "caption_model->text_encoder->controlnet->unet->vae"

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: PASDUNet2DConditionModel,
        controlnet: PASDControlNetModel,
        scheduler: KarrasDiffusionSchedulers,
        *,
        added_noise_level: int = 900,
        conditioning_scale: float = 1.0,
        guidance_scale: float = 9.0,
        negative_prompt: str = PASD_NEGATIVE_PROMPT,
        added_prompt: str = PASD_ADDED_PROMPT,
        process_size: int | None = 768,
        encoder_tile_size: int = 1024,
        decoder_tile_size: int = 224,
        color_fix: ColorFix | None = "wavelet",
        upscale: int = 1,
        max_resolution: int | None = None,
        caption_model: torch.nn.Module | None = None,
        input_jpeg_quality: int | None = None,
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            controlnet=controlnet,
            scheduler=scheduler,
            caption_model=caption_model,
        )
        factor = vae_scale_factor(vae)
        if encoder_tile_size % factor or encoder_tile_size < 2 * factor or decoder_tile_size < 2:
            raise ValueError(
                f"encoder_tile_size must be a multiple of {factor} and at least {2 * factor} pixels, decoder_tile_size "
                f"at least 2 latent pixels; got {encoder_tile_size} and {decoder_tile_size}"
            )
        if color_fix not in ("wavelet", "adain", None):
            raise ValueError(f"color_fix must be 'wavelet', 'adain' or None, got {color_fix!r}")
        if int(upscale) != upscale or upscale < 1:
            raise ValueError(f"upscale must be a positive integer, got {upscale!r}")
        if max_resolution is not None and max_resolution < 2 * factor:
            raise ValueError(f"max_resolution must be at least {2 * factor} pixels or None, got {max_resolution!r}")
        if input_jpeg_quality is not None and not 1 <= input_jpeg_quality <= 95:
            raise ValueError(f"input_jpeg_quality must be in [1, 95] or None, got {input_jpeg_quality!r}")
        self.register_to_config(
            added_noise_level=int(added_noise_level),
            conditioning_scale=float(conditioning_scale),
            guidance_scale=float(guidance_scale),
            negative_prompt=negative_prompt,
            added_prompt=added_prompt,
            process_size=process_size,
            encoder_tile_size=int(encoder_tile_size),
            decoder_tile_size=int(decoder_tile_size),
            color_fix=color_fix,
            upscale=int(upscale),
            max_resolution=max_resolution,
            input_jpeg_quality=input_jpeg_quality,
        )

    @classmethod
    def from_pretrained(
        cls,
        base_model: str | os.PathLike,
        pasd_model: str | os.PathLike,
        *,
        pasd_subfolder: str | None = None,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        **options,
    ) -> PASDStage2:
        """Load SD1.5 (``vae``, ``text_encoder``, ``tokenizer``, ``scheduler``) from ``base_model`` and
        PASD (``unet``, ``controlnet``, strict keys) from ``pasd_model``; hub ids or local folders.
        ``pasd_subfolder``: the folder inside ``pasd_model`` that holds ``unet/`` and
        ``controlnet/`` (the authors' hub repository ``yangtao9009/PASD``: ``pasd/checkpoint-100000``);
        None when they are at its top.

        Raises:
            PASDWeightsNotFoundError: a component is missing (path or hub id in the message).
            PASDCheckpointMismatchError: a PASD checkpoint does not match the model's keys/shapes.
        """
        dtype = {} if torch_dtype is None else {"torch_dtype": torch_dtype}
        stage2 = cls(
            vae=load_component(AutoencoderKL.from_pretrained, base_model, "vae", **dtype),
            text_encoder=load_component(
                CLIPTextModel.from_pretrained, base_model, "text_encoder", **({"dtype": torch_dtype} if torch_dtype else {})
            ),
            tokenizer=load_component(CLIPTokenizer.from_pretrained, base_model, "tokenizer"),
            unet=load_pasd_model(PASDUNet2DConditionModel, pasd_model, pasd_component(pasd_subfolder, "unet"), **dtype),
            controlnet=load_pasd_model(PASDControlNetModel, pasd_model, pasd_component(pasd_subfolder, "controlnet"), **dtype),
            scheduler=load_component(UniPCMultistepScheduler.from_pretrained, base_model, "scheduler"),
            **options,
        )
        return stage2.to(device) if device is not None else stage2

    @torch.no_grad()
    def __call__(
        self,
        image: Image.Image,
        prompt: str = "",
        *,
        strength: float,
        num_inference_steps: int = 20,
        generator: torch.Generator | None = None,
    ) -> Image.Image:
        """Restore ``image`` with ``round(strength * num_inference_steps)`` PASD steps (δ = ``strength``).

        Returns an RGB image of the input's size times ``upscale``; the input itself (resized by
        ``upscale``) when no step is run.
        """
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}")
        image = image.convert("RGB")
        if self.config.input_jpeg_quality is not None:
            image = jpeg_round_trip(image, self.config.input_jpeg_quality)
        target_size = (image.width * self.config.upscale, image.height * self.config.upscale)
        num_steps = round(strength * num_inference_steps)
        if num_steps == 0:
            return image.resize(target_size, Image.BICUBIC) if target_size != image.size else image.copy()
        caption = caption_image(self.caption_model, image, self._execution_device) if self.caption_model is not None else None
        prompt = pasd_prompt(prompt, self.config.added_prompt, caption)

        work_image = self._working_image(image, target_size)
        pixels = _pad_to_multiple(_to_tensor(work_image), vae_scale_factor(self.vae)).to(self._execution_device)
        restored = self._restore(pixels, prompt, num_steps, num_inference_steps, generator)
        self.maybe_free_model_hooks()  # with model CPU offload: the VAE, used last, leaves the GPU too
        if not torch.isfinite(restored).all():
            raise NonFiniteImageError.for_stage("stage 2 (PASD)", self.unet.dtype)
        restored = apply_color_fix(restored.float(), pixels.float(), self.config.color_fix)
        result = _to_pil(restored[..., : work_image.height, : work_image.width])
        if result.size == target_size:
            return result
        if max(work_image.size) < max(target_size):  # capped by max_resolution: keep the input's detail
            full = image.resize(target_size, Image.BICUBIC) if image.size != target_size else image
            return _add_upscaled_change(full, work_image, result)
        return result.resize(target_size, Image.BICUBIC)

    def _working_image(self, image: Image.Image, target_size: tuple[int, int]) -> Image.Image:
        """The image at the resolution PASD restores: ``upscale``d, enlarged to ``process_size``,
        and no larger than ``max_resolution`` on its long side."""
        if target_size != image.size:
            image = image.resize(target_size, Image.BICUBIC)
        process_size = self.config.process_size
        if process_size and min(image.size) < process_size:
            scale = process_size / min(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
        return fit_long_side(image, self.config.max_resolution)

    def _restore(
        self,
        pixels: torch.Tensor,
        prompt: str,
        num_steps: int,
        num_inference_steps: int,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """PASD's denoising loop on ``pixels`` in ``[0, 1]`` (sides multiples of 8); returns ``[0, 1]``."""
        guidance = self.config.guidance_scale > 1.0
        prompt_embeds = self._encode_prompt(prompt, guidance)
        control_image = pixels.to(self.controlnet.dtype)
        if guidance:
            control_image = torch.cat([control_image] * 2)
        timesteps, latents = self._initial_latents(pixels, num_steps, num_inference_steps, generator, prompt_embeds.dtype)
        for t in self.progress_bar(timesteps):
            model_input = torch.cat([latents] * 2) if guidance else latents
            model_input = self.scheduler.scale_model_input(model_input, t)
            down_residuals, mid_residual = self.controlnet(
                model_input,
                t,
                encoder_hidden_states=prompt_embeds,
                controlnet_cond=control_image,
                conditioning_scale=self.config.conditioning_scale,
                return_dict=False,
            )
            noise_pred = self.unet(
                model_input,
                t,
                encoder_hidden_states=prompt_embeds,
                down_block_additional_residuals=down_residuals,
                mid_block_additional_residual=mid_residual,
                return_dict=False,
            )[0]
            if guidance:
                uncond, cond = noise_pred.chunk(2)
                noise_pred = uncond + self.config.guidance_scale * (cond - uncond)
            latents = self.scheduler.step(noise_pred, t, latents, return_dict=False)[0].to(prompt_embeds.dtype)
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        decoded = decode_latents(self.vae, latents, self.config.decoder_tile_size)
        return (decoded / 2 + 0.5).clamp(0, 1)

    def _encode_prompt(self, prompt: str, guidance: bool) -> torch.Tensor:
        """CLIP embeddings of ``[negative_prompt, prompt]`` (only the latter without guidance);
        ``prompt`` is the full prompt (:func:`~grefine.refine.pasd.caption.pasd_prompt`)."""
        texts = [self.config.negative_prompt, prompt] if guidance else [prompt]
        tokens = self.tokenizer(
            texts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        embeds = self.text_encoder(tokens.input_ids.to(self._execution_device))[0]
        return embeds.to(self.unet.dtype)

    def _initial_latents(
        self,
        pixels: torch.Tensor,
        num_steps: int,
        num_inference_steps: int,
        generator: torch.Generator | None,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The last ``num_steps`` timesteps of the schedule and PASD's noised image latents."""
        self.scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        start = (num_inference_steps - num_steps) * self.scheduler.order
        timesteps = self.scheduler.timesteps[start:]
        posterior = encode_latent_distribution(self.vae, pixels.to(self.vae.dtype) * 2 - 1, self.config.encoder_tile_size)
        latents = (posterior.sample(generator) * self.vae.config.scaling_factor).to(dtype)
        noise = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=dtype)
        latents = self.scheduler.add_noise(latents, noise, timesteps[:1])
        added_noise = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=dtype)
        added_timestep = torch.tensor([self.config.added_noise_level], device=latents.device)
        latents = self.scheduler.add_noise(latents, added_noise, added_timestep)
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(start)
        return timesteps, latents * self.scheduler.init_noise_sigma


def jpeg_round_trip(image: Image.Image, quality: int) -> Image.Image:
    """``image`` saved as a JPEG at ``quality`` (PIL's encoder and its default 4:2:0 subsampling)
    and decoded again, in memory."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def _add_upscaled_change(full: Image.Image, small: Image.Image, restored: Image.Image) -> Image.Image:
    """``full + BIC↑(restored − small)``: the restoration computed at ``small``'s size, applied to
    the full-size image without replacing its finer detail."""
    change = (_to_tensor(restored) - _to_tensor(small)) * 255.0
    change = F.interpolate(change, size=(full.height, full.width), mode="bicubic", align_corners=False)
    values = torch.from_numpy(np.asarray(full, dtype=np.float32)).permute(2, 0, 1)[None] + change
    return Image.fromarray(values[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy())


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> ``(1, 3, H, W)`` float tensor in ``[0, 1]``."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def _to_pil(image: torch.Tensor) -> Image.Image:
    """``(1, 3, H, W)`` tensor in ``[0, 1]`` -> RGB PIL image (rounded to 8 bits)."""
    array = (image[0].permute(1, 2, 0).float().cpu().numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
    return Image.fromarray(array)


def _pad_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad the bottom/right of ``image`` so both sides are multiples of ``multiple``."""
    height, width = image.shape[-2:]
    return F.pad(image, (0, -width % multiple, 0, -height % multiple), mode="replicate")
