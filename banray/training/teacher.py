"""The teacher a student learns from: the previous generation's selected model, or (distill.teacher_from
'ensemble') the `Ensemble` of every earlier generation's, frozen by type.

Two implementations of one small contract (`Teacher`): `OnlineTeacher` runs the model on every batch the
student sees; `banray.training.teacher_cache.CachedTeacher` reads the model's logits, computed once per generation
and shared by its trials. Both hold the model as a `Frozen` module, which stays in eval mode whatever
`.train()` is called with, has no gradients and runs in inference mode: no caller has to remember.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn


class Frozen(nn.Module):
    """A model that cannot be trained: eval mode for good, no gradients, inference mode in `forward`."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> Frozen:
        return super().train(False)

    def forward(self, *inputs):
        with torch.inference_mode():
            return self.module(*inputs)


class Ensemble(nn.Module):
    """Models whose softmax outputs are averaged (BANE, paper Eq. 4), as one model: its logits are
    log(mean_i softmax(z_i)). Log-probabilities are valid logits, so every objective, temperature and the
    teacher-logit cache take them unchanged: at T = 1 their softmax is exactly the averaged softmax, at T the
    softmax of these logits over T."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_probs = torch.stack([F.log_softmax(member(x).float(), dim=1) for member in self.members])
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.members))


class Teacher(Protocol):
    model: Frozen

    def start_epoch(self, epoch: int) -> None:
        """Called before the student's epoch `epoch` starts."""

    def logits(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """(batch, classes) float logits for the batch `x` of training samples `index`, on x's device, as a
        plain tensor that may enter the student's loss."""


class OnlineTeacher:
    """The frozen model, run on each batch as the student sees it."""

    def __init__(self, model: nn.Module):
        self.model = model if isinstance(model, Frozen) else Frozen(model)

    def start_epoch(self, epoch: int) -> None:
        pass

    def logits(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        # The teacher sees what the cache's builder sees (fp32, default layout), so both agree. Inference
        # tensors cannot enter autograd; the clone is a plain tensor with no history.
        return self.model(x).float().clone()

    def logits_with_state(self, x: torch.Tensor, state):
        """For a recurrent language model: (logits, next state), carried across truncated-BPTT chunks."""
        logits, state = self.model(x, state)
        return logits.clone(), state
