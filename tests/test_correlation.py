"""correlations(): agreement with scipy and with first-principles formulas, the VQEG logistic fit,
bootstrap intervals and degenerate input."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from grefine import correlations
from grefine.eval.correlation import fit_logistic, fitted_curve, logistic4


def _random(n=80, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return x, np.tanh(x) + rng.normal(0, 0.4, n)


def _tied(n=60, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 5, n).astype(float)  # five levels: many ties
    return x, np.round(x + rng.normal(0, 1.5, n))


def _tau_b(x, y):
    """Kendall's τ-b by counting pairs: (C − D) / sqrt((n0 − n1)(n0 − n2))."""
    concordant = discordant = ties_x = ties_y = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        ties_x += dx == 0
        ties_y += dy == 0
        concordant += dx * dy > 0
        discordant += dx * dy < 0
    n0 = len(x) * (len(x) - 1) / 2
    return (concordant - discordant) / np.sqrt((n0 - ties_x) * (n0 - ties_y))


@pytest.mark.parametrize("data", [_random, _tied], ids=["random", "tied"])
def test_agrees_with_scipy_and_with_the_definitions(data):
    x, y = data()
    result = correlations(x, y, n_boot=0)
    assert result.n == len(x) and result.reason == ""
    assert result.srcc == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-9)
    assert result.krcc == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-9)
    assert result.plcc_raw == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-9)
    # Independent of scipy: SRCC is Pearson on average ranks; KRCC is τ-b.
    ranks_x, ranks_y = stats.rankdata(x), stats.rankdata(y)
    assert result.srcc == pytest.approx(np.corrcoef(ranks_x, ranks_y)[0, 1], abs=1e-9)
    assert result.krcc == pytest.approx(_tau_b(x, y), abs=1e-9)
    assert result.plcc_raw == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-9)


def test_plcc_and_rmse_are_taken_after_the_logistic_fit():
    x, y = _random(200)
    result = correlations(x, y, n_boot=0)
    mapped = result.fit(x)
    assert result.plcc == pytest.approx(np.corrcoef(mapped, y)[0, 1], abs=1e-12)
    assert result.rmse == pytest.approx(np.sqrt(np.mean((mapped - y) ** 2)), abs=1e-12)
    # y = tanh(x) + noise is S-shaped: the fit must beat the straight line.
    assert result.plcc > result.plcc_raw
    # and it is a least-squares optimum: a linear map of x does no better.
    slope, intercept = np.polyfit(x, y, 1)
    assert result.rmse <= np.sqrt(np.mean((slope * x + intercept - y) ** 2))


@pytest.mark.parametrize(
    "beta, scale, offset",
    [((4.5, 0.5, 5.0, 1.2), 1.0, 0.0), ((0.8, 4.2, 3.0, 0.7), 1.0, 0.0), ((90.0, 10.0, 30.004, 0.0015), 1e-3, 30.0)],
    ids=["increasing", "decreasing", "narrow-range-x"],
)
def test_logistic_fit_recovers_known_parameters(beta, scale, offset):
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 10, 400) * scale + offset
    y = logistic4(x, *beta) + rng.normal(0, 0.02 * abs(beta[0] - beta[1]), len(x))
    fit = fit_logistic(x, y)
    assert fit is not None
    b1, b2, b3, b4 = fit.beta
    span = abs(beta[0] - beta[1])
    assert abs(b1 - beta[0]) < 0.05 * span and abs(b2 - beta[1]) < 0.05 * span
    assert abs(b3 - beta[2]) < 0.05 * beta[3] * 4 and abs(abs(b4) - beta[3]) < 0.1 * beta[3]
    xs, ys = fitted_curve(fit, num=50)
    assert len(xs) == 50 and xs[0] == pytest.approx(x.min()) and xs[-1] == pytest.approx(x.max())
    assert np.allclose(ys, logistic4(xs, *fit.beta))


def test_logistic_fit_from_a_given_start_matches_the_data_driven_one():
    x, y = _random(150)
    fit = fit_logistic(x, y)
    again = fit_logistic(x, y, start=fit.beta)
    assert np.allclose(fit(x), again(x), atol=1e-4)  # curve_fit stops at its own tolerance


def test_bootstrap_intervals_are_seeded_and_bracket_the_estimate():
    x, y = _random(100)
    first = correlations(x, y, n_boot=100, seed=7)
    assert first == correlations(x, y, n_boot=100, seed=7)
    other = correlations(x, y, n_boot=100, seed=8)
    assert other.intervals != first.intervals
    for criterion in ("srcc", "krcc", "plcc", "plcc_raw", "rmse"):
        low, high = first.intervals[criterion]
        assert low < getattr(first, criterion) < high
    wider = correlations(x, y, n_boot=100, seed=7, confidence=0.99)
    assert wider.intervals["srcc"][0] < first.intervals["srcc"][0]
    assert np.isnan(correlations(x, y, n_boot=0).intervals["srcc"][0])


@pytest.mark.parametrize(
    "predicted, mos, reason",
    [
        ([0.5, 0.5, 0.5, 0.5], [1.0, 2.0, 3.0, 4.0], "prediction is constant"),
        ([0.1, 0.2, 0.3, 0.4], [2.0, 2.0, 2.0, 2.0], "MOS is constant"),
        ([0.1, 0.2], [1.0, 2.0], "fewer than 3 pairs"),
        ([], [], "fewer than 3 pairs"),
    ],
)
def test_degenerate_input_gives_nan_with_a_reason(predicted, mos, reason):
    result = correlations(predicted, mos, n_boot=10)
    assert reason in result.reason and result.fit is None
    assert all(np.isnan(getattr(result, c)) for c in ("srcc", "krcc", "plcc", "plcc_raw", "rmse"))


@pytest.mark.parametrize(
    "predicted, mos, message",
    [
        ([0.1, 0.2, 0.3], [1.0, 2.0], "predicted has 3 values but mos has 2"),
        ([0.1, float("nan"), 0.3], [1.0, 2.0, 3.0], r"predicted has 1 non-finite value\(s\) \(first at index 1"),
        ([0.1, 0.2, 0.3], [1.0, float("inf"), 3.0], "mos has 1 non-finite"),
        ([[0.1, 0.2]], [[1.0, 2.0]], "one-dimensional"),
        (["a", "b", "c"], [1.0, 2.0, 3.0], "predicted must be numbers"),
    ],
)
def test_bad_input_is_a_clear_error(predicted, mos, message):
    with pytest.raises(ValueError, match=message):
        correlations(predicted, mos)


def test_bad_options_are_refused():
    x, y = _random(10)
    with pytest.raises(ValueError, match="n_boot"):
        correlations(x, y, n_boot=-1)
    with pytest.raises(ValueError, match="confidence"):
        correlations(x, y, confidence=1.5)
