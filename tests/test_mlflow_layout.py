"""The MLflow layout without Ray, on a local SQLite store: links, the chain runs that generation runs nest
under, tags, descriptions, scores per generation in %, the summary run's few metrics and its paired table, and
registering into a registered model that exists. The real sweep against a real server, and the UI, are in
test_tracking_server.py."""

import dataclasses
import math
import re
import statistics

import numpy as np
import pytest
import torch

from banray.records import ChainResult, EnsembleRecord, GenerationRecord
from banray.results import report, tracking
from banray.spec import parse_spec
from banray.sweep.context import SweepContext
from banray.sweep.generation_runs import ensemble_teacher, start_generation_run
from conftest import tiny_spec

# Test errors per chain: Teacher, BAN-1, BAN-2, Teacher′.
ERRORS = {0: (0.10, 0.08, 0.07, 0.11), 1: (0.12, 0.11, 0.09, 0.12), 2: (0.14, 0.12, 0.12, 0.13),
          3: (0.11, 0.10, 0.08, 0.10)}


def record(chain, generation, error, role=None, run_id=None, teacher_run_id=None):
    return GenerationRecord(
        chain=chain, generation=generation, role=role or ("teacher" if generation == 0 else "student"), arch="cnn",
        objective="ce" if generation == 0 else "ban", status="finished",
        mlflow_run_id=run_id or f"run-{chain}-{generation}",
        teacher_checkpoint=None, teacher_run_id=teacher_run_id, best_trial=1, best_epoch=2, val_error=error + 0.01,
        val_nll=0.5, test_error=error, test_nll=3 * error, test_ece=error / 2, checkpoint=f"/ckpt/{chain}/{generation}",
    )


def chains(generations=3):
    def ensemble(k, members, error):
        return EnsembleRecord(k, members, error, 3 * error, error / 2)

    return [
        ChainResult(c, [record(c, g, e[g]) for g in range(generations)],
                    [ensemble(2, [1, 2], e[2] - 0.01)] if generations == 3 else [], f"ens-{c}",
                    arms={"control": dataclasses.replace(record(c, 0, e[3], role="control"), arm="control")},
                    control_ensembles=[ensemble(2, [0, "control"], e[0] - 0.005)])
        for c, e in ERRORS.items()
    ]


def build(results):
    spec = parse_spec(tiny_spec(generations=2, chains=4, control=True))
    return report.build(spec, results, sweep_dir="/out/tiny", tracking_uri="sqlite:///x.db", experiment_id="1",
                        elapsed_s=1.0)


def by_key(metrics):
    found = {}
    for key, value, step in metrics:
        found.setdefault(key, {})[step] = value
    return found


def test_links_open_the_training_runs_not_the_genai_overview():
    assert tracking.runs_link("http://mlflow:5000/", "7") == (
        "http://mlflow:5000/#/experiments/7/runs?workflowType=machine_learning")
    assert tracking.runs_link("http://mlflow:5000", "7", chart=True).endswith(
        "/#/experiments/7/runs?workflowType=machine_learning&compareRunsMode=CHART")
    assert tracking.run_link("7", "abc") == "#/experiments/7/runs/abc"


def test_summary_metrics_are_a_few_headline_numbers_in_percent():
    built = build(chains())
    metrics = report.summary_metrics(built)
    found = by_key(metrics)
    assert len(found) <= 20
    assert all(re.fullmatch(r"[\w./ :-]+", key) for key in found)  # MLflow's allowed characters
    assert all(isinstance(value, float) and math.isfinite(value) for _, value, _ in metrics)
    for g in range(3):  # the chains' keys: MLflow's chart of each draws the mean beside the chains
        assert found["test_error_pct"][g] == pytest.approx(100 * statistics.fmean(e[g] for e in ERRORS.values()))
        assert found["val_error_pct"][g] == pytest.approx(100 * statistics.fmean(e[g] + 0.01 for e in ERRORS.values()))
        assert found["test_ece_pct"][g] == pytest.approx(50 * statistics.fmean(e[g] for e in ERRORS.values()))
        assert found["test_nll"][g] == pytest.approx(3 * statistics.fmean(e[g] for e in ERRORS.values()))
    ban2 = built["paired"]["vs_teacher"]["BAN-2"]["test_error"]
    for stat in ("mean", "ci_low", "ci_high"):
        assert found[f"vs_teacher.ban2.test_error_pct.{stat}"] == {0: pytest.approx(100 * ban2[stat])}
    assert found["vs_teacher.ban2.test_error_pct.n"] == {0: 4}
    assert found["vs_teacher.ban2.test_error_pct.wilcoxon_p"] == {0: pytest.approx(ban2["wilcoxon_p"])}
    assert found["vs_teacher.ens2.test_error_pct.mean"][0] == pytest.approx(
        100 * built["paired"]["vs_teacher"]["Ens*2"]["test_error"]["mean"])
    noise = [e[3] - e[0] for e in ERRORS.values()]
    assert found["vs_teacher.control.test_error_pct.mean"][0] == pytest.approx(100 * statistics.fmean(noise))
    assert found["vs_teacher.control.test_error_pct.std"][0] == pytest.approx(100 * statistics.stdev(noise))
    assert not [key for key in found if key.startswith("vs_teacher.ban1")]  # BAN-1's pairs are in paired.json
    # MLflow's chart view orders charts by key: the chains' come before the differences.
    assert max(k for k in found if not k.startswith("vs_")) < min(k for k in found if k.startswith("vs_"))


def test_summary_metrics_take_the_last_ban_any_chain_reached():
    found = by_key(report.summary_metrics(build(chains(generations=2))))  # every chain stopped after BAN-1
    assert "vs_teacher.ban1.test_error_pct.mean" in found and not any(k.startswith("vs_teacher.ban2") for k in found)
    assert sorted(found["test_error_pct"]) == [0, 1]


def test_the_paired_table_has_every_paired_statistic_in_points():
    built = build(chains())
    table = tracking.paired_table(built)
    rows = [dict(zip(table, values)) for values in zip(*table.values())]
    metrics = len(built["paired"]["vs_teacher"]["BAN-1"])
    assert len(rows) == metrics * (len(built["paired"]["vs_teacher"]) + len(built["paired"]["vs_own_baseline"]))
    (row,) = [r for r in rows if r["comparison"] == "BAN-1 − Teacher" and r["metric"] == "test_error"]
    paired = built["paired"]["vs_teacher"]["BAN-1"]["test_error"]
    assert row["unit"] == "points" and row["mean"] == pytest.approx(100 * paired["mean"])
    assert row["ci_high"] == pytest.approx(100 * paired["ci_high"]) and row["n"] == 4
    assert row["verdict"] == paired["verdict"] and row["holm_p"] == paired["holm_p"] and not row["primary"]
    assert [r["comparison"] for r in rows if r["primary"]] == ["BAN-2 − Teacher"] * metrics
    assert {r["comparison"] for r in rows} >= {"Ens*2 − Teacher+Teacher′", "Teacher′ − Teacher"}


@pytest.fixture
def store(tmp_path):
    """A sweep context on a SQLite store (what the groups' functions need of it), and its client."""
    spec = parse_spec(tiny_spec(name="layout", generations=2, control=True))
    track = tracking.resolve(None, "layout", tmp_path)
    ctx = SweepContext(spec=spec, sweep_dir=str(tmp_path), tracking=track,
                       experiment_id=tracking.ensure_experiment(track), slots_actor="slots", capacity=2, tune_verbose=0)
    return ctx, track.client()


def test_generation_runs_nest_under_their_chains_run_which_logs_them_per_generation(store):
    ctx, client = store
    teacher = record(0, 0, 0.10, run_id=start_generation_run(ctx, 0, 0, None))
    student = record(0, 1, 0.08, run_id=start_generation_run(ctx, 0, 1, teacher), teacher_run_id=teacher.mlflow_run_id)
    control = record(0, 0, 0.11, role="control", run_id=start_generation_run(ctx, 0, 0, None, "control"))
    runs = {r.info.run_name: r for r in client.search_runs([ctx.experiment_id])}
    assert set(runs) == {"chain0", "chain0-gen0", "chain0-gen1", "chain0-control", "chain0-control-gen0"}
    chain, control_chain = runs["chain0"].info.run_id, runs["chain0-control"].info.run_id
    assert [runs[n].data.tags[tracking.PARENT] for n in ("chain0-gen0", "chain0-gen1", "chain0-control-gen0")] == [
        chain, chain, control_chain]
    assert {k: runs["chain0"].data.tags[f"banray.{k}"] for k in ("level", "arm", "column", "chain")} == {
        "level": "chain", "arm": "main", "column": "Teacher, BAN-1, BAN-2", "chain": "0"}
    assert runs["chain0-control"].data.tags["banray.column"] == "Teacher′"
    tags = runs["chain0-control-gen0"].data.tags
    assert "banray.generation" not in tags and (tags["banray.level"], tags["banray.arm"]) == ("generation", "control")
    note = runs["chain0-gen1"].data.tags[tracking.NOTE]
    assert f"[chain0-gen0](#/experiments/{ctx.experiment_id}/runs/{teacher.mlflow_run_id})" in note

    for r in (teacher, student, control):
        tracking.log_scores(ctx.tracking, r)
    history = sorted(client.get_metric_history(chain, "test_error_pct"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == [(0, pytest.approx(10.0)), (1, pytest.approx(8.0))]
    control_history = client.get_metric_history(control_chain, "val_error_pct")
    assert [(m.step, m.value) for m in control_history] == [(0, pytest.approx(12.0))]
    assert [m.step for m in client.get_metric_history(student.mlflow_run_id, "test_ece_pct")] == [1]

    tracking.finish_chain_run(ctx.tracking, ctx.experiment_id, "layout", [teacher, student], "chain_stop")
    finished = client.get_run(chain)
    assert finished.info.status == "FINISHED" and "Stopped: chain_stop." in finished.data.tags[tracking.NOTE]
    link = f"#/experiments/{ctx.experiment_id}/runs/{student.mlflow_run_id}"
    assert f"| 1 | BAN-1 | 9.00 | 8.00 | [chain0-gen1]({link}) |" in finished.data.tags[tracking.NOTE]


def test_an_ensemble_taught_generations_run_links_every_member_and_logs_them_as_params(store):
    ctx, client = store
    ctx = dataclasses.replace(ctx, spec=ctx.spec.model_copy(
        update={"distill": ctx.spec.distill.model_copy(update={"teacher_from": "ensemble"})}))
    teacher = record(0, 0, 0.10, run_id=start_generation_run(ctx, 0, 0, None))
    first_members, first_runs = ensemble_teacher(ctx.spec, teacher)
    first = dataclasses.replace(record(0, 1, 0.08, run_id=start_generation_run(ctx, 0, 1, teacher)),
                                teacher_checkpoints=first_members, teacher_run_ids=first_runs)
    second = client.get_run(start_generation_run(ctx, 0, 2, first))
    links = [f"[chain0-gen{g}](#/experiments/{ctx.experiment_id}/runs/{r.mlflow_run_id})"
             for g, r in enumerate((teacher, first))]
    assert (f"distilled from an ensemble teacher: the average of the softmax outputs of {', '.join(links)}"
            in second.data.tags[tracking.NOTE])
    assert second.data.params["distill.teacher_from"] == "ensemble"
    assert second.data.params["teacher_checkpoints"] == str([teacher.checkpoint, first.checkpoint])
    assert second.data.params["teacher_checkpoint"] == first.checkpoint


def test_a_param_longer_than_mlflow_keeps_is_cut_not_refused(store):
    ctx, client = store
    members = [f"s3://bucket/sweep/tune/chain0-gen{g}/trial_{g:08x}/checkpoint_000001" for g in range(100)]
    run_id = tracking.start_run(ctx.tracking, ctx.experiment_id, "long", {}, params={"teacher_checkpoints": members})
    value = client.get_run(run_id).data.params["teacher_checkpoints"]
    assert len(value) == tracking.PARAM_LIMIT and value.startswith(str(members)[:100]) and "cut" in value[-30:]


def test_registering_into_a_model_that_exists_creates_versions_quietly(store, capfd):
    ctx, client = store
    run_id = start_generation_run(ctx, 0, 0, None)
    model_uri = tracking.log_model(ctx.tracking, run_id, torch.nn.Linear(4, 2), np.zeros((1, 4), dtype=np.float32))
    teacher = dataclasses.replace(record(0, 0, 0.10, run_id=run_id), model_uri=model_uri)
    capfd.readouterr()
    for _ in range(2):
        aliases = tracking.register_generations(ctx.tracking, "layout", [teacher], "val_error", ctx.experiment_id)
    assert "already exists" not in "".join(capfd.readouterr())
    assert aliases == {"best": "2", "gen-0": "2", "chain0-gen-0": "2"}
    version = client.get_model_version("layout", "2")
    assert version.run_id == run_id
    assert f"[Its run](#/experiments/{ctx.experiment_id}/runs/{run_id})" in version.description
    assert "test error 10.00%" in version.description and "@best" in client.get_registered_model("layout").description



def test_a_sweeps_new_store_is_a_copy_of_one_mlflow_set_up_once(tmp_path, monkeypatch):
    """MLflow sets up a new SQLite store by running all its schema migrations (seconds per sweep); banray
    copies an empty store MLflow made once per user, and MLflow then opens the copy as its own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = tracking.resolve(None, "first", tmp_path / "first")
    tracking.ensure_experiment(first)
    (template,) = (tmp_path / "cache" / "banray").iterdir()
    made = template.stat().st_mtime_ns
    second = tracking.resolve(None, "second", tmp_path / "second")
    experiment_id = tracking.ensure_experiment(second)
    assert template.stat().st_mtime_ns == made  # set up once, copied since
    assert tracking.local_store(second.uri) == tracking.LocalStore("sqlite", tmp_path / "second" / "mlflow.db", True)
    client = second.client()
    located = {e.name: e.artifact_location for e in client.search_experiments()}
    assert located == {"second": (tmp_path / "second" / "mlartifacts").as_uri(),
                       "Default": f"{(tmp_path / 'second' / 'mlartifacts').as_uri()}/0"}
    run = client.create_run(experiment_id)
    client.log_metric(run.info.run_id, "test_error_pct", 7.5, step=1)
    assert client.get_metric_history(run.info.run_id, "test_error_pct")[0].value == 7.5
    assert [p.name for p in (tmp_path / "second").iterdir()] == ["mlflow.db"]  # no temporary left behind


def test_without_a_writable_cache_mlflow_sets_the_store_up_itself(tmp_path, monkeypatch):
    (tmp_path / "cache").write_text("a file where the cache folder would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    track = tracking.resolve(None, "uncached", tmp_path / "sweep")
    experiment_id = tracking.ensure_experiment(track)
    assert track.client().get_experiment(experiment_id).name == "uncached"
