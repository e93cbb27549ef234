"""Tiled VAE encoding/decoding for large images (PASD's ``encoder_tile_size``/``decoder_tile_size``).

PASD hooks the VAE so that images larger than a tile are encoded/decoded tile by tile
(``myutils/vaehook.py``; defaults: encoder tiles of 1024 pixels, decoder tiles of 224 latent
pixels). Here overlapping tiles are processed independently and blended with linear ramps over
the overlap. Unlike PASD's hook, GroupNorm statistics are per tile, not shared across tiles, so
very large images may show slight tone differences between tiles; images no larger than one
tile are processed in one pass, exactly as without tiling.

Each tile goes through the VAE's public ``encode`` / ``decode``, never its ``encoder`` /
``decoder`` sub-modules directly: those methods fire the model-CPU-offload hook (diffusers'
``apply_forward_hook``) that moves the VAE onto the GPU, so ``cpu_offload`` works.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile start offsets covering ``[0, length)`` with tiles of ``tile`` overlapping by ``overlap``."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def _ramp(length: int, overlap: int, device: torch.device) -> torch.Tensor:
    """Blend weights along one tile axis: rising over ``overlap`` pixels at both ends, never zero."""
    index = torch.arange(length, device=device, dtype=torch.float32)
    distance = torch.minimum(index + 1, length - index)
    return (distance / max(overlap, 1)).clamp(max=1.0)


def tiled_apply(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int, scale: float
) -> torch.Tensor:
    """Apply a resolution-changing ``fn`` (output side = ``scale`` x input side) over tiles of ``x``.

    ``tile`` and ``overlap`` are in input pixels; outputs are blended with linear ramps.
    """
    height, width = x.shape[-2:]
    if height <= tile and width <= tile:
        return fn(x)
    out, weight = None, None
    for top in _starts(height, tile, overlap):
        for left in _starts(width, tile, overlap):
            piece = fn(x[..., top : top + tile, left : left + tile])
            if out is None:
                out_size = (round(height * scale), round(width * scale))
                out = piece.new_zeros(*piece.shape[:-2], *out_size, dtype=torch.float32)
                weight = torch.zeros(out_size, device=piece.device)
            ramp_overlap = round(overlap * scale)
            mask = torch.outer(_ramp(piece.shape[-2], ramp_overlap, piece.device), _ramp(piece.shape[-1], ramp_overlap, piece.device))
            rows = slice(round(top * scale), round(top * scale) + piece.shape[-2])
            cols = slice(round(left * scale), round(left * scale) + piece.shape[-1])
            out[..., rows, cols] += piece.float() * mask
            weight[rows, cols] += mask
    return (out / weight).to(x.dtype)


def vae_scale_factor(vae: AutoencoderKL) -> int:
    """Pixels per latent pixel along each side (8 for Stable Diffusion)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def encode_latent_distribution(vae: AutoencoderKL, image: torch.Tensor, tile_size: int) -> DiagonalGaussianDistribution:
    """Posterior ``q(z | image)`` of an image in ``[-1, 1]``, encoded in tiles of ``tile_size`` pixels.

    Tiles overlap by a quarter tile (rounded to whole latent pixels); ``tile_size`` must be a
    multiple of the VAE scale factor, as must the image sides.
    """
    factor = vae_scale_factor(vae)
    overlap = tile_size // 4 // factor * factor

    def encode(tile: torch.Tensor) -> torch.Tensor:
        return vae.encode(tile).latent_dist.parameters  # encoder + quant_conv: the moments

    return DiagonalGaussianDistribution(tiled_apply(encode, image, tile_size, overlap, 1 / factor))


def decode_latents(vae: AutoencoderKL, latents: torch.Tensor, tile_size: int) -> torch.Tensor:
    """Decode (unscaled) latents to an image in ``[-1, 1]``, in tiles of ``tile_size`` latent pixels
    overlapping by a quarter tile."""

    def decode(tile: torch.Tensor) -> torch.Tensor:
        return vae.decode(tile).sample  # post_quant_conv + decoder

    return tiled_apply(decode, latents, tile_size, tile_size // 4, vae_scale_factor(vae))
