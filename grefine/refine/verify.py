"""Verification after refining (not in the paper; the ``verify`` config section): is the refined
image better than its input, which of several candidates is best, and were the good regions left
alone?

G-Refine promises to improve the low-quality regions "without compromising the integrity of
high-quality ones" (§1) and marks a metric that got worse as *negative optimisation* (Tables
2-5). The pipeline (:class:`grefine.pipeline.GRefinePipeline`) re-reads each refined candidate
with PQ-Map and AQ-Map and uses this module for the rest:

* :class:`Selector` is ``verify.select`` as a score where higher is better: ``pa`` = p·a (Eq. 3
  and Eq. 8), ``p``, ``a``, or a no-reference metric (a lower-is-better metric is negated);
* :func:`judge` keeps the best candidate (argmax of the score; the first on a tie) and says
  whether it beats the round's input by more than ``margin``, and whether it is kept;
* :func:`outside_mask` is the proof for the good regions: over the pixels outside the stage-1
  mask, the share that changed and the PSNR between input and output.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Protocol, Sequence

import numpy as np
from PIL import Image

from grefine.config import VERIFY_SCORES
from grefine.image_io import fit_long_side

CHANGE_LEVELS = 2
"""A pixel *changed* when a channel moved by more than 2/255 (8-bit levels)."""


class SelectMetric(Protocol):
    """What :class:`Selector` needs of a metric (:class:`grefine.eval.metrics.Metric` is one): its
    registry ``name``, its direction, and a score of one image for its prompt."""

    name: str
    lower_better: bool

    def __call__(self, image: Image.Image, prompt: Optional[str] = None, reference: Optional[Image.Image] = None) -> float: ...


class Selector:
    """``verify.select`` as a score of one image where higher is better.

    Args:
        select: ``pa``, ``p``, ``a`` (the map scores of the image, given by the caller) or a
            metric's name.
        metric: the metric ``select`` names (required then, refused otherwise); it scores the
            image downscaled to ``resolution`` (long side; None: full size), as the runner's
            metrics do, with the prompt; a lower-is-better metric is negated.
    """

    def __init__(self, select: str, metric: Optional[SelectMetric] = None, resolution: Optional[int] = None) -> None:
        if select in VERIFY_SCORES:
            if metric is not None:
                raise ValueError(f"verify.select is {select!r}, a map score: no metric is needed, got {metric.name!r}")
        elif metric is None or metric.name.lower() != select.lower():
            given = "none" if metric is None else repr(metric.name)
            raise ValueError(f"verify.select names the metric {select!r}: pass that metric (got {given})")
        self.select = select
        self.metric = metric
        self.resolution = resolution

    def __call__(self, image: Image.Image, prompt: str, p: float, a: float) -> float:
        if self.metric is None:
            return {"pa": p * a, "p": p, "a": a}[self.select]
        score = float(self.metric(fit_long_side(image, self.resolution), prompt=prompt))
        return -score if self.metric.lower_better else score


@dataclass(frozen=True)
class VerifyRound:
    """One round of verification.

    Attributes:
        mask_area: the coverage of the round's stage-1 mask.
        input_score: the ``select`` score of the round's input (higher is better).
        scores: the score of each candidate, in seed order.
        best: the index of the best candidate (the first of equal ones; a NaN score is never best
            unless all are NaN).
        improved: the best candidate beats the input by more than the margin.
        kept: the best candidate is the round's result (improved, or ``revert_if_worse`` is off);
            otherwise the round's input is.
    """

    mask_area: float
    input_score: float
    scores: tuple[float, ...]
    best: int
    improved: bool
    kept: bool


def judge(input_score: float, scores: Sequence[float], *, margin: float, revert_if_worse: bool, mask_area: float = 0.0) -> VerifyRound:
    """The round's verdict: the best candidate by score, whether it beats the input (strictly, by
    more than ``margin``; never when a score is NaN) and whether it is kept."""
    if not scores:
        raise ValueError("need at least one candidate score")
    ranked = [-math.inf if math.isnan(score) else score for score in scores]
    best = int(np.argmax(ranked))
    improved = not math.isnan(scores[best]) and not math.isnan(input_score) and scores[best] > input_score + margin
    return VerifyRound(mask_area, float(input_score), tuple(float(s) for s in scores), best, improved, improved or not revert_if_worse)


@dataclass(frozen=True)
class OutsideMask:
    """The outside-the-mask proof of one refined image.

    Attributes:
        changed: the share of the pixels outside the mask where some channel moved by more than
            2/255 (0 = the good regions were left alone); NaN when no pixel lies outside.
        psnr: PSNR (dB, peak 255) of the output against the input over those pixels; ``inf`` when
            they are identical, NaN when no pixel lies outside.
    """

    changed: float
    psnr: float


def outside_mask(original: Image.Image, refined: Image.Image, weight: Optional[np.ndarray]) -> OutsideMask:
    """:class:`OutsideMask` of ``refined`` against ``original`` (RGB, the same size).

    ``weight`` is the stage-1 paste-back weight (:attr:`~grefine.refine.mask.MaskResult.soft`, the
    union over rounds), or None when stage 1 redrew nothing. *Outside the mask* is where it is 0:
    the pixels that stage 1 pastes back exactly from its input, so with stage 2 off they are
    unchanged by construction and ``changed`` is 0; stage 2 (PASD over the whole image) is what
    moves them.
    """
    before = np.asarray(original.convert("RGB"), dtype=np.int16)
    after = np.asarray(refined.convert("RGB"), dtype=np.int16)
    if before.shape != after.shape:
        raise ValueError(f"the output {after.shape[1::-1]} and the input {before.shape[1::-1]} differ in size")
    outside = np.ones(before.shape[:2], bool) if weight is None else np.asarray(weight) == 0
    if not outside.any():
        return OutsideMask(math.nan, math.nan)
    difference = (after - before)[outside]
    changed = float((np.abs(difference) > CHANGE_LEVELS).any(axis=-1).mean())
    mse = float(np.mean(difference.astype(np.float64) ** 2))
    return OutsideMask(changed, math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse))
