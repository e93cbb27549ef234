"""The record of a prompt-training run: one :class:`EpochRecord` per epoch (epoch 0 = the
initial prompts, evaluated before any update), written as ``train_log.csv`` and drawn as
``train_log.png``."""
from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional, Sequence

from grefine.image_io import atomic_write, write_text_atomic


@dataclass
class EpochRecord:
    """One epoch of training.

    ``loss``: the objective of the prompts at the end of the epoch on the training set, in
    fixed (unshuffled, unflipped) batches of the training batch size, so that epoch 0 and every
    later epoch measure the same thing; ``step_loss``: the mean loss of the epoch's
    optimisation steps (none at epoch 0); ``train_*`` / ``val_*``: SRCC and PLCC of the
    predicted scores against the normalised human scores; ``val_loss``: the objective on the
    whole validation set as one batch; ``lr``: the learning rate the epoch's steps used.
    """

    epoch: int
    loss: float
    train_srcc: float
    val_srcc: float
    val_plcc: float
    train_plcc: float
    val_loss: float
    step_loss: Optional[float]
    lr: Optional[float]
    seconds: float


LOG_COLUMNS = tuple(f.name for f in fields(EpochRecord))


def _cell(value: object) -> object:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else value


def write_log(records: Sequence[EpochRecord], path: Path) -> None:
    """``train_log.csv``: a header of :data:`LOG_COLUMNS`, one row per epoch (atomic)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LOG_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({key: _cell(value) for key, value in asdict(record).items()})
    write_text_atomic(buffer.getvalue(), path)


def plot_log(records: Sequence[EpochRecord], best_epoch: int, path: Path, title: str) -> None:
    """Loss (left) and correlations (right) against the epoch, the best epoch marked (PNG)."""
    from matplotlib.figure import Figure

    epochs = [r.epoch for r in records]
    figure = Figure(figsize=(10, 4), layout="constrained")
    loss_axes, corr_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, [r.loss for r in records], marker=".", label="train loss")
    loss_axes.plot(epochs, [r.val_loss for r in records], marker=".", label="val loss")
    corr_axes.plot(epochs, [r.train_srcc for r in records], marker=".", label="train SRCC")
    corr_axes.plot(epochs, [r.val_srcc for r in records], marker=".", label="val SRCC")
    corr_axes.plot(epochs, [r.val_plcc for r in records], marker=".", label="val PLCC")
    for axes, label in ((loss_axes, "loss (MSE + PLCC loss)"), (corr_axes, "correlation")):
        axes.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch {best_epoch}")
        axes.set_xlabel("epoch")
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    figure.suptitle(title)
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))


def is_better(value: float, best: float) -> bool:
    """Whether a validation SRCC beats the best so far (NaN never does)."""
    return not math.isnan(value) and (math.isnan(best) or value > best)
