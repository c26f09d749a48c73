"""Scores of ensembles: BANE (paper Eq. 4) averages the softmax outputs of its members."""

from __future__ import annotations

import torch

from banray.tasks import Scores


def ensemble_scores(member_probs: list[torch.Tensor], labels: torch.Tensor) -> Scores:
    """Error and NLL of the mean of the members' probabilities."""
    probs = torch.stack(member_probs).mean(dim=0)
    picked = probs[torch.arange(len(labels)), labels].clamp_min(torch.finfo(probs.dtype).tiny)
    return Scores(nll=-picked.log().mean().item(), error=(probs.argmax(dim=1) != labels).float().mean().item())


def ensemble_members(generations: list[int], include_teacher: bool) -> dict[int, list[int]]:
    """Ens*k → its members: the last k of the finished generations (students only unless include_teacher)."""
    pool = [g for g in generations if include_teacher or g > 0]
    return {k: pool[-k:] for k in range(2, len(pool) + 1)}
