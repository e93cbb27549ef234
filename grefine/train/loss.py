"""The training objective of CLIP-IQA+ in IQA-PyTorch (pyiqa), used to learn PQ-Map's prompts.

pyiqa trains CLIP-IQA+ with ``options/train/CLIPIQA/train_CLIPIQA_koniq10k.yml``:
``mos_loss_opt: {type: MSELoss, loss_weight: 1.0}`` plus
``metric_loss_opt: {type: PLCCLoss, loss_weight: 1.0}``, summed per batch in
``GeneralIQAModel.optimize_parameters`` (pyiqa/models/general_iqa_model.py) on the predicted
score against the MOS min-max normalised to [0, 1] (``mos_normalize: true``,
``BaseIQADataset.mos_normalize`` in pyiqa/data/base_iqa_dataset.py). ``MSELoss`` is in
pyiqa/losses/losses.py, ``PLCCLoss`` / ``plcc_loss`` in pyiqa/losses/iqa_losses.py:
``(1 − PLCC(batch)) / 2``, or the L1 loss for a batch of one. The same recipe sets Adam,
lr 2e-3, cosine annealing over 50 epochs (``T_max: 50``, ``eta_min: 0``) and batches of 8
(:mod:`grefine.train.trainer` uses these defaults).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def plcc_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """pyiqa's ``plcc_loss``: ``(1 − PLCC) / 2`` over a batch (1-D tensors); L1 for one sample."""
    if pred.shape[0] < 2:
        return F.l1_loss(pred, target)
    centred_pred = F.normalize(pred - pred.mean(), dim=0)
    centred_target = F.normalize(target - target.mean(), dim=0)
    return (1.0 - (centred_pred * centred_target).sum()) / 2.0


def clipiqa_plus_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CLIP-IQA+'s objective in pyiqa: ``1.0 · MSE + 1.0 · PLCC loss`` (see the module docstring)."""
    return F.mse_loss(pred, target) + plcc_loss(pred, target)
