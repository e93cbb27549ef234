"""PASD's ControlNet: diffusers' ControlNet whose conditioning branch also emits RGB images.

In PASD (Yang et al., ECCV 2024) the degraded image is encoded by a ControlNet copy of the SD
encoder. Its conditioning branch (``controlnet_cond_embedding``) has one extra ``to_rgbs``
convolution after each stride-2 stage, which maps the multi-scale features back to RGB; PASD
trains these with an L1 loss against the downscaled high-quality image, and they are unused at
inference. The down/mid residuals feed both the UNet's skip connections (as in ControlNet) and
its pixel-aware cross-attention (see :mod:`grefine.refine.pasd.unet`).

State-dict names/shapes equal the authors' released ``pasd/controlnet`` checkpoint: those of
diffusers' :class:`~diffusers.ControlNetModel` plus ``controlnet_cond_embedding.to_rgbs.{k}``.
"""
from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import ControlNetModel
from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding
from torch import nn


class PixelAwareConditioningEmbedding(ControlNetConditioningEmbedding):
    """ControlNet conditioning branch with PASD's multi-scale RGB heads (``to_rgbs``).

    :meth:`forward` is diffusers' (the embedding added to the latent features);
    :meth:`forward_with_rgbs` also returns one RGB image per stride-2 stage (1/2, 1/4, 1/8).
    """

    def __init__(
        self,
        conditioning_embedding_channels: int,
        conditioning_channels: int = 3,
        block_out_channels: tuple[int, ...] = (16, 32, 96, 256),
    ) -> None:
        super().__init__(conditioning_embedding_channels, conditioning_channels, block_out_channels)
        self.to_rgbs = nn.ModuleList(
            nn.Conv2d(channels, 3, kernel_size=3, padding=1) for channels in block_out_channels[1:]
        )

    def forward_with_rgbs(self, conditioning: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The conditioning embedding and the RGB predictions at 1/2, 1/4 and 1/8 resolution."""
        embedding = F.silu(self.conv_in(conditioning))
        rgbs = []
        for index, block in enumerate(self.blocks):
            embedding = F.silu(block(embedding))
            if index % 2 == 1:  # after each stride-2 convolution
                rgbs.append(self.to_rgbs[index // 2](embedding))
        return self.conv_out(embedding), rgbs


class PASDControlNetModel(ControlNetModel):
    """diffusers' :class:`~diffusers.ControlNetModel` with PASD's RGB-emitting conditioning branch.

    Constructor, config and forward are diffusers' (the forward returns the conditioning-scaled
    down/mid residuals). PASD's own config files also carry ``return_rgbs: true`` and
    ``use_rrdb: false``; diffusers ignores them with a warning. The ``pasd_rrdb`` variant (an RRDB
    pre-processor in the conditioning branch) is not supported: its weights fail the strict
    key check of :func:`grefine.refine.pasd.loading.load_pasd_model`.
    """

    # ``wraps`` exposes the parent's signature, which diffusers reads to build configs.
    @functools.wraps(ControlNetModel.__init__, assigned=(), updated=())
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.controlnet_cond_embedding = PixelAwareConditioningEmbedding(
            conditioning_embedding_channels=self.config.block_out_channels[0],
            conditioning_channels=self.config.conditioning_channels,
            block_out_channels=tuple(self.config.conditioning_embedding_out_channels),
        )

    def conditioning_rgbs(self, controlnet_cond: torch.Tensor) -> list[torch.Tensor]:
        """PASD's multi-scale RGB predictions of the conditioning image (its training target)."""
        return self.controlnet_cond_embedding.forward_with_rgbs(controlnet_cond)[1]
