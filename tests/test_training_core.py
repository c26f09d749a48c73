"""The training core runs where only PyTorch is: in a fresh interpreter that cannot import Ray, MLflow,
Optuna, pyarrow or tenacity it trains a teacher and a BAN student; `banray trial` runs a spec's trial through
it from the command line, and its checkpoints are teachers for a sweep's students."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from conftest import REPO, tiny_spec

from banray.spec import TrialSettings, parse_spec, trial_seed
from banray.storage import SWEEP_FILES
from banray.training import checkpoint, loop
from banray.training.tasks import make_task

FULL_INSTALL = ("ray", "mlflow", "optuna", "pyarrow", "tenacity")
WITH_BANRAY = {**os.environ, "PYTHONPATH": str(REPO)}

# Installed before anything else is imported: the core must never need these.
WITHOUT_FULL_INSTALL = f"""
import sys

FULL_INSTALL = {FULL_INSTALL!r}

class FullInstallMissing:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in FULL_INSTALL:
            raise ImportError(f"{{name}} is not installed here")

sys.meta_path.insert(0, FullInstallMissing())
"""

CORE_TRIALS = """
import json, sys
import torch
import banray.catalog.scores, banray.records, banray.catalog.registry, banray.selection  # the Ray-free modules the core leaves out
from banray.spec import parse_spec
from banray.training import checkpoint
from banray.training.local import run_trial, trial_folder, trial_settings

spec = parse_spec(json.loads(sys.argv[1]))
out, rows = sys.argv[2], {"teacher": [], "student": []}
teacher = trial_settings(spec, 0, 0, 0, None)
summary = run_trial(teacher, trial_folder(out, teacher), torch.device("cpu"), on_epoch=rows["teacher"].append)
student = trial_settings(spec, 0, 1, 0, summary.checkpoint)
best = run_trial(student, trial_folder(out, student), torch.device("cpu"), on_epoch=rows["student"].append).checkpoint
record = checkpoint.read_record(best)
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in FULL_INSTALL)
print(json.dumps({"rows": rows, "teacher": summary.checkpoint, "student_record": record.model_dump(mode="json"),
                  "loaded": loaded}, default=str))
"""


def test_a_teacher_and_its_student_train_through_the_core_without_ray_mlflow_optuna_pyarrow(tmp_path):
    spec = tiny_spec(**{"train.epochs": 3})
    script = WITHOUT_FULL_INSTALL + textwrap.dedent(CORE_TRIALS)
    done = subprocess.run([sys.executable, "-c", script, json.dumps(spec), str(tmp_path)], cwd=REPO,
                          env=WITH_BANRAY, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["loaded"] == []
    teacher_rows, student_rows = result["rows"]["teacher"], result["rows"]["student"]
    assert teacher_rows[-1]["train_loss"] < teacher_rows[0]["train_loss"]
    assert (tmp_path / "chain0-gen0" / "trial0" / "epoch-0003" / checkpoint.WEIGHTS_FILE).is_file()
    # The student loaded its teacher: it scored it before its first epoch, and its checkpoints name it.
    assert "teacher_val_error" in student_rows[0] and "loss/teacher_ce" in student_rows[0]
    teacher_record = checkpoint.read_record(result["teacher"])
    assert result["student_record"]["teacher"] == teacher_record.as_teacher().model_dump(mode="json")
    assert result["student_record"]["generation"] == 1


def banray_trial(*arguments: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "banray", "trial", *arguments], cwd=cwd, env=WITH_BANRAY,
                          capture_output=True, text=True, timeout=300)


def best_checkpoint(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1].rpartition("checkpoint ")[2]


def test_banray_trial_trains_the_quickstart_and_a_sweep_student_loads_its_checkpoint(tmp_path):
    quickstart = str(REPO / "sweeps" / "quickstart.yaml")
    teacher = best_checkpoint(banray_trial(quickstart, "--chain", "0", "--generation", "0", "--device", "cpu",
                                           cwd=tmp_path))
    assert teacher.startswith(str(tmp_path / "trials" / "quickstart" / "chain0-gen0" / "trial0" / "epoch-"))
    student = banray_trial(quickstart, "--chain", "0", "--generation", "1", "--teacher", teacher, cwd=tmp_path)
    assert "epoch 10/10: loss " in student.stdout and "samples/s" in student.stdout
    best_checkpoint(student)

    # A sweep's generation-1 student, with its own seed, checks and loads the checkpoint as its teacher.
    spec = parse_spec(yaml.safe_load((REPO / "sweeps" / "quickstart.yaml").read_text()))
    settings = spec.generation_settings(0, 1, teacher)
    seed = trial_seed(settings.pop("seed_root"), 0, 1, 1)
    settings = TrialSettings.model_validate({**settings, "trial": 1, "seed": seed})
    task = make_task(settings.data, settings.train, seed=seed)
    frozen, [record] = loop.load_teacher(settings, task, torch.device("cpu"), SWEEP_FILES)
    assert record.generation == 0 and record.sweep == "quickstart" and record.spec_hash == spec.spec_hash()


def write_spec(path, **overrides) -> str:
    path.write_text(yaml.safe_dump(tiny_spec(**{"train.epochs": 1}, **overrides)))
    return str(path)


@pytest.mark.parametrize("arguments, option", [
    (["--chain", "0", "--generation", "1"], "--teacher: generation 1 needs the checkpoint of generation 0"),
    (["--chain", "0", "--generation", "2"], "--generation: 2 is out of range: 'tiny' has generations 0..1"),
    (["--chain", "1", "--generation", "0"], "--chain: 1 is out of range: 'tiny' has chains 0..0"),
    (["--chain", "0", "--generation", "0", "--trial", "2"], "--trial: 2 is out of range"),
], ids=["no-teacher", "generation", "chain", "trial"])
def test_bad_options_exit_2_with_one_line_naming_the_option(tmp_path, arguments, option):
    done = banray_trial(write_spec(tmp_path / "tiny.yaml"), *arguments, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith(f"error: {option}"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "trials").exists()


def test_a_teacher_of_another_arch_is_refused_naming_the_option(tmp_path):
    other = write_spec(tmp_path / "mlp.yaml", model={"arch": "mlp", "kwargs": {}})
    teacher = best_checkpoint(banray_trial(other, "--chain", "0", "--generation", "0", "--out", "mlp", cwd=tmp_path))
    done = banray_trial(write_spec(tmp_path / "tiny.yaml"), "--chain", "0", "--generation", "1", "--teacher", teacher,
                        cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: --teacher: checkpoint {teacher}: its metadata has arch='mlp', expected 'cnn'")
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "trials").exists()
