"""Figures of the score evaluation: a score against MOS with its fitted logistic, and a gate's
savings against its pass threshold. Drawn with matplotlib's Agg canvas on a private figure (no
pyplot state) and written atomically as PNG."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence, Union

import numpy as np
from PIL import Image

from grefine.eval.autoqa import GateSweep
from grefine.eval.correlation import Correlations, fitted_curve
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
    summary = f"SRCC {result.srcc:.4f}  PLCC {result.plcc:.4f}  n={result.n}"
    axes.set_title(f"{title}\n{summary}" if title else summary, fontsize=9)
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
    line = f"$P_{{Gen}}$ = {sweep.p_gen:.3f}, n = {sweep.n}"
    axes.set_title(f"{title}\n{line}" if title else line, fontsize=9)
    axes.legend(fontsize=7, loc="best")
    _save(figure, path)


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
