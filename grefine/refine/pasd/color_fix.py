"""Colour correction applied after PASD restoration (PASD's ``wavelet_color_fix``/``adain_color_fix``).

Diffusion restorers tend to shift global colour. PASD therefore keeps the high frequencies of
its output and takes the low frequencies (wavelet) or the per-channel statistics (AdaIN) from
the input image. Both work on ``(B, 3, H, W)`` tensors in ``[0, 1]``.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

ColorFix = Literal["wavelet", "adain"]

_WAVELET_LEVELS = 5


def _blur(image: torch.Tensor, dilation: int) -> torch.Tensor:
    """3x3 binomial blur with holes (à trous), replicate-padded, applied per channel."""
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=image.dtype, device=image.device)
    kernel = (kernel / kernel.sum()).expand(image.shape[1], 1, 3, 3)
    padded = F.pad(image, (dilation,) * 4, mode="replicate")
    return F.conv2d(padded, kernel, groups=image.shape[1], dilation=dilation)


def wavelet_decomposition(image: torch.Tensor, levels: int = _WAVELET_LEVELS) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``image`` into (high, low) frequencies with an à-trous wavelet of ``levels`` scales.

    ``high + low == image`` exactly; ``low`` is the image blurred at dilations 1, 2, ..., 2^(levels-1).
    """
    low = image
    for level in range(levels):
        low = _blur(low, 2**level)
    return image - low, low


def wavelet_color_fix(restored: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """High frequencies of ``restored`` plus low frequencies (colour) of ``reference``."""
    high, _ = wavelet_decomposition(restored)
    _, low = wavelet_decomposition(reference)
    return high + low


def adain_color_fix(restored: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Match each channel's mean and standard deviation (``sqrt(var + eps)``) to ``reference``."""

    def stats(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return image.mean(dim=(2, 3), keepdim=True), (image.var(dim=(2, 3), keepdim=True) + eps).sqrt()

    (mean_r, std_r), (mean_t, std_t) = stats(restored), stats(reference)
    return (restored - mean_r) / std_r * std_t + mean_t


def apply_color_fix(restored: torch.Tensor, reference: torch.Tensor, method: ColorFix | None) -> torch.Tensor:
    """Apply ``method`` (``'wavelet'``, ``'adain'`` or ``None``) and clamp to ``[0, 1]``."""
    if method is None:
        return restored.clamp(0, 1)
    fixes = {"wavelet": wavelet_color_fix, "adain": adain_color_fix}
    if method not in fixes:
        raise ValueError(f"color_fix must be 'wavelet', 'adain' or None, got {method!r}")
    return fixes[method](restored, reference).clamp(0, 1)
