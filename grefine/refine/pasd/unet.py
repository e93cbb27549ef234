"""PASD's denoising UNet: Stable Diffusion 1.5's UNet with pixel-aware cross-attention.

PASD (Yang et al., "Pixel-Aware Stable Diffusion for Realistic Image Super-Resolution and
Personalized Stylization", ECCV 2024) adds, after every resnet (+ text cross-attention) of every
*up* block, a ``Transformer2DModel`` whose cross-attention keys/values are the ControlNet
residual of the matching skip connection, flattened into one token per latent pixel. This
"pixel-aware cross-attention" (PACA) lets the decoder attend to pixel-level structure of the
input image.

The model is diffusers' :class:`~diffusers.UNet2DConditionModel` with a ``pixel_attentions``
``ModuleList`` added to each up block, so the state-dict names and shapes are those of the
authors' released ``pasd/unet`` checkpoint (``up_blocks.{i}.pixel_attentions.{j}.*``) and it
loads with :meth:`from_pretrained`. Inference only: gradient checkpointing, FreeU, T2I-adapter
residuals and GLIGEN are not wired through the pixel-aware up blocks.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from torch import nn


def _per_block(value: Any, num_blocks: int) -> list:
    """Broadcast an int/bool config entry to one value per block (lists pass through)."""
    return list(value) if isinstance(value, (list, tuple)) else [value] * num_blocks


class PASDUNet2DConditionModel(UNet2DConditionModel):
    """SD UNet whose up blocks carry PASD's pixel-aware cross-attention (``pixel_attentions``).

    Same constructor/config as :class:`~diffusers.UNet2DConditionModel`. For up block ``i``
    (counted from the bottom) and layer ``j`` the PACA module is a ``Transformer2DModel`` with
    the block's head count, ``in_channels = out_channels`` and ``cross_attention_dim`` equal to
    the channels of the skip connection it pairs with: ``in_channels`` for the last layer of a
    ``CrossAttnUpBlock2D`` and ``out_channels`` otherwise (PASD uses ``out_channels`` for every
    layer of ``UpBlock2D``).
    """

    # ``wraps`` exposes the parent's signature, which diffusers reads to build configs.
    @functools.wraps(UNet2DConditionModel.__init__, assigned=(), updated=())
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config = self.config
        num_blocks = len(config.block_out_channels)
        # Per-block settings, reversed to the up blocks' bottom-to-top order.
        heads = _per_block(config.num_attention_heads or config.attention_head_dim, num_blocks)[::-1]
        layers = _per_block(config.transformer_layers_per_block, num_blocks)[::-1]
        only_cross = _per_block(config.only_cross_attention, num_blocks)[::-1]
        channels = list(config.block_out_channels)[::-1]
        for i, block in enumerate(self.up_blocks):
            out_channels = channels[i]
            in_channels = channels[min(i + 1, num_blocks - 1)]
            num_layers = len(block.resnets)
            has_text_attention = hasattr(block, "attentions")
            block.pixel_attentions = nn.ModuleList(
                Transformer2DModel(
                    heads[i],
                    out_channels // heads[i],
                    in_channels=out_channels,
                    num_layers=layers[i],
                    cross_attention_dim=in_channels if has_text_attention and j == num_layers - 1 else out_channels,
                    norm_num_groups=config.norm_num_groups,
                    use_linear_projection=config.use_linear_projection,
                    only_cross_attention=only_cross[i],
                    upcast_attention=config.upcast_attention,
                )
                for j in range(num_layers)
            )

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        down_block_additional_residuals: Sequence[torch.Tensor] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet2DConditionOutput | tuple[torch.Tensor]:
        """Predict the noise of ``sample`` at ``timestep``.

        ``down_block_additional_residuals`` / ``mid_block_additional_residual`` are the
        ControlNet outputs: they are added to the skip connections / mid block as in a plain
        ControlNet and, in addition, the down residuals are the keys/values of the up blocks'
        pixel-aware cross-attention (skipped when no residuals are given).
        """
        upsample_factor = 2**self.num_upsamplers
        forward_upsample_size = any(dim % upsample_factor for dim in sample.shape[-2:])
        attention_mask = _to_bias(attention_mask, sample.dtype)
        encoder_attention_mask = _to_bias(encoder_attention_mask, sample.dtype)
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0

        emb = self._embed_time(sample, timestep, timestep_cond, class_labels, encoder_hidden_states, added_cond_kwargs)
        encoder_hidden_states = self.process_encoder_hidden_states(
            encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs
        )
        text_kwargs = dict(
            encoder_hidden_states=encoder_hidden_states,
            attention_mask=attention_mask,
            cross_attention_kwargs=cross_attention_kwargs,
            encoder_attention_mask=encoder_attention_mask,
        )

        sample = self.conv_in(sample)
        skips: tuple[torch.Tensor, ...] = (sample,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                sample, res_samples = block(hidden_states=sample, temb=emb, **text_kwargs)
            else:
                sample, res_samples = block(hidden_states=sample, temb=emb)
            skips += res_samples

        pixel_states: tuple[torch.Tensor, ...] | None = None
        if down_block_additional_residuals is not None:
            pixel_states = tuple(down_block_additional_residuals)
            skips = tuple(skip + residual for skip, residual in zip(skips, pixel_states))

        if self.mid_block is not None:
            if getattr(self.mid_block, "has_cross_attention", False):
                sample = self.mid_block(sample, emb, **text_kwargs)
            else:
                sample = self.mid_block(sample, emb)
        if mid_block_additional_residual is not None:
            sample = sample + mid_block_additional_residual

        for i, block in enumerate(self.up_blocks):
            num_layers = len(block.resnets)
            block_skips, skips = skips[-num_layers:], skips[:-num_layers]
            block_pixels = None
            if pixel_states is not None:
                block_pixels, pixel_states = pixel_states[-num_layers:], pixel_states[:-num_layers]
            is_final_block = i == len(self.up_blocks) - 1
            upsample_size = skips[-1].shape[2:] if forward_upsample_size and not is_final_block else None
            sample = _pixel_aware_up_block(block, sample, emb, block_skips, block_pixels, upsample_size, text_kwargs)

        if self.conv_norm_out is not None:
            sample = self.conv_act(self.conv_norm_out(sample))
        sample = self.conv_out(sample)
        return UNet2DConditionOutput(sample=sample) if return_dict else (sample,)

    def _embed_time(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        timestep_cond: torch.Tensor | None,
        class_labels: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor] | None,
    ) -> torch.Tensor:
        """Timestep (+ class, + additional) embedding, as diffusers' UNet computes it."""
        emb = self.time_embedding(self.get_time_embed(sample=sample, timestep=timestep), timestep_cond)
        class_emb = self.get_class_embed(sample=sample, class_labels=class_labels)
        if class_emb is not None:
            emb = torch.cat([emb, class_emb], dim=-1) if self.config.class_embeddings_concat else emb + class_emb
        aug_emb = self.get_aug_embed(
            emb=emb, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs
        )
        if aug_emb is not None:
            emb = emb + aug_emb
        return self.time_embed_act(emb) if self.time_embed_act is not None else emb


def _to_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Turn a keep(1)/discard(0) mask into an additive attention bias, as diffusers does."""
    if mask is None:
        return None
    return ((1 - mask.to(dtype)) * -10000.0).unsqueeze(1)


def _pixel_aware_up_block(
    block: nn.Module,
    hidden_states: torch.Tensor,
    temb: torch.Tensor,
    skips: Sequence[torch.Tensor],
    pixel_states: Sequence[torch.Tensor] | None,
    upsample_size: torch.Size | None,
    text_kwargs: dict[str, Any],
) -> torch.Tensor:
    """Run one diffusers up block with PASD's order: resnet -> text attention -> PACA.

    Skips and pixel states are consumed from the end, so layer ``j`` attends to the ControlNet
    residual of the very skip connection it concatenates.
    """
    text_attentions = getattr(block, "attentions", [None] * len(block.resnets))
    for j, (resnet, text_attention, pixel_attention) in enumerate(
        zip(block.resnets, text_attentions, block.pixel_attentions)
    ):
        hidden_states = torch.cat([hidden_states, skips[-1 - j]], dim=1)
        hidden_states = resnet(hidden_states, temb)
        if text_attention is not None:
            hidden_states = text_attention(hidden_states, **text_kwargs, return_dict=False)[0]
        if pixel_states is not None:
            tokens = pixel_states[-1 - j].flatten(2).transpose(1, 2)
            hidden_states = pixel_attention(
                hidden_states,
                encoder_hidden_states=tokens,
                cross_attention_kwargs=text_kwargs["cross_attention_kwargs"],
                return_dict=False,
            )[0]
    for upsampler in block.upsamplers or []:
        hidden_states = upsampler(hidden_states, upsample_size)
    return hidden_states
