"""Search within a generation: Optuna (TPE) over the spec's ranges, warm-started from the previous
generation's best settings, and ASHA early stopping of bad trials.

Every trial gets a sequential `trial` number, with or without a search, so its seed derives from
(root seed, chain, generation, trial) and a sweep re-run draws the same seeds.
"""

from __future__ import annotations

from typing import Any

import ray.tune as tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from banray.selection import MODE
from banray.spec import Range, SweepSpec, derive_seed
from banray.trial import wire


def optuna_distribution(value_range: Range):
    import optuna.distributions as d

    if value_range.uniform is not None:
        return d.FloatDistribution(*value_range.uniform)
    if value_range.loguniform is not None:
        return d.FloatDistribution(*value_range.loguniform, log=True)
    if value_range.integer is not None:
        return d.IntDistribution(*value_range.integer)
    return d.CategoricalDistribution(value_range.choice)


def optuna_name(dotted: str) -> str:
    """Optuna's name for a nested setting: Ray flattens and unflattens configs with '/'."""
    return dotted.replace(".", "/")


class NumberedSearcher(Searcher):
    """Passes on a searcher's suggestions with a sequential `trial` number added to each."""

    def __init__(self, searcher: Searcher):
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher = searcher
        self.suggested = 0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str):
        config = self.searcher.suggest(trial_id)
        if not isinstance(config, dict):  # None (wait) or Searcher.FINISHED
            return config
        self.suggested += 1
        return {**config, wire.TRIAL: self.suggested - 1}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)

    # Tune saves each level of a searcher stack on its own (it walks `.searcher`): only our counter here.
    def get_state(self) -> dict:
        return {"suggested": self.suggested}

    def set_state(self, state: dict) -> None:
        self.suggested = state["suggested"]


def warm_start_point(spec: SweepSpec, generation: int, previous_best: dict[str, Any] | None) -> dict[str, Any] | None:
    """Generation k's best settings, as a first point for generation k + 1's search (Optuna names).

    Keys generation k did not search (the teacher terms, when k = 0) start from the middle of their range.
    """
    space = spec.search_space(generation)
    if not space or previous_best is None or not spec.search.warm_start:
        return None
    return {optuna_name(key): previous_best.get(key, value_range.midpoint()) for key, value_range in space.items()}


def make_search(spec: SweepSpec, chain: int, generation: int, first_points: list[dict[str, Any]], epochs: int):
    """(search_alg, param_space additions, scheduler) for one generation's Tune run whose trials train `epochs`
    (the equal-budget arm's are longer); the search suggests `first_points` (Optuna names) first, in order."""
    space = spec.search_space(generation)
    metric = spec.search.metric
    scheduler = None
    if spec.search.uses_asha():
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            # The trial's summary row after fit() is one iteration more than the epochs: a smaller
            # max_t would stop every trial at its last epoch, before that row.
            max_t=epochs + 1,
            grace_period=spec.search.grace_period,
            reduction_factor=spec.search.reduction_factor,
        )
    if not space:
        return None, {wire.TRIAL: tune.grid_search(list(range(spec.search.trials)))}, scheduler
    optuna = OptunaSearch(
        space={optuna_name(key): optuna_distribution(r) for key, r in space.items()},
        metric=metric,
        mode=MODE,
        seed=derive_seed(spec.seed, chain, generation),
        points_to_evaluate=first_points or None,
    )
    return NumberedSearcher(optuna), {}, scheduler

