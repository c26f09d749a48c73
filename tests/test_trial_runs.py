"""The trials' MLflow runs, written from the group's process by the TrialRuns callback (a real SQLite store)."""

import pickle
import threading
import time
from types import SimpleNamespace

from banray.records import TrialSummary
from banray.results import tracking
from banray.spec import ResourcesSpec, parse_spec
from banray.sweep.trial_runs import TrialRuns, epoch_metrics, trial_run_ids
from banray.trial import wire
from conftest import tiny_spec


def epoch(n, **extra):
    """One epoch's result as Tune hands it to callbacks: the worker's metrics and Tune's own keys."""
    return {"epoch": n, "lr": 0.1, "val_error": 0.5 / n, "val_nll": 1.0 / n, "loss/ce": 0.3, "train_loss": 0.3,
            "training_iteration": n, "time_this_iter_s": 0.1, "timestamp": 1, "trial_id": "t1", "done": False,
            "pid": 7, "hostname": "h", "date": "today", **extra}


def setup(tmp_path):
    spec = parse_spec(tiny_spec())
    track = tracking.resolve(None, "trial-runs", tmp_path)
    experiment_id = tracking.ensure_experiment(track)
    parent = tracking.start_run(track, experiment_id, "chain0-gen1", tags={})
    ticket = wire.Ticket(chain=0, generation=1, arm="main", metric="val_error", train_storage=str(tmp_path / "train"),
                         slots_actor="slots", resources=ResourcesSpec().model_dump(mode="json"))
    config = {**wire.group_config(spec.generation_settings(0, 1, "/teacher"), ticket, {}), wire.TRIAL: 0}
    trial = SimpleNamespace(trial_id="t1", config=config, last_result=None)
    return track, experiment_id, parent, trial


def test_each_epoch_is_logged_once_across_a_restart_and_the_run_ends_finished(tmp_path):
    track, experiment_id, parent, trial = setup(tmp_path)
    runs = TrialRuns(track, experiment_id, parent)
    runs.on_trial_start(0, [], trial)
    for n in (1, 2):
        runs.on_trial_result(0, [], trial, epoch(n, **({"teacher_val_error": 0.1, "teacher_val_nll": 0.2} if n == 1 else {})))
    runs.on_experiment_end([])
    # Restarted from its epoch-1 checkpoint, in a new callback (a resumed sweep): epoch 2 comes again.
    runs = TrialRuns(track, experiment_id, parent)
    runs.on_trial_start(0, [], trial)
    resumed = {"resumed_after_epoch": 1, "replayed_epochs": [epoch(1)], "teacher_val_error": 0.1}
    for n in (2, 3):
        runs.on_trial_result(0, [], trial, epoch(n, **(resumed if n == 2 else {})))
    trial.last_result = TrialSummary(0, 1, best_epoch=3, value=0.1, val_error=0.1, checkpoint="/c").to_report("val_error")
    runs.on_trial_complete(0, [], trial)
    runs.on_experiment_end([])

    (run_id,) = trial_run_ids(track, experiment_id, parent).values()
    client = track.client()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["banray.tune_trial_id"] == "t1"
    assert run.data.tags["mlflow.parentRunId"] == parent and run.data.params["trial"] == "0"
    assert [m.step for m in client.get_metric_history(run_id, "val_error")] == [1, 2, 3]
    assert [m.step for m in client.get_metric_history(run_id, "teacher_val_error")] == [0]
    assert [m.step for m in client.get_metric_history(run_id, "resumed_after_epoch")] == [1]
    assert not {"training_iteration", "time_this_iter_s", "timestamp", "pid"} & set(run.data.metrics)


def test_epochs_whose_reports_were_lost_are_logged_from_the_restarted_trials_replay(tmp_path):
    track, experiment_id, parent, trial = setup(tmp_path)
    runs = TrialRuns(track, experiment_id, parent)
    runs.on_trial_start(0, [], trial)
    runs.on_trial_result(0, [], trial, epoch(1))
    runs.on_experiment_end([])
    # Epochs 2 and 3 were checkpointed but their reports died with the driver; the trial resumes after 3.
    runs = TrialRuns(track, experiment_id, parent)
    runs.on_trial_start(0, [], trial)
    runs.on_trial_result(0, [], trial, epoch(4, resumed_after_epoch=3, replayed_epochs=[epoch(1), epoch(2), epoch(3)]))
    runs.on_experiment_end([])
    (run_id,) = trial_run_ids(track, experiment_id, parent).values()
    history = track.client().get_metric_history(run_id, "val_error")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
    assert {m.step: m.value for m in history}[3] == 0.5 / 3


def test_a_trial_started_again_under_a_new_tune_trial_id_continues_its_run(tmp_path):
    """A group whose Tune state was lost starts its trials again (new Tune trial ids) from their own
    checkpoints: each trial number keeps one run, now tagged with the new id."""
    track, experiment_id, parent, trial = setup(tmp_path)
    runs = TrialRuns(track, experiment_id, parent)
    runs.on_trial_start(0, [], trial)
    runs.on_trial_result(0, [], trial, epoch(1))
    runs.on_experiment_end([])
    again = SimpleNamespace(trial_id="t9", config=trial.config, last_result=None)
    runs = TrialRuns(track, experiment_id, parent)
    runs.on_trial_start(0, [], again)
    runs.on_trial_result(0, [], again, epoch(2, resumed_after_epoch=1, replayed_epochs=[epoch(1)]))
    runs.on_experiment_end([])
    assert list(trial_run_ids(track, experiment_id, parent)) == ["t9"]
    (run_id,) = trial_run_ids(track, experiment_id, parent).values()
    assert [m.step for m in track.client().get_metric_history(run_id, "val_error")] == [1, 2]


def test_a_failed_trial_and_one_asha_stopped_are_closed_with_their_reason(tmp_path):
    track, experiment_id, parent, trial = setup(tmp_path)
    runs = TrialRuns(track, experiment_id, parent)
    runs.on_trial_start(0, [], trial)
    trial.last_result = TrialSummary(0, 1, failure="diverged: training loss not finite in epoch 1").to_report("val_error")
    runs.on_trial_complete(0, [], trial)
    stopped = SimpleNamespace(trial_id="t2", config={**trial.config, wire.TRIAL: 1}, last_result=None)
    runs.on_trial_start(0, [], stopped)
    runs.on_trial_result(0, [], stopped, epoch(1))
    stopped.last_result = epoch(1)
    runs.on_trial_complete(0, [], stopped)
    runs.on_experiment_end([])

    client = track.client()
    ids = trial_run_ids(track, experiment_id, parent)
    failed, asha = client.get_run(ids["t1"]), client.get_run(ids["t2"])
    assert failed.info.status == "FAILED" and failed.data.tags["banray.failure"].startswith("diverged:")
    assert asha.info.status == "KILLED" and asha.data.tags["banray.stopped_early"] == "ASHA"


def test_a_trials_report_never_waits_for_mlflow(tmp_path):
    """Tune's function trainables wait for the controller after every report: a write made in the callback
    would hold up the trial's next epoch. Here the store hangs until the trial has reported three epochs."""
    track, experiment_id, parent, trial = setup(tmp_path)
    runs = TrialRuns(track, experiment_id, parent)
    runs.on_trial_start(0, [], trial)
    store_answers = threading.Event()
    real_log_batch = runs.client.log_batch

    def slow_log_batch(*args, **kwargs):
        assert store_answers.wait(30), "the reports did not return while the store hung"
        return real_log_batch(*args, **kwargs)

    runs.client.log_batch = slow_log_batch
    for n in (1, 2, 3):
        runs.on_trial_result(0, [], trial, epoch(n))
    store_answers.set()
    runs.on_experiment_end([])
    runs.client.log_batch = real_log_batch
    (run_id,) = trial_run_ids(track, experiment_id, parent).values()
    assert [m.step for m in track.client().get_metric_history(run_id, "val_error")] == [1, 2, 3]
    assert pickle.loads(pickle.dumps(runs)).runs == runs.runs  # the Tuner pickles its callbacks


def test_short_epochs_reach_mlflow_in_batches_each_with_the_time_it_was_reported(tmp_path):
    track, experiment_id, parent, trial = setup(tmp_path)
    runs = TrialRuns(track, experiment_id, parent)
    runs.on_trial_start(0, [], trial)
    writes = []
    real_log_batch = runs.client.log_batch
    runs.client.log_batch = lambda run_id, metrics: writes.append(len(metrics)) or real_log_batch(run_id, metrics=metrics)
    for n in range(1, 6):  # five reports well within FLUSH_S
        runs.on_trial_result(0, [], trial, epoch(n))
        time.sleep(0.01)
    trial.last_result = TrialSummary(0, 1, best_epoch=5, value=0.1, val_error=0.1, checkpoint="/c").to_report("val_error")
    runs.on_trial_complete(0, [], trial)
    runs.on_experiment_end([])
    runs.client.log_batch = real_log_batch

    per_epoch = len(epoch_metrics(epoch(1)))
    assert writes == [per_epoch, 4 * per_epoch]  # the first epoch at once, the others as the trial ends
    (run_id,) = trial_run_ids(track, experiment_id, parent).values()
    history = sorted(track.client().get_metric_history(run_id, "val_error"), key=lambda m: m.step)
    assert [m.step for m in history] == [1, 2, 3, 4, 5]
    stamps = [m.timestamp for m in history]
    assert stamps == sorted(set(stamps))  # each epoch at the time it was reported, not when it was written
    assert track.client().get_run(run_id).info.status == "FINISHED"


def test_a_trial_tune_restarts_in_the_same_group_logs_each_epoch_once(tmp_path):
    """Its process died after reporting epochs 1-3 (2 and 3 still waiting for the next batch); it restarts
    from its epoch-1 checkpoint and reports epochs 2 and 3 again."""
    track, experiment_id, parent, trial = setup(tmp_path)
    runs = TrialRuns(track, experiment_id, parent)
    runs.on_trial_start(0, [], trial)
    for n in (1, 2, 3):
        runs.on_trial_result(0, [], trial, epoch(n))
    runs.on_trial_start(0, [], trial)
    runs.on_trial_result(0, [], trial, epoch(2, resumed_after_epoch=1, replayed_epochs=[epoch(1)]))
    for n in (3, 4):
        runs.on_trial_result(0, [], trial, epoch(n))
    runs.on_experiment_end([])
    (run_id,) = trial_run_ids(track, experiment_id, parent).values()
    assert sorted(m.step for m in track.client().get_metric_history(run_id, "val_error")) == [1, 2, 3, 4]
