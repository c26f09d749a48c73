"""The control arms a reviewer asks for (control: {teachers, equal_budget, label_smoothing}), label smoothing in the
objectives, fidelity, the primary comparison in the spec, and the plan's account of what each arm costs."""

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from mlflow import MlflowClient
from ray.train import Checkpoint

from banray.catalog.losses import LossParams, get_objective
from banray.catalog.scores import fidelity
from banray.commands.cli import cli
from banray.commands.plan import describe, teachers_needed
from banray.spec import SpecError, parse_spec, trial_seed
from banray.sweep import start as sweep
from banray.training import checkpoint
from banray.training.tasks import make_task
from conftest import tiny_spec


def errors_of(raw) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(raw, "s.yaml")
    return caught.value.lines


@pytest.mark.parametrize("control, arms", [
    (True, ["control"]),
    (False, []),
    ({"teachers": 3}, ["control", "control2", "control3"]),
    ({"teachers": 0, "equal_budget": True}, ["budget"]),
    ({"label_smoothing": 0.1}, ["control", "smoothing"]),  # teachers defaults to 1
    ({"teachers": 2, "equal_budget": True, "label_smoothing": 0.2}, ["control", "control2", "budget", "smoothing"]),
])
def test_control_takes_true_false_or_a_mapping(control, arms):
    assert parse_spec(tiny_spec(control=control)).side_arms() == arms


def test_the_quickstart_trains_no_new_arms_by_default():
    spec = parse_spec(tiny_spec())  # tests turn the control arm off; a spec without `control` has one teacher′
    assert parse_spec({k: v for k, v in tiny_spec().items() if k != "control"}).side_arms() == ["control"]
    assert spec.side_arms() == []


@pytest.mark.parametrize("raw, expected", [
    (tiny_spec(control={"teachers": -1}), "s.yaml: control.teachers: -1 is not allowed: input should be greater than or equal to 0"),
    (tiny_spec(control={"teachers": True}), "s.yaml: control.teachers: True is not allowed: give a number, not true or false"),
    (tiny_spec(control={"teachers": 101}), "s.yaml: control.teachers: 101 is not allowed: input should be less than or equal to 100"),
    (tiny_spec(control={"label_smoothing": 1.0}), "s.yaml: control.label_smoothing: 1.0 is not allowed: input should be less than 1"),
    (tiny_spec(control={"label_smoothing": 0}), "s.yaml: control.label_smoothing: 0 is not allowed: input should be greater than 0"),
    (tiny_spec(control={"equal_budget": "yes please"}), "s.yaml: control.equal_budget: 'yes please' is not allowed: input should be a valid boolean"),
    (tiny_spec(control={"teacher": 2}), "s.yaml: control.teacher: unknown key; allowed keys here: teachers, equal_budget, label_smoothing"),
    (tiny_spec(control="yes"), "s.yaml: control: 'yes' is not allowed: give true, false or a mapping with keys teachers, "
     "equal_budget, label_smoothing"),
    (tiny_spec(control=None), "s.yaml: control: None is not allowed: give true, false or a mapping"),
    (tiny_spec(generations=9, control={"equal_budget": True}, **{"train.epochs": 1001}),
     "s.yaml: control.equal_budget: the chain's total epochs, (generations + 1) × train.epochs = 10010, exceed 10000"),
    (tiny_spec(**{"distill.label_smoothing": 0.1}),  # the default objective, ban, has no label term
     "s.yaml: distill: label_smoothing: 0.1 is not allowed with objective 'ban', which has no label term; "
     "allowed: 0, or an objective with one (ban+l, ban_l, ce, cwtm, kd, ls)"),
    (tiny_spec(**{"distill.objective": "ls"}), "s.yaml: distill: objective 'ls' needs label_smoothing above 0"),
    (tiny_spec(**{"distill.objective": "kd", "distill.label_smoothing": -0.1}),
     "s.yaml: distill.label_smoothing: -0.1 is not allowed: input should be greater than or equal to 0"),
    (tiny_spec(report={"primary": "BAN-3"}), "s.yaml: report.primary: 'BAN-3' is not a comparison this sweep's "
     "report makes; allowed: 'BAN-1 vs Teacher'"),
    (tiny_spec(generations=2, control={"teachers": 1}, report={"primary": "Ens*2 vs Teacher+2×Teacher′"}),
     "allowed: 'BAN-1 vs Teacher', 'BAN-2 vs Teacher', 'Ens*2 vs Teacher', 'Teacher′ vs Teacher', "
     "'Teacher+Teacher′ vs Teacher', 'Ens*2 vs Teacher+Teacher′'"),
    (tiny_spec(report={"primary": "BAN-1", "secondary": "x"}), "s.yaml: report.secondary: unknown key; allowed keys here: primary"),
])
def test_a_bad_control_or_report_section_is_one_line_naming_the_field(raw, expected):
    lines = errors_of(raw)
    assert len(lines) == 1, lines
    assert expected in lines[0], lines[0]


def test_the_arms_recipes_and_seeds():
    spec = parse_spec(tiny_spec(generations=2, chains=2, control={"teachers": 2, "equal_budget": True, "label_smoothing": 0.1},
                                **{"train.epochs": 4, "train.lr_schedule": "step", "train.lr_milestones": [2, 3]}))
    teacher = spec.generation_settings(1, 0, None)
    budget = spec.generation_settings(1, 0, None, "budget")
    smoothing = spec.generation_settings(1, 0, None, "smoothing")
    second = spec.generation_settings(1, 0, None, "control2")
    # the chain's total: (2 + 1) × 4 epochs, the schedule's milestones stretched alike
    assert (budget["train"]["epochs"], budget["train"]["lr_milestones"]) == (12, [6, 9])
    assert budget["distill"]["objective"] == "ce" and budget["data"] == teacher["data"]
    assert (smoothing["distill"]["objective"], smoothing["distill"]["label_smoothing"]) == ("ls", 0.1)
    assert smoothing["train"] == teacher["train"] == second["train"] and second["distill"] == teacher["distill"]
    seeds = {arm: trial_seed(spec.seed, 1, 0, 0, arm) for arm in ("main", "control", "control2", "budget", "smoothing")}
    assert len(set(seeds.values())) == 5  # every arm draws fresh seeds
    assert spec.spec_hash() == parse_spec(tiny_spec(generations=2, chains=2, control=False, **{
        "train.epochs": 4, "train.lr_schedule": "step", "train.lr_milestones": [2, 3]})).spec_hash()  # arms are runtime


def numpy_smoothed_ce(logits, labels, epsilon):
    """Mean over the batch of −Σ_i t_i log softmax(z)_i with t = (1 − ε)·onehot(y) + ε / classes."""
    z = logits - logits.max(axis=1, keepdims=True)
    log_q = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    target = np.full(logits.shape, epsilon / logits.shape[1])
    target[np.arange(len(labels)), labels] += 1 - epsilon
    return float(-(target * log_q).sum(axis=1).mean())


@pytest.mark.parametrize("objective, weight", [("ls", 1.0), ("ce", 1.0), ("kd", 0.4), ("ban+l", 2.0)])
def test_label_smoothing_smooths_every_label_term(objective, weight):
    rng = np.random.default_rng(0)
    logits, teacher, labels = rng.normal(size=(6, 5)), rng.normal(size=(6, 5)), rng.integers(0, 5, 6)
    params = LossParams(alpha=0.6, temperature=2.0, label_weight=2.0, teacher_weight=1.0, label_smoothing=0.1)
    terms = get_objective(objective).terms(torch.tensor(logits, dtype=torch.float32),
                                           torch.tensor(teacher, dtype=torch.float32), torch.tensor(labels), params)
    assert terms["ce"].item() == pytest.approx(weight * numpy_smoothed_ce(logits, labels, 0.1), rel=1e-5)


def test_cwtm_weighs_the_smoothed_label_term():
    rng = np.random.default_rng(1)
    logits, teacher, labels = rng.normal(size=(6, 5)), rng.normal(size=(6, 5)), rng.integers(0, 5, 6)
    params = LossParams(alpha=0.5, temperature=1.0, label_weight=1.0, teacher_weight=1.0, label_smoothing=0.2)
    p = np.exp(teacher) / np.exp(teacher).sum(axis=1, keepdims=True)
    weights = p.max(axis=1) / p.max(axis=1).sum()
    per_sample = [numpy_smoothed_ce(logits[i:i + 1], labels[i:i + 1], 0.2) for i in range(6)]
    loss = get_objective("cwtm")(torch.tensor(logits, dtype=torch.float32), torch.tensor(teacher, dtype=torch.float32),
                                 torch.tensor(labels), params)
    assert loss.item() == pytest.approx(float((weights * per_sample).sum()), rel=1e-5)


def test_fidelity_is_top1_agreement_and_mean_kl_of_teacher_to_student():
    rng = np.random.default_rng(2)
    teacher, student = rng.dirichlet(np.ones(4), 50), rng.dirichlet(np.ones(4), 50)
    teacher[0] = [1.0, 0.0, 0.0, 0.0]  # a zero teacher probability adds nothing
    found = fidelity(torch.tensor(teacher), torch.tensor(student))
    kl = [sum(p * np.log(p / q) for p, q in zip(t, s) if p > 0) for t, s in zip(teacher, student)]
    assert found.agreement == pytest.approx(np.mean(teacher.argmax(1) == student.argmax(1)))
    assert found.kl == pytest.approx(np.mean(kl))
    assert fidelity(torch.tensor(teacher), torch.tensor(teacher)) == pytest.approx(type(found)(1.0, 0.0))


def test_plan_says_what_each_arm_adds_and_which_teachers_the_ensembles_need():
    spec = parse_spec(tiny_spec(generations=3, control={"teachers": 1, "equal_budget": True, "label_smoothing": 0.1},
                                **{"train.epochs": 5}))
    lines = describe(spec)
    assert "DAG: 1 chain(s) × (4 generations + control (teacher′) + equal-budget model + label-smoothing model) = 7 groups" \
        in lines[1]
    # a teacher′ (5) + the equal budget (4 × 5) + label smoothing (5) = 30 epochs beside the chain's 20
    assert "Control arms per chain (+150% of the chains' training):" in lines
    assert "  equal budget: one model for 20 epochs (lr_milestones none), against BAN-3" in lines
    assert "  label smoothing ε = 0.1: 5 epochs, against BAN-1" in lines
    assert teachers_needed(spec) == 2  # Ens*3 = {BAN-1, BAN-2, BAN-3}: the Teacher and 2 teacher′s
    assert ("  Ens*3 needs control.teachers: 2 for a same-size baseline (this spec has 1); without it the report "
            "says 'no same-size baseline'") in lines


def test_plan_of_the_shipped_cifar100_sweep_has_the_teachers_its_ens3_needs(tmp_path):
    result = CliRunner().invoke(cli, ["plan", "sweeps/cifar100.yaml", "--storage", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert "same-size baseline (this spec has" not in result.output
    assert "control ensembles Teacher+Teacher′, Teacher+2×Teacher′" in result.output


@pytest.fixture(scope="module")
def armed_sweep(ray_cluster, tmp_path_factory):
    """2 chains × (teacher + 2 BAN generations + 2 teacher′s, the equal-budget and the label-smoothing arms), Ens*2
    and Ens*3 counting the teacher, on synthetic data, a trial per group."""
    spec = parse_spec(tiny_spec(storage=str(tmp_path_factory.mktemp("storage")), generations=2, chains=2,
                                control={"teachers": 2, "equal_budget": True, "label_smoothing": 0.1},
                                ensembles={"include_teacher": True}, search={"trials": 1}))
    lines = []
    return spec, sweep.run(spec, echo=lines.append), "\n".join(lines)


def predictions(spec, checkpoint_path):
    model, _ = checkpoint.load(checkpoint_path)
    probs, labels = make_task(spec.data, spec.train).predict(model.eval(), "test")
    return probs.numpy().astype(np.float64), labels.numpy()


@pytest.mark.slow
def test_a_sweep_trains_every_arm_with_its_own_recipe(armed_sweep):
    spec, result, output = armed_sweep
    report = result.report
    assert report["columns"] == ["Teacher", "BAN-1", "BAN-2", "Ens*2", "Ens*3", "Teacher′", "Teacher+Teacher′",
                                 "Teacher+2×Teacher′", "Equal-budget", "Label-smoothing"]
    client = MlflowClient(report["mlflow"]["tracking_uri"])
    for chain in report["chains"]:
        arms, teacher = chain["arms"], chain["generations"][0]
        assert sorted(arms) == ["budget", "control", "control2", "smoothing"]
        assert all(record["status"] == "finished" and record["arm"] == arm for arm, record in arms.items())
        assert [arms[a]["objective"] for a in ("control", "control2", "budget", "smoothing")] == ["ce", "ce", "ce", "ls"]
        seeds = [teacher["seed"], *(arms[a]["seed"] for a in sorted(arms))]
        assert len(set(seeds)) == 5  # each arm's own seeds
        # the equal-budget model trained the chain's 3 × 2 epochs, the others 2
        epochs = {a: len(client.get_metric_history(arms[a]["best_trial_run_id"], "val_error")) for a in arms}
        assert epochs == {"budget": 6, "control": 2, "control2": 2, "smoothing": 2}
        for arm, record in arms.items():
            assert Checkpoint(record["checkpoint"]).get_metadata()["arm"] == arm
            tags = client.get_run(record["mlflow_run_id"]).data.tags
            assert (tags["banray.arm"], tags["banray.level"]) == (arm, "generation")
            assert "banray.generation" not in tags
    paired = report["paired"]
    assert paired["primary"] == {"column": "BAN-2", "baseline": "Teacher"}
    assert paired["vs_teacher"]["BAN-2"]["test_error"]["holm_p"] is None
    others = [*paired["vs_teacher"].items(), *paired["vs_own_baseline"].items()]
    assert all(by_metric["test_error"]["holm_p"] is not None for column, by_metric in others if column != "BAN-2")
    assert "[banray] chain 1 equal-budget model: started" in output
    assert "Equal-budget is one model trained for the chain's total epochs" in output


@pytest.mark.slow
def test_the_control_ensembles_and_fidelity_are_what_the_checkpoints_give(armed_sweep):
    """numpy, not banray's scores: the same-size ensembles' errors and the students' agreement and KL, from each
    model's test predictions."""
    spec, result, _ = armed_sweep
    differences = []
    for chain in result.report["chains"]:
        probs = {name: predictions(spec, record["checkpoint"])
                 for name, record in [*enumerate(chain["generations"]), *chain["arms"].items()]}
        labels = probs[0][1]
        for ensemble in chain["control_ensembles"]:
            mean = np.mean([probs[member][0] for member in ensemble["members"]], axis=0)
            assert ensemble["test_error"] == pytest.approx(np.mean(mean.argmax(1) != labels), abs=1e-6)
        assert [e["members"] for e in chain["control_ensembles"]] == [[0, "control"], [0, "control", "control2"]]
        ens3 = next(e for e in chain["ensembles"] if e["k"] == 3)
        differences.append(ens3["test_error"] - chain["control_ensembles"][1]["test_error"])
        for student in chain["generations"][1:]:
            teacher, mine = probs[student["generation"] - 1][0], probs[student["generation"]][0]
            kl = np.sum(np.where(teacher > 0, teacher * (np.log(np.maximum(teacher, 1e-300)) - np.log(mine)), 0), axis=1)
            assert student["test_agreement"] == pytest.approx(np.mean(teacher.argmax(1) == mine.argmax(1)))
            assert student["test_teacher_kl"] == pytest.approx(kl.mean(), rel=1e-4)
            logged = MlflowClient(result.report["mlflow"]["tracking_uri"]).get_run(student["mlflow_run_id"]).data.metrics
            assert (logged["test_agreement"], logged["test_teacher_kl"]) == (
                pytest.approx(student["test_agreement"]), pytest.approx(student["test_teacher_kl"]))
    paired = result.report["paired"]
    assert paired["own_baselines"]["Ens*3"] == "Teacher+2×Teacher′"  # Ens*3 against 3 members, never 2
    assert paired["vs_own_baseline"]["Ens*3"]["test_error"]["mean"] == pytest.approx(np.mean(differences))
    assert paired["no_same_size_baseline"] == {}


def test_validate_names_the_arms_a_spec_trains(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_spec(control={"teachers": 2, "label_smoothing": 0.1})))
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert ("1 chain(s) × (teacher + 1 generation(s) + control (teacher′) + control (teacher′2) + label-smoothing "
            "model) × 2 trial(s)") in result.output
