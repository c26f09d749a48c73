"""Bad input, through the real command line: every malformed spec gets exit status 2 and one line naming
the file, the key and what is allowed; no traceback, and nothing is created on disk (no sweep folder, no
MLflow store) and no Ray is started."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from conftest import tiny_spec

from banray.commands.cli import cli
from banray.sweep import start as sweep

TMP = "{tmp}"  # stands for the test's tmp_path in a case's spec
MISSING = object()  # the case's spec file does not exist


def case(spec, *expected: str, stage: str = "spec", id: str):
    """A malformed spec (a dict, raw YAML text or MISSING), the texts its one error line must contain, and
    the stage that rejects it: "spec" (`validate` too) or "start" (`sweep` only, as it starts: the check
    needs the data, the model code or the cluster)."""
    return pytest.param(spec, expected, stage, id=id)


LM = {"data": {"dataset": "ptb", "root": f"{TMP}/data"}, "model": {"arch": "lstm_lm"}, "search": {"metric": "val_nll"}}

CASES = [
    # The file itself.
    case("name: x\ndata: [unclosed\n", "not valid YAML at line 3, column 1", id="yaml-syntax"),
    case("name: x\n  bad indent: 1\n", "not valid YAML at line 2", id="yaml-indentation"),
    case("- name: x\n- data: y\n", "the top level must be a mapping with keys name, seed, data", id="yaml-list"),
    case("just a string\n", "the top level must be a mapping with keys name, seed, data", id="yaml-scalar"),
    case("", "the spec is empty; give a mapping with keys name, seed, data", id="empty-file"),
    case("# only a comment\n", "the spec is empty", id="only-comments"),
    case(MISSING, "cannot read the spec: No such file or directory", id="missing-file"),
    # Keys.
    case(tiny_spec(epochs_total=3), "epochs_total: unknown key; allowed keys here: name, seed, data", id="unknown-key"),
    case(tiny_spec(**{"train.epoch": 3}), "train.epoch: unknown key; allowed keys here: epochs, batch_size",
         id="unknown-train-key"),
    case(tiny_spec(**{"distill.alpah": 0.3}), "distill.alpah: unknown key; allowed keys here: objective, alpha",
         id="unknown-distill-key"),
    case(tiny_spec(**{"train.lr": {"normal": [0.1, 0.2]}}),
         "train.lr.normal: unknown key; allowed keys here: uniform, loguniform, integer, choice", id="unknown-range-kind"),
    case({k: v for k, v in tiny_spec().items() if k != "train"}, "train: required key is missing", id="missing-train"),
    # Types.
    case(tiny_spec(**{"train.epochs": "ten"}), "train.epochs: 'ten' is not allowed: input should be a valid integer",
         id="epochs-string"),
    case(tiny_spec(**{"train.lr": [1]}), "train.lr: [1] is not allowed: input should be a valid number", id="lr-list"),
    case(tiny_spec(chains=1.5), "chains: 1.5 is not allowed: input should be a valid integer", id="chains-fraction"),
    case(tiny_spec(model="cnn"), "model: 'cnn' is not allowed: give a mapping with keys arch, kwargs", id="model-string"),
    case(tiny_spec(**{"train.nesterov": "maybe"}), "train.nesterov: 'maybe' is not allowed: input should be a valid boolean",
         id="nesterov-not-bool"),
    case(tiny_spec(name="my sweep"), "name: 'my sweep' is not allowed: string should match pattern", id="name-with-space"),
    # Impossible values.
    case(tiny_spec(**{"train.epochs": 0}), "train.epochs: 0 is not allowed: input should be greater than or equal to 1",
         id="epochs-0"),
    case(tiny_spec(**{"train.epochs": -3}), "train.epochs: -3 is not allowed: input should be greater than or equal to 1",
         id="epochs-negative"),
    case(tiny_spec(**{"train.batch_size": 0}), "train.batch_size: 0 is not allowed: input should be greater than or equal to 1",
         id="batch-size-0"),
    case(tiny_spec(**{"train.lr": 0}), "train.lr: 0 is not allowed: input should be greater than 0", id="lr-0"),
    case(tiny_spec(**{"train.lr": -0.1}), "train.lr: -0.1 is not allowed: input should be greater than 0", id="lr-negative"),
    case(tiny_spec(**{"train.momentum": 1.0}), "train.momentum: 1.0 is not allowed: input should be less than 1",
         id="momentum-1"),
    case(tiny_spec(**{"train.momentum": -0.5}), "train.momentum: -0.5 is not allowed: input should be greater than or equal to 0",
         id="momentum-negative"),
    case(tiny_spec(**{"distill.alpha": 1.5}), "distill.alpha: 1.5 is not allowed: input should be less than or equal to 1",
         id="alpha-above-1"),
    case(tiny_spec(**{"distill.alpha": -0.1}), "distill.alpha: -0.1 is not allowed: input should be greater than or equal to 0",
         id="alpha-negative"),
    case(tiny_spec(**{"distill.temperature": 0}), "distill.temperature: 0 is not allowed: input should be greater than 0",
         id="temperature-0"),
    case(tiny_spec(generations=0), "generations: 0 is not allowed: input should be greater than or equal to 1",
         id="generations-0"),
    case(tiny_spec(chains=0), "chains: 0 is not allowed: input should be greater than or equal to 1", id="chains-0"),
    case(tiny_spec(search={"trials": 0}), "search.trials: 0 is not allowed: input should be greater than or equal to 1",
         id="trials-0"),
    case(tiny_spec(**{"data.val_fraction": 0}), "data.val_fraction: 0 is not allowed: input should be greater than 0",
         id="val-fraction-0"),
    case(tiny_spec(**{"data.val_fraction": 1}), "data.val_fraction: 1 is not allowed: input should be less than 1",
         id="val-fraction-1"),
    case(tiny_spec(**{"resources.workers_per_trial": 0}),
         "resources.workers_per_trial: 0 is not allowed: input should be greater than or equal to 1", id="workers-0"),
    case(tiny_spec(search={"trials": 3, "grace_period": 5}),
         "search.grace_period: 5 is not allowed", "train.epochs is 2; allowed: 1..2, or search.early_stopping: off",
         id="grace-period-beyond-epochs"),
    # Names from the registries and closed lists.
    case(tiny_spec(**{"model.arch": "resnet9000"}),
         "model.arch: 'resnet9000' is not allowed: unknown model 'resnet9000'; allowed: cnn, cnn1d, densenet_bc, lstm_lm",
         id="unknown-arch"),
    case(tiny_spec(**{"data.dataset": "imagenet"}),
         "data.dataset: 'imagenet' is not allowed: unknown dataset 'imagenet'; allowed: cifar10, cifar100, digits",
         id="unknown-dataset"),
    case(tiny_spec(**{"distill.objective": "hinton"}),
         "distill.objective: 'hinton' is not allowed: unknown objective 'hinton'; allowed: ban, ban+l", id="unknown-objective"),
    case(tiny_spec(**{"train.optimizer": "lion"}),
         "train.optimizer: 'lion' is not allowed: input should be 'sgd', 'adam' or 'adamw'", id="unknown-optimizer"),
    case(tiny_spec(**{"train.lr_schedule": "linear"}),
         "train.lr_schedule: 'linear' is not allowed: input should be 'constant', 'cosine', 'step' or 'plateau'",
         id="unknown-lr-schedule"),
    case(tiny_spec(train={"epochs": 10, "lr_schedule": "step", "lr_milestones": [6, 3]}),
         "train: lr_milestones [6, 3] must be strictly increasing", id="milestones-decreasing"),
    case(tiny_spec(train={"epochs": 10, "lr_schedule": "step", "lr_milestones": [3, 3]}),
         "train: lr_milestones [3, 3] must be strictly increasing", id="milestones-repeated"),
    case(tiny_spec(**{"train.lr_milestones": [1, 5]}), "train: lr_milestones [5] lie outside 1..1 (epochs is 2)",
         id="milestone-beyond-epochs"),
    # Search ranges.
    case(tiny_spec(**{"train.lr": {"uniform": [0.2, 0.01]}}), "train.lr: a search range needs low < high; got [0.2, 0.01]",
         id="range-low-above-high"),
    case(tiny_spec(**{"train.lr": {"loguniform": [0, 0.1]}}), "train.lr: loguniform needs low > 0; got [0.0, 0.1]",
         id="loguniform-from-0"),
    case(tiny_spec(**{"train.epochs": {"integer": [1, 5]}}),
         "train.epochs: a search range or mapping is not allowed here; give a single value", id="range-on-epochs"),
    case(tiny_spec(**{"distill.alpha": {"uniform": [0.5, 1.5]}}),
         "distill: alpha: the range's value 1.5 is not allowed: input should be less than or equal to 1",
         id="range-outside-field"),
    # Storage.
    case(tiny_spec(storage="gs://bucket/sweeps"),
         "storage: 'gs://bucket/sweeps' is not allowed: use a local folder or an s3://bucket/prefix URI, not gs://",
         id="storage-gs"),
    case(tiny_spec(storage="ftp://host/sweeps"), "storage: 'ftp://host/sweeps' is not allowed", "not ftp://",
         id="storage-ftp"),
    case(tiny_spec(storage="s3://"), "storage: 's3://' is not allowed: an s3:// storage URI needs a bucket", id="s3-no-bucket"),
    case(tiny_spec(storage_endpoint="minio:9000"),
         "storage_endpoint: 'minio:9000' is not allowed: not an http(s):// URL; give a URL: http://host:port", id="endpoint-no-scheme"),
    # Models that cannot take the dataset's input.
    case(tiny_spec(data={"dataset": "digits"}, model={"arch": "lstm_lm"}),
         "model.arch 'lstm_lm' is a language_model model but data.dataset 'digits' is a classification dataset; "
         "allowed: cnn, cnn1d, densenet_bc, mlp, mlp1d, preact_resnet, resnet1d, wrn", id="language-model-on-digits"),
    case({**tiny_spec(), **LM, "student": {"arch": "cnn"}},
         "student.arch 'cnn' is a classification model but data.dataset 'ptb'", id="image-student-on-ptb"),
    case(tiny_spec(**{"model.kwargs": {"widht": 8}}),
         "model.kwargs: unknown argument 'widht' for arch 'cnn'; allowed: width, dropout", id="unknown-model-argument"),
    case(tiny_spec(model={"arch": "wrn", "kwargs": {"depth": 27, "widen_factor": 1}}),
         "model.kwargs: wrn cannot be built with {'depth': 27, 'widen_factor': 1}: wrn depth must be 6n + 4",
         stage="start", id="model-cannot-be-built"),
    case(tiny_spec(student={"arch": "preact_resnet", "kwargs": {"depth": 21}}),
         "student.kwargs: preact_resnet cannot be built with {'depth': 21}", stage="start",
         id="student-cannot-be-built"),
    case(tiny_spec(model={"arch": "resnet1d"}),
         "model: resnet1d with {} cannot take synthetic's input of shape (1, 8, 8)", stage="start",
         id="model-cannot-take-the-input"),
    # Data files.
    case(tiny_spec(data={"dataset": "cifar100", "root": f"{TMP}/data", "download": False}),
         f"data.root: cifar100 not found in {TMP}/data", "set data.download: true", "'cifar-100-python' folder",
         stage="start", id="cifar100-missing"),
    case({**tiny_spec(), **LM}, f"data.root: ptb.train.txt, ptb.valid.txt, ptb.test.txt not found in {TMP}/data",
         stage="start", id="ptb-missing"),
]


def substitute(value, tmp: Path):
    if isinstance(value, str):
        return value.replace(TMP, str(tmp))
    if isinstance(value, dict):
        return {k: substitute(v, tmp) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, tmp) for v in value]
    return value


def write_case(spec, tmp: Path) -> Path:
    """The case's spec file in `tmp`, with storage inside `tmp` unless the case sets its own; and an empty
    data folder, the `data.root` of the cases about missing files."""
    (tmp / "data").mkdir()
    path = tmp / "spec.yaml"
    if isinstance(spec, dict):
        spec = yaml.safe_dump({"storage": str(tmp / "runs"), **substitute(spec, tmp)}, sort_keys=False)
    if spec is not MISSING:
        path.write_text(spec)
    return path


def contents(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """tmp_path as the working directory, where a default `./runs` or `mlruns/` would appear; Ray must not
    be started for a bad spec."""
    monkeypatch.chdir(tmp_path)

    def no_ray(*args, **kwargs):
        raise AssertionError("a bad spec started Ray")

    monkeypatch.setattr(sweep, "connect", no_ray)
    return tmp_path


def error_prefix(path: Path, stage: str) -> str:
    """Errors found in the file name it; those found when the sweep starts name the key only."""
    return f"error: {path}: " if stage == "spec" else "error: "


def assert_one_error_line(output: str, prefix: str, expected, tmp: Path) -> None:
    assert "Traceback" not in output, output
    lines = output.splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith(prefix), lines[0]
    for text in expected:
        assert substitute(text, tmp) in lines[0], lines[0]


def test_the_table_is_large_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize("spec, expected, stage", CASES)
def test_bad_spec_exits_2_with_one_line_and_writes_nothing(workdir, spec, expected, stage):
    path = write_case(spec, workdir)
    before = contents(workdir)
    result = CliRunner().invoke(cli, ["sweep", str(path)])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert_one_error_line(result.output, error_prefix(path, stage), expected, workdir)
    assert contents(workdir) == before  # no sweep folder, no runs/, mlruns/ or mlflow.db

    validated = CliRunner().invoke(cli, ["validate", str(path)])
    if stage == "spec":
        assert (validated.exit_code, validated.output) == (2, result.output)
    else:  # validate checks the file only; the data and the model code are checked when the sweep starts
        assert validated.exit_code == 0, validated.output
    assert contents(workdir) == before


@pytest.mark.parametrize("case_id", ["epochs-0", "ptb-missing"])
def test_the_real_command_exits_2(tmp_path, case_id):
    """The installed entry point, in its own process: the exit status and the streams as a shell sees them."""
    spec, expected, stage = next(c.values for c in CASES if c.id == case_id)
    path = write_case(spec, tmp_path)
    before = contents(tmp_path)
    done = subprocess.run([sys.executable, "-m", "banray", "sweep", str(path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert_one_error_line(done.stderr, error_prefix(path, stage), expected, tmp_path)
    assert contents(tmp_path) == before


@pytest.mark.slow
def test_more_workers_than_the_cluster_can_place(ray_cluster, tmp_path, monkeypatch):
    """Capacity is known only once connected: still exit 2, one line, nothing written."""
    monkeypatch.chdir(tmp_path)
    path = write_case(tiny_spec(**{"resources.workers_per_trial": 64}), tmp_path)
    before = contents(tmp_path)
    result = CliRunner().invoke(cli, ["sweep", str(path), "--address", ray_cluster])
    assert result.exit_code == 2, result.output
    expected = "resources: a trial needs 64 worker(s) × 1.0 CPU / 0.0 GPU, but the cluster has 2 CPU / 0 GPU"
    assert_one_error_line(result.output, error_prefix(path, "start"), [expected], tmp_path)
    assert contents(tmp_path) == before
