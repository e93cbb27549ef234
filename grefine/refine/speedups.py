"""Speed switches of the diffusion models (config section ``speed``), as diffusers documents them.

The models are found by name on each stage's pipeline: stage 1's SDXL-inpainting pipeline has a
``unet`` and a ``vae``, stage 2's PASD a ``unet``, a ``controlnet`` and a ``vae``. Each switch is
off by default, and a switch that is off leaves the models untouched.

* ``fuse_qkv``: diffusers' fused projections in every attention of the UNets, the ControlNet and
  the VAEs — one matmul for self-attention's Q, K and V, one for cross-attention's K and V — run
  by ``FusedAttnProcessor2_0`` (what ``DiffusionPipeline.fuse_qkv_projections`` does for a UNet
  and a VAE). The same function with other kernels: outputs equal up to rounding.
* ``channels_last``: those models' weights in channels-last memory format (NHWC convolutions).
* ``compile``: ``torch.compile`` of the named models (``unet``: both UNets, ``controlnet``,
  ``vae``: both VAEs' encoder and decoder), each module's ``forward`` replaced by its compiled
  version in place — the module, its config and its hooks stay as they are, so pipelines and the
  benchmark's timers see the same objects. The first call at each new shape compiles.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from grefine.config import COMPILE_TARGETS, SpeedConfig


def diffusion_models(pipes: Iterable[Any]) -> dict[str, list[nn.Module]]:
    """The models a speed switch acts on, by name (:data:`~grefine.config.COMPILE_TARGETS`),
    from each pipeline that has them."""
    found: dict[str, list[nn.Module]] = {name: [] for name in COMPILE_TARGETS}
    for pipe in pipes:
        for name in COMPILE_TARGETS:
            model = getattr(pipe, name, None)
            if model is not None:
                found[name].append(model)
    return found


def apply_speed(speed: SpeedConfig, pipes: Iterable[Any]) -> None:
    """Apply the ``speed`` switches to the diffusion models of ``pipes``: QKV fusion and
    channels-last first, then ``torch.compile`` (which then traces the fused, channels-last models)."""
    models = diffusion_models(pipes)
    for model in (model for group in models.values() for model in group):
        if speed.fuse_qkv:
            fuse_qkv_projections(model)
        if speed.channels_last:
            model.to(memory_format=torch.channels_last)
    options = compile_options(speed)
    for name in speed.compile:
        for model in models[name]:
            for module in compiled_parts(name, model):
                module.forward = torch.compile(module.forward, **options)


def fuse_qkv_projections(model: nn.Module) -> None:
    """diffusers' fused QKV projections (``Attention.fuse_projections``) in every attention of
    ``model``, with the processor that reads them (``FusedAttnProcessor2_0``).

    What ``UNet2DConditionModel.fuse_qkv_projections`` does, done here for every model alike:
    the ControlNet's inherited ``fuse_qkv_projections`` (diffusers 0.42) skips the ``Attention``
    modules it is built of, and its attention would then ask for projections that do not exist.
    """
    from diffusers.models.attention_processor import Attention, FusedAttnProcessor2_0

    for module in model.modules():
        if isinstance(module, Attention):
            module.fuse_projections(fuse=True)
    model.set_attn_processor(FusedAttnProcessor2_0())


def compiled_parts(name: str, model: nn.Module) -> list[nn.Module]:
    """The modules ``compile: [name]`` compiles: the model itself, or a VAE's encoder and decoder
    (pipelines call ``vae.encode`` / ``vae.decode``, never the VAE's ``forward``)."""
    return [model.encoder, model.decoder] if name == "vae" else [model]


def compile_options(speed: SpeedConfig) -> dict[str, Any]:
    """``torch.compile`` keyword arguments of the ``speed`` section."""
    options: dict[str, Any] = {
        "fullgraph": speed.compile_fullgraph,
        "dynamic": speed.compile_dynamic,
        "backend": speed.compile_backend,
    }
    if speed.compile_mode is not None:
        options["mode"] = speed.compile_mode
    return options
