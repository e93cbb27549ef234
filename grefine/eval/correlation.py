"""Correlation of a quality score with human MOS (paper §4.4, Tables 6-7).

``correlations(predicted, mos)`` gives the four criteria of the IQA literature:

* SRCC — Spearman's rank-order correlation (average ranks for ties; prediction monotonicity);
* KRCC — Kendall's τ-b (tie-corrected, scipy's default);
* PLCC — Pearson's linear correlation between the MOS and the prediction mapped through the
  4-parameter logistic of VQEG (prediction accuracy), and ``plcc_raw`` on the prediction as is;
* RMSE — root-mean-square error of that logistic mapping, in MOS units;

each with a seeded percentile-bootstrap interval (pairs resampled with replacement, every
criterion — the logistic fit included — recomputed per resample).

The logistic (VQEG, *Final report from the Video Quality Experts Group on the validation of
objective models of video quality assessment*, Phase I, 2000; the form used by DBCNN, HyperIQA,
AGIQA-3K and most IQA papers since)::

    f(x) = β2 + (β1 − β2) / (1 + exp(−(x − β3) / |β4|))

β1 / β2 are the upper / lower MOS asymptotes, β3 the midpoint, |β4| the width. It is fitted by
least squares (``scipy.optimize.curve_fit``) on standardised x and MOS, from several starting
points set by the data (asymptotes at the MOS extremes, ordered by the sign of the raw
correlation; midpoint at the median; widths of ½, 1 and 2 standard deviations), keeping the best.

Degenerate input is never passed to scipy: fewer than three pairs, a constant prediction or a
constant MOS give NaN criteria with ``reason`` saying why, and fewer than four pairs (the
logistic's four parameters) leave PLCC and RMSE undefined; mismatched lengths, non-numeric or
non-finite values raise :class:`ValueError` naming the input. A fit that is a step (no prediction
lies on its slope, common with few images) is flagged in ``note``: PLCC and RMSE then only say
where the step falls. Samples under :data:`SMALL_SAMPLE` images are marked by the reports.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from scipy import optimize, special, stats

MIN_PAIRS = 3
MIN_LOGISTIC_PAIRS = 4
"""The 4-parameter logistic is fitted on at least as many pairs as it has parameters."""
SMALL_SAMPLE = 30
"""Fewer images than this behind a figure are marked as a small sample in tables and plots."""
_SLOPE_WIDTHS = 2.2
"""The logistic rises from 10 % to 90 % within ±2.2 widths of its midpoint: its slope."""
_STEP_SHARE = 0.05
"""A slope narrower than this share of the predictions' range draws as a step."""
CRITERIA = ("srcc", "krcc", "plcc", "plcc_raw", "rmse")
_WIDTH_STARTS = (0.5, 1.0, 2.0)


@dataclass(frozen=True)
class LogisticFit:
    """The fitted VQEG logistic: ``beta`` = (β1, β2, β3, β4) in the units of the data, and
    ``x_range`` = (min, max) of the predictions it was fitted on."""

    beta: tuple[float, float, float, float]
    x_range: tuple[float, float]

    def __call__(self, x: np.ndarray | float) -> np.ndarray:
        return logistic4(np.asarray(x, dtype=np.float64), *self.beta)


@dataclass(frozen=True)
class Correlations:
    """Agreement of ``n`` predictions with their MOS (see the module docstring).

    ``intervals[c]`` is the bootstrap interval (low, high) of criterion ``c`` at ``confidence``
    over ``n_boot`` resamples (NaN, NaN when ``n_boot`` is 0 or the criterion is NaN). ``fit`` is
    the logistic behind ``plcc`` / ``rmse`` (None when it could not be fitted). ``reason`` is
    empty when every criterion is defined, else says why some are NaN; ``note`` flags a defined
    but doubtful figure (a step-shaped fit).
    """

    n: int
    srcc: float
    krcc: float
    plcc: float
    plcc_raw: float
    rmse: float
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    fit: Optional[LogisticFit] = None
    n_boot: int = 0
    confidence: float = 0.95
    reason: str = ""
    note: str = ""


def logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """VQEG's 4-parameter logistic ``β2 + (β1 − β2) / (1 + exp(−(x − β3)/|β4|))``
    (``expit`` keeps it finite for any width)."""
    return b2 + (b1 - b2) * special.expit((x - b3) / np.maximum(np.abs(b4), 1e-12))


def fit_logistic(
    predicted: Sequence[float] | np.ndarray,
    mos: Sequence[float] | np.ndarray,
    *,
    start: Optional[tuple[float, float, float, float]] = None,
) -> Optional[LogisticFit]:
    """Least-squares fit of :func:`logistic4` mapping ``predicted`` to ``mos``; None when no
    start converges. ``start`` (β in data units, e.g. a previous fit) replaces the data-driven
    starting points."""
    x, y = np.asarray(predicted, dtype=np.float64), np.asarray(mos, dtype=np.float64)
    if len(x) < MIN_LOGISTIC_PAIRS:
        return None
    x_mean, x_std, y_mean, y_std = x.mean(), x.std(), y.mean(), y.std()
    if x_std == 0 or y_std == 0:
        return None
    xz, yz = (x - x_mean) / x_std, (y - y_mean) / y_std
    if start is None:
        high, low = yz.max(), yz.min()
        if np.corrcoef(xz, yz)[0, 1] < 0:
            high, low = low, high
        starts = [(high, low, float(np.median(xz)), width) for width in _WIDTH_STARTS]
    else:
        b1, b2, b3, b4 = start
        starts = [((b1 - y_mean) / y_std, (b2 - y_mean) / y_std, (b3 - x_mean) / x_std, abs(b4) / x_std)]
    best, best_sse = None, np.inf
    for p0 in starts:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optimize.OptimizeWarning)
                beta, _ = optimize.curve_fit(logistic4, xz, yz, p0=p0, maxfev=20000)
        except (RuntimeError, ValueError):
            continue
        sse = float(np.sum((logistic4(xz, *beta) - yz) ** 2))
        if np.all(np.isfinite(beta)) and sse < best_sse:
            best, best_sse = beta, sse
    if best is None:
        return None
    b1, b2, b3, b4 = best
    beta_data = (y_mean + y_std * b1, y_mean + y_std * b2, x_mean + x_std * b3, x_std * abs(b4))
    return LogisticFit(tuple(float(b) for b in beta_data), (float(x.min()), float(x.max())))


def fitted_curve(fit: LogisticFit, num: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """``num`` points (x, f(x)) of the fitted logistic over the fitted predictions' range,
    for drawing it over a scatter plot."""
    x = np.linspace(*fit.x_range, num)
    return x, fit(x)


def is_step(fit: LogisticFit, predicted: np.ndarray) -> bool:
    """The fitted logistic jumps between predictions lying on both sides of its midpoint, with
    none on its slope (within ±2.2 widths of the midpoint) or a slope narrower than 5 % of their
    range: a step, and PLCC / RMSE only say where it falls. (A fit whose midpoint lies outside the
    predictions is a smooth tail, not a step.)"""
    _, _, midpoint, width = fit.beta
    x = np.asarray(predicted, dtype=np.float64)
    slope = _SLOPE_WIDTHS * abs(width)
    if not (np.any(x < midpoint) and np.any(x > midpoint)):
        return False
    return 2 * slope < _STEP_SHARE * float(np.ptp(x)) or not bool(np.any(np.abs(x - midpoint) <= slope))


def correlations(
    predicted: Sequence[float] | np.ndarray,
    mos: Sequence[float] | np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Correlations:
    """SRCC, KRCC, PLCC (after the logistic fit), raw PLCC and RMSE of ``predicted`` against
    ``mos``, with bootstrap intervals (``n_boot`` resamples drawn with ``seed``).

    Raises:
        ValueError: lengths differ, values are not numbers or not finite, ``n_boot`` < 0,
            ``confidence`` outside (0, 1).
    """
    x = _as_vector(predicted, "predicted")
    y = _as_vector(mos, "mos")
    if len(x) != len(y):
        raise ValueError(f"predicted has {len(x)} values but mos has {len(y)}: pass one prediction per MOS.")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ValueError(f"n_boot must be a whole number ≥ 0, got {n_boot!r}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}.")
    reason = _degenerate(x, y)
    if reason:
        nan = float("nan")
        return Correlations(
            len(x), nan, nan, nan, nan, nan, {c: (nan, nan) for c in CRITERIA}, None, int(n_boot), confidence, reason
        )
    point, fit = _criteria(x, y)
    if len(x) < MIN_LOGISTIC_PAIRS:
        reason = f"the 4-parameter logistic needs at least {MIN_LOGISTIC_PAIRS} pairs (n={len(x)}): PLCC and RMSE are undefined"
    else:
        reason = "" if fit is not None else "the logistic fit did not converge: PLCC and RMSE are undefined"
    note = "the logistic fit is a step (no score lies on its slope): PLCC and RMSE only say where it falls" if fit is not None and is_step(fit, x) else ""
    intervals = _bootstrap(x, y, point, fit, int(n_boot), seed, confidence)
    return Correlations(len(x), **point, intervals=intervals, fit=fit, n_boot=int(n_boot), confidence=confidence, reason=reason, note=note)


def _as_vector(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be numbers ({err}).") from err
    if array.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {array.shape}.")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(
            f"{what} has {bad.size} non-finite value(s) (first at index {bad[0]}: {array[bad[0]]}); "
            "drop those pairs before correlating."
        )
    return array


def _degenerate(x: np.ndarray, y: np.ndarray) -> str:
    if len(x) < MIN_PAIRS:
        return f"fewer than {MIN_PAIRS} pairs (n={len(x)}): no correlation is defined"
    if np.ptp(x) == 0:
        return f"the prediction is constant (every value is {x[0]:g}): no correlation is defined"
    if np.ptp(y) == 0:
        return f"the MOS is constant (every value is {y[0]:g}): no correlation is defined"
    return ""


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r; NaN for a constant input (a flat fitted curve in a bootstrap resample)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.NearConstantInputWarning)
        return float(stats.pearsonr(a, b).statistic)


def _criteria(
    x: np.ndarray, y: np.ndarray, start: Optional[tuple[float, float, float, float]] = None
) -> tuple[dict[str, float], Optional[LogisticFit]]:
    """The five criteria of one (non-degenerate) sample, and its logistic fit."""
    fit = fit_logistic(x, y, start=start)
    if fit is None:
        plcc = rmse = float("nan")
    else:
        mapped = fit(x)
        plcc, rmse = _pearson(mapped, y), float(np.sqrt(np.mean((mapped - y) ** 2)))
    values = {
        "srcc": float(stats.spearmanr(x, y).statistic),
        "krcc": float(stats.kendalltau(x, y).statistic),
        "plcc": plcc,
        "plcc_raw": _pearson(x, y),
        "rmse": rmse,
    }
    return values, fit


def _bootstrap(
    x: np.ndarray,
    y: np.ndarray,
    point: dict[str, float],
    fit: Optional[LogisticFit],
    n_boot: int,
    seed: int,
    confidence: float,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals over ``n_boot`` resamples; each resample's logistic starts from the
    full-sample fit. Resamples that are degenerate (e.g. all one pair) count as NaN and are left out."""
    nan = float("nan")
    if n_boot == 0:
        return {c: (nan, nan) for c in CRITERIA}
    rng = np.random.default_rng(seed)
    start = fit.beta if fit is not None else None
    draws = np.full((n_boot, len(CRITERIA)), np.nan)
    for row in range(n_boot):
        index = rng.integers(0, len(x), len(x))
        xs, ys = x[index], y[index]
        if not _degenerate(xs, ys):
            values, _ = _criteria(xs, ys, start)
            draws[row] = [values[c] for c in CRITERIA]
    tail = 50.0 * (1.0 - confidence)
    intervals = {}
    for column, criterion in enumerate(CRITERIA):
        finite = draws[:, column][np.isfinite(draws[:, column])]
        if not np.isfinite(point[criterion]) or finite.size == 0:
            intervals[criterion] = (nan, nan)
        else:
            low, high = np.percentile(finite, [tail, 100.0 - tail])
            intervals[criterion] = (float(low), float(high))
    return intervals
