"""What a quality score is worth as an automatic QA gate: cost per accepted image.

A production pipeline generates N_Gen images, an automatic QA stage (AutoQA) passes N_AQA of
them, and people review those, keeping N_MQA. With the AutoQA yield ``y_AQA = N_AQA / N_Gen``,
its precision ``P_AQA`` (the share of passed images people accept), the generator's precision
``P_Gen`` (the share of all generated images people would accept), ``y = y_AQA · P_AQA`` and
unit costs ``c_Gen``, ``c_AQA`` (per generated image), ``c_MQA`` (per reviewed image)::

    cost per accepted image with AutoQA     c_Gen / y + c_AQA / y + c_MQA / P_AQA
    cost per accepted image without AutoQA  (c_Gen + c_MQA) / P_Gen
    savings                                 1 − with / without

:func:`autoqa_cost` evaluates this; :func:`gate_sweep` measures ``y_AQA``, ``P_AQA`` and the
recall of a score used as a gate (pass when ``score ≥ threshold``) on a database with MOS, for
a range of thresholds, and prices each with :func:`autoqa_cost`; :func:`savings_interval` gives
a bootstrap interval of the savings at one threshold (how much a figure from few images is worth).

"Accepted by people" is ``MOS > accept_mos``. The default level is the median MOS of the images
swept, so that about half of them are acceptable: a neutral choice that needs no knowledge of
the database's scale. With several MOS columns (perceptual and alignment, AGIQA-3K) an image is
accepted when it is above the level on every column (people keep an image that looks good *and*
matches its prompt); every gate of one report is judged by that same acceptance.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np

ACCEPTED_PER_REPORT = 100.0
"""Image volumes are reported per 100 accepted images."""
DEFAULT_PASS_RATES = np.linspace(1.0, 0.01, 100)
"""Default sweep: thresholds at the score quantiles that pass 100 %, 99 %, …, 1 % of the images."""


@dataclass(frozen=True)
class UnitCosts:
    """Unit costs: ``c_gen`` per generated image, ``c_aqa`` per image the AutoQA assesses (every
    generated one), ``c_mqa`` per image people review. The defaults are the worked example of
    the issue (GPU seconds priced against a reviewer's time)."""

    c_gen: float = 0.004
    c_aqa: float = 0.0
    c_mqa: float = 0.5

    def __post_init__(self) -> None:
        for name in ("c_gen", "c_aqa", "c_mqa"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite cost ≥ 0, got {value!r}.")


@dataclass(frozen=True)
class ImageVolumes:
    """How many images go through each step per ``accepted`` (100) accepted images."""

    generated: float
    auto_assessed: float
    reviewed: float
    accepted: float = ACCEPTED_PER_REPORT


@dataclass(frozen=True)
class AutoQACost:
    """Cost per accepted image with and without AutoQA, ``savings`` = 1 − with / without (a
    fraction of the cost without; negative when the gate costs more than it saves), and the
    image volumes of both set-ups per 100 accepted images."""

    cost_with: float
    cost_without: float
    savings: float
    with_autoqa: ImageVolumes
    without_autoqa: ImageVolumes


def autoqa_cost(
    *, y_aqa: float, p_aqa: float, p_gen: float, c_gen: float, c_aqa: float, c_mqa: float
) -> AutoQACost:
    """The cost of an accepted image with and without an AutoQA gate (module docstring).

    Raises:
        ValueError: a yield or precision outside (0, 1], a negative or non-finite cost, or
            ``y_aqa · p_aqa > p_gen`` (more images accepted after the gate than people would
            accept among all of them: the three were not measured on the same images).
    """
    for name, value in (("y_aqa", y_aqa), ("p_aqa", p_aqa), ("p_gen", p_gen)):
        if not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
            raise ValueError(f"{name} is a share of images and must lie in (0, 1], got {value!r}.")
    if y_aqa * p_aqa > p_gen * (1.0 + 1e-9):
        raise ValueError(
            f"y_aqa · p_aqa = {y_aqa * p_aqa:.4g} exceeds p_gen = {p_gen:.4g}: the gate cannot pass more "
            "acceptable images than were generated; measure all three on the same images."
        )
    return _price(y_aqa, p_aqa, p_gen, UnitCosts(c_gen, c_aqa, c_mqa))


def _price(y_aqa: float, p_aqa: float, p_gen: float, costs: UnitCosts) -> AutoQACost:
    """The formulas, for validated shares (``p_aqa`` may be 0 in a sweep: infinite cost)."""
    without = (costs.c_gen + costs.c_mqa) / p_gen
    without_volumes = ImageVolumes(
        generated=ACCEPTED_PER_REPORT / p_gen, auto_assessed=0.0, reviewed=ACCEPTED_PER_REPORT / p_gen
    )
    if p_aqa == 0:
        inf = float("inf")
        return AutoQACost(inf, without, -inf, ImageVolumes(inf, inf, inf), without_volumes)
    y = y_aqa * p_aqa
    cost_with = costs.c_gen / y + costs.c_aqa / y + costs.c_mqa / p_aqa
    generated = ACCEPTED_PER_REPORT / y
    with_volumes = ImageVolumes(generated=generated, auto_assessed=generated, reviewed=ACCEPTED_PER_REPORT / p_aqa)
    return AutoQACost(cost_with, without, 1.0 - cost_with / without, with_volumes, without_volumes)


# ------------------------------------------------------------------------------ gate sweep


@dataclass(frozen=True)
class GatePoint:
    """One pass threshold: ``n_passed`` images pass (``y_aqa`` of all), ``p_aqa`` of them are
    accepted by people, ``recall`` of the acceptable images pass; ``cost`` prices it."""

    threshold: float
    n_passed: int
    y_aqa: float
    p_aqa: float
    recall: float
    cost: AutoQACost

    @property
    def savings(self) -> float:
        return self.cost.savings


@dataclass(frozen=True)
class GateSweep:
    """A score swept as a gate over ``n`` images, ``n_accepted`` of them acceptable
    (``p_gen``) at the levels ``accept_mos`` (one per MOS column); ``best`` has the highest
    savings (on ties, the highest recall). ``lower_better``: the gate passes ``score ≤ threshold``."""

    n: int
    n_accepted: int
    p_gen: float
    accept_mos: tuple[float, ...]
    costs: UnitCosts
    lower_better: bool
    points: list[GatePoint] = field(default_factory=list)

    @property
    def best(self) -> Optional[GatePoint]:
        finite = [p for p in self.points if math.isfinite(p.savings)]
        return max(finite, key=lambda p: (p.savings, p.recall)) if finite else None


def people_accept(
    mos: Union[Sequence[float], np.ndarray], accept_mos: Union[None, float, Sequence[float]] = None
) -> tuple[np.ndarray, tuple[float, ...]]:
    """Which images people accept: ``MOS > level`` on every column of ``mos`` (shape (n,) or
    (n, k)); ``accept_mos`` is one level for every column, one per column, or None for each
    column's median. Returns the boolean mask and the levels used."""
    values = np.asarray(mos, dtype=np.float64)
    values = values[:, None] if values.ndim == 1 else values
    if values.ndim != 2 or values.shape[0] == 0:
        raise ValueError(f"mos must be an (n,) or (n, k) array of MOS values with n > 0, got shape {values.shape}.")
    if not np.all(np.isfinite(values)):
        raise ValueError("mos has non-finite values: drop those images first.")
    if accept_mos is None:
        levels = np.median(values, axis=0)
    else:
        levels = np.broadcast_to(np.asarray(accept_mos, dtype=np.float64), (values.shape[1],))
    return np.all(values > levels, axis=1), tuple(float(level) for level in levels)


def gate_sweep(
    scores: Union[Sequence[float], np.ndarray],
    mos: Union[Sequence[float], np.ndarray],
    *,
    accept_mos: Union[None, float, Sequence[float]] = None,
    costs: UnitCosts = UnitCosts(),
    thresholds: Optional[Sequence[float]] = None,
    lower_better: bool = False,
) -> GateSweep:
    """Sweep a pass threshold on ``scores`` and price each with :func:`autoqa_cost`.

    ``mos``: one MOS per image, or (n, k) for k MOS columns (see :func:`people_accept`).
    ``thresholds``: default, the score quantiles passing 100 %, 99 %, …, 1 % of the images.
    Thresholds passing no image are left out.

    Raises:
        ValueError: lengths differ, non-finite scores, or no image is acceptable at ``accept_mos``.
    """
    score = np.asarray(scores, dtype=np.float64)
    accepted, levels = people_accept(mos, accept_mos)
    if score.ndim != 1 or len(score) != len(accepted):
        raise ValueError(f"scores has shape {score.shape} but mos has {len(accepted)} rows: pass one score per image.")
    if not np.all(np.isfinite(score)):
        raise ValueError("scores has non-finite values: drop those images first.")
    n_accepted = int(accepted.sum())
    if n_accepted == 0:
        raise ValueError(f"no image has a MOS above accept_mos={levels}: lower the acceptance level.")
    oriented = -score if lower_better else score
    if thresholds is None:
        cuts = np.unique(np.quantile(oriented, 1.0 - DEFAULT_PASS_RATES))
    else:
        cuts = np.unique((-1.0 if lower_better else 1.0) * np.asarray(thresholds, dtype=np.float64))
    p_gen = n_accepted / len(score)
    points = []
    for cut in cuts:
        passed = oriented >= cut
        n_passed = int(passed.sum())
        if n_passed == 0:
            continue
        hits = int((passed & accepted).sum())
        y_aqa, p_aqa = n_passed / len(score), hits / n_passed
        threshold = -float(cut) if lower_better else float(cut)
        points.append(GatePoint(threshold, n_passed, y_aqa, p_aqa, hits / n_accepted, _price(y_aqa, p_aqa, p_gen, costs)))
    return GateSweep(len(score), n_accepted, p_gen, levels, costs, lower_better, points)


def savings_interval(
    scores: Union[Sequence[float], np.ndarray],
    mos: Union[Sequence[float], np.ndarray],
    threshold: float,
    *,
    accept_mos: Union[float, Sequence[float]],
    costs: UnitCosts = UnitCosts(),
    lower_better: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the savings of the gate ``score ≥ threshold`` (``≤`` when
    ``lower_better``): the images are resampled with replacement and ``P_Gen``, ``y_AQA`` and
    ``P_AQA`` measured again on each resample at the same threshold and acceptance levels. A
    resample where no image is acceptable is left out; one where no image passes, or no passed
    image is acceptable, saves −∞ (the gate would never deliver an accepted image). (NaN, NaN) when ``n_boot`` is 0 or no resample is usable. The best
    threshold of a sweep was chosen on these images, so its interval is optimistic."""
    score = np.asarray(scores, dtype=np.float64)
    accepted, _ = people_accept(mos, accept_mos)
    passed = score <= threshold if lower_better else score >= threshold
    rng = np.random.default_rng(seed)
    savings = []
    for _ in range(n_boot):
        index = rng.integers(0, len(score), len(score))
        n_passed, n_accepted = int(passed[index].sum()), int(accepted[index].sum())
        if n_accepted == 0:
            continue
        hits = int((passed & accepted)[index].sum())
        savings.append(_price(n_passed / len(score), hits / n_passed, n_accepted / len(score), costs).savings if n_passed else -math.inf)
    if not savings:
        return float("nan"), float("nan")
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(np.asarray(savings), [tail, 100.0 - tail], method="nearest")  # no interpolation with −∞
    return float(low), float(high)
