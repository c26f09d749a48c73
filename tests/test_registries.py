"""The dataset registry answers what `plan` and `report` ask (classes, input shape, kind, training-pool size,
headline metric), and plan's and report's numbers and words come from it, not from dataset names."""

import math

import pytest

import fakedata
from banray.catalog import data
from banray.catalog.data import DATASETS, DatasetEntry, DatasetInfo, dataset_info, dataset_kind, load_splits
from banray.commands import plan
from banray.results import report
from banray.spec import parse_spec
from conftest import tiny_spec

EXPECTED = {  # name: (kind, classes, input shape, training pool)
    "cifar10": ("classification", 10, (3, 32, 32), 50_000),
    "cifar100": ("classification", 100, (3, 32, 32), 50_000),
    "digits": ("classification", 10, (1, 8, 8), 1437),
    "mnist1d": ("classification", 10, (1, 40), 4000),
    "ptb": ("language_model", 10_000, (), 929_589),
    "synthetic": ("classification", 4, (1, 8, 8), 480),
}


def test_the_registry_answers_for_every_registered_dataset():
    assert sorted(EXPECTED) == DATASETS.names()
    for name in DATASETS.names():
        info = dataset_info(name)
        assert (info.kind, info.num_classes, info.input_shape, info.train_size) == EXPECTED[name], name
        assert info.name == name and dataset_kind(name) == info.kind
        assert info.headline.metric in report.DISPLAY  # the report can show its headline
    with pytest.raises(KeyError, match="unknown dataset 'mnist'; allowed: cifar10, cifar100, digits, mnist1d, ptb, synthetic"):
        dataset_info("mnist")


def test_headlines_and_model_input_shapes_follow_the_kind():
    error, perplexity = dataset_info("cifar100").headline, dataset_info("ptb").headline
    assert (error.metric, error.label, error.unit, error.gain_unit) == ("test_error", "test error", "%", "points of test error")
    assert (perplexity.metric, perplexity.label, perplexity.unit, perplexity.gain_unit) == (
        "test_perplexity", "test perplexity", "", "perplexity")
    assert dataset_info("ptb").model_input_shape(35) == (35,)
    assert dataset_info("cifar10").model_input_shape(35) == (3, 32, 32)


@pytest.mark.parametrize("name", ["digits", "synthetic"])
def test_the_registered_facts_are_what_the_embedded_builders_give(name):
    info = dataset_info(name)
    pool = DATASETS[name].build("", False)
    assert (pool.num_classes, pool.input_shape, len(pool.train)) == (info.num_classes, info.input_shape, info.train_size)
    assert len(set(pool.train.labels.tolist())) == info.num_classes
    assert pool.augment is None and not info.augmented and info.carved_validation and info.shuffled


@pytest.mark.parametrize("name, write", [("cifar10", fakedata.write_cifar10), ("cifar100", fakedata.write_cifar100)])
def test_cifar_splits_carry_the_registered_classes_and_shape(tmp_path, name, write):
    write(tmp_path)
    splits = load_splits(name, str(tmp_path), val_fraction=0.5, seed=0)
    info = dataset_info(name)
    assert (splits.num_classes, splits.input_shape) == (info.num_classes, info.input_shape)
    assert tuple(splits.inputs(splits.val, slice(0, 1)).shape[1:]) == info.input_shape
    assert splits.augment is not None and info.augmented and info.carved_validation and info.shuffled


def test_ptb_varies_neither_its_splits_nor_its_token_order():
    info = dataset_info("ptb")
    assert (info.augmented, info.carved_validation, info.shuffled) == (False, False, False)


@pytest.fixture
def toy(monkeypatch):
    """A dataset registered only for this test, whose facts no name could give away."""
    info = DatasetInfo("toy", "classification", num_classes=7, input_shape=(2, 6, 6), train_size=1000)
    monkeypatch.setitem(DATASETS._entries, "toy", DatasetEntry(info, lambda root, download: None))
    return info


def test_plan_work_comes_from_the_registry(toy):
    spec = parse_spec(tiny_spec(**{"data.dataset": "toy", "train.epochs": 3}))
    work = plan.Work.of(spec)
    assert work.steps_per_epoch == math.ceil(toy.train_size * 0.8 / 32) == 25
    assert work.steps == work.trials * 3 * 25
    lm = parse_spec(tiny_spec(**{"data.dataset": "ptb", "model": {"arch": "lstm_lm"}, "search.metric": "val_nll",
                                 "train.batch_size": 20, "train.bptt": 35}))
    assert plan.Work.of(lm).steps_per_epoch == dataset_info("ptb").train_size // (20 * 35) == 1327


def test_plan_times_models_built_for_the_registered_classes_and_shape(toy, monkeypatch):
    built = []
    real = plan.build_model

    def recording(arch, **kwargs):
        built.append((arch, kwargs["num_classes"], kwargs["input_shape"]))
        return real(arch, **kwargs)

    monkeypatch.setattr(plan, "build_model", recording)
    spec = parse_spec(tiny_spec(data={"dataset": "toy"}, model={"arch": "mlp", "kwargs": {"hidden": 8, "depth": 1}}))
    seconds, _ = plan.time_steps(spec, 1, 1)  # a student: its teacher is built too
    assert seconds > 0
    assert built == [("mlp", 7, (2, 6, 6)), ("mlp", 7, (2, 6, 6))]
    # A model that cannot take the registered shape is refused in its words.
    narrow = parse_spec(tiny_spec(data={"dataset": "toy"}, model={"arch": "resnet1d"}))
    with pytest.raises(plan.SpecError, match=r"cannot take toy's input of shape \(2, 6, 6\)"):
        plan.time_steps(narrow, 0, 1)


def test_plan_times_a_language_model_on_the_registered_vocabulary(monkeypatch):
    built = []

    class Stop(Exception):
        pass

    def recording(arch, **kwargs):
        built.append((arch, kwargs["num_classes"], kwargs["input_shape"]))
        raise Stop  # a 10,000-word model need not be trained here

    monkeypatch.setattr(plan, "build_model", recording)
    spec = parse_spec(tiny_spec(**{"data.dataset": "ptb", "model": {"arch": "lstm_lm"}, "search.metric": "val_nll",
                                   "train.bptt": 35}))
    with pytest.raises(Stop):
        plan.time_steps(spec, 0, 1)
    assert built == [("lstm_lm", 10_000, (35,))]


def test_plan_and_report_name_the_headline_as_the_registry_does(toy, monkeypatch):
    headline = data.Headline("test_widgets", "test widgets", "w", "widgets")
    monkeypatch.setitem(data._HEADLINES, "classification", headline)
    assert report._headline("toy") is headline
    lines = plan.chains_for_gain(parse_spec(tiny_spec(data={"dataset": "toy"})), 0.5)
    assert lines[0].startswith("Chains to detect a gain of 0.5 widgets over the teacher")
