"""Builders of tiny, randomly initialised components.

They build the *same classes* that the real runs load (open_clip ``CLIP``, diffusers
pipelines), only with small configs, so that the test-suite and ``configs/tiny-random.yaml``
exercise the real code paths on a CPU in seconds. Nothing here downloads anything, and no
real run uses these builders: their outputs are random.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn


def build_tiny_open_clip(
    *,
    embed_dim: int = 32,
    image_size: int = 32,
    patch_size: int = 8,
    vision_width: int = 64,
    vision_layers: int = 3,
    vision_heads: int = 4,
    text_width: int = 64,
    text_layers: int = 2,
    text_heads: int = 4,
    seed: int = 0,
    precision: str = "fp32",
) -> tuple[nn.Module, Callable]:
    """A tiny open_clip ``CLIP`` (ViT image tower, 77-token text tower) and its real BPE
    tokenizer (the vocabulary ships inside open_clip, so no download is needed).

    ``precision`` ``fp16``/``bf16`` builds it as ``open_clip.create_model(precision=...)`` does:
    fp32 LayerNorms and embeddings, half-precision linear, convolution and attention weights."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg, convert_weights_to_lp, get_cast_dtype
    from open_clip.tokenizer import SimpleTokenizer

    torch.manual_seed(seed)
    vision = CLIPVisionCfg(
        layers=vision_layers,
        width=vision_width,
        head_width=vision_width // vision_heads,
        image_size=image_size,
        patch_size=patch_size,
    )
    text = CLIPTextCfg(
        context_length=77,
        vocab_size=49408,
        width=text_width,
        heads=text_heads,
        layers=text_layers,
    )
    cast_dtype = get_cast_dtype(precision)
    model = CLIP(embed_dim=embed_dim, vision_cfg=vision, text_cfg=text, cast_dtype=cast_dtype).eval()
    # open_clip initialises positional embeddings and LayerNorms to near-constant values;
    # perturb every parameter so that tests cannot pass by symmetry.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    if cast_dtype is not None:
        convert_weights_to_lp(model, cast_dtype)
    return model, SimpleTokenizer(context_length=77)


def build_tiny_pq_clip(seed: int = 0, precision: str = "fp32") -> tuple[nn.Module, Callable]:
    """A tiny CLIP whose text tower has ViT-B/16's width (512), so that the official PQ-Map
    prompt embeddings (width 512, 77 tokens) flow through it."""
    return build_tiny_open_clip(text_width=512, text_layers=1, text_heads=8, seed=seed, precision=precision)


def build_tiny_coca(seed: int = 0) -> nn.Module:
    """A tiny, random open_clip ``CoCa`` (the class of ``coca_ViT-L-14``, stage 2's caption
    model): a 32-px ViT with CoCa's attentional pooler, one-layer text and multimodal decoders
    over CLIP's 49,408-token vocabulary; every weight perturbed, as in :func:`build_tiny_open_clip`."""
    from open_clip.coca_model import CoCa, MultimodalCfg
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    model = CoCa(
        embed_dim=32,
        multimodal_cfg=MultimodalCfg(context_length=76, vocab_size=49408, width=32, heads=2, layers=1, attn_pooler_heads=2),
        text_cfg=CLIPTextCfg(context_length=76, vocab_size=49408, width=32, heads=2, layers=1, embed_cls=True, output_tokens=True),
        vision_cfg=CLIPVisionCfg(
            image_size=32, layers=1, width=32, head_width=16, patch_size=8, attentional_pool=True, attn_pooler_heads=2, output_tokens=True
        ),
    ).eval()
    # open_clip leaves the multimodal decoder's output projection uninitialised (torch.empty; a
    # checkpoint fills it): initialise it as CLIP's, so the model is a function of the seed alone.
    nn.init.normal_(model.text_decoder.text_projection, std=model.text_decoder.text_projection.shape[0] ** -0.5)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    return model


def build_tiny_clip_tokenizer(model_max_length: int = 77):
    """A real ``transformers.CLIPTokenizer`` over a tiny vocabulary (lower-case letters and
    digits, no merges), written to a temporary folder (:func:`write_tiny_clip_tokenizer`) and
    loaded from it: no download."""
    import tempfile

    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as folder:
        write_tiny_clip_tokenizer(folder, model_max_length)
        return CLIPTokenizer.from_pretrained(folder)


def write_tiny_clip_tokenizer(folder, model_max_length: int = 77) -> None:
    """The files of a tiny CLIP BPE tokenizer in ``folder``, as Stable Diffusion repositories
    ship theirs: ``vocab.json``, ``merges.txt``, ``tokenizer_config.json``, ``special_tokens_map.json``."""
    import json
    import string
    from pathlib import Path

    symbols = string.ascii_lowercase + string.digits
    tokens = list(symbols) + [f"{s}</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (root / "merges.txt").write_text("#version: 0.2\n")
    (root / "tokenizer_config.json").write_text(json.dumps({"model_max_length": model_max_length}))
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    (root / "special_tokens_map.json").write_text(json.dumps(special))


def build_tiny_sdxl_inpaint_pipeline(seed: int = 0):
    """A tiny, random ``StableDiffusionXLInpaintPipeline`` with the real SDXL-inpainting layout:
    a 9-channel UNet (latents + mask + masked-image latents) with ``addition_embed_type=
    "text_time"``, a 2-level VAE (scale factor 2), two CLIP text encoders (the second with a
    projection, whose pooled output conditions the UNet), two tiny tokenizers and an Euler
    scheduler. ``requires_aesthetics_score=False`` as in ``diffusers/stable-diffusion-xl-1.0-
    inpainting-0.1``: 6 time ids · 8 + 32 pooled = 80 projection inputs; and its fp16-fixed VAE's
    ``force_upcast: false`` (diffusers then never recasts the VAE while it runs)."""
    tokenizer, unet, vae, text_encoder, text_encoder_2 = _tiny_sdxl_components(seed, in_channels=9, vae_force_upcast=False)
    return assemble_sdxl_inpaint_pipeline(unet, vae, text_encoder, text_encoder_2, tokenizer)


def build_tiny_sdxl_img2img_pipeline(seed: int = 0):
    """A tiny, random ``StableDiffusionXLImg2ImgPipeline`` with SDXL *base*'s layout: the
    components of :func:`build_tiny_sdxl_inpaint_pipeline` with a 4-channel UNet (latents only)."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    tokenizer, unet, vae, text_encoder, text_encoder_2 = _tiny_sdxl_components(seed, in_channels=4)
    return StableDiffusionXLImg2ImgPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=sdxl_euler_scheduler(),
        add_watermarker=False,
    )


def build_tiny_sdxl_refiner_pipeline(seed: int = 0):
    """A tiny, random ``StableDiffusionXLImg2ImgPipeline`` with the layout of
    ``stabilityai/stable-diffusion-xl-refiner-1.0``: only the second (projected) text encoder,
    whose hidden states alone are the UNet's cross-attention input, and
    ``requires_aesthetics_score=True`` (5 time ids, the aesthetic score replacing the target
    size: 5 · 8 + 32 pooled = 72 projection inputs)."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    tokenizer, unet, vae, _, text_encoder_2 = _tiny_sdxl_components(
        seed, in_channels=4, time_ids=5, cross_attention_dim=_TINY_SDXL_TEXT_WIDTH
    )
    return StableDiffusionXLImg2ImgPipeline(
        vae=vae,
        text_encoder=None,
        text_encoder_2=text_encoder_2,
        tokenizer=None,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=sdxl_euler_scheduler(),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )


_TINY_SDXL_TEXT_WIDTH = 32


def _tiny_sdxl_components(
    seed: int, *, in_channels: int, time_ids: int = 6, cross_attention_dim: int = 2 * _TINY_SDXL_TEXT_WIDTH, vae_force_upcast: bool = True
):
    """``(tokenizer, unet, vae, text_encoder, text_encoder_2)`` of the tiny SDXL pipelines: a
    2-level UNet with ``addition_embed_type="text_time"`` (``time_ids`` · 8 + 32 pooled
    projection inputs), a 2-level VAE (scale factor 2; ``force_upcast`` as the original SDXL VAE
    unless ``vae_force_upcast`` is False), two 32-wide CLIP text encoders (the second projected)
    and the tiny tokenizer."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = build_tiny_clip_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=time_ids * 8 + _TINY_SDXL_TEXT_WIDTH,
        cross_attention_dim=cross_attention_dim,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=64,
        force_upcast=vae_force_upcast,
    )
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=_TINY_SDXL_TEXT_WIDTH,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        projection_dim=_TINY_SDXL_TEXT_WIDTH,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    text_encoder = CLIPTextModel(text_config).eval()
    text_encoder_2 = CLIPTextModelWithProjection(text_config).eval()
    return tokenizer, unet.eval(), vae.eval(), text_encoder, text_encoder_2


def sdxl_euler_scheduler():
    """SDXL's Euler scheduler settings (base, refiner and inpainting share them)."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )


def assemble_sdxl_inpaint_pipeline(unet, vae, text_encoder, text_encoder_2, tokenizer):
    """An SDXL-inpainting pipeline from given models (tiny here, full-size in
    :mod:`grefine.bench.speed`) with SDXL's Euler scheduler settings and one tokenizer."""
    from diffusers import StableDiffusionXLInpaintPipeline

    return StableDiffusionXLInpaintPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        text_encoder_2=text_encoder_2.eval(),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet.eval(),
        scheduler=sdxl_euler_scheduler(),
        requires_aesthetics_score=False,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


TINY_PASD_UNET_CONFIG = dict(
    sample_size=8,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    norm_num_groups=8,
    cross_attention_dim=32,
    attention_head_dim=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
"""A tiny PASD UNet with SD1.5's block layout (plain block at the bottom, whose pixel-aware
attention needs equal channels in the two lowest blocks, as in SD1.5)."""

TINY_PASD_CONDITIONING_CHANNELS = (8, 16, 16, 32)
"""The ControlNet conditioning branch: three stride-2 stages (1/8 resolution), like PASD's."""


def build_tiny_pasd_models(seed: int = 0):
    """A tiny random PASD ``(unet, controlnet)``; the ControlNet is built ``from_unet`` as in
    PASD's training. Every weight is perturbed, so that the zero-initialised ControlNet
    outputs are not trivially zero."""
    from grefine.refine.pasd import PASDControlNetModel, PASDUNet2DConditionModel

    torch.manual_seed(seed)
    unet = PASDUNet2DConditionModel(**TINY_PASD_UNET_CONFIG)
    controlnet = PASDControlNetModel.from_unet(unet, conditioning_embedding_out_channels=TINY_PASD_CONDITIONING_CHANNELS)
    with torch.no_grad():
        for parameter in [*unet.parameters(), *controlnet.parameters()]:
            parameter.add_(0.05 * torch.randn_like(parameter))
    return unet.eval(), controlnet.eval()


def build_tiny_pasd_stage2(seed: int = 0, **options):
    """A tiny random ``PASDStage2`` (G-Refine stage 2): tiny PASD models, a 4-level VAE (scale
    factor 8, as SD's), a tiny CLIP text encoder and SD1.5's UniPC scheduler settings.
    ``options`` go to ``PASDStage2``; ``process_size`` defaults to ``None`` here (PASD's 768
    would enlarge every test image)."""
    from diffusers import AutoencoderKL, UniPCMultistepScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    from grefine.refine.pasd import PASDStage2

    tokenizer = build_tiny_clip_tokenizer()
    unet, controlnet = build_tiny_pasd_models(seed)
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=64,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=TINY_PASD_UNET_CONFIG["cross_attention_dim"],
            intermediate_size=37,
            num_attention_heads=2,
            num_hidden_layers=1,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = UniPCMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    options.setdefault("process_size", None)
    stage2 = PASDStage2(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet,
        controlnet=controlnet,
        scheduler=scheduler,
        **options,
    )
    stage2.set_progress_bar_config(disable=True)
    return stage2


def cast_tiny(pipe, dtype: torch.dtype):
    """A pipeline of tiny random models (built in fp32) in ``dtype``. Its models are cast as plain
    torch modules: they have no layers that must stay in fp32, and diffusers' own ``to(dtype)``
    would warn so for each of them; in fp32 the pipeline is returned as built."""
    if dtype == torch.float32:
        return pipe
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            torch.nn.Module.to(component, dtype=dtype)
    return pipe
