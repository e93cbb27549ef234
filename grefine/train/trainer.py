"""Learning one PQ-Map quality-prompt pair from human scores (paper §3.1, Fig. 3; §4.2).

"From the difference between p and subjective quality annotation, PQ-Map can update T_p"
(§3.1): the prediction is PQ-Map's own factor score, the positive prompt's probability at the
CLS token, ``p = σ(c · (T_p[0] − T_p[1]))`` with ``c`` the L2-normalised CLS feature of the
VVV-surgery image tower (Eq. 1, 3; :mod:`grefine.maps.pq_map`), so that the learned file
scores images exactly as it was trained to. The image tower is frozen (its features are cached
once per image, :mod:`grefine.train.features`), the text tower is frozen, and only the 2×16
context tokens of the pair (:class:`~grefine.train.pq_prompts.QualityPromptLearner`) are updated.

The objective and recipe are pyiqa's for CLIP-IQA+ (:mod:`grefine.train.loss`): MSE + PLCC loss
against the scores min-max normalised to [0, 1], Adam (lr 2e-3), cosine annealing to 0 over the
epochs, stepped per epoch, batches of 8, 50 epochs (§4.2). pyiqa's CLIP-IQA+ head differs in one
point: it normalises the text features and scales by CLIP's logit scale; PQ-Map (the authors'
script) uses the raw text features, so we train that.

Every epoch (and epoch 0, the initial prompts) is evaluated on the training and validation
sets; ``PQ-<factor>.pth`` always holds the epoch with the best validation SRCC (ties: the
earliest), in the official format. ``checkpoint.pt`` holds the latest epoch (prompts, optimiser,
scheduler, history), so ``resume=True`` continues after it and ends where an uninterrupted run
would. Runs on CPU, one GPU or several under ``accelerate launch``: the prompts are wrapped by
``Accelerator.prepare`` (data-parallel), every process takes its share of each batch,
validation predictions are gathered, and only the main process writes files.
"""
from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from grefine.eval.correlation import correlations
from grefine.image_io import atomic_write, write_text_atomic
from grefine.maps.clip_surgery import FeatureNorm, InputSize, vvv_surgery
from grefine.maps.pq_map import QUALITY_FACTORS
from grefine.train.dataset import (
    ScoredImage,
    SkippedRow,
    TrainingData,
    check_split,
    fingerprint,
    normalize_scores,
)
from grefine.train.features import encode_images
from grefine.train.log import EpochRecord, is_better, plot_log, write_log
from grefine.train.loss import clipiqa_plus_loss
from grefine.train.pq_prompts import QualityPromptLearner

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "train_log.csv"
PLOT_NAME = "train_log.png"
SKIPPED_NAME = "skipped_rows.csv"


class ResumeError(ValueError):
    """An output folder holds a run that cannot be resumed by (or must not be overwritten by) this one."""


@dataclass
class TrainConfig:
    """Settings of one prompt-training run (defaults: pyiqa's CLIP-IQA+ recipe, §4.2's 50 epochs).

    ``score_range``: (low, high) for the min-max normalisation; None = the training scores' own.
    """

    factor: str = "overall"
    epochs: int = 50
    batch_size: int = 8
    lr: float = 2e-3
    seed: int = 0
    hflip: bool = False
    score_range: Optional[tuple[float, float]] = None

    def check(self) -> None:
        """Raise ValueError naming the first bad setting."""
        if self.factor not in QUALITY_FACTORS:
            raise ValueError(f"factor must be one of {', '.join(QUALITY_FACTORS)} (the PQ-Map prompt pairs), got {self.factor!r}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"learning rate must be positive, got {self.lr}")
        if self.score_range is not None and not self.score_range[1] > self.score_range[0]:
            raise ValueError(f"score range must be (low, high) with high > low, got {self.score_range}")


@dataclass
class FeatureSet:
    """Cached image features (n, views, embed_dim) and normalised targets (n,) of one split."""

    features: torch.Tensor
    targets: torch.Tensor
    items: list[ScoredImage]


@dataclass
class TrainResult:
    """What a run did: the prompt file (best epoch), its epoch and validation SRCC, the history
    (epoch 0 first), the epoch it resumed after (None: fresh), the images trained and validated
    on, and every skipped row."""

    prompts_path: Path
    best_epoch: int
    best_val_srcc: float
    history: list[EpochRecord]
    resumed_after: Optional[int] = None
    train_size: int = 0
    val_size: int = 0
    skipped: list[SkippedRow] = field(default_factory=list)


def srcc_plcc(pred: Sequence[float], target: Sequence[float]) -> tuple[float, float]:
    """(SRCC, PLCC after the VQEG logistic fit) of predictions against targets, through
    :func:`grefine.eval.correlation.correlations` without bootstrap; NaN when undefined."""
    result = correlations(pred, target, n_boot=0)
    return result.srcc, result.plcc


def prompts_path(output_dir: Path, factor: str) -> Path:
    """Where the learned pair is written: ``<output>/PQ-<factor>.pth``, the official name."""
    return Path(output_dir) / f"PQ-{factor}.pth"


def make_accelerator(seed: int):
    """An ``Accelerator`` whose shuffling is seeded per epoch (``seed + epoch``), so that a
    resumed run draws the same batches as an uninterrupted one."""
    from accelerate import Accelerator, DataLoaderConfiguration

    return Accelerator(dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=seed))


def check_output(output_dir: Path, resume: bool) -> None:
    """Refuse to start a fresh run over an earlier one (it would be lost)."""
    if not resume and (Path(output_dir) / CHECKPOINT_NAME).is_file():
        raise ResumeError(
            f"{output_dir} already holds a training run ({CHECKPOINT_NAME}). Pass --resume to continue it, or choose another --output."
        )


def _batched_loss(pred: torch.Tensor, target: torch.Tensor, batch_size: int) -> float:
    losses = [clipiqa_plus_loss(pred[i:i + batch_size], target[i:i + batch_size]) for i in range(0, len(pred), batch_size)]
    return float(torch.stack(losses).mean())


class PromptTrainer:
    """Trains a :class:`QualityPromptLearner` on cached features; see the module docstring.

    ``meta`` (plain JSON-able values) describes the run; a checkpoint is resumed only by a run
    with the same meta.
    """

    def __init__(
        self,
        model: nn.Module,
        learner: QualityPromptLearner,
        train: FeatureSet,
        val: FeatureSet,
        config: TrainConfig,
        output_dir: Path,
        *,
        accelerator,
        meta: dict,
        progress: bool = True,
    ) -> None:
        self.model = model
        self.config = config
        self.output_dir = Path(output_dir)
        self.accelerator = accelerator
        self.meta = json.loads(json.dumps(meta))
        self.progress = progress
        device = accelerator.device
        self.train_features, self.train_targets = train.features.to(device), train.targets.to(device)
        self.val_features, self.val_targets = val.features.to(device), val.targets.to(device)
        world_batch = config.batch_size * accelerator.num_processes
        optimizer = torch.optim.Adam(learner.parameters(), lr=config.lr)
        train_loader = self._loader(len(train.targets), shuffle=True, drop_last=len(train.targets) >= world_batch)
        self.learner, self.optimizer, self.train_loader, self.train_eval_loader, self.val_loader = accelerator.prepare(
            learner, optimizer, train_loader, self._loader(len(train.targets)), self._loader(len(val.targets))
        )
        # Stepped once per epoch by hand (pyiqa's epoch-based schedule); not prepared, since
        # accelerate's scheduler wrapper steps once per optimiser step and process.
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer.optimizer, T_max=config.epochs, eta_min=0.0)

    def _loader(self, size: int, shuffle: bool = False, drop_last: bool = False) -> DataLoader:
        return DataLoader(TensorDataset(torch.arange(size)), batch_size=self.config.batch_size, shuffle=shuffle, drop_last=drop_last)

    @property
    def bare_learner(self) -> QualityPromptLearner:
        return self.accelerator.unwrap_model(self.learner)

    def _score(self, features: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        """PQ-Map's factor score σ(c · (T_p[0] − T_p[1])) for normalised CLS features ``c``."""
        return torch.sigmoid(features @ direction)

    @torch.no_grad()
    def predict(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted scores, normalised targets) of ``"train"`` or ``"val"`` (unflipped view),
        gathered from all processes, in table order, on every process."""
        loader, features, targets = (
            (self.train_eval_loader, self.train_features, self.train_targets)
            if split == "train"
            else (self.val_loader, self.val_features, self.val_targets)
        )
        direction = self.bare_learner(self.model)
        preds, indices = [], []
        for (index,) in loader:
            pred, index = self.accelerator.gather_for_metrics((self._score(features[index, 0], direction), index))
            preds.append(pred)
            indices.append(index)
        order = torch.cat(indices).argsort()
        return torch.cat(preds)[order].float().cpu(), targets[torch.cat(indices)[order]].float().cpu()

    def _train_epoch(self, epoch: int) -> float:
        """One pass of optimisation steps; returns their mean loss over all processes."""
        self.learner.train()
        self.train_loader.set_epoch(epoch)
        views = self.train_features.shape[1]
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch * 1_009 + self.accelerator.process_index)
        total = torch.zeros(2, device=self.accelerator.device)
        bar = tqdm(
            self.train_loader,
            desc=f"{self.config.factor} epoch {epoch}/{self.config.epochs}",
            unit="step",
            leave=False,
            disable=not self.progress or not self.accelerator.is_local_main_process,
        )
        for (index,) in bar:
            view = torch.randint(views, index.shape, generator=generator).to(index.device)
            pred = self._score(self.train_features[index, view], self.learner(self.model))
            loss = clipiqa_plus_loss(pred, self.train_targets[index])
            self.optimizer.zero_grad()
            self.accelerator.backward(loss)
            self.optimizer.step()
            total += torch.stack([loss.detach(), torch.ones_like(loss)])
            bar.set_postfix(loss=f"{loss.item():.4f}")
        total = self.accelerator.reduce(total, reduction="sum")
        return float(total[0] / total[1].clamp_min(1))

    def _evaluate(self, epoch: int, step_loss: Optional[float], lr: Optional[float], start: float) -> EpochRecord:
        self.learner.eval()
        train_pred, train_target = self.predict("train")
        val_pred, val_target = self.predict("val")
        train_srcc, train_plcc = srcc_plcc(train_pred, train_target)
        val_srcc, val_plcc = srcc_plcc(val_pred, val_target)
        return EpochRecord(
            epoch=epoch,
            loss=_batched_loss(train_pred, train_target, self.config.batch_size),
            train_srcc=train_srcc,
            val_srcc=val_srcc,
            val_plcc=val_plcc,
            train_plcc=train_plcc,
            val_loss=float(clipiqa_plus_loss(val_pred, val_target)),
            step_loss=step_loss,
            lr=lr,
            seconds=time.perf_counter() - start,
        )

    def _checkpoint(self, epoch: int, history: list[EpochRecord], best_epoch: int, best_srcc: float) -> dict:
        return {
            "epoch": epoch,
            "meta": self.meta,
            "prompts": self.bare_learner.official_state()["params"],
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "best_epoch": best_epoch,
            "best_val_srcc": best_srcc,
            "history": [asdict(record) for record in history],
        }

    def _restore(self, path: Path) -> dict:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key, value in self.meta.items():
            if state["meta"].get(key) != value:
                raise ResumeError(
                    f"{path}: written by a run with {key}={state['meta'].get(key)!r}, this run has {key}={value!r}. "
                    "Resume with the same settings and data, or choose another --output."
                )
        self.bare_learner.load_official_params(state["prompts"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        return state

    def _write(self, history: list[EpochRecord], best_epoch: int, best_srcc: float, new_best: bool) -> None:
        """After every epoch: the prompts when they are the best so far, the checkpoint, the log."""
        if not self.accelerator.is_main_process:
            return
        if new_best:
            self.bare_learner.save(prompts_path(self.output_dir, self.config.factor))
        state = self._checkpoint(history[-1].epoch, history, best_epoch, best_srcc)
        atomic_write(self.output_dir / CHECKPOINT_NAME, lambda tmp: torch.save(state, tmp))
        write_log(history, self.output_dir / LOG_NAME)

    def _plot(self, history: list[EpochRecord], best_epoch: int, best_srcc: float) -> None:
        """Once per run, also when it is interrupted (drawing costs more than a tiny epoch)."""
        if self.accelerator.is_main_process and history:
            title = f"PQ-{self.config.factor}: best epoch {best_epoch} (val SRCC {best_srcc:.4f})"
            plot_log(history, best_epoch, self.output_dir / PLOT_NAME, title)

    def fit(self, resume: bool = False) -> TrainResult:
        """Train for ``config.epochs`` epochs (or the rest of them when resuming)."""
        checkpoint = self.output_dir / CHECKPOINT_NAME
        check_output(self.output_dir, resume)
        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        resumed_after = None
        if resume and checkpoint.is_file():
            state = self._restore(checkpoint)
            history = [EpochRecord(**record) for record in state["history"]]
            best_epoch, best_srcc = state["best_epoch"], state["best_val_srcc"]
            resumed_after = state["epoch"]
        else:
            history = [self._evaluate(0, None, None, time.perf_counter())]
            best_epoch, best_srcc = 0, history[0].val_srcc
            self._write(history, best_epoch, best_srcc, new_best=True)
        try:
            for epoch in range(history[-1].epoch + 1, self.config.epochs + 1):
                start = time.perf_counter()
                lr = self.optimizer.param_groups[0]["lr"]
                step_loss = self._train_epoch(epoch)
                self.scheduler.step()
                record = self._evaluate(epoch, step_loss, lr, start)
                history.append(record)
                new_best = is_better(record.val_srcc, best_srcc)
                if new_best:
                    best_epoch, best_srcc = epoch, record.val_srcc
                self._write(history, best_epoch, best_srcc, new_best)
        finally:
            self._plot(history, best_epoch, best_srcc)
        self.accelerator.wait_for_everyone()
        return TrainResult(
            prompts_path=prompts_path(self.output_dir, self.config.factor),
            best_epoch=best_epoch,
            best_val_srcc=best_srcc,
            history=history,
            resumed_after=resumed_after,
        )


def _feature_set(
    model: nn.Module,
    items: list[ScoredImage],
    *,
    input_size: InputSize,
    hflip: bool,
    accelerator,
    progress: bool,
    workers: int,
    num_blocks: int,
    feature_norm: FeatureNorm,
) -> tuple[torch.Tensor, list[ScoredImage], list[SkippedRow]]:
    # Token 0 (the CLS score token) is the original path's output, but with the authors'
    # token-axis normalisation its normalised value depends on every VVV patch token: the
    # surgery is PQ-Map's own (its number of VVV blocks).
    surgery = vvv_surgery(model, num_blocks=num_blocks)
    encoded = encode_images(
        surgery, [item.path for item in items], input_size=input_size, hflip=hflip,
        accelerator=accelerator, progress=progress, workers=workers, feature_norm=feature_norm,
    )
    kept = [items[i] for i in encoded.kept]
    skipped = [SkippedRow(items[i].source, items[i].row, items[i].name, error) for i, error in encoded.unreadable]
    return encoded.features, kept, skipped


def _write_skipped(skipped: Sequence[SkippedRow], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["source", "row", "name", "reason"])
    writer.writerows((s.source, s.row, s.name, s.reason) for s in skipped)
    write_text_atomic(buffer.getvalue(), path)


def train_pq_prompts(
    model: nn.Module,
    learner: QualityPromptLearner,
    data: TrainingData,
    output_dir: Path,
    config: TrainConfig,
    *,
    input_size: InputSize = None,
    accelerator=None,
    resume: bool = False,
    description: Optional[dict] = None,
    progress: bool = True,
    workers: int = 4,
    num_blocks: int = 6,
    feature_norm: FeatureNorm = "tokens",
) -> TrainResult:
    """Cache the image features of ``data``, normalise its scores and train ``learner``
    (:class:`PromptTrainer`). Unreadable images are skipped, counted in the result and listed
    in ``skipped_rows.csv`` together with the rows the table reader skipped.

    ``description``: extra JSON-able facts about the run (model, initialisation) that a resumed
    run must share. ``num_blocks`` and ``feature_norm`` are those of the PQ-Map that will read
    the prompts (:class:`~grefine.maps.pq_map.PQMap`'s defaults: 6, ``"tokens"``).
    """
    config.check()
    output_dir = Path(output_dir)
    check_output(output_dir, resume)
    accelerator = accelerator or make_accelerator(config.seed)
    model = model.to(accelerator.device).eval().requires_grad_(False)
    options = dict(
        input_size=input_size, hflip=config.hflip, accelerator=accelerator, progress=progress, workers=workers,
        num_blocks=num_blocks, feature_norm=feature_norm,
    )
    train_features, train_items, train_skipped = _feature_set(model, data.train, **options)
    val_features, val_items, val_skipped = _feature_set(model, data.val, **options)
    skipped = data.skipped + train_skipped + val_skipped
    check_split(train_items, "training", f"{len(train_skipped)} of its images could not be read (see {SKIPPED_NAME}).")
    check_split(val_items, "validation", f"{len(val_skipped)} of its images could not be read (see {SKIPPED_NAME}).")
    train_scores = [item.score for item in train_items]
    score_range = config.score_range or (min(train_scores), max(train_scores))
    sets = [
        FeatureSet(features, torch.as_tensor(normalize_scores([i.score for i in items], score_range), dtype=torch.float32), items)
        for features, items in ((train_features, train_items), (val_features, val_items))
    ]
    meta = {
        **asdict(config),
        "score_range": list(score_range),
        "input_size": input_size,
        "num_blocks": num_blocks,
        "feature_norm": feature_norm,
        "data": fingerprint(train_items, val_items),
        **(description or {}),
    }
    trainer = PromptTrainer(model, learner, *sets, config, output_dir, accelerator=accelerator, meta=meta, progress=progress)
    result = trainer.fit(resume=resume)
    result.train_size, result.val_size, result.skipped = len(train_items), len(val_items), skipped
    if skipped and accelerator.is_main_process:
        _write_skipped(skipped, output_dir / SKIPPED_NAME)
    return result
