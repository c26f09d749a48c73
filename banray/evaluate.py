"""Evaluation: error and negative log-likelihood of a model on a split."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

EVAL_BATCH_SIZE = 512


@torch.inference_mode()
def predict_logits(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for x, y in loader:
        logits.append(model(x.to(device, non_blocking=True)).float().cpu())
        labels.append(y)
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def error_and_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    error = (logits.argmax(dim=1) != labels).float().mean().item()
    return error, F.cross_entropy(logits, labels).item()


def evaluate(model: nn.Module, dataset: Dataset, device: torch.device | str = "cpu") -> tuple[float, float]:
    """(error, NLL) of `model` on `dataset`; error is a fraction in [0, 1]."""
    loader = DataLoader(dataset, batch_size=EVAL_BATCH_SIZE)
    return error_and_nll(*predict_logits(model, loader, torch.device(device)))
