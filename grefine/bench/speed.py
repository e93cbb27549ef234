"""Full-size architectures with random weights, for the speed and memory benchmarks.

Speed and memory do not depend on weight values, so the benchmark scripts build the real
architectures (SDXL-inpainting, SD1.5 + PASD, CLIP ViT-B/16) from their published configs,
randomly initialised directly on the target device, with no download. Tokenizers are the tiny
offline ones of :mod:`grefine.tiny` (the token ids they produce fit the real vocabularies).
Never used by a real run.
"""
from __future__ import annotations

import torch

SD15_UNET_CONFIG = dict(
    sample_size=64,
    cross_attention_dim=768,
    attention_head_dim=8,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)
"""Stable Diffusion 1.5's UNet (the base of PASD)."""

SDXL_INPAINT_UNET_CONFIG = dict(
    sample_size=128,
    in_channels=9,
    out_channels=4,
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
"""``diffusers/stable-diffusion-xl-1.0-inpainting-0.1``'s UNet (SDXL base with 9 input channels)."""

VAE_CONFIG = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4,
    layers_per_block=2,
)
"""The SD / SDXL autoencoder (they share the architecture)."""

CLIP_L_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, projection_dim=768, hidden_act="quick_gelu")
CLIP_BIGG_TEXT = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, projection_dim=1280, hidden_act="gelu")


def _text_config(tokenizer, **sizes):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **sizes,
    )


def build_random_sdxl_inpaint_pipeline(device: torch.device, dtype: torch.dtype, vae_force_upcast: bool = False):
    """SDXL-inpainting at full size, random weights, on ``device`` in ``dtype``.

    ``vae_force_upcast`` is False as in ``diffusers/stable-diffusion-xl-1.0-inpainting-0.1``,
    whose VAE is the fp16-fixed one (it runs in fp16); True times a VAE that diffusers runs in
    fp32 when the pipeline is in fp16 (the plain SDXL VAE)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from grefine.tiny import (
        assemble_sdxl_inpaint_pipeline,
        build_tiny_clip_tokenizer,
    )

    tokenizer = build_tiny_clip_tokenizer()
    with device:  # each model cast as soon as it exists: one fp32 model at a time in memory
        unet = UNet2DConditionModel(**SDXL_INPAINT_UNET_CONFIG).to(dtype)
        vae = AutoencoderKL(**VAE_CONFIG, sample_size=1024, scaling_factor=0.13025, force_upcast=vae_force_upcast).to(dtype)
        text_encoder = CLIPTextModel(_text_config(tokenizer, **CLIP_L_TEXT)).to(dtype)
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer, **CLIP_BIGG_TEXT)).to(dtype)
    return assemble_sdxl_inpaint_pipeline(unet, vae, text_encoder, text_encoder_2, tokenizer)


def build_random_pasd_stage2(device: torch.device, dtype: torch.dtype, **options):
    """PASD (SD1.5 size) with its SD1.5 VAE and text encoder, random weights."""
    from diffusers import AutoencoderKL, UniPCMultistepScheduler
    from transformers import CLIPTextModel

    from grefine.refine.pasd import (
        PASDControlNetModel,
        PASDStage2,
        PASDUNet2DConditionModel,
    )
    from grefine.tiny import build_tiny_clip_tokenizer

    tokenizer = build_tiny_clip_tokenizer()
    with device:  # each model cast as soon as it exists: one fp32 model at a time in memory
        unet = PASDUNet2DConditionModel(**SD15_UNET_CONFIG).to(dtype)
        controlnet = PASDControlNetModel.from_unet(unet).to(dtype)
        vae = AutoencoderKL(**VAE_CONFIG, sample_size=512, scaling_factor=0.18215).to(dtype)
        text_encoder = CLIPTextModel(_text_config(tokenizer, **CLIP_L_TEXT)).to(dtype)
    scheduler = UniPCMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    stage2 = PASDStage2(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        controlnet=controlnet.eval(),
        scheduler=scheduler,
        **options,
    )
    return stage2
