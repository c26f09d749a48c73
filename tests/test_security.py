"""Checkpoints are data: a weights file that would run code when unpickled is refused before anything in it
runs, and a teacher is accepted only if its metadata says it is the one expected. (That secrets never
reach MLflow, storage or the output is checked on a real sweep in tests/test_storage_s3.py.)"""

import functools
import json
import os
import pathlib
import pickle

import pytest
import torch
from conftest import tiny_spec

from banray.catalog.models import MODELS, build_model
from banray.spec import TrialSettings, parse_spec
from banray.storage import SWEEP_FILES
from banray.training import checkpoint, loop
from banray.training.checkpoint import BadCheckpoint, CheckpointIdentity, TeacherMismatch
from banray.training.tasks import make_task

SPEC = parse_spec(tiny_spec())


@functools.cache
def task():
    """Chain 0's task: a generation-1 trial of SPEC and its teacher train on its split."""
    return make_task(SPEC.chain_data(0), SPEC.train)


def metadata(drop=(), **overrides) -> dict:
    """The record the worker writes for a synthetic-data teacher (generation 0 of chain 0), as JSON, with
    `overrides` and without the fields in `drop`; the revision is the current one of a registered arch."""
    arch = overrides.get("arch", "cnn")
    record = {
        "schema_version": checkpoint.SCHEMA_VERSION, "arch": "cnn", "kwargs": {"width": 8},
        "revision": MODELS.revision(arch) if isinstance(arch, str) and arch in MODELS else 1,
        "num_classes": 4, "input_shape": [1, 8, 8], "sweep": SPEC.name, "spec_hash": SPEC.spec_hash(), "chain": 0,
        "generation": 0, "arm": "main", "dataset": "synthetic", "split_hash": task().split_hash, "trial": 0,
        "seed": 1, "objective": "ce", "teacher": None, "node_id": "node-1", "epoch": 2, "val_error": 0.1,
        "val_nll": 0.3, **overrides,
    }
    return {key: value for key, value in record.items() if key not in drop}


def identity(**overrides) -> CheckpointIdentity:
    """What a generation-1 trial of SPEC expects of its teacher: the identity of `metadata()`."""
    fields = metadata(**overrides)
    return CheckpointIdentity.model_validate({key: fields[key] for key in CheckpointIdentity.model_fields})


def write_checkpoint(directory: pathlib.Path, drop=(), **overrides) -> str:
    """A checkpoint of the cnn teacher whose metadata is `metadata(drop, **overrides)`, valid or not."""
    directory.mkdir()
    model = build_model("cnn", num_classes=4, input_shape=(1, 8, 8), width=8)
    checkpoint.save(directory, model, checkpoint.CheckpointRecord.model_validate(metadata()))
    (directory / checkpoint.METADATA_FILE).write_text(json.dumps(metadata(drop, **overrides)))
    return str(directory)


class Payload:
    """Pickles as a call of `function(*args)`: what unpickling a hostile file would execute."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def payloads(marker: pathlib.Path) -> dict:
    return {
        "os.system": Payload(os.system, f"touch {marker}"),
        "pathlib.touch": Payload(pathlib.Path.touch, marker),
    }


def student_settings(teacher_checkpoint: str) -> TrialSettings:
    """A generation-1 trial's settings as run_trial resolves them."""
    settings = SPEC.generation_settings(0, 1, teacher_checkpoint)
    del settings["seed_root"]  # run_trial turns it into the trial's seed
    return TrialSettings.model_validate({**settings, "trial": 0, "seed": 7})


def test_a_valid_checkpoint_loads(tmp_path):
    model, record = checkpoint.load(write_checkpoint(tmp_path / "ckpt"), expected=identity())
    assert record == checkpoint.CheckpointRecord.model_validate(metadata())
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 4)


@pytest.mark.parametrize("kind", ["os.system", "pathlib.touch"])
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_checkpoint_that_runs_code_is_refused_and_the_code_never_runs(tmp_path, kind, writer):
    marker = tmp_path / "pwned"
    directory = write_checkpoint(tmp_path / "ckpt")
    weights = pathlib.Path(directory) / checkpoint.WEIGHTS_FILE
    hostile = {"0.weight": payloads(marker)[kind]}
    if writer == "torch.save":
        torch.save(hostile, weights)
    else:
        weights.write_bytes(pickle.dumps(hostile, protocol=2))

    with pytest.raises(BadCheckpoint) as refused:
        checkpoint.load(directory)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"checkpoint {directory}: model.pt holds something other than tensors (")
    assert message.endswith("refused: checkpoints are loaded as data only")
    assert not marker.exists()

    # The same file through the teacher path of a student trial.
    with pytest.raises(BadCheckpoint, match="holds something other than tensors"):
        loop.load_teacher(student_settings(directory), task(), torch.device("cpu"), SWEEP_FILES)
    assert not marker.exists()

    # The payload is live: an unsafe load (never done by banray) runs it.
    if writer == "torch.save":
        torch.load(weights, weights_only=False)
    else:
        pickle.loads(weights.read_bytes())
    assert marker.exists()


def test_a_weights_file_that_is_not_a_state_dict_is_refused(tmp_path):
    directory = write_checkpoint(tmp_path / "ckpt")
    torch.save(torch.zeros(3), pathlib.Path(directory) / checkpoint.WEIGHTS_FILE)
    with pytest.raises(BadCheckpoint, match=r"model.pt does not fit arch 'cnn' with kwargs \{'width': 8\}"):
        checkpoint.load(directory)


@pytest.mark.parametrize(
    "key, value",
    [("arch", "mlp"), ("kwargs", {"width": 16}), ("revision", 2), ("num_classes", 10), ("input_shape", [1, 4, 4]),
     ("spec_hash", "0123456789abcdef"), ("generation", 1), ("sweep", "other"), ("chain", 3), ("arm", "control"),
     ("dataset", "digits"), ("split_hash", "0123456789abcdef")],
)
def test_a_teacher_whose_metadata_differs_is_refused(tmp_path, key, value):
    directory = write_checkpoint(tmp_path / "ckpt")
    with pytest.raises(TeacherMismatch) as mismatch:
        checkpoint.load(directory, expected=identity(**{key: value}))
    actual = metadata()[key]
    assert str(mismatch.value) == (
        f"checkpoint {directory}: its metadata has {key}={actual!r}, expected {value!r}: "
        "it is not the teacher this generation was planned with"
    )


def test_the_teacher_path_checks_the_spec_hash(tmp_path):
    directory = write_checkpoint(tmp_path / "ckpt", spec_hash="0123456789abcdef")
    with pytest.raises(TeacherMismatch, match=f"spec_hash='0123456789abcdef', expected '{SPEC.spec_hash()}'"):
        loop.load_teacher(student_settings(directory), task(), torch.device("cpu"), SWEEP_FILES)


def test_a_checkpoint_of_an_unregistered_arch_is_reported_clearly(tmp_path):
    directory = write_checkpoint(tmp_path / "ckpt", arch="resnet9000")
    with pytest.raises(BadCheckpoint) as unknown:
        checkpoint.load(directory)
    assert str(unknown.value) == (
        f"checkpoint {directory}: its metadata names arch 'resnet9000', which is not a registered model; "
        "allowed: cnn, cnn1d, densenet_bc, lstm_lm, mlp, mlp1d, preact_resnet, resnet1d, wrn"
    )


def test_a_checkpoint_without_banray_metadata_is_reported_clearly(tmp_path):
    directory = tmp_path / "foreign"
    directory.mkdir()
    torch.save(build_model("cnn", num_classes=4, input_shape=(1, 8, 8)).state_dict(), directory / "model.pt")
    with pytest.raises(BadCheckpoint) as no_metadata:
        checkpoint.load(str(directory))
    assert str(no_metadata.value) == (
        f"checkpoint {directory}: it has no metadata (.metadata.json); not a banray checkpoint"
    )

    # Ray metadata, but not banray's.
    (directory / checkpoint.METADATA_FILE).write_text('{"epoch": 3}')
    with pytest.raises(BadCheckpoint, match="its metadata has no schema_version: not a banray checkpoint, or one"):
        checkpoint.load(str(directory))


def test_metadata_kwargs_that_cannot_build_the_model_are_reported(tmp_path):
    directory = write_checkpoint(tmp_path / "ckpt", arch="wrn", kwargs={"depth": 27})
    with pytest.raises(BadCheckpoint, match=r"arch 'wrn' cannot be built with its metadata's kwargs \{'depth': 27\}"):
        checkpoint.load(directory)
