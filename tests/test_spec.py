
import pytest
import yaml
from click.testing import CliRunner

from banray.commands.cli import cli
from banray.spec import SpecError, SweepSpec, load_spec, parse_spec
from conftest import REPO, tiny_spec


def errors_of(raw) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(raw, "s.yaml")
    return caught.value.lines


def test_quickstart_spec_is_valid():
    spec = load_spec(REPO / "sweeps" / "quickstart.yaml")
    assert spec.name == "quickstart" and spec.chains == 2 and spec.generations == 2 and spec.search.trials == 2
    assert spec.data.dataset == "digits" and spec.model.arch == "cnn"


def test_defaults_and_born_again_student():
    spec = parse_spec(tiny_spec())
    assert spec.model_of(0) == spec.model_of(1) == spec.model  # no `student`: same architecture
    assert spec.objective_of(0) == "ce" and spec.objective_of(1) == "ban"
    assert spec.storage == "./runs" and spec.resources.workers_per_trial == 1
    declared = parse_spec(tiny_spec(student={"arch": "mlp", "kwargs": {"hidden": 32}}))
    assert declared.model_of(0).arch == "cnn" and declared.model_of(1).arch == "mlp"


def test_spec_hash_ignores_runtime_sections_only():
    base = parse_spec(tiny_spec())
    assert parse_spec(tiny_spec(storage="/elsewhere", **{"resources.cpus_per_worker": 2})).spec_hash() == base.spec_hash()
    assert parse_spec(tiny_spec(**{"train.lr": 0.1})).spec_hash() != base.spec_hash()


@pytest.mark.parametrize(
    "raw, expected",
    [
        (tiny_spec(epochs_total=3), "s.yaml: epochs_total: unknown key; allowed keys here: name, seed, data, model"),
        (tiny_spec(**{"train.epoch": 3}), "s.yaml: train.epoch: unknown key; allowed keys here: epochs, batch_size,"),
        (tiny_spec(**{"train.epochs": 0}), "s.yaml: train.epochs: 0 is not allowed: input should be greater than or equal to 1"),
        (tiny_spec(generations=0), "s.yaml: generations: 0 is not allowed: input should be greater than or equal to 1"),
        (tiny_spec(**{"distill.alpha": 1.5}), "s.yaml: distill.alpha: 1.5 is not allowed: input should be less than or equal to 1"),
        (tiny_spec(**{"distill.temperature": 0}), "s.yaml: distill.temperature: 0 is not allowed: input should be greater than 0"),
        (tiny_spec(**{"distill.objective": "hinton"}), "s.yaml: distill.objective: 'hinton' is not allowed: unknown objective 'hinton'; allowed: ban, ban+l, ban_l, ce, cwtm, dkpp, kd"),
        (tiny_spec(**{"data.dataset": "cifar1000"}), "s.yaml: data.dataset: 'cifar1000' is not allowed: unknown dataset 'cifar1000'; allowed: cifar10, cifar100, digits, mnist1d, ptb, synthetic"),
        (tiny_spec(**{"data.val_fraction": 1.0}), "s.yaml: data.val_fraction: 1.0 is not allowed: input should be less than 1"),
        (tiny_spec(**{"model.arch": "resnet9000"}), "s.yaml: model.arch: 'resnet9000' is not allowed: unknown model 'resnet9000'; allowed: cnn, cnn1d, densenet_bc, lstm_lm, mlp, mlp1d, preact_resnet, resnet1d, wrn"),
        (tiny_spec(**{"model.kwargs": {"widht": 8}}), "s.yaml: model.kwargs: unknown argument 'widht' for arch 'cnn'; allowed: width, dropout"),
        (tiny_spec(**{"train.optimizer": "lion"}), "s.yaml: train.optimizer: 'lion' is not allowed: input should be 'sgd', 'adam' or 'adamw'"),
        (tiny_spec(**{"train.lr_schedule": "step"}), "s.yaml: train: lr_schedule 'step' needs lr_milestones, e.g. [60, 120, 160]"),
        (tiny_spec(**{"train.batch_size": "big"}), "s.yaml: train.batch_size: 'big' is not allowed: input should be a valid integer"),
        (tiny_spec(**{"search.metric": "val_acc"}), "s.yaml: search.metric: 'val_acc' is not allowed: input should be 'val_error' or 'val_nll'"),
        (tiny_spec(**{"resources.workers_per_trial": 0}), "s.yaml: resources.workers_per_trial: 0 is not allowed: input should be greater than or equal to 1"),
        (tiny_spec(name="my sweep"), "s.yaml: name: 'my sweep' is not allowed: string should match pattern"),
        (tiny_spec(chains=-1), "s.yaml: chains: -1 is not allowed: input should be greater than or equal to 1"),
        ({k: v for k, v in tiny_spec().items() if k != "model"}, "s.yaml: model: required key is missing"),
        (tiny_spec(**{"train.lr_milestones": [1, 5]}), "lr_milestones [5] lie outside 1..1 (epochs is 2)"),
    ],
)
def test_bad_spec_is_reported_precisely(raw, expected):
    lines = errors_of(raw)
    assert len(lines) == 1, lines
    assert expected in lines[0]


def test_every_problem_is_reported_at_once():
    lines = errors_of(tiny_spec(generations=0, **{"train.epochs": 0, "distill.alpha": -1}))
    assert [line.split(":")[1].strip() for line in lines] == ["train.epochs", "distill.alpha", "generations"]


def test_top_level_must_be_a_mapping():
    assert errors_of(["a", "b"]) == ["s.yaml: the top level must be a mapping with keys " + ", ".join(SweepSpec.model_fields)]


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ndata: [unclosed\n")
    with pytest.raises(SpecError, match=r"bad.yaml: not valid YAML at line 3, column 1"):
        load_spec(path)


@pytest.mark.parametrize("path", sorted((REPO / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_sweep_file_validates(path):
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert f"{path}: valid." in result.output


def test_paper_sweep_files_encode_the_paper():
    cifar100 = load_spec(REPO / "sweeps" / "cifar100.yaml")
    assert (cifar100.data.dataset, cifar100.model.arch, cifar100.generations) == ("cifar100", "densenet_bc", 3)
    assert cifar100.distill.objective == "ban" and cifar100.distill.temperature == 1.0
    assert (cifar100.train.lr, cifar100.train.lr_milestones, cifar100.train.lr_gamma) == (0.1, [60, 120, 160], 0.2)
    students = load_spec(REPO / "sweeps" / "cifar100-resnet-students.yaml")
    assert students.model.arch == "densenet_bc" and students.student.arch == "wrn"
    ptb = load_spec(REPO / "sweeps" / "ptb-lstm.yaml")
    assert ptb.distill.objective == "ban+l" and ptb.model.arch == "lstm_lm" and ptb.train.lr_schedule == "plateau"


def test_cli_validate_accepts_the_quickstart():
    result = CliRunner().invoke(cli, ["validate", str(REPO / "sweeps" / "quickstart.yaml")])
    assert result.exit_code == 0, result.output
    assert "valid. Sweep 'quickstart' on digits: 2 chain(s)" in result.output


def test_cli_rejects_bad_spec_with_exit_2_and_writes_nothing(tmp_path):
    storage = tmp_path / "out"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tiny_spec(storage=str(storage), **{"train.epochs": 0})))
    for command in (["validate", str(path)], ["sweep", str(path)]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 2
        assert result.output.strip() == (
            f"error: {path}: train.epochs: 0 is not allowed: input should be greater than or equal to 1"
        )
    assert not storage.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_cli_sweep_refuses_to_overwrite_an_earlier_sweep(tmp_path):
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / ".banray-sweep").write_text('{"banray_sweep": "tiny"}')  # an earlier sweep's mark
    (tmp_path / "tiny" / "report.json").write_text("{}")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(tiny_spec(storage=str(tmp_path))))
    result = CliRunner().invoke(cli, ["sweep", str(path)])
    assert result.exit_code == 2
    assert "already holds a sweep named like this one" in result.output
    assert (tmp_path / "tiny" / "report.json").read_text() == "{}"


def test_cli_missing_spec_file(tmp_path):
    result = CliRunner().invoke(cli, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "nope.yaml: cannot read the spec" in result.output


def test_cli_help_explains_commands():
    result = CliRunner().invoke(cli, ["sweep", "--help"])
    assert result.exit_code == 0
    for text in ("SPEC", "--address", "--storage", "--overwrite", "--ray-dashboard", "report"):
        assert text in result.output


@pytest.mark.parametrize(
    "resources, asked, started",
    [({}, None, False), ({"workers_per_trial": 2}, None, True), ({"trainer": "train"}, None, True),
     ({}, True, True), ({"trainer": "train"}, False, False)],
)
def test_a_local_cluster_runs_rays_dashboard_when_trials_need_it_or_when_asked(resources, asked, started):
    from banray.sweep.start import needs_dashboard  # Train's controller calls the State API, which it serves

    assert needs_dashboard(parse_spec(tiny_spec(resources=resources)), asked) is started


@pytest.mark.parametrize(
    "resources, engine",
    [({}, "trial"), ({"gpus_per_worker": 1}, "train"), ({"workers_per_trial": 2}, "train"),
     ({"trainer": "train"}, "train"), ({"trainer": "trial", "gpus_per_worker": 0.5}, "trial")],
)
def test_auto_picks_ray_train_for_gpu_and_data_parallel_trials(resources, engine):
    assert parse_spec(tiny_spec(resources=resources)).resources.engine() == engine


def test_the_engine_is_in_the_spec_hash_and_one_trial_process_has_one_worker():
    hashes = {trainer: parse_spec(tiny_spec(resources={"trainer": trainer})).spec_hash()
              for trainer in ("auto", "train", "trial")}
    assert hashes["auto"] == hashes["trial"] != hashes["train"]
    # How often a trial checkpoints changes nothing that is trained.
    assert parse_spec(tiny_spec(**{"train.checkpoint_every_s": 0})).spec_hash() == hashes["auto"]
    with pytest.raises(SpecError, match="resources: trainer 'trial' trains in the Tune trial's own process, one "
                                        "worker, but workers_per_trial is 2"):
        parse_spec(tiny_spec(resources={"trainer": "trial", "workers_per_trial": 2}))
