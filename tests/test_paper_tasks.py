"""The paper's data and tasks: CIFAR through torchvision's loader, PTB-format corpora, language models."""

import math

import pytest
import torch
from click.testing import CliRunner
import yaml

import fakedata
from banray.catalog.data import DatasetMissing, load_corpus, load_splits
from banray.catalog.models import build_model
from banray.commands.cli import cli
from banray.spec import SpecError, parse_spec
from banray.sweep.start import preflight
from banray.training.tasks import batchify, bptt_chunks, make_task
from conftest import tiny_spec


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    fakedata.write_cifar10(root)
    fakedata.write_cifar100(root)
    return root


@pytest.mark.parametrize("name, classes, pool, test", [("cifar10", 10, 250, 100), ("cifar100", 100, 400, 200)])
def test_cifar_goes_through_torchvision_with_augmentation_for_training_only(cifar_root, name, classes, pool, test):
    splits = load_splits(name, str(cifar_root), val_fraction=0.25, seed=0)
    assert splits.num_classes == classes and splits.input_shape == (3, 32, 32)
    assert len(splits.train) + len(splits.val) == pool and len(splits.test) == test
    positions = torch.arange(len(splits.train))
    first, second = splits.train_views(positions, 1), splits.train_views(positions, 2)
    assert first.shape == (len(positions), 3, 32, 32) and not torch.equal(first, second)  # crops / flips per epoch
    assert splits.augmentation != "none"
    assert abs(splits.inputs(splits.test, slice(0, 1)).mean().item()) < 3  # normalised, not raw 0..255


def test_missing_cifar_names_data_root_and_the_fix(tmp_path):
    with pytest.raises(DatasetMissing, match=rf"data.root: cifar100 not found in {tmp_path} .*data.download: true"):
        load_splits("cifar100", str(tmp_path), 0.1, 0)


def test_missing_ptb_names_the_files(tmp_path):
    with pytest.raises(DatasetMissing, match=r"data.root: ptb.train.txt, ptb.valid.txt, ptb.test.txt not found in"):
        load_corpus("ptb", str(tmp_path))


def test_sweep_with_missing_data_exits_2_and_writes_nothing(tmp_path):
    path = tmp_path / "spec.yaml"
    storage = tmp_path / "runs"
    path.write_text(yaml.safe_dump(tiny_spec(storage=str(storage), data={"dataset": "cifar10", "root": str(tmp_path / "none")},
                                             model={"arch": "wrn", "kwargs": {"depth": 10, "widen_factor": 1}})))
    result = CliRunner().invoke(cli, ["sweep", str(path)])
    assert result.exit_code == 2
    assert result.output.startswith("error: data.root: cifar10 not found in")
    assert not storage.exists()


def test_preflight_catches_a_model_that_cannot_be_built(cifar_root):
    spec = parse_spec(tiny_spec(data={"dataset": "cifar10", "root": str(cifar_root)},
                                model={"arch": "wrn", "kwargs": {"depth": 11}}))
    with pytest.raises(SpecError, match=r"model.kwargs: wrn cannot be built with \{'depth': 11\}: .*depth"):
        preflight(spec)


def test_models_and_datasets_must_fit_the_same_task():
    with pytest.raises(SpecError, match="model.arch 'lstm_lm' is a language_model model but data.dataset 'digits'"):
        parse_spec(tiny_spec(data={"dataset": "digits"}, model={"arch": "lstm_lm"}))
    with pytest.raises(SpecError, match="student.arch 'cnn' is a classification model but data.dataset 'ptb'"):
        parse_spec(tiny_spec(data={"dataset": "ptb"}, model={"arch": "lstm_lm"}, student={"arch": "cnn"},
                             search={"metric": "val_nll"}))
    with pytest.raises(SpecError, match="search.metric must be 'val_nll'"):
        parse_spec(tiny_spec(data={"dataset": "ptb"}, model={"arch": "lstm_lm"}))


def test_ptb_reader_numbers_words_and_adds_eos(tmp_path):
    (tmp_path / "ptb.train.txt").write_text(" a b <unk> \n b c \n")
    (tmp_path / "ptb.valid.txt").write_text(" c a \n")
    (tmp_path / "ptb.test.txt").write_text(" zzz \n")  # unseen word → <unk>
    corpus = load_corpus("ptb", str(tmp_path))
    assert corpus.vocabulary == ["a", "b", "<unk>", "<eos>", "c"]
    assert corpus.train.tolist() == [0, 1, 2, 3, 1, 4, 3]
    assert corpus.valid.tolist() == [4, 0, 3] and corpus.test.tolist() == [2, 3]


def test_batchify_and_bptt_chunks_cover_the_stream_once():
    columns = batchify(torch.arange(23), 4)  # 5 steps × 4 columns; 3 trailing tokens dropped
    assert columns.shape == (5, 4) and columns[:, 1].tolist() == [5, 6, 7, 8, 9]
    chunks = list(bptt_chunks(columns, 3))
    assert [x.shape[0] for x, _ in chunks] == [3, 1]
    for x, y in chunks:
        assert torch.equal(y, x + 1)  # targets are the next tokens of each column


def test_language_model_task_trains_and_scores_perplexity(tmp_path):
    fakedata.write_ptb(tmp_path)
    spec = parse_spec(tiny_spec(data={"dataset": "ptb", "root": str(tmp_path)},
                                model={"arch": "lstm_lm", "kwargs": {"hidden": 32, "dropout": 0.0}},
                                train={"epochs": 1, "batch_size": 8, "lr": 1.0, "bptt": 10, "grad_clip": 5.0},
                                search={"metric": "val_nll"}, distill={"objective": "ban+l"}))
    task = make_task(spec.data, spec.train)
    torch.manual_seed(0)
    model = build_model("lstm_lm", num_classes=task.num_classes, input_shape=task.input_shape, hidden=32, dropout=0.0)
    before = task.score(model, "val")
    assert before.perplexity == pytest.approx(task.num_classes, rel=0.2)  # untrained ≈ uniform
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)

    def step(loss):
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    from banray.catalog.losses import get_objective
    from banray.spec import DistillSpec
    for _ in range(8):
        terms = task.train_epoch(model, None, get_objective("ce"), DistillSpec().loss_params(), step, "cpu", 1)
    after = task.score(model, "val")
    assert set(terms) == {"ce"} and after.perplexity < 0.7 * before.perplexity
    assert after.perplexity == pytest.approx(math.exp(after.nll))
    assert task.predict(model, "test") is None  # no ensembles of language models
