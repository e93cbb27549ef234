"""autoqa_cost(): the issue's worked example and limits; gate_sweep(): counting and pricing."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from grefine import autoqa_cost
from grefine.eval.autoqa import UnitCosts, gate_sweep, people_accept
from grefine.eval.plots import plot_gate_sweep

EXAMPLE = dict(y_aqa=0.118, p_aqa=0.400, p_gen=0.187, c_gen=0.004, c_aqa=0.0, c_mqa=0.5)


def test_worked_example_saves_50_5_percent():
    cost = autoqa_cost(**EXAMPLE)
    y = 0.118 * 0.400
    assert cost.cost_with == pytest.approx(0.004 / y + 0.5 / 0.4)
    assert cost.cost_without == pytest.approx(0.504 / 0.187)
    assert round(100 * cost.savings, 1) == 50.5
    # Per 100 accepted images: generate 100/y, people review 100/P_AQA (vs 100/P_Gen without).
    assert cost.with_autoqa.generated == pytest.approx(100 / y)
    assert cost.with_autoqa.auto_assessed == pytest.approx(100 / y)
    assert cost.with_autoqa.reviewed == pytest.approx(250.0)
    assert cost.without_autoqa.generated == cost.without_autoqa.reviewed == pytest.approx(100 / 0.187)
    assert cost.without_autoqa.auto_assessed == 0 and cost.with_autoqa.accepted == 100


def test_a_gate_no_better_than_the_generator_saves_nothing_or_harms():
    same = autoqa_cost(y_aqa=0.5, p_aqa=0.3, p_gen=0.3, c_gen=0.0, c_aqa=0.0, c_mqa=0.5)
    assert same.savings == pytest.approx(0.0, abs=1e-12)
    worse = autoqa_cost(y_aqa=0.5, p_aqa=0.25, p_gen=0.3, c_gen=0.0, c_aqa=0.0, c_mqa=0.5)
    assert worse.savings < 0 and worse.cost_with > worse.cost_without
    # AutoQA's own cost is paid for every generated image.
    priced = autoqa_cost(**{**EXAMPLE, "c_aqa": 0.01})
    assert priced.cost_with == pytest.approx(autoqa_cost(**EXAMPLE).cost_with + 0.01 / (0.118 * 0.4))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"y_aqa": 0.0}, "y_aqa"),
        ({"p_aqa": 1.2}, "p_aqa"),
        ({"p_gen": -0.1}, "p_gen"),
        ({"p_gen": float("nan")}, "p_gen"),
        ({"c_gen": -1.0}, "c_gen"),
        ({"c_mqa": float("inf")}, "c_mqa"),
        ({"y_aqa": 1.0, "p_aqa": 0.9}, "exceeds p_gen"),
    ],
)
def test_out_of_range_inputs_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        autoqa_cost(**{**EXAMPLE, **change})


def test_people_accept_above_the_median_or_a_level_on_every_column():
    mos = np.array([[1.0, 4.0], [2.0, 3.0], [3.0, 2.0], [4.0, 1.0], [5.0, 5.0]])
    accepted, levels = people_accept(mos)
    assert levels == (3.0, 3.0) and accepted.tolist() == [False, False, False, False, True]
    accepted, levels = people_accept(mos[:, 0], accept_mos=1.5)
    assert levels == (1.5,) and accepted.tolist() == [False, True, True, True, True]


def test_gate_sweep_counts_yield_precision_recall_and_prices_them():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    mos = np.array([5.0, 4.0, 1.0, 4.5, 1.0, 1.5, 4.2, 1.0, 1.0, 1.0])  # median 1.25 → 5 accepted
    sweep = gate_sweep(scores, mos, thresholds=[0.75, 0.55, 0.0, 2.0])
    assert sweep.n == 10 and sweep.n_accepted == 5 and sweep.p_gen == 0.5 and sweep.accept_mos == (1.25,)
    by_threshold = {p.threshold: p for p in sweep.points}
    assert set(by_threshold) == {0.0, 0.55, 0.75}  # 2.0 passes nothing: left out
    top = by_threshold[0.75]  # passes 0.9, 0.8: both accepted
    assert (top.n_passed, top.y_aqa, top.p_aqa, top.recall) == (2, 0.2, 1.0, 0.4)
    middle = by_threshold[0.55]  # 0.9, 0.8, 0.7, 0.6: three accepted
    assert (middle.n_passed, middle.p_aqa, middle.recall) == (4, 0.75, 0.6)
    assert middle.cost == autoqa_cost(y_aqa=0.4, p_aqa=0.75, p_gen=0.5, c_gen=0.004, c_aqa=0.0, c_mqa=0.5)
    everything = by_threshold[0.0]
    assert everything.recall == 1.0 and everything.p_aqa == 0.5
    assert everything.savings == pytest.approx(0.0, abs=1e-12)  # passing all = no gate
    assert sweep.best is max(sweep.points, key=lambda p: p.savings)


def test_gate_sweep_default_thresholds_and_lower_is_better():
    rng = np.random.default_rng(0)
    mos = rng.normal(size=300)
    scores = mos + rng.normal(0, 0.5, 300)
    sweep = gate_sweep(scores, mos, costs=UnitCosts(c_gen=0.0, c_aqa=0.0, c_mqa=1.0))
    rates = [p.y_aqa for p in sweep.points]
    assert max(rates) == 1.0 and min(rates) <= 0.02 and len(sweep.points) > 50
    assert sweep.best.savings > 0.2  # a good score is a useful gate
    flipped = gate_sweep(-scores, mos, costs=UnitCosts(c_gen=0.0, c_aqa=0.0, c_mqa=1.0), lower_better=True)
    assert flipped.best.savings == pytest.approx(sweep.best.savings)
    assert flipped.best.threshold == pytest.approx(-sweep.best.threshold)
    assert all(((-scores) <= p.threshold).sum() == p.n_passed for p in flipped.points)


def test_gate_sweep_refuses_bad_input():
    with pytest.raises(ValueError, match="one score per image"):
        gate_sweep([0.1, 0.2], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="no image has a MOS above"):
        gate_sweep([0.1, 0.2, 0.3], [1.0, 2.0, 3.0], accept_mos=5.0)
    with pytest.raises(ValueError, match="c_mqa"):
        UnitCosts(c_mqa=-0.5)


def test_savings_plot_is_written(tmp_path):
    rng = np.random.default_rng(1)
    mos = rng.normal(size=100)
    sweep = gate_sweep(mos + rng.normal(0, 0.3, 100), mos)
    plot_gate_sweep(sweep, tmp_path / "plots" / "savings.png", title="test gate")
    with Image.open(tmp_path / "plots" / "savings.png") as image:
        assert image.format == "PNG" and image.size[0] > 200
        assert len(set(image.convert("RGB").getdata())) > 10  # drawn, not blank
