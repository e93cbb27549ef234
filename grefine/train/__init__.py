"""Paper §3.1 (Fig. 3), §4.2: learning PQ-Map's quality prompts from human scores.

A CoOp-style prompt pair in the official layout (:mod:`~grefine.train.pq_prompts`), labelled images
(:mod:`~grefine.train.dataset`), cached CLS features of the frozen VVV image tower
(:mod:`~grefine.train.features`), pyiqa's CLIP-IQA+ objective (:mod:`~grefine.train.loss`), the
trainer (:mod:`~grefine.train.trainer`) and its log (:mod:`~grefine.train.log`)."""
from grefine.train.dataset import TrainingData, TrainingDataError, prepare_training_data
from grefine.train.log import EpochRecord
from grefine.train.loss import clipiqa_plus_loss
from grefine.train.pq_prompts import DEFAULT_CLASS_TEXTS, QualityPromptLearner
from grefine.train.trainer import (
    PromptTrainer,
    ResumeError,
    TrainConfig,
    TrainResult,
    train_pq_prompts,
)

__all__ = [
    "DEFAULT_CLASS_TEXTS",
    "EpochRecord",
    "PromptTrainer",
    "QualityPromptLearner",
    "ResumeError",
    "TrainConfig",
    "TrainResult",
    "TrainingData",
    "TrainingDataError",
    "clipiqa_plus_loss",
    "prepare_training_data",
    "train_pq_prompts",
]
