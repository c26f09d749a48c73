import numpy as np
import pytest
import torch

from banray.catalog.data import DATASETS, load_splits, split_hash
from banray.catalog.models import MODELS, build_model, model_arguments


def indices(samples) -> set[int]:
    return set(samples.indices.tolist())


@pytest.mark.parametrize("dataset, num_classes, total", [("digits", 10, 1797), ("synthetic", 4, 600)])
def test_splits_are_disjoint_and_complete(dataset, num_classes, total):
    splits = load_splits(dataset, root="", val_fraction=0.25, seed=3)
    assert splits.num_classes == num_classes and splits.input_shape == (1, 8, 8)
    assert not indices(splits.train) & indices(splits.val)
    assert len(splits.train) + len(splits.val) + len(splits.test) == total
    assert len(splits.val) == pytest.approx(0.25 * (len(splits.train) + len(splits.val)), abs=1)
    x, y = splits.train.inputs[0], splits.train.labels[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and 0 <= int(y) < num_classes


def test_validation_split_follows_the_seed_and_test_split_never_moves():
    a, b, c = (load_splits("digits", "", 0.2, seed) for seed in (0, 0, 1))
    assert indices(a.val) == indices(b.val)
    assert indices(a.val) != indices(c.val)
    assert torch.equal(a.test.inputs, c.test.inputs)  # selection can never leak into the test set


def test_the_split_hash_is_of_the_indices_not_the_seed():
    a, b, c = (load_splits("digits", "", 0.2, seed) for seed in (0, 0, 1))
    train, val = a.train.indices.tolist(), a.val.indices.tolist()
    assert a.split_hash == b.split_hash == split_hash(np.array(train), np.array(val))
    assert c.split_hash != a.split_hash
    # The same samples in another order, or one moved from validation to training, are another split.
    assert split_hash(np.array(train[::-1]), np.array(val)) != a.split_hash
    moved = split_hash(np.array(train + val[:1]), np.array(val[1:]))
    assert moved != a.split_hash


def test_models_declare_the_revision_of_their_code():
    assert {name: MODELS.revision(name) for name in MODELS.names()} == {
        "cnn": 1, "cnn1d": 1, "densenet_bc": 1, "lstm_lm": 1, "mlp": 1, "mlp1d": 1, "preact_resnet": 2,
        "resnet1d": 1, "wrn": 2,
    }
    with pytest.raises(KeyError, match="unknown model 'nope'; allowed: cnn, "):
        MODELS.revision("nope")


def test_digits_values_are_scaled_to_unit_range():
    splits = load_splits("digits", "", 0.2, 0)
    x = splits.test.inputs
    assert x.min() >= 0 and x.max() == 1


def test_registries_name_their_entries():
    assert DATASETS.names() == ["cifar10", "cifar100", "digits", "mnist1d", "ptb", "synthetic"]
    assert MODELS.names() == ["cnn", "cnn1d", "densenet_bc", "lstm_lm", "mlp", "mlp1d", "preact_resnet", "resnet1d", "wrn"]
    with pytest.raises(KeyError, match="unknown dataset 'mnist'; allowed: cifar10, cifar100, digits, mnist1d, ptb, synthetic"):
        load_splits("mnist", "", 0.2, 0)


@pytest.mark.parametrize("arch, kwargs", [("cnn", {"width": 4}), ("mlp", {"hidden": 16, "depth": 1})])
def test_models_map_inputs_to_logits(arch, kwargs):
    model = build_model(arch, num_classes=7, input_shape=(1, 8, 8), **kwargs)
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 7)


def test_model_arguments_exclude_what_the_dataset_provides():
    assert model_arguments("cnn") == ["width", "dropout"]
    assert model_arguments("mlp") == ["hidden", "depth", "dropout"]
    with pytest.raises(KeyError, match="unknown model 'vit'; allowed: cnn, cnn1d, densenet_bc, lstm_lm, mlp, mlp1d, preact_resnet, resnet1d, wrn"):
        build_model("vit", num_classes=2, input_shape=(1, 8, 8))


def test_same_seed_same_initialisation():
    torch.manual_seed(5)
    a = build_model("cnn", num_classes=3, input_shape=(1, 8, 8))
    torch.manual_seed(5)
    b = build_model("cnn", num_classes=3, input_shape=(1, 8, 8))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert np.isfinite(sum(p.sum().item() for p in a.parameters()))
