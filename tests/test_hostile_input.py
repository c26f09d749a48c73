"""The second round of bad input, as a hostile new user would type it, through the real command line: every
case exits 2 with exactly one line on stderr naming the file or the field, prints nothing on stdout, starts
no Ray, and leaves every file as it was (nothing written, nothing deleted, nothing changed).

Classes: the spec reader's bounds (size, aliases, depth, encoding, duplicate keys); booleans, infinities
and absurd values where numbers belong; search ranges that cannot fit their field; storage roots, given in
the spec or with --storage; sweep folders that are not banray's own or not this user's; state and report
files that --resume cannot read. Then the classes of issue 31, each a generator of cases run through the
command in its own process: characters YAML's reader refuses and YAML syntax errors (line and column),
mistyped URIs, numbers a run cannot honour, every builder's arguments just outside the ranges it declares,
storage paths the OS refuses, URIs given as options and a sweep folder's unreadable spec.yaml. Checkpoints
are covered in tests/test_checkpoints.py, `plan` and `promote` in tests/test_look_only.py."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from conftest import one_error_line, tiny_spec
from test_bad_input import TMP, substitute  # the same placeholder for the test's folder

from banray.commands.cli import cli
from banray.spec import MAX_SPEC_BYTES, SEED_MAX, parse_spec
from banray.sweep import start as sweep



def case(spec, *expected: str, args=(), stage="spec", setup=None, id: str):
    """A spec (dict, YAML text or bytes), the texts its one error line must hold, extra `sweep` arguments,
    the stage that refuses it ("spec": `validate` too; "start": `sweep` only) and a setup of the folder."""
    return pytest.param(spec, expected, tuple(args), stage, setup, id=id)


def with_value(dotted: str, value) -> dict:
    parts = dotted.split(".")
    spec = tiny_spec()
    if len(parts) == 1:
        return {**spec, parts[0]: value}
    section = {**spec.get(parts[0], {}), parts[1]: value}
    return {**spec, parts[0]: section}


# Every number of the spec.
NUMBERS = [
    "seed", "generations", "chains",
    "train.epochs", "train.batch_size", "train.lr", "train.momentum", "train.weight_decay",
    "train.lr_gamma", "train.lr_plateau_threshold", "train.grad_clip", "train.bptt",
    "distill.alpha", "distill.temperature", "distill.teacher_weight", "distill.label_weight",
    "distill.cache_top_k", "data.val_fraction", "data.seed",
    "search.trials", "search.grace_period", "search.reduction_factor",
    "resources.workers_per_trial", "resources.cpus_per_worker", "resources.gpus_per_worker",
    "resources.max_failures", "chain_stop.min_improvement",
]
INTEGERS = {"seed", "generations", "chains", "train.epochs", "train.batch_size", "train.bptt", "distill.cache_top_k",
            "data.seed", "search.trials", "search.grace_period", "search.reduction_factor",
            "resources.workers_per_trial", "resources.max_failures"}
NOT_NUMBERS = {True: "give a number, not true or false", False: "give a number, not true or false",
               float("inf"): "finite number", float("-inf"): "", float("nan"): ""}


def number_cases():
    for dotted in NUMBERS:
        for value, reason in NOT_NUMBERS.items():
            if dotted in INTEGERS and not isinstance(value, bool):
                reason = "finite number" if value == value and value > 0 else ""
            name = {True: "true", False: "false"}.get(value, repr(value))
            yield case(with_value(dotted, value), f"{dotted}: {value!r} is not allowed", reason,
                       id=f"{dotted}-{name}")


# Values that can only be a slip of the keyboard, and the bound that refuses them.
ABSURD = {
    "train.epochs": (10**7, "less than or equal to 10000"),
    "generations": (10**5, "less than or equal to 100"),
    "chains": (10**6, "less than or equal to 1000"),
    "search.trials": (10**8, "less than or equal to 10000"),
    "train.batch_size": (10**12, "less than or equal to 1048576"),
    "train.bptt": (10**9, "less than or equal to 10000"),
    "data.seed": (SEED_MAX + 1, f"less than or equal to {SEED_MAX}"),
    "seed": (2**64, f"less than or equal to {SEED_MAX}"),
    "resources.workers_per_trial": (10**6, "less than or equal to 4096"),
    "resources.cpus_per_worker": (1e9, "less than or equal to 1024"),
    "resources.gpus_per_worker": (10**4, "less than or equal to 64"),
    "resources.max_failures": (10**9, "less than or equal to 1000"),
    "search.reduction_factor": (10**6, "less than or equal to 100"),
    "data.seed-negative": (-1, "greater than or equal to 0"),
    "seed-negative": (-5, "greater than or equal to 0"),
}


def absurd_cases():
    for key, (value, reason) in ABSURD.items():
        dotted = key.removesuffix("-negative")
        yield case(with_value(dotted, value), f"{dotted}: {value!r} is not allowed", reason, id=f"{key}-absurd")


SEARCHABLE_FLOATS = ["train.lr", "train.momentum", "train.weight_decay", "train.lr_gamma",
                     "train.lr_plateau_threshold", "train.grad_clip", "distill.alpha", "distill.temperature",
                     "distill.teacher_weight", "distill.label_weight"]


def range_cases():
    for dotted in SEARCHABLE_FLOATS:
        field = dotted.split(".")[1]
        yield case(with_value(dotted, {"uniform": [0.1, float("inf")]}), f"{dotted}.uniform.1: inf is not allowed",
                   "finite number", id=f"{dotted}-range-to-inf")
        yield case(with_value(dotted, {"loguniform": [float("-inf"), 0.5]}), f"{dotted}.loguniform.0: -inf",
                   id=f"{dotted}-logrange-from-minus-inf")
        yield case(with_value(dotted, {"uniform": [True, 0.5]}), f"{dotted}.uniform.0: True is not allowed",
                   "not true or false", id=f"{dotted}-range-bound-true")
        yield case(with_value(dotted, {"uniform": [0.1, float("nan")]}), f"{dotted}.uniform.1: nan is not allowed",
                   id=f"{dotted}-range-to-nan")
        yield case(with_value(dotted, {"choice": [0.1, float("inf")]}), f"{field}: the range's value inf is not allowed",
                   id=f"{dotted}-choice-inf")
    for kind in ("uniform", "loguniform"):
        yield case(with_value("train.batch_size", {kind: [64, 256]}),
                   f"train: batch_size: a {kind} range is not allowed: batch_size takes whole numbers; use integer: "
                   "[64, 256]", id=f"batch-size-{kind}-range")
    for bounds, expected in (([64, float("inf")], "train.batch_size.integer.1: inf is not allowed"),
                             ([True, 64], "train.batch_size.integer.0: True is not allowed"),
                             ([16.5, 64], "train.batch_size.integer.0: 16.5 is not allowed"),
                             ([0, 64], "batch_size: the range's value 0 is not allowed"),
                             ([64, 10**9], "batch_size: the range's value 1000000000 is not allowed")):
        yield case(with_value("train.batch_size", {"integer": bounds}), expected, id=f"batch-size-integer-{bounds}")
    for choices, expected in (([32, True], "batch_size: the range's value True is not allowed"),
                              ([32, 48.5], "batch_size: the range's value 48.5 is not allowed"),
                              ([], "train.batch_size.choice: [] is not allowed")):
        yield case(with_value("train.batch_size", {"choice": choices}), expected, id=f"batch-size-choice-{choices}")
    yield case(with_value("train.lr_milestones", [1, float("inf")]), "train.lr_milestones.1: inf is not allowed",
               id="milestone-inf")
    yield case(with_value("train.lr_milestones", [True]), "train.lr_milestones.0: True is not allowed",
               id="milestone-true")


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi")
)


def reader_cases():
    base = yaml.safe_dump(tiny_spec(), sort_keys=False)
    yield case(BOMB, "not a spec: it holds more than 10,000 values (each use of an alias counts again)",
               id="alias-bomb")
    yield case(base + "extra: &e [" + ", ".join(["*e"]) + "]\n", "not", id="recursive-alias")
    yield case(base + "x: " + "[" * 100 + "]" * 100 + "\n", "not a spec: it is nested more than 32 levels deep",
               id="nested-lists")
    yield case(base + "x:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 60)) + "  " * 60 + "v: 1\n",
               "not a spec: it is nested more than 32 levels deep", id="nested-mappings")
    yield case(base + "x: " + "[" * 20000 + "]" * 20000 + "\n", "levels deep", id="nested-beyond-recursion")
    yield case(base + "# " + "x" * MAX_SPEC_BYTES + "\n", "not a spec: larger than 1 MiB", id="too-large")
    yield case(base.encode() + b"name: caf\xe9\n", "not UTF-8 text: byte 0xe9 at offset", id="latin-1")
    yield case(b"\xff\xfe" + "name: x\n".encode("utf-16-le"), "not UTF-8 text: byte 0xff at offset 0", id="utf-16")
    yield case(b"\x00\x01\x02binary\x80", "not UTF-8 text", id="binary")
    yield case(base + "name: other\n", "not valid YAML at line", "duplicate key 'name' (first given at line 1)",
               id="duplicate-name")
    yield case(base.replace("  epochs: 2\n", "  epochs: 2\n  epochs: 200\n"), "duplicate key 'epochs'",
               id="duplicate-epochs")
    yield case(base.replace("    width: 8\n", "    width: 8\n    width: 64\n"), "duplicate key 'width'",
               id="duplicate-kwarg")
    yield case(base + "storage: runs\nstorage: /\n", "duplicate key 'storage' (first given at line", id="duplicate-storage")
    yield case("name: x\n!!python/object/apply:os.system [echo pwned]: 1\n", "not valid YAML", id="python-tag")
    yield case("!!python/object/apply:os.system\n- touch pwned\n", "not valid YAML", id="python-tag-document")
    yield case("a: 1\n---\nb: 2\n", "not valid YAML", id="two-documents")
    yield case(with_value("name", "x" * 5000), "name: 'xxxxxxxx", "… is not allowed", id="long-name-is-cut")
    yield case(with_value("model", "y" * 10_000), "model: 'yyyy", "… is not allowed: give a mapping",
               id="long-section-is-cut")
    yield case(with_value("train.lr", ["z" * 3000]), "train.lr: ['zzz", "… is not allowed", id="long-list-is-cut")


def storage_cases():
    bad = {
        "gs": ("gs://bucket/x", "not gs://"),
        "s3-empty": ("s3://", "needs a bucket"),
        "s3-no-bucket": ("s3:///prefix", "needs a bucket"),
        "s3-uppercase-bucket": ("s3://My_Bucket/x", "'My_Bucket' is not an S3 bucket name"),
        "s3-short-bucket": ("s3://ab/x", "'ab' is not an S3 bucket name"),
        "s3-dotdot": ("s3://bucket/a/../b", "cannot hold empty, '.' or '..' parts"),
        "s3-double-slash": ("s3://bucket//x", "cannot hold empty"),
        "no-such-user": ("~nosuchuser-banray/runs", "there is no user 'nosuchuser-banray'"),
        "newline": ("runs\nrm -rf", "cannot hold control characters"),
        "nul": ("runs\x00x", "cannot hold control characters"),
        "http": ("http://example.com/x", "not http://"),
        "file-scheme": ("file:///tmp/x", "not file://"),
    }
    for name, (value, reason) in bad.items():
        yield case(with_value("storage", value), f"storage: {value!r} is not allowed", reason, id=f"storage-{name}")
        yield case(tiny_spec(), f"--storage: {value!r} is not allowed", reason, args=["--storage", value],
                   stage="start", id=f"--storage-{name}")
    yield case(with_value("storage", ""), "storage: '' is not allowed", id="storage-empty")
    yield case(tiny_spec(), "storage: cannot reach", "is a file, not a folder", args=["--storage", f"{TMP}/a-file"],
               stage="start", setup=lambda tmp: (tmp / "a-file").write_text("mine"), id="storage-is-a-file")
    yield case(tiny_spec(), "storage: cannot reach", "is a file, not a folder",
               args=["--storage", f"{TMP}/a-file/deeper"], stage="start",
               setup=lambda tmp: (tmp / "a-file").write_text("mine"), id="storage-below-a-file")
    yield case(tiny_spec(), "is a file, not a folder", args=["--storage", f"{TMP}/runs"], stage="start",
               setup=lambda tmp: ((tmp / "runs").mkdir(), (tmp / "runs" / "tiny").write_text("mine")),
               id="sweep-folder-is-a-file")


def user_files(tmp: Path) -> None:
    (tmp / "runs" / "tiny" / "thesis").mkdir(parents=True)
    (tmp / "runs" / "tiny" / "thesis" / "chapter1.tex").write_text("years of work")


def earlier_sweep(tmp: Path, state=None, report=None) -> None:
    folder = tmp / "runs" / "tiny"
    folder.mkdir(parents=True)
    (folder / ".banray-sweep").write_text('{"banray_sweep": "tiny"}')
    (folder / "spec.yaml").write_text(yaml.safe_dump(tiny_spec()))
    if state is not None:
        (folder / "state.json").write_bytes(state if isinstance(state, bytes) else json.dumps(state).encode())
    if report is not None:
        (folder / "report.json").write_bytes(report)


def owned_by_someone_else(tmp: Path) -> None:
    earlier_sweep(tmp, state={"spec_hash": "x", "finished": False, "chains": {}})
    os.chown(tmp / "runs" / "tiny", 54321, -1)


def state_of(**overrides):
    spec_hash = parse_spec({**tiny_spec(), "storage": "x"}).spec_hash()
    return {"sweep": "tiny", "spec_hash": spec_hash, "finished": False, "chains": {}, **overrides}


def folder_cases():
    not_a_sweep = "already exists and it holds files that are not a banray sweep's"
    for flags in ([], ["--overwrite"], ["--resume"], ["--start-or-resume"]):
        yield case(tiny_spec(), not_a_sweep, "will not write into it or delete it", args=flags, stage="start",
                   setup=user_files, id=f"user-files{''.join(flags)}")
    yield case(tiny_spec(), not_a_sweep, args=["--overwrite"], stage="start",
               setup=lambda tmp: ((tmp / "runs" / "tiny").mkdir(parents=True),
                                  (tmp / "runs" / "tiny" / "spec.yaml").write_text("name: x\n")),
               id="only-a-spec-yaml")
    yield case(tiny_spec(), not_a_sweep, args=["--overwrite"], stage="start",
               setup=lambda tmp: ((tmp / "runs" / "tiny").mkdir(parents=True),
                                  (tmp / "runs" / "tiny" / "state.json").write_text("{}")),
               id="only-a-state-json")
    yield case(tiny_spec(), "already holds a sweep named like this one", "--overwrite to replace it", stage="start",
               setup=lambda tmp: earlier_sweep(tmp, state=state_of()), id="earlier-sweep-without-overwrite")
    if os.getuid() == 0:  # only root can hand a folder to another user
        yield case(tiny_spec(), "it belongs to another user", args=["--overwrite"], stage="start",
                   setup=owned_by_someone_else, id="someone-elses-sweep")
    unreadable = {
        "not-json": b"{not json",
        "empty": b"",
        "binary": b"\x80\x81\x82",
        "a-list": b"[1, 2]",
        "a-string": b'"state"',
        "no-chains": json.dumps({"spec_hash": "x", "finished": False}).encode(),
        "chains-a-list": json.dumps(state_of(chains=[1])).encode(),
        "chain-not-a-mapping": json.dumps(state_of(chains={"0": 5})).encode(),
        "record-with-unknown-fields": json.dumps(state_of(chains={"0": {
            "stopped": None, "running": None, "arms": {}, "arms_running": {},
            "generations": [{"bogus": 1}]}})).encode(),
        "chain-key-not-a-number": json.dumps(state_of(chains={"zero": {
            "stopped": None, "running": None, "arms": {}, "arms_running": {},
            "generations": []}})).encode(),
    }
    for name, data in unreadable.items():
        yield case(tiny_spec(), "--resume: ", "state.json is not a readable sweep state", "--overwrite",
                   args=["--resume"], stage="start", setup=lambda tmp, data=data: earlier_sweep(tmp, state=data),
                   id=f"state-{name}")
    yield case(tiny_spec(), "--resume: ", "ran a different spec (hash 0123456789abcdef", args=["--resume"],
               stage="start", setup=lambda tmp: earlier_sweep(tmp, state=state_of(spec_hash="0123456789abcdef")),
               id="state-of-another-spec")
    yield case(tiny_spec(), "--resume: ", "holds no sweep state", args=["--resume"], stage="start",
               setup=lambda tmp: earlier_sweep(tmp), id="no-state")
    for name, data in {"not-json": b"{", "a-list": b"[]", "binary": b"\xff"}.items():
        yield case(tiny_spec(), "has finished, but its report.json is not readable", args=["--resume"],
                   stage="start", id=f"finished-report-{name}",
                   setup=lambda tmp, data=data: earlier_sweep(tmp, state=state_of(finished=True), report=data))
    yield case(tiny_spec(), "--resume and --overwrite: pick one", args=["--resume", "--overwrite"], stage="start",
               id="resume-and-overwrite")
    yield case(tiny_spec(), "--resume and --start-or-resume: pick one", args=["--resume", "--start-or-resume"],
               stage="start", id="resume-and-start-or-resume")


def value_cases():
    yield case(with_value("data.val_fraction", 0.001), "data.val_fraction: 0.001 is not allowed",
               "each of its 4 classes must be in both the validation and the training split; allowed: 0.0084 to 0.9916",
               stage="start", id="val-fraction-too-small-for-the-classes")
    yield case(with_value("data.val_fraction", 0.999), "data.val_fraction: 0.999 is not allowed", stage="start",
               id="val-fraction-leaves-too-few-for-training")
    yield case({**tiny_spec(), "data": {"dataset": "digits", "val_fraction": 0.005}},
               "data.val_fraction: 0.005 is not allowed", "of digits", stage="start", id="digits-val-fraction")
    yield case(with_value("data.val_fraction", "0.2.1"), "data.val_fraction: '0.2.1' is not allowed",
               id="val-fraction-two-dots")
    yield case(with_value("train.lr", "1e999"), "train.lr: '1e999' is not allowed", "finite", id="lr-overflows")
    yield case(with_value("train.epochs", "1e3"), "train.epochs: '1e3' is not allowed", id="epochs-in-e-notation")
    yield case(with_value("train.epochs", 2.5), "train.epochs: 2.5 is not allowed", id="epochs-fraction")
    yield case(with_value("chains", "many"), "chains: 'many' is not allowed", id="chains-word")
    yield case(with_value("data.dataset", 7), "data.dataset: 7 is not allowed", id="dataset-number")
    yield case(with_value("data.dataset", ["digits"]), "data.dataset: ['digits'] is not allowed", id="dataset-list")
    yield case(with_value("name", "../../etc"), "name: '../../etc' is not allowed", id="name-path-traversal")
    yield case(with_value("name", "."), "name: '.' is not allowed", id="name-dot")
    yield case(with_value("name", ""), "name: '' is not allowed", id="name-empty")
    yield case(with_value("name", True), "name: True is not allowed", id="name-boolean")
    yield case(with_value("model.kwargs", {"width": 10**7}), "model.kwargs: cnn cannot be built with",
               "parameters", stage="start", id="model-absurdly-wide")
    yield case(with_value("model.kwargs", "width=8"), "model.kwargs: 'width=8' is not allowed", id="kwargs-string")
    for key, value in (("data.loader_workers", 4), ("data.pin_memory", "on")):  # settings of the old DataLoader
        yield case(with_value(key, value), f"{key}: this setting was removed", "remove it from the spec",
                   id=f"{key}-removed")


def kwargs_cases():
    from banray.catalog.models import MODELS, model_defaults

    wrong = {bool: [1, "yes"], int: [True, 2.5, float("inf"), "8"], float: [True, float("nan"), "0.1"], str: [3, True]}
    for arch in MODELS.names():
        for name, default in model_defaults(arch).items():
            for value in wrong.get(type(default), []):
                yield case({**tiny_spec(), "model": {"arch": arch, "kwargs": {name: value}}},
                           f"model.kwargs: {name}: {value!r} is not allowed for arch '{arch}'",
                           id=f"{arch}-{name}-{value!r}")


CASES = [*number_cases(), *absurd_cases(), *range_cases(), *reader_cases(), *storage_cases(), *folder_cases(),
         *value_cases(), *kwargs_cases()]


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every path below `folder` with its kind, owner, and contents' hash: what must not change."""
    found = {}
    for path in sorted(folder.rglob("*")):
        stat = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        found[str(path.relative_to(folder))] = (stat.st_mode, stat.st_uid, digest)
    return found


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def no_ray(*args, **kwargs):
        raise AssertionError("bad input started Ray")

    monkeypatch.setattr(sweep, "connect", no_ray)
    return tmp_path


def write_spec(spec, tmp: Path) -> Path:
    path = tmp / "spec.yaml"
    if isinstance(spec, dict):
        spec = yaml.safe_dump({"storage": str(tmp / "runs"), **substitute(spec, tmp)}, sort_keys=False)
    path.write_bytes(spec if isinstance(spec, bytes) else spec.encode())
    return path


def assert_one_line(result, expected, prefix: str, tmp: Path) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.stdout == "", result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(prefix), lines[0]
    assert len(lines[0]) < 1000, lines[0]  # long values are cut, never reprinted whole
    for text in expected:
        assert substitute(text, tmp) in lines[0], lines[0]


def test_the_table_has_250_cases_of_its_own():
    assert len(CASES) >= 250
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("spec, expected, args, stage, setup", CASES)
def test_hostile_input_exits_2_with_one_line_and_changes_nothing(workdir, spec, expected, args, stage, setup):
    path = write_spec(spec, workdir)
    if setup is not None:
        setup(workdir)
    before = snapshot(workdir)
    result = CliRunner().invoke(cli, ["sweep", str(path), *[substitute(a, workdir) for a in args]])
    assert_one_line(result, expected, f"error: {path}: " if stage == "spec" else "error: ", workdir)
    assert snapshot(workdir) == before
    if stage == "spec":  # `validate` reads the file only, and says the same
        validated = CliRunner().invoke(cli, ["validate", str(path)])
        assert (validated.exit_code, validated.stderr) == (2, result.stderr)
        assert snapshot(workdir) == before


@pytest.mark.parametrize(
    "args, expected",
    [
        (["promote", "x", "-g", "abc"], "error: Invalid value for '--generation' / '-g': 'abc' is not a valid integer"),
        (["sweep"], "error: Missing argument 'SPEC'. (see banray sweep --help)"),
        (["frobnicate"], "error: No such command 'frobnicate'. (see banray --help)"),
        (["sweep", "{spec}", "--bogus"], "error: No such option '--bogus'. (see banray sweep --help)"),
        (["plan", "{spec}", "--calibrate", "-3"], "error: Invalid value for '--calibrate'"),
        (["plan", "{spec}", "--detect", "0"], "error: Invalid value for '--detect'"),
        # A model torch warns about as it builds it (a transition compressed to zero channels): the warning is not
        # printed before the error.
        (["sweep", "{zero_width}"], "error: model: densenet_bc with {'compression': 0.01, 'depth': 10, 'growth_rate': "
                                    "1} cannot take synthetic's input of shape"),
    ],
    ids=["bad-option-value", "missing-argument", "unknown-command", "unknown-option", "negative-calibrate",
         "zero-detect", "torch-warning-before-the-error"],
)
def test_the_real_command_says_one_line(tmp_path, args, expected):
    """The installed entry point in its own process: click's usage errors and torch's warnings included."""

    spec = write_spec(tiny_spec(), tmp_path)
    zero_width = tmp_path / "zero.yaml"
    zero_width.write_text(yaml.safe_dump({**tiny_spec(), "storage": str(tmp_path / "runs"),
                                          "model": {"arch": "densenet_bc",
                                                    "kwargs": {"depth": 10, "growth_rate": 1, "compression": 0.01}}}))
    before = snapshot(tmp_path)
    args = [a.format(spec=spec, zero_width=zero_width) for a in args]
    done = subprocess.run([sys.executable, "-m", "banray", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, check=False)
    assert (done.returncode, done.stdout) == (2, "")
    (line,) = done.stderr.splitlines()
    assert line.startswith(expected), line
    assert snapshot(tmp_path) == before


# The classes of issue 31, each a generator of cases, through the real command in its own process: exit 2 (a
# failed `plan` check exits 1, as `plan` documents), exactly one line on stderr naming the file or the field,
# nothing on stdout, no traceback, and no file created, changed or removed.

SPEC_COMMANDS = ("validate", "plan", "sweep")  # the commands that read a spec file, all through one loader
FOLDER_COMMANDS = ("status", "ls", "report", "ui", "promote")  # the commands that read a sweep folder


def run_banray(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`python -m banray ARGS` in a fresh process. RAY_ADDRESS points nowhere: a refusal that came too late would
    fail to connect instead of starting a cluster; and a refusal taken for an outage fails at once, as one."""
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:9", "BANRAY_STORAGE_RETRY_S": "0"}
    return subprocess.run([sys.executable, "-m", "banray", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False, env=env)


def folder_command(command: str, location: str) -> list[str]:
    return ["promote", "tiny", "-g", "0", "--sweep-dir", location] if command == "promote" else [command, location]


def control_character_cases():
    """Every kind of character YAML's reader refuses, in a key, a value and a comment."""
    for code in (0x00, 0x01, 0x07, 0x08, 0x0B, 0x0C, 0x1B, 0x7F, 0xFFFE):
        char = chr(code)
        yield f"name: ti{char}ny\n", ["not valid YAML at line 1, column 9", f"character {code:#06x}"], f"value-{code:#x}"
        yield f"na{char}me: tiny\n", ["not valid YAML at line 1, column 3"], f"key-{code:#x}"
        yield f"name: tiny\n# a {char}\n", ["not valid YAML at line 2, column 5"], f"comment-{code:#x}"


def yaml_syntax_cases():
    """The scanner's, parser's and composer's errors: each names its line and column."""
    yield "name: tiny\ndata: [a, b\n", ["not valid YAML at line 3, column 1"], "unclosed-flow"
    yield "name: 'tiny\n", ["not valid YAML at line 2, column 1", "found unexpected end of stream"], "unclosed-quote"
    yield "name: tiny\n\tdata: x\n", ["not valid YAML at line 2, column 1", "cannot start any token"], "tab-indent"
    yield "a: b: c\n", ["not valid YAML at line 1, column 5", "mapping values are not allowed"], "nested-mapping"
    yield "name: *nope\n", ["not valid YAML at line 1, column 7", "undefined alias 'nope'"], "undefined-alias"
    yield "name: tiny\n  data: x\n", ["not valid YAML at line 2, column 7"], "bad-indent"
    yield "- a\nb: c\n", ["not valid YAML at line 2, column 1"], "sequence-then-mapping"
    yield "name: !!binary x\n", ["not valid YAML at line 1, column 7"], "bad-binary"
    yield "{a: 1, a: 2}\n", ["not valid YAML at line 1, column 8", "duplicate key 'a'"], "flow-duplicate"


def uri_cases():
    """Mistyped URIs where a local folder or a URL belongs: refused with what is allowed."""
    for value in ("s3:/bucket/x", "s3:bucket/x", "S3:/bucket", "gs:/b/x", "minio:runs", "c:runs"):
        yield with_value("storage", value), [f"storage: {value!r} is not allowed", "a URI needs '://'",
                                             "allowed: s3://bucket/prefix"], f"storage-{value}"
    urls = {"http://": "names no host", "http://:9000": "names no host", "http:/minio:9000": "not an http(s):// URL",
            "ftp://minio": "not an http(s):// URL", "minio:9000": "not an http(s):// URL",
            "http://minio:99999": "port is not one of 1-65535", "http://minio:0": "port is not one of 1-65535",
            "http://minio:x": "port is not one of 1-65535", "http://mi nio": "spaces or control characters"}
    for value, reason in urls.items():
        yield with_value("storage_endpoint", value), [f"storage_endpoint: {value!r} is not allowed", reason,
                                                      "give a URL: http://host:port"], f"endpoint-{value}"
    for value in ("http://", "http:/mlflow:5000", "https://:443", "http://mlflow:70000", "HTTP://"):
        yield with_value("tracking", {"uri": value}), [f"tracking.uri: {value!r} is not allowed",
                                                      "give a URL"], f"tracking-{value}"


def number_cases():
    """Numbers the run cannot honour: weights that make the objective constant or ignore the teacher, in values
    and in search ranges, resource requests finer than Ray's unit, names longer than MLflow keeps."""
    ignores, constant = "weighs its teacher term 0", "weighs every term 0: the loss is constant"
    distill = {
        "kd-alpha-0": ({"objective": "kd", "alpha": 0}, ignores),
        "ban+l-both-0": ({"objective": "ban+l", "teacher_weight": 0, "label_weight": 0}, constant),
        "ban+l-teacher-0": ({"objective": "ban+l", "teacher_weight": 0.0}, ignores),
        "ban_l-teacher-0": ({"objective": "ban_l", "teacher_weight": 0}, ignores),
        "ban+l-choice-only-0": ({"objective": "ban+l", "teacher_weight": {"choice": [0]}}, ignores),
        "ban+l-choice-with-0": ({"objective": "ban+l", "teacher_weight": {"choice": [0.5, 0]}}, ignores),
        "ban+l-range-from-0": ({"objective": "ban+l", "teacher_weight": {"uniform": [0, 1]}}, ignores),
        "ban+l-both-choices-0": ({"objective": "ban+l", "teacher_weight": {"choice": [0]},
                                  "label_weight": {"choice": [0]}}, constant),
        "kd-alpha-range-from-0": ({"objective": "kd", "alpha": {"uniform": [0, 0.5]}}, ignores),
        "objective-choice-kd-0": ({"objective": {"choice": ["ban", "kd"]}, "alpha": 0}, ignores),
    }
    for name, (section, reason) in distill.items():
        yield {**tiny_spec(), "distill": section}, ["distill", reason], name
    for field in ("cpus_per_worker", "gpus_per_worker"):
        for value in (0.00005, 1e-9, 0.33333, 1.00001):
            yield with_value(f"resources.{field}", value), [f"resources.{field}: {value!r} is not allowed",
                                                            "allowed: a multiple of 0.0001"], f"{field}-{value}"
    yield with_value("tracking", {"experiment": "e" * 257}), ["tracking.experiment: 'eeee", "at most 256"], \
        "experiment-257"
    yield with_value("name", "n" * 101), ["name: 'nnnn", "at most 100"], "sweep-name-101"


def outside(hint) -> list:
    """Values just outside the range a builder's argument annotation declares."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Literal:
        return ["bogus"]
    if typing.get_origin(hint) is typing.Union:
        return [v for a in args if a is not type(None) for v in outside(a)]
    values = []
    for constraint in (c for info in getattr(hint, "__metadata__", ()) for c in info.metadata):
        bound = getattr(constraint, type(constraint).__name__.lower())  # Ge(ge=1).ge
        whole = args[0] is int
        step = 1 if whole else 0.5
        values += {"Ge": [bound - step, -1 if bound >= 0 else bound - 2], "Gt": [bound, -step],
                   "Lt": [bound, bound + step], "Le": [bound + step]}[type(constraint).__name__]
    return sorted(set(values), key=str)


def model_argument_cases():
    """Each builder's arguments just outside the range it declares, found by asking the builder."""
    from banray.catalog.models import MODELS

    for arch in MODELS.names():
        for name, hint in typing.get_type_hints(MODELS[arch], include_extras=True).items():
            for value in outside(hint):
                yield ({**tiny_spec(), "model": {"arch": arch, "kwargs": {name: value}}},
                       [f"model.kwargs: {name}: {value!r} is not allowed for arch '{arch}'"], f"{arch}-{name}-{value}")


SPEC_CLASSES = {"control-characters": control_character_cases, "yaml-syntax": yaml_syntax_cases, "uris": uri_cases,
                "numbers": number_cases, "model-arguments": model_argument_cases}


def spec_file(spec, folder: Path, name: str) -> Path:
    """The case's spec file, its storage inside the test's folder unless the case sets its own."""
    path = folder / f"{name}.yaml"
    if isinstance(spec, dict):
        spec = yaml.safe_dump({"storage": str(folder / "runs"), **spec}, sort_keys=False)
    path.write_bytes(spec.encode("utf-8", "surrogatepass"))
    return path


def one_line(done, *expected: str) -> None:
    """A refused command's output: one short `error: ` line holding each of `expected`, and no traceback."""
    assert "Traceback" not in done.stdout, done.stdout
    assert len(one_error_line(done.stderr, *expected)) < 1000, done.stderr


@pytest.mark.parametrize("name", SPEC_CLASSES)
def test_every_case_of_a_spec_class_is_one_line_of_validate(tmp_path, name):
    """A class's specs, all in one `validate`: one line for each file, naming it."""
    cases = list(SPEC_CLASSES[name]())
    assert len({case_id for *_, case_id in cases}) == len(cases) >= 5
    files = {case_id: spec_file(spec, tmp_path, f"case{i}") for i, (spec, _, case_id) in enumerate(cases)}
    before = snapshot(tmp_path)
    done = run_banray(["validate", *map(str, files.values())], tmp_path)
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    for (spec, expected, case_id), path in zip(cases, files.values()):
        mine = [line for line in lines if line.startswith(f"error: {path}: ")]
        assert len(mine) == 1, (case_id, mine)
        assert len(mine[0]) < 1000, mine[0]
        for text in expected:
            assert text in mine[0], (case_id, mine[0])
    assert len(lines) == len(cases), done.stderr
    assert snapshot(tmp_path) == before


def first_cases():
    """Each spec class's first case through `plan` or `sweep`, in turn: they share `validate`'s loader."""
    for index, (name, cases) in enumerate(SPEC_CLASSES.items()):
        spec, expected, case_id = next(cases())
        command = ("plan", "sweep")[index % 2]
        yield pytest.param(command, spec, expected, id=f"{command}-{name}-{case_id}")


@pytest.mark.parametrize("command, spec, expected", list(first_cases()))
def test_plan_and_sweep_refuse_a_spec_class_as_validate_does(tmp_path, command, spec, expected):
    path = spec_file(spec, tmp_path, "spec")
    before = snapshot(tmp_path)
    done = run_banray([command, str(path)], tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    one_line(done, f"error: {path}: ", *expected)
    assert snapshot(tmp_path) == before


LONG_NAME = "n" * 300  # beyond the 255 bytes every common filesystem allows a name


def storage_path_cases():
    """Storage folders the OS refuses to create or list: each command says so in one line, naming the path."""
    refused = {
        "name-too-long": (f"{TMP}/{LONG_NAME}", "File name too long"),
        "path-too-long": (TMP + "/d" * 3000, "File name too long"),
        "below-proc": ("/proc/banray-no-such/runs", "No such file or directory"),
        "below-a-file": (f"{TMP}/a-file/runs", "Not a directory"),
    }
    for index, (name, (storage, reason)) in enumerate(refused.items()):
        checked = "is a file, not a folder" if name == "below-a-file" else reason  # seen before the OS is asked
        yield pytest.param(["sweep", "{spec}", "--storage", storage], ["error: storage: cannot ", checked], 2,
                           id=f"sweep-{name}")
        # `plan` prints the plan, then its storage check fails: exit 1, as for any failed check.
        yield pytest.param(["plan", "{spec}", "--storage", storage], ["error: storage: cannot write to ", reason], 1,
                           id=f"plan-{name}")
        # A folder that cannot exist is not found, or refused, in the OS's words.
        command = FOLDER_COMMANDS[index]
        named = storage[:len(TMP) + 2] if storage.startswith(TMP) else storage  # a long path is shortened
        yield pytest.param(folder_command(command, storage), ["error: ", named], 2, id=f"{command}-{name}")


def option_cases():
    """Mistyped URIs given on the command line."""
    for index, value in enumerate(("s3:/bucket/x", "minio:runs")):
        command = SPEC_COMMANDS[1 + index]
        yield pytest.param([command, "{spec}", "--storage", value], [f"error: --storage: {value!r} is not allowed",
                                                                    "a URI needs '://'"], 2, id=f"{command}-{value}")
    endpoints = ("http://", "http:/minio", "ftp://minio", "http://minio:99999", "minio:9000")
    for command, value in zip(FOLDER_COMMANDS, endpoints):  # each command, one kind of mistake each
        yield pytest.param([*folder_command(command, "{tmp}"), "--endpoint", value],
                           ["error: Invalid value for '--endpoint': ", "give a URL"], 2, id=f"{command}-endpoint-{value}")
    for command, value in (("promote", "http:/mlflow"), ("ui", "https://:1")):
        args = ["promote", "tiny", "-g", "0"] if command == "promote" else ["ui", "{tmp}"]
        yield pytest.param([*args, "--tracking-uri", value], ["error: Invalid value for '--tracking-uri': ",
                                                               "give a URL"], 2, id=f"{command}-tracking-{value}")


def stored_spec_cases():
    """A sweep folder whose spec.yaml the reader refuses: each command that reads one sweep (`ls` lists it as
    unreadable), one line."""
    for command, code in zip(("status", "report", "ui", "promote"), (0x00, 0x07, 0x1B, 0x7F)):
        yield pytest.param(folder_command(command, "{tmp}/runs/tiny"), code, id=f"{command}-spec-yaml-{code:#x}")


@pytest.mark.parametrize("args, code", list(stored_spec_cases()))
def test_a_sweep_folders_spec_yaml_the_reader_refuses_is_one_line(tmp_path, args, code):
    earlier_sweep(tmp_path, state=state_of(finished=True), report=b"{}")
    (tmp_path / "runs" / "tiny" / "spec.yaml").write_text(f"name: ti{chr(code)}ny\n")
    before = snapshot(tmp_path)
    done = run_banray([a.replace(TMP, str(tmp_path)) for a in args], tmp_path)
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    one_line(done, "spec.yaml: not valid YAML at line 1, column 9", f"character {code:#06x}")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("args, expected, status", [*storage_path_cases(), *option_cases()])
def test_commands_refuse_a_storage_or_uri_class_in_one_line(tmp_path, args, expected, status):
    (tmp_path / "a-file").write_text("mine")
    spec = spec_file(tiny_spec(), tmp_path, "spec")
    before = snapshot(tmp_path)
    done = run_banray([a.replace("{spec}", str(spec)).replace(TMP, str(tmp_path)) for a in args], tmp_path)
    assert done.returncode == status, done.stderr
    assert done.stdout == "" or args[0] == "plan", done.stdout  # plan prints the plan before its checks
    one_line(done, *[substitute(text, tmp_path) for text in expected])
    assert snapshot(tmp_path) == before
