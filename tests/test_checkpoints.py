"""Broken checkpoints fail at once as BadCheckpoint, with one line naming the checkpoint and what is wrong;
only errors while fetching a checkpoint from storage are retried as outages. Kwargs that ask for an absurd
model are refused on torch's meta device, before anything is allocated."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import re

import pyarrow.fs as pafs
import pytest
import torch
from test_security import SPEC, identity, metadata, student_settings, task, write_checkpoint

from banray.catalog.models import MODELS, build_model, registry
from banray.catalog.models.registry import ModelBuildError, ModelTooLarge, count_parameters
from banray.files import LOCAL
from banray.storage import SWEEP_FILES, StorageUnavailable
from banray.training import checkpoint, loop
from banray.training.checkpoint import BadCheckpoint, TeacherMismatch
from banray.training.tasks import make_task
from servers import free_port

CPU = torch.device("cpu")


def refused(directory, **load_kwargs) -> str:
    """The message of the BadCheckpoint that loading `directory` raises, checked to be one line naming it."""
    with pytest.raises(BadCheckpoint) as bad:
        checkpoint.load(str(directory), **load_kwargs)
    message = str(bad.value)
    assert "\n" not in message and message.startswith(f"checkpoint {directory}: "), message
    return message.removeprefix(f"checkpoint {directory}: ")


def save_model(directory: pathlib.Path, arch: str, kwargs: dict, **overrides) -> str:
    """A checkpoint of a real `arch` model for the synthetic data, its record as the worker writes it."""
    directory.mkdir()
    model = build_model(arch, num_classes=4, input_shape=(1, 8, 8), **kwargs)
    record = checkpoint.CheckpointRecord.model_validate(metadata(arch=arch, kwargs=kwargs, **overrides))
    checkpoint.save(directory, model, record)
    return str(directory)


def weights(directory: str) -> pathlib.Path:
    return pathlib.Path(directory) / checkpoint.WEIGHTS_FILE


# --- the weights file --------------------------------------------------------------------------------------


def _truncate(path: pathlib.Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "damage, reason",
    [
        (_truncate, r"model\.pt \([\d,]+ bytes\) is not a readable torch\.save file, truncated or damaged \("),
        (lambda path: path.write_bytes(path.read_bytes()[:100]), r"is not a readable torch\.save file"),
        (lambda path: path.write_bytes(b""), r"model\.pt is empty$"),
        (lambda path: path.write_text("these are not the weights you are looking for\n"),
         r"is not a readable torch\.save file"),
        (lambda path: path.unlink(), r"it has no model\.pt$"),
        (lambda path: (path.unlink(), path.mkdir()), r"model\.pt is not a regular file$"),
    ],
    ids=["truncated", "truncated-to-100-bytes", "empty", "plain-text", "missing", "a-directory"],
)
def test_a_damaged_or_missing_weights_file_is_a_bad_checkpoint(tmp_path, damage, reason):
    directory = write_checkpoint(tmp_path / "ckpt")
    damage(weights(directory))
    assert re.search(reason, refused(directory)), refused(directory)


def test_a_truncated_teacher_fails_at_once_and_is_not_retried_as_a_storage_outage(tmp_path, monkeypatch):
    """torch's zip reader seeks before the start of a truncated file: OSError(EINVAL), which the storage
    retries took for an outage and retried for the whole budget (300 s)."""
    monkeypatch.delenv("BANRAY_STORAGE_RETRY_S", raising=False)  # the default budget
    directory = write_checkpoint(tmp_path / "ckpt")
    _truncate(weights(directory))
    calls = []
    real_load = checkpoint.load

    def load_once(*args, **kwargs):
        calls.append(args)
        if len(calls) > 1:
            raise AssertionError("checkpoint.load was retried")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "load", load_once)
    with pytest.raises(BadCheckpoint, match=r"is not a readable torch\.save file, truncated or damaged"):
        loop.load_teacher(student_settings(directory), task(), CPU, SWEEP_FILES)
    assert len(calls) == 1


def test_an_io_error_while_fetching_a_teacher_is_still_retried(tmp_path, monkeypatch):
    directory = write_checkpoint(tmp_path / "ckpt")
    real_read_bytes, failures = pathlib.Path.read_bytes, []

    def flaky_read_bytes(path):
        if path.name == checkpoint.WEIGHTS_FILE and not failures:
            failures.append(path)
            raise OSError(errno.EIO, "Input/output error", str(path))
        return real_read_bytes(path)

    monkeypatch.setattr(pathlib.Path, "read_bytes", flaky_read_bytes)
    teacher, [meta] = loop.load_teacher(student_settings(directory), task(), CPU, SWEEP_FILES)
    assert failures and meta.arch == "cnn" and not teacher.training


def test_a_weights_link_out_of_the_checkpoint_folder_is_refused(tmp_path):
    directory = write_checkpoint(tmp_path / "ckpt")
    elsewhere = tmp_path / "elsewhere.pt"
    weights(directory).rename(elsewhere)  # intact weights, outside the folder
    weights(directory).symlink_to(elsewhere)
    assert refused(directory) == f"model.pt is a link to {elsewhere}, outside the checkpoint folder; refused"

    weights(directory).unlink()
    weights(directory).symlink_to(os.path.relpath(elsewhere, directory))  # relative links too
    assert "outside the checkpoint folder; refused" in refused(directory)

    weights(directory).unlink()
    weights(directory).symlink_to(pathlib.Path(directory) / "gone.pt")
    assert refused(directory) == "model.pt is a dangling link"

    weights(directory).unlink()
    weights(directory).symlink_to(checkpoint.WEIGHTS_FILE)  # to itself
    assert refused(directory).startswith("model.pt is a link that does not resolve (")

    # The metadata is read under the same rule.
    metadata_file = pathlib.Path(directory) / checkpoint.METADATA_FILE
    metadata_file.rename(tmp_path / "metadata.json")
    metadata_file.symlink_to(tmp_path / "metadata.json")
    assert refused(directory) == (
        f".metadata.json is a link to {tmp_path / 'metadata.json'}, outside the checkpoint folder; refused"
    )
    metadata_file.unlink()
    (tmp_path / "metadata.json").rename(metadata_file)

    # A link that stays inside the folder is followed.
    elsewhere.rename(pathlib.Path(directory) / "weights-v1.pt")
    weights(directory).unlink()
    weights(directory).symlink_to("weights-v1.pt")
    model, _ = checkpoint.load(directory)
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 4)


def test_a_missing_checkpoint_folder_is_a_bad_checkpoint(tmp_path):
    assert refused(tmp_path / "never-written") == "there is no checkpoint folder there"


# --- the metadata ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, reason",
    [
        (None, "it has no metadata (.metadata.json); not a banray checkpoint"),
        ("[1, 2, 3]", "its metadata (.metadata.json) is a JSON list, not an object"),
        ('"cnn"', "its metadata (.metadata.json) is a JSON str, not an object"),
        ("null", "its metadata (.metadata.json) is a JSON NoneType, not an object"),
        ('{"arch": "cnn",', "its metadata (.metadata.json) is not valid JSON (JSONDecodeError: Expecting"),
        (b"\xff\xfe{}", "its metadata (.metadata.json) is not valid JSON (UnicodeDecodeError: "),
        ("[" * 100_000, "its metadata (.metadata.json) is not valid JSON (RecursionError: "),
    ],
    ids=["missing", "list", "string", "null", "invalid-json", "not-utf8", "too-deep"],
)
def test_metadata_that_is_not_a_json_object_is_a_bad_checkpoint(tmp_path, content, reason):
    directory = write_checkpoint(tmp_path / "ckpt")
    metadata_file = pathlib.Path(directory) / checkpoint.METADATA_FILE
    if content is None:
        metadata_file.unlink()
    elif isinstance(content, bytes):
        metadata_file.write_bytes(content)
    else:
        metadata_file.write_text(content)
    assert refused(directory).startswith(reason)


@pytest.mark.parametrize(
    "overrides, reason",
    [
        ({"kwargs": [["width", 8]]}, "kwargs: input should be a valid dictionary (got [['width', 8]])"),
        ({"kwargs": "width=8"}, "kwargs: input should be a valid dictionary (got 'width=8')"),
        ({"num_classes": 0}, "num_classes: input should be greater than 0 (got 0)"),
        ({"num_classes": -4}, "num_classes: input should be greater than 0 (got -4)"),
        ({"num_classes": "4"}, "num_classes: input should be a valid integer (got '4')"),
        ({"num_classes": 4.0}, "num_classes: input should be a valid integer (got 4.0)"),
        ({"num_classes": True}, "num_classes: input should be a valid integer (got True)"),
        ({"input_shape": "1,8,8"}, "input_shape: input should be a valid list (got '1,8,8')"),
        ({"input_shape": [1, 0, 8]}, "input_shape.1: input should be greater than 0 (got 0)"),
        ({"input_shape": [1, 8.5, 8]}, "input_shape.1: input should be a valid integer (got 8.5)"),
        ({"input_shape": []}, "input_shape: list should have at least 1 item after validation, not 0 (got [])"),
        ({"input_shape": {"c": 1}}, "input_shape: input should be a valid list (got {'c': 1})"),
        ({"arch": 5}, "arch: input should be a valid string (got 5)"),
        ({"arch": ["cnn"]}, "arch: input should be a valid string (got ['cnn'])"),
        ({"arch": None}, "arch: input should be a valid string (got None)"),
        ({"revision": "2"}, "revision: input should be a valid integer (got '2')"),
        ({"arm": "other"}, "arm: input should be 'main', 'control', 'control2' …, 'budget' or 'smoothing' (got 'other')"),
            ({"arm": "control0"}, "arm: input should be 'main', 'control', 'control2' …, 'budget' or 'smoothing' "
             "(got 'control0')"),
        ({"teacher": {"arch": "cnn"}}, "it lacks teacher.sweep, teacher.spec_hash, teacher.chain, teacher.generation, "
         "teacher.trial, teacher.seed, teacher.epoch, teacher.revision, teacher.num_classes, teacher.val_error"),
        ({"schema_version": 1.0}, "schema_version: input should be a valid integer (got 1.0)"),
        ({"colour": "red"}, "colour: extra inputs are not permitted (got 'red')"),
    ],
)
def test_metadata_of_the_wrong_types_is_a_bad_checkpoint(tmp_path, overrides, reason):
    directory = write_checkpoint(tmp_path / "ckpt", **overrides)
    assert refused(directory) == f"its metadata is not a checkpoint record: {reason}"


@pytest.mark.parametrize(
    "drop, reason",
    [(["split_hash"], "it lacks split_hash"), (["revision", "dataset"], "it lacks revision, dataset"),
     (["arch", "kwargs", "num_classes", "input_shape"], "it lacks arch, kwargs, num_classes, input_shape")],
)
def test_metadata_missing_a_field_is_a_bad_checkpoint_naming_it(tmp_path, drop, reason):
    directory = write_checkpoint(tmp_path / "ckpt", drop=drop)
    assert refused(directory) == f"its metadata is not a checkpoint record: {reason}"


@pytest.mark.parametrize(
    "drop, overrides, reason",
    [
        (["schema_version"], {}, "its metadata has no schema_version: not a banray checkpoint, or one written before "
         f"its metadata was a versioned record (this banray reads schema_version {checkpoint.SCHEMA_VERSION})"),
        ([], {"schema_version": 0}, f"its metadata has schema_version=0; this banray reads only {checkpoint.SCHEMA_VERSION}"),
        ([], {"schema_version": checkpoint.SCHEMA_VERSION + 1},
         f"its metadata has schema_version={checkpoint.SCHEMA_VERSION + 1}; this banray reads only "
         f"{checkpoint.SCHEMA_VERSION}"),
    ],
    ids=["none", "older", "newer"],
)
def test_metadata_of_another_schema_version_is_a_bad_checkpoint(tmp_path, drop, overrides, reason):
    directory = write_checkpoint(tmp_path / "ckpt", drop=drop, **overrides)
    assert refused(directory) == reason
    with pytest.raises(BadCheckpoint, match="schema_version"):  # never taken for a teacher either
        loop.load_teacher(student_settings(directory), task(), CPU, SWEEP_FILES)


def test_every_wrong_type_is_named_at_once(tmp_path):
    directory = write_checkpoint(tmp_path / "ckpt", arch=1, kwargs=None, num_classes=None, input_shape=None)
    assert refused(directory).count("input should be") == 4


@pytest.mark.parametrize(
    "arch, kwargs, reason",
    [
        ("cnn", {"width": -3}, "{'width': -3}: width -3 is not allowed: Input should be greater than or equal to 1"),
        ("mlp", {"dropout": 1.0}, "dropout 1.0 is not allowed: Input should be less than 1"),
        ("wrn", {"depth": -2}, "depth -2 is not allowed"),
        ("cnn", {"width": "wide"}, ""),  # TypeError from inside torch
        ("cnn", {"height": 3}, "small_cnn() got an unexpected keyword argument 'height'"),
        ("cnn", {"num_classes": 3}, "got multiple values for keyword argument 'num_classes'"),
        ("wrn", {"depth": 27}, "wrn depth must be 6n + 4"),
        ("preact_resnet", {"block": "huge"}, "block 'huge' is not allowed: Input should be 'basic' or 'bottleneck'"),
        ("cnn", {"width": 10**30}, ""),  # torch cannot even represent the size
    ],
)
def test_kwargs_that_cannot_build_the_model_are_a_bad_checkpoint(tmp_path, arch, kwargs, reason):
    directory = write_checkpoint(tmp_path / "ckpt", arch=arch, kwargs=kwargs)
    message = refused(directory)
    assert message.startswith(f"arch {arch!r} cannot be built with its metadata's kwargs "), message
    assert reason in message


@pytest.mark.parametrize(
    "arch, kwargs",
    [("cnn", {"width": 10**6}), ("wrn", {"depth": 16, "widen_factor": 10**4}), ("lstm_lm", {"hidden": 10**6}),
     ("mlp", {"hidden": 10**5, "depth": 300}), ("densenet_bc", {"growth_rate": 10**5})],
)
def test_kwargs_for_an_absurdly_large_model_are_refused_before_allocating(tmp_path, monkeypatch, arch, kwargs):
    devices = []
    builder = MODELS[arch]

    def spy(**arguments):
        model = builder(**arguments)
        devices.append(next(model.parameters()).device.type)
        return model

    directory = write_checkpoint(tmp_path / "ckpt", arch=arch, kwargs=kwargs)
    monkeypatch.setitem(MODELS._entries, arch, spy)
    message = refused(directory)
    assert re.search(r": too large: [\d,]+ parameters, over the cap of 2,000,000,000 \(MAX_PARAMETERS\)$", message)
    assert devices == ["meta"]  # built once, on the meta device, and never for real


# --- build_model -------------------------------------------------------------------------------------------


def test_build_model_refuses_too_many_parameters_naming_the_count_and_the_cap():
    with pytest.raises(ModelTooLarge) as large:
        build_model("cnn", num_classes=10, input_shape=(3, 32, 32), width=10**6)
    assert str(large.value) == (
        "model 'cnn' with kwargs {'width': 1000000} is too large: 18,000,353,000,010 parameters, over the cap of "
        "2,000,000,000 (MAX_PARAMETERS)"
    )
    assert isinstance(large.value, ValueError)  # what spec preflight catches


def test_build_model_stops_an_absurdly_deep_build_early(monkeypatch):
    monkeypatch.setattr(registry, "MAX_PARAMETER_TENSORS", 200)
    with pytest.raises(ModelTooLarge, match="it creates more than 200 parameter tensors, over the cap of 200"):
        build_model("mlp", num_classes=10, input_shape=(1, 8, 8), hidden=1, depth=10**12)
    with pytest.raises(ModelTooLarge, match="more than 200 parameter tensors"):
        build_model("wrn", num_classes=10, input_shape=(3, 32, 32), depth=6 * 10**12 + 4, widen_factor=1)
    # Only the meta build counts: the real build of a model under the cap does not add its tensors to it.
    assert len(list(build_model("mlp", num_classes=10, input_shape=(1, 8, 8), depth=90).parameters())) == 182


def test_build_model_turns_any_error_of_a_builder_into_a_value_error(monkeypatch):
    def explodes(*, num_classes, input_shape, how="runtime"):
        raise {"runtime": RuntimeError("out of cheese\nand more"), "key": KeyError("conv9")}[how]

    monkeypatch.setitem(MODELS._entries, "explodes", explodes)
    with pytest.raises(ModelBuildError) as failed:
        build_model("explodes", num_classes=2, input_shape=(1,))
    assert str(failed.value) == "model 'explodes' with kwargs {} cannot be built: RuntimeError: out of cheese"
    with pytest.raises(ModelBuildError, match=r"cannot be built: KeyError: 'conv9'"):
        build_model("explodes", num_classes=2, input_shape=(1,), how="key")
    with pytest.raises(ModelBuildError, match="IndexError"):  # input_shape too short for a CNN
        build_model("cnn", num_classes=2, input_shape=())
    with pytest.raises(TypeError):  # the builder's own TypeErrors and ValueErrors pass unchanged
        build_model("explodes", num_classes=2, input_shape=(1,), colour="red")
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        build_model("nope", num_classes=2, input_shape=(1,))


@pytest.mark.parametrize(
    "arch, num_classes, input_shape, kwargs",
    [
        ("cnn", 4, (1, 8, 8), {"width": 8}),
        ("mlp", 4, (1, 8, 8), {"hidden": 16, "dropout": 0.1}),
        ("densenet_bc", 10, (3, 32, 32), {"depth": 16, "growth_rate": 6}),
        ("wrn", 10, (3, 32, 32), {"depth": 10, "widen_factor": 2}),
        ("preact_resnet", 10, (3, 32, 32), {"depth": 11}),
        ("preact_resnet", 10, (3, 32, 32), {"depth": 8, "block": "basic", "width": 0.5}),
        ("lstm_lm", 50, (5,), {"hidden": 16, "layers": 2}),
        ("lstm_lm", 50, (5,), {"hidden": 16, "tie_weights": False}),
    ],
)
def test_the_meta_build_changes_nothing_about_the_model(arch, num_classes, input_shape, kwargs):
    """Same weights for the same seed as the builder alone (the meta build draws no random numbers), real
    tensors, and the count of the meta build is the model's (tied weights once)."""
    torch.manual_seed(3)
    direct = MODELS[arch](num_classes=num_classes, input_shape=input_shape, **kwargs)
    torch.manual_seed(3)
    built = build_model(arch, num_classes=num_classes, input_shape=input_shape, **kwargs)
    assert type(built) is type(direct)
    expected, actual = direct.state_dict(), built.state_dict()
    assert list(actual) == list(expected)
    assert all(actual[k].device == CPU and torch.equal(actual[k], expected[k]) for k in expected)
    assert count_parameters(arch, num_classes=num_classes, input_shape=input_shape, **kwargs) == sum(
        p.numel() for p in built.parameters()
    )
    if arch == "lstm_lm":
        output, _ = built(torch.zeros(5, 2, dtype=torch.long))
        assert output.shape == (5, 2, num_classes)


# --- which teacher -----------------------------------------------------------------------------------------


def test_a_teacher_of_another_arch_than_the_spec_is_refused(tmp_path):
    directory = save_model(tmp_path / "mlp", "mlp", {"hidden": 16})
    with pytest.raises(TeacherMismatch) as mismatch:
        loop.load_teacher(student_settings(directory), task(), CPU, SWEEP_FILES)
    assert str(mismatch.value) == (
        f"checkpoint {directory}: its metadata has arch='mlp', expected 'cnn': "
        "it is not the teacher this generation was planned with"
    )


def test_a_teacher_with_other_kwargs_than_the_spec_is_refused(tmp_path):
    directory = save_model(tmp_path / "wide", "cnn", {"width": 16})
    with pytest.raises(TeacherMismatch, match=r"its metadata has kwargs=\{'width': 16\}, expected \{'width': 8\}"):
        loop.load_teacher(student_settings(directory), task(), CPU, SWEEP_FILES)


@pytest.mark.parametrize(
    "field, value",
    [("revision", 2), ("split_hash", "0123456789abcdef"), ("arch", "mlp"), ("dataset", "digits")],
)
def test_a_teacher_of_another_model_revision_split_or_arch_is_refused_naming_the_field(tmp_path, field, value):
    directory = write_checkpoint(tmp_path / "ckpt", **{field: value})
    with pytest.raises(TeacherMismatch) as mismatch:
        loop.load_teacher(student_settings(directory), task(), CPU, SWEEP_FILES)
    assert str(mismatch.value) == (
        f"checkpoint {directory}: its metadata has {field}={value!r}, expected {metadata()[field]!r}: "
        "it is not the teacher this generation was planned with"
    )


def test_a_checkpoint_made_by_older_model_code_is_not_taken_for_the_current_model(tmp_path, monkeypatch):
    directory = write_checkpoint(tmp_path / "ckpt")  # cnn at revision 1
    monkeypatch.setitem(MODELS._revisions, "cnn", 2)  # the cnn's code changed what it computes since
    with pytest.raises(TeacherMismatch, match=r": its metadata has revision=1, expected 2: it is not the teacher"):
        loop.load_teacher(student_settings(directory), task(), CPU, SWEEP_FILES)
    assert refused(directory) == (  # nor loaded for anything else
        "its metadata has revision=1, but the code of arch 'cnn' is at revision 2: it computes another function "
        "than the one these weights were trained as"
    )


def test_a_teacher_trained_on_another_split_of_the_same_data_is_refused(tmp_path):
    """Chain 1 draws its own split: chain 0's students must not take chain 1's teacher, and the split hash,
    not only the chain number, says so."""
    other_split = make_task(SPEC.chain_data(1), SPEC.train).split_hash
    assert other_split != task().split_hash
    directory = write_checkpoint(tmp_path / "ckpt", split_hash=other_split)
    with pytest.raises(TeacherMismatch, match=f"its metadata has split_hash='{other_split}', expected "):
        loop.load_teacher(student_settings(directory), task(), CPU, SWEEP_FILES)


def test_the_teacher_the_spec_plans_is_accepted(tmp_path):
    assert SPEC.model.kwargs == {"width": 8}
    settings = student_settings(write_checkpoint(tmp_path / "ckpt"))
    teacher, [meta] = loop.load_teacher(settings, task(), CPU, SWEEP_FILES)
    assert meta.kwargs == {"width": 8} and not any(p.requires_grad for p in teacher.parameters())


def test_expected_kwargs_are_compared_as_json(tmp_path):
    directory = write_checkpoint(tmp_path / "ckpt", kwargs={"width": 8, "dropout": 0.0})
    checkpoint.load(directory, expected=identity(kwargs={"dropout": 0, "width": 8}))


# --- object storage ----------------------------------------------------------------------------------------


def _upload(local: str, uri: str) -> None:
    fs, path = pafs.FileSystem.from_uri(uri)
    pafs.copy_files(local, path, destination_filesystem=fs)


def test_checkpoints_in_object_storage_fail_fast_when_broken_and_retry_when_unreachable(
    s3_endpoint, tmp_path, monkeypatch
):
    good = "s3://banray/checkpoints-test/good"
    _upload(write_checkpoint(tmp_path / "good"), good)
    model, meta = checkpoint.load(good, storage=SWEEP_FILES)
    assert meta.arch == "cnn" and model(torch.zeros(1, 1, 8, 8)).shape == (1, 4)

    truncated = write_checkpoint(tmp_path / "truncated")
    _truncate(weights(truncated))
    _upload(truncated, "s3://banray/checkpoints-test/truncated")
    with pytest.raises(BadCheckpoint, match=r"^checkpoint s3://banray/checkpoints-test/truncated: model\.pt \("):
        checkpoint.load("s3://banray/checkpoints-test/truncated", storage=SWEEP_FILES)

    listed = write_checkpoint(tmp_path / "list")
    (pathlib.Path(listed) / checkpoint.METADATA_FILE).write_text(json.dumps([1, 2]))
    _upload(listed, "s3://banray/checkpoints-test/list")
    with pytest.raises(BadCheckpoint, match="is a JSON list, not an object"):
        checkpoint.load("s3://banray/checkpoints-test/list", storage=SWEEP_FILES)

    # Storage that does not answer is an outage: retried for the budget, then StorageUnavailable.
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("BANRAY_STORAGE_RETRY_S", "1")
    settings = student_settings(good)
    with pytest.raises(StorageUnavailable, match=f"storage: loading teacher {good} kept failing for 1 s"):
        loop.load_teacher(settings, task(), CPU, SWEEP_FILES)


def test_a_damaged_resume_checkpoint_is_refused_at_once(tmp_path):
    """A trial restarting from its own latest checkpoint gets a BadCheckpoint for a truncated state file."""
    folder = tmp_path / "latest"
    folder.mkdir()
    torch.save({"w": torch.zeros(2)}, folder / checkpoint.WEIGHTS_FILE)
    torch.save({"epoch": 3}, folder / checkpoint.TRAINING_STATE_FILE)
    weights, state = loop.load_latest(str(folder), LOCAL)
    assert state == {"epoch": 3} and torch.equal(weights["w"], torch.zeros(2))

    data = (folder / checkpoint.TRAINING_STATE_FILE).read_bytes()
    (folder / checkpoint.TRAINING_STATE_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(BadCheckpoint, match=r"training_state\.pt \(\d+ bytes\) is not a readable torch.save file"):
        loop.load_latest(str(folder), LOCAL)
