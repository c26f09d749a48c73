"""The one rule that picks: a trial's best epoch, a generation's best trial, and the registry's `@best`.

The validation metric (`search.metric`: an error or an NLL) is minimised everywhere, by Tune, its searcher,
its scheduler and Ray's checkpoint managers alike (`MODE`). Ties go to the later epoch (the weights trained
longer, as Ray's checkpoint managers keep them), to the lower-numbered trial, and to the earlier generation
then the lower-numbered chain (the cheaper model to reach).
"""

from __future__ import annotations

from typing import Callable, Iterable, TypeVar

MODE = "min"  # for Tune, Optuna, ASHA and Ray's checkpoint configs

T = TypeVar("T")


def epoch_improves(value: float, best: float | None) -> bool:
    """Whether an epoch's metric makes it the trial's best so far (a tie goes to the later epoch)."""
    return best is None or value <= best


def best_checkpoint(checkpoints: Iterable[tuple[T, dict]], metric: str) -> tuple[T, dict]:
    """Of (checkpoint, its epoch's metrics) pairs, the best epoch's (a tie goes to the later epoch)."""
    return min(checkpoints, key=lambda pair: (pair[1][metric], -pair[1]["epoch"]))


def best_trial(trials: Iterable[T], value: Callable[[T], float], number: Callable[[T], int]) -> T:
    """The trial of the lowest metric; a tie goes to the lower trial number."""
    return min(trials, key=lambda t: (value(t), number(t)))


def best_generation(records: Iterable[T], metric: str) -> T:
    """The generation record of the lowest validation `metric`; a tie goes to the earlier generation, then
    to the lower chain."""
    return min(records, key=lambda r: (getattr(r, metric), r.generation, r.chain))
