"""The stage-1 decisions of G-Refine (§3.3, Eq. 9): where to refine and how strongly.

Eq. 9 conditions stage 1 as ``z1 = (p + a)/2 · QKV(prompt, Bi(1 − P + A))``, where ``1 − P`` is
the perceptual defect and the paper's ``A`` (Eq. 6, built from the defective phrases' maps) is
the alignment defect map ``D`` of :class:`~grefine.maps.aq_map.AQMapResult`:

* :func:`binarize` is ``Bi(·)``, the inpainting mask: the union of the perceptual region
  ``P < perceptual_bound`` and the alignment region ``D > alignment_bound`` (the authors'
  notebook binarises the two maps separately and joins them), dilated and feathered;
* :func:`stage1_strength` is our reading of the ``(p + a)/2`` factor (a denoising strength).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage

# --------------------------------------------------------------------------- Eq. 9: Bi(·)


@dataclass(frozen=True)
class MaskResult:
    """``Bi(1 − P + D)`` of Eq. 9, at the image size.

    Attributes:
        binary: bool H×W, the thresholded and dilated mask: where stage 1 redraws (the
            inpainting mask given to the diffusion model).
        soft: float32 H×W in [0, 1], ``binary`` feathered by a Gaussian: the paste-back weight.
            It is exactly 0 farther than ~3 σ from ``binary``, so those pixels stay untouched.
    """

    binary: np.ndarray
    soft: np.ndarray

    @classmethod
    def empty(cls, size: tuple[int, int]) -> "MaskResult":
        """Nothing to refine, at ``size`` (height, width)."""
        return cls(binary=np.zeros(size, bool), soft=np.zeros(size, np.float32))

    @property
    def is_empty(self) -> bool:
        """True when nothing is to be refined; stage 1 is then skipped."""
        return not bool(self.binary.any())

    @property
    def coverage(self) -> float:
        """Fraction of the image covered by ``binary``."""
        return float(self.binary.mean())


def binarize(
    P: np.ndarray,
    D: np.ndarray,
    *,
    perceptual_bound: float = 0.5,
    alignment_bound: float = 2.0 / 3.0,
    dilation: float = 16.0,
    feather: float = 4.0,
) -> MaskResult:
    """Eq. 9's ``Bi(1 − P + D)``: the region that stage 1 refines,
    ``(P < perceptual_bound) | (D > alignment_bound)``, dilated and feathered.

    An image that is good everywhere (``P ≥ perceptual_bound``) with no alignment defect
    (``D = 0``) gets an empty mask; a defect region enters the mask whatever P is there; adding
    a defect (raising D anywhere) never removes a pixel; two defects give the union of their
    regions.

    Args:
        P: PQ-Map, float H×W in [0, 1], high = good perceptual quality.
        D: AQ-Map's defect map, float H×W in [0, 1]: 0 where no defective phrase is drawn,
            high on the regions of the missing or mismatched objects.
        perceptual_bound: pixels with ``P`` below it are perceptually defective.
        alignment_bound: pixels with ``D`` above it are alignment defects.
        dilation: radius in pixels (Euclidean disk) by which the binary mask grows, so that the
            seams of a defect are redrawn too and the mask survives the 8× latent downsampling.
            Default 16 px (1.6 % of a 1024² image's side, 3 % of 512²); 0 disables it.
        feather: σ in pixels of the Gaussian that softens the dilated mask into the paste-back
            weight (truncated at 3 σ); 0 gives a hard paste-back. Keep ``dilation ≥ 3·feather``
            so that the undilated defect region is fully (weight ≈ 1) redrawn.

    Returns:
        A :class:`MaskResult` (binary = dilated mask, soft = its feathered version).
    """
    P = np.asarray(P, dtype=np.float32)
    D = np.asarray(D, dtype=np.float32)
    if P.shape != D.shape or P.ndim != 2:
        raise ValueError(f"P and D must be H×W maps of one shape, got {P.shape} and {D.shape}")
    if dilation < 0 or feather < 0:
        raise ValueError(f"dilation and feather must be ≥ 0, got {dilation} and {feather}")
    binary = (P < perceptual_bound) | (D > alignment_bound)
    if dilation > 0 and binary.any():
        binary = ndimage.distance_transform_edt(~binary) <= dilation
    return feathered(binary, feather)


def feathered(binary: np.ndarray, feather: float) -> MaskResult:
    """The :class:`MaskResult` of a binary mask (:func:`binarize`'s, or one edited by hand): its
    paste-back weight is ``binary`` blurred by a Gaussian of σ = ``feather`` pixels (truncated
    at 3 σ; 0: a hard paste-back)."""
    binary = np.asarray(binary, dtype=bool)
    if binary.ndim != 2:
        raise ValueError(f"a mask must be an H×W array, got shape {binary.shape}")
    if feather < 0:
        raise ValueError(f"feather must be ≥ 0, got {feather}")
    soft = binary.astype(np.float32)
    if feather > 0:
        soft = ndimage.gaussian_filter(soft, sigma=feather, mode="constant", truncate=3.0)
    return MaskResult(binary=binary, soft=np.clip(soft, 0.0, 1.0).astype(np.float32))


# --------------------------------------------------------------------- Eq. 9: (p + a)/2


def stage1_strength(
    p: Optional[float], a: Optional[float], *, min_strength: float = 0.3, max_strength: float = 0.9
) -> float:
    """Stage-1 denoising strength from the global scores, our reading of Eq. 9's ``(p + a)/2``.

    Printed literally, ``z1 = (p + a)/2 · QKV(...)`` would refine *better* images *more*, which
    contradicts §3.3 ("the refining region has a relatively lower quality ... the former conducts a
    strong denoising process according to the map and score"). We therefore read the factor as
    the image's quality and make the strength decrease with it::

        strength1 = clip(max_strength · (1 − (p + a)/2), min_strength, max_strength)

    A score left out (None: its map is switched off, the Table 8 ablation) is not an indicator
    any more: the quality is the other score alone (``p`` or ``a``), or 1 when both are out.
    ``min_strength = max_strength`` gives a fixed strength (the authors' notebook: 0.9).

    Args:
        p: global perceptual quality (PQ-Map score), in [0, 1], or None.
        a: global alignment quality (AQ-Map score, Eq. 8), in [0, 1], or None.
        min_strength: floor, so that a masked region is always redrawn noticeably.
        max_strength: ceiling (reached when p = a = 0); ≤ 1.

    Returns:
        The img2img strength in ``[min_strength, max_strength]``: the fraction of the noise
        schedule that stage 1 re-noises and then denoises.
    """
    if not 0.0 < min_strength <= max_strength <= 1.0:
        raise ValueError(
            f"need 0 < min_strength ≤ max_strength ≤ 1, got {min_strength}, {max_strength}"
        )
    scores = [float(score) for score in (p, a) if score is not None]
    quality = sum(scores) / len(scores) if scores else 1.0
    return float(np.clip(max_strength * (1.0 - quality), min_strength, max_strength))
