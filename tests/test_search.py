"""Search ranges in the spec, Optuna with warm start and `banray plan` (the DAG scheduler: test_dag.py)."""

import pytest
import yaml
from click.testing import CliRunner

from banray.commands.cli import cli
from banray.spec import SpecError, parse_spec
from banray.sweep.search import make_search, warm_start_point
from conftest import REPO, tiny_spec

SEARCH_YAML = """
name: searched
data: {dataset: synthetic}
model: {arch: cnn}
train: {epochs: 2, lr: {loguniform: [0.001, 0.1]}, batch_size: {integer: [16, 64]}}
distill:
  objective: {choice: [ban, kd]}
  alpha: {uniform: [0.2, 0.8]}
  temperature: {loguniform: [1, 8]}
generations: 2
search: {trials: 8}
"""


def suggestions(spec, generation=1, count=8, start=None):
    searcher, trial_space, _ = make_search(spec, chain=0, generation=generation, first_points=[start] if start else [],
                                           epochs=spec.train.epochs)
    assert trial_space == {}  # trials are numbered by the searcher, not a grid
    return [searcher.suggest(f"t{i}") for i in range(count)]


def test_yaml_ranges_reach_optuna_and_stay_inside():
    spec = parse_spec(yaml.safe_load(SEARCH_YAML))
    configs = suggestions(spec)
    assert [c["trial"] for c in configs] == list(range(8))
    for c in configs:
        assert 0.001 <= c["train"]["lr"] <= 0.1 and 16 <= c["train"]["batch_size"] <= 64
        assert isinstance(c["train"]["batch_size"], int)
        assert c["distill"]["objective"] in ("ban", "kd")
        assert 0.2 <= c["distill"]["alpha"] <= 0.8 and 1 <= c["distill"]["temperature"] <= 8
    assert len({c["train"]["lr"] for c in configs}) == 8  # the trials differ
    assert {c["distill"]["objective"] for c in configs} == {"ban", "kd"}


def test_same_seed_same_suggestions_other_seed_others():
    spec = parse_spec(yaml.safe_load(SEARCH_YAML))
    assert suggestions(spec) == suggestions(spec)
    other = spec.model_copy(update={"seed": 1})
    assert suggestions(other) != suggestions(spec)


def test_generation_zero_searches_no_teacher_terms():
    spec = parse_spec(yaml.safe_load(SEARCH_YAML))
    assert set(spec.search_space(0)) == {"train.lr", "train.batch_size"}
    assert set(spec.search_space(1)) == {"train.lr", "train.batch_size", "distill.objective", "distill.alpha",
                                         "distill.temperature"}
    (first,) = suggestions(spec, generation=0, count=1)
    assert set(first) == {"train", "trial"}


def test_warm_start_makes_the_previous_best_the_first_trial():
    spec = parse_spec(yaml.safe_load(SEARCH_YAML))
    best = {"train.lr": 0.0123, "train.batch_size": 48, "distill.objective": "kd", "distill.alpha": 0.7,
            "distill.temperature": 3.5}
    first, second = suggestions(spec, generation=2, count=2, start=warm_start_point(spec, 2, best))
    assert first["train"] == {"lr": 0.0123, "batch_size": 48}
    assert first["distill"] == {"objective": "kd", "alpha": 0.7, "temperature": 3.5}
    assert second["train"]["lr"] != 0.0123
    # From generation 0, which did not search the teacher terms, those start mid-range.
    point = warm_start_point(spec, 1, {"train.lr": 0.01, "train.batch_size": 32})
    assert point == {"train/lr": 0.01, "train/batch_size": 32, "distill/objective": "ban", "distill/alpha": 0.5,
                     "distill/temperature": pytest.approx(8 ** 0.5)}
    off = spec.model_copy(update={"search": spec.search.model_copy(update={"warm_start": False})})
    assert warm_start_point(off, 2, best) is None


def test_asha_is_on_by_default_above_two_trials_with_max_t_past_the_last_epoch():
    spec = parse_spec(tiny_spec(search={"trials": 3}))
    _, _, scheduler = make_search(spec, 0, 0, [], spec.train.epochs)
    assert scheduler is not None and scheduler._max_t == spec.train.epochs + 1
    assert make_search(parse_spec(tiny_spec(search={"trials": 2})), 0, 0, [], 2)[2] is None
    assert make_search(parse_spec(tiny_spec(search={"trials": 2, "early_stopping": "on"})), 0, 0, [], 2)[2] is not None
    # the equal-budget arm's trials train the chain's total epochs: early stopping must not cut them at the teacher's
    budget = parse_spec(tiny_spec(generations=2, search={"trials": 3}, control={"equal_budget": True}))
    _, _, scheduler = make_search(budget, 0, 0, [], budget.budget_train().epochs)
    assert scheduler._max_t == 3 * budget.train.epochs + 1


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"distill.alpha": {"uniform": [0.5, 1.5]}}, "distill: alpha: the range's value 1.5 is not allowed: input should be less than or equal to 1"),
        ({"train.lr": {"loguniform": [0, 0.1]}}, "train.lr: loguniform needs low > 0; got [0.0, 0.1]"),
        ({"train.lr": {"uniform": [0.2, 0.1]}}, "train.lr: a search range needs low < high; got [0.2, 0.1]"),
        ({"train.lr": {"between": [1, 2]}}, "train.lr.between: unknown key; allowed keys here: uniform, loguniform, integer, choice"),
        ({"train.batch_size": {"uniform": [16, 64.5]}}, "train: batch_size: the range's value 64.5 is not allowed: input should be a valid integer"),
        ({"distill.objective": {"choice": ["ban", "hinton"]}}, "distill: objective: the range's value 'hinton' is not allowed: unknown objective 'hinton'"),
        ({"train.epochs": {"integer": [1, 3]}}, "train.epochs: a search range or mapping is not allowed here; give a single value"),
    ],
)
def test_bad_search_ranges_are_reported(overrides, message):
    with pytest.raises(SpecError) as caught:
        parse_spec(tiny_spec(**overrides), "s.yaml")
    assert len(caught.value.lines) == 1 and message in caught.value.lines[0]


def test_plan_prints_the_dag_without_data_or_training(tmp_path):
    result = CliRunner().invoke(cli, ["plan", str(REPO / "sweeps" / "cifar100.yaml"), "--storage", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert ("DAG: 3 chain(s) × (4 generations + control (teacher′) + control (teacher′2)) = 18 groups of 1 trial(s), "
            "18 trials in all") in result.output
    assert "2 teacher′(s), 200 epochs each: seed noise; control ensembles Teacher+Teacher′, Teacher+2×Teacher′" in result.output
    assert "chain 0: gen0 (densenet_bc, ce) → gen1 (densenet_bc, ban) → gen2 (densenet_bc, ban) → gen3" in result.output
    assert "all chains' trials at once need 3 slot(s) = 12 CPU, 3 GPU" in result.output
    assert "Work: 200 epoch(s) × 352 steps per trial; 1,267,200 optimizer steps" in result.output
    assert f"Storage: {tmp_path / 's'} is writable" in result.output
    assert not (tmp_path / "s").exists()  # the check leaves nothing behind


def test_plan_calibrates_an_estimate(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(tiny_spec(storage=str(tmp_path))))
    result = CliRunner().invoke(cli, ["plan", str(path), "--calibrate", "3"])
    assert result.exit_code == 0, result.output
    assert "ms per step (timed over 3 steps on this machine's CPU" in result.output
    assert "worker-hours" in result.output


def test_plan_fails_clearly_on_unwritable_storage(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = CliRunner().invoke(cli, ["plan", str(REPO / "sweeps" / "quickstart.yaml"), "--storage", str(blocker / "runs")])
    assert result.exit_code == 1
    assert f"error: storage: cannot write to {blocker / 'runs'}: " in result.output
    assert "Not a directory" in result.output


def test_plan_fails_clearly_on_unreachable_tracking(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(tiny_spec(storage=str(tmp_path), tracking={"uri": "http://127.0.0.1:9"})))
    result = CliRunner().invoke(cli, ["plan", str(path)])
    assert result.exit_code == 1
    assert "error: tracking.uri: http://127.0.0.1:9 does not answer (ConnectionError" in result.output


@pytest.mark.slow
def test_sweep_searches_stops_a_bad_trial_and_warm_starts(ray_cluster, tmp_path):
    """One trial at a time (a trial takes both CPUs), lr searched over a good and a hopeless value."""
    from banray.sweep import start as sweep

    def spec_with(seed):
        return parse_spec(tiny_spec(
            name="searched", seed=seed, storage=str(tmp_path),
            train={"epochs": 3, "batch_size": 32, "lr": {"choice": [0.05, 0.00001]}},
            search={"trials": 3, "grace_period": 1, "reduction_factor": 2},
            resources={"cpus_per_worker": 2},
            # The seed below is picked for the data this test was written on (one split for every chain).
            **{"data.shared_split": True},
        ))

    # Pick the root seed whose generation-0 search tries the good lr first and the hopeless one second,
    # so ASHA has a finished rung to compare the bad trial against.
    seed = next(s for s in range(100) if [c["train"]["lr"] for c in suggestions(spec_with(s), 0, 2)] == [0.05, 0.00001])
    lines = []
    result = sweep.run(spec_with(seed), echo=lines.append)
    teacher, student = result.report["chains"][0]["generations"]

    stopped = [t for t in teacher["trials"] if t["status"].startswith("stopped early")]
    assert stopped and all(t["settings"]["train.lr"] == 0.00001 for t in stopped)
    assert all(t["status"] in ("stopped early after epoch 1", "stopped early after epoch 2") for t in stopped)
    assert teacher["best_settings"] == {"train.lr": 0.05}
    for record in (teacher, student):
        assert {t["settings"]["train.lr"] for t in record["trials"]} <= {0.05, 0.00001}
    first_student = next(t for t in student["trials"] if t["trial"] == 0)
    assert first_student["settings"] == teacher["best_settings"]  # warm start
    assert 0 < result.report["utilisation"] <= 1
    assert any(line.startswith("Makespan ") and "worker-slot utilisation" in line for line in lines)
