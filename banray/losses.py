"""Training objectives, selected by name through `get_objective`.

Convention (fixed here, pinned by golden-value tests): **α weighs the teacher term**; the label
term gets 1 − α. KL and cross-entropy terms are averaged over the batch ("batchmean"), never over
classes. Teacher terms at temperature T are scaled by T² so their gradient magnitude does not
depend on T (Hinton et al.); at T = 1, the paper's setting, the factor is 1.

Each objective is an `Objective`: calling it returns the scalar loss to minimise, and
`Objective.terms` returns the same loss split into named, already weighted terms (their sum is the
loss) so the worker loop can log every term separately.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from banray.registry import Registry

Terms = dict[str, torch.Tensor]
TermsFn = Callable[..., Terms]


@dataclass(frozen=True)
class Objective:
    name: str
    needs_teacher: bool
    terms: TermsFn

    def __call__(self, student_logits, teacher_logits, labels, *, alpha: float, temperature: float):
        return sum(self.terms(student_logits, teacher_logits, labels, alpha=alpha, temperature=temperature).values())


OBJECTIVES: Registry[Objective] = Registry("objective")


def _register(name: str, *, needs_teacher: bool):
    def add(fn: TermsFn) -> TermsFn:
        OBJECTIVES.register(name)(Objective(name, needs_teacher, fn))
        return fn

    return add


def get_objective(name: str) -> Objective:
    return OBJECTIVES[name]


def soft_cross_entropy(student_logits, teacher_logits, temperature: float) -> torch.Tensor:
    """T² · mean over the batch of CE(softmax(t/T), softmax(z/T)) = −Σ_i p_i log q_i."""
    p = F.softmax(teacher_logits / temperature, dim=1)
    log_q = F.log_softmax(student_logits / temperature, dim=1)
    return -(p * log_q).sum(dim=1).mean() * temperature**2


@_register("ce", needs_teacher=False)
def _ce(student_logits, teacher_logits, labels, *, alpha, temperature) -> Terms:
    """Labels only: CE(y, q). Generation 0 (the teacher) always trains with this."""
    return {"ce": F.cross_entropy(student_logits, labels)}


@_register("ban", needs_teacher=True)
def _ban(student_logits, teacher_logits, labels, *, alpha, temperature) -> Terms:
    """Born-Again (paper Eq. 2): teacher-only T²·CE(p_T, q_T); no label term, α unused.

    With a fixed teacher this equals KL(p‖q) plus a constant; at T = 1 its gradient with respect to
    the student logits is (q − p) / b (paper Eq. 5 averaged over the batch).
    """
    return {"teacher_ce": soft_cross_entropy(student_logits, teacher_logits, temperature)}


@_register("kd", needs_teacher=True)
def _kd(student_logits, teacher_logits, labels, *, alpha, temperature) -> Terms:
    """Hinton KD: α·T²·KL(p_T ‖ q_T) + (1 − α)·CE(y, q), KL averaged over the batch."""
    kl = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return {
        "kd": alpha * temperature**2 * kl,
        "ce": (1.0 - alpha) * F.cross_entropy(student_logits, labels),
    }
