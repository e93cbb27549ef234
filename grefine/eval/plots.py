"""Figures of the score evaluation: a score against MOS with its fitted logistic, and a gate's
savings against its pass threshold. Drawn with matplotlib's Agg canvas on a private figure (no
pyplot state) and written atomically as PNG."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence, Union

import numpy as np
from PIL import Image

from grefine.eval.autoqa import GateSweep
from grefine.eval.correlation import SMALL_SAMPLE, Correlations, fitted_curve
from grefine.image_io import PathLike, save_image_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plot_correlation(
    predicted: Union[Sequence[float], np.ndarray],
    mos: Union[Sequence[float], np.ndarray],
    result: Correlations,
    path: PathLike,
    *,
    xlabel: str = "score",
    ylabel: str = "MOS",
    title: str = "",
) -> None:
    """Scatter of ``predicted`` against ``mos`` with ``result``'s fitted logistic and criteria."""
    figure = _figure()
    axes = figure.add_subplot()
    axes.scatter(predicted, mos, s=6, alpha=0.5, color="tab:blue", linewidths=0)
    if result.fit is not None:
        axes.plot(*fitted_curve(result.fit), color="tab:red", linewidth=1.5, label="logistic fit (VQEG)")
        axes.legend(loc="lower right", fontsize=8)
    axes.set_title(correlation_title(result, title), fontsize=9)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    _save(figure, path)


def plot_gate_sweep(sweep: GateSweep, path: PathLike, *, title: str = "") -> None:
    """Savings, yield, precision and recall (in %) of a gate against its pass threshold; the
    best threshold is marked."""
    figure = _figure()
    axes = figure.add_subplot()
    points = [p for p in sweep.points if math.isfinite(p.savings)]
    thresholds = [p.threshold for p in points]
    axes.axhline(0.0, color="grey", linewidth=0.8)
    axes.plot(thresholds, [100 * p.savings for p in points], color="tab:green", linewidth=2, label="savings")
    axes.plot(thresholds, [100 * p.y_aqa for p in points], "--", color="tab:blue", label="yield $y_{AQA}$")
    axes.plot(thresholds, [100 * p.p_aqa for p in points], "--", color="tab:orange", label="precision $P_{AQA}$")
    axes.plot(thresholds, [100 * p.recall for p in points], ":", color="tab:purple", label="recall")
    best = sweep.best
    if best is not None:
        axes.plot([best.threshold], [100 * best.savings], "o", color="tab:red", label=f"best {best.threshold:.4g}")
    rule = "≤" if sweep.lower_better else "≥"
    axes.set_xlabel(f"pass threshold (score {rule} threshold)")
    axes.set_ylabel("%")
    axes.set_title(gate_title(sweep, title), fontsize=9)
    axes.legend(fontsize=7, loc="best")
    _save(figure, path)


def correlation_title(result: Correlations, title: str = "") -> str:
    """A scatter plot's title: the figures, the number of images behind them, and a warning for a
    small sample or a step-shaped fit."""
    lines = [title] if title else []
    lines.append(f"SRCC {result.srcc:.4f}  PLCC {result.plcc:.4f}  n = {result.n} images")
    if 0 < result.n < SMALL_SAMPLE:
        lines.append(f"small sample (n < {SMALL_SAMPLE}): wide intervals" + ("; the fit is a step" if result.note else ""))
    elif result.note:
        lines.append("the logistic fit is a step: PLCC only says where it falls")
    return "\n".join(lines)


def gate_title(sweep: GateSweep, title: str = "") -> str:
    """A gate plot's title: P_Gen, the images swept, how many pass and fail at the best threshold,
    and a warning when fewer than :data:`SMALL_SAMPLE` stand behind a figure."""
    lines = [title] if title else []
    line = f"$P_{{Gen}}$ = {sweep.p_gen:.3f}, n = {sweep.n} images"
    best = sweep.best
    passed = best.n_passed if best is not None else 0
    if best is not None:
        line += f"; best: {passed} pass, {sweep.n - passed} fail"
    lines.append(line)
    if best is not None and min(passed, sweep.n - passed) < SMALL_SAMPLE:
        lines.append(f"small sample (< {SMALL_SAMPLE} images pass or fail): not reliable")
    return "\n".join(lines)


def _figure() -> "Figure":
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.0, 4.2), dpi=100)
    figure.subplots_adjust(left=0.13, right=0.97, bottom=0.12, top=0.87)
    return figure


def _save(figure: "Figure", path: PathLike) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    save_image_atomic(Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB"), path)
