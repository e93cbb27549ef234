"""Paper §3.3, Eq. 10: PASD (Pixel-Aware Stable Diffusion, ECCV 2024) on diffusers, as stage 2.

* :class:`PASDUNet2DConditionModel` / :class:`PASDControlNetModel`: the models, loading the
  authors' ``pasd`` checkpoint (``unet/``, ``controlnet/``) with identical keys and shapes.
* :class:`PASDStage2`: the mild global restoration of G-Refine (paper Eq. 9–10) with strength δ.
"""
from .color_fix import adain_color_fix, apply_color_fix, wavelet_color_fix
from .controlnet import PASDControlNetModel, PixelAwareConditioningEmbedding
from .loading import PASDCheckpointMismatchError, PASDWeightsNotFoundError
from .stage2 import PASD_ADDED_PROMPT, PASD_NEGATIVE_PROMPT, PASDStage2
from .unet import PASDUNet2DConditionModel

__all__ = [
    "PASD_ADDED_PROMPT",
    "PASD_NEGATIVE_PROMPT",
    "PASDCheckpointMismatchError",
    "PASDControlNetModel",
    "PASDStage2",
    "PASDUNet2DConditionModel",
    "PASDWeightsNotFoundError",
    "PixelAwareConditioningEmbedding",
    "adain_color_fix",
    "apply_color_fix",
    "wavelet_color_fix",
]
