"""Scores of predictions: error, NLL and calibration, of one model (banray.training.tasks) or of a BANE ensemble
(paper Eq. 4), which averages the softmax outputs of its members."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

ECE_BINS = 15  # Guo et al. 2017's equal-width confidence bins


@dataclass(frozen=True)
class Scores:
    nll: float  # mean negative log-likelihood per sample (per token for language models)
    error: float  # fraction of wrong argmax predictions (next-word error for language models)
    ece: float | None = None  # expected calibration error of the argmax predictions, ECE_BINS bins

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll)


def calibration_error(confidence: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS) -> float:
    """ECE: over equal-width bins of top-1 confidence, (m/bins, (m+1)/bins], the sample-weighted mean of
    |accuracy − mean confidence|; each bin's gap is |Σ(correct − confidence)| / its size."""
    edges = torch.linspace(0, 1, bins + 1, dtype=confidence.dtype)[1:-1]
    index = torch.bucketize(confidence, edges)  # right-closed bins; a confidence of 0 joins the first
    gaps = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, correct.double() - confidence.double())
    return gaps.abs().sum().item() / len(confidence)


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """ECE of (samples, classes) probabilities against their labels."""
    confidence, predicted = probs.max(dim=1)
    return calibration_error(confidence, predicted == labels, bins)


def ensemble_scores(member_probs: list[torch.Tensor], labels: torch.Tensor) -> Scores:
    """Error, NLL and ECE of the mean of the members' probabilities."""
    probs = torch.stack(member_probs).mean(dim=0)
    picked = probs[torch.arange(len(labels)), labels].clamp_min(torch.finfo(probs.dtype).tiny)
    return Scores(
        nll=-picked.log().mean().item(),
        error=(probs.argmax(dim=1) != labels).float().mean().item(),
        ece=expected_calibration_error(probs, labels),
    )


def ensemble_members(generations: list[int], include_teacher: bool) -> dict[int, list[int]]:
    """Ens*k → its members: the last k of the finished generations (students only unless include_teacher)."""
    pool = [g for g in generations if include_teacher or g > 0]
    return {k: pool[-k:] for k in range(2, len(pool) + 1)}


@dataclass(frozen=True)
class Fidelity:
    """How closely a student matches its teacher (Stanton et al. 2021): both on the same samples."""

    agreement: float  # fraction of samples whose top-1 predictions agree
    kl: float  # mean over samples of KL(teacher ‖ student), in nats


def fidelity(teacher_probs: torch.Tensor, student_probs: torch.Tensor) -> Fidelity:
    """Top-1 agreement and mean KL(p_teacher ‖ p_student) of (samples, classes) probabilities; a zero teacher
    probability adds nothing to the KL, a zero student probability is held at the smallest positive float."""
    teacher, student = teacher_probs.double(), student_probs.double()
    tiny = torch.finfo(torch.float64).tiny
    terms = torch.where(teacher > 0, teacher * (teacher.clamp_min(tiny).log() - student.clamp_min(tiny).log()), 0.0)
    return Fidelity(
        agreement=(teacher.argmax(dim=1) == student.argmax(dim=1)).double().mean().item(),
        kl=terms.sum(dim=1).mean().item(),
    )
