"""MNIST-1D: the dataset as the `mnist1d` package generates it (nothing downloaded), the 1-D models, the sweep
file, and (slow) the reference recipe's CNN and 256-wide MLP accuracy against the README table's figures."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from banray.catalog import data

from banray.catalog.data import DATASETS, dataset_info, load_splits
from banray.catalog.models import ModelTooLarge, build_model, count_parameters, model_defaults
from banray.commands import plan
from banray.spec import load_spec

SHAPE = (1, 40)
SWEEP = Path(__file__).resolve().parents[1] / "sweeps" / "mnist1d.yaml"
# Greydanus & Kobak, "Scaling down deep learning": the table in the README of github.com/greydanus/mnist1d, test
# accuracy, %. Not the reference recipe's last step: the reference's own recorded run of that recipe (one seed,
# notebooks/mnist1d-classification.ipynb) ends at 92.3% (CNN) and 65.1% (its MLPBase, 100 wide); 68% is what a
# 256-wide MLP reaches with the recipe.
PAPER_ACCURACY = {"cnn": 94.0, "mlp": 68.0}


def _pool():
    return DATASETS["mnist1d"].build("", False)


def _arrays(samples) -> tuple[torch.Tensor, torch.Tensor]:
    return samples.inputs, samples.labels


def test_registered_facts_match_what_the_builder_gives():
    info = dataset_info("mnist1d")
    assert (info.kind, info.num_classes, info.input_shape, info.train_size) == ("classification", 10, SHAPE, 4000)
    pool = _pool()
    x, y = _arrays(pool.train)
    x_test, y_test = _arrays(pool.test)
    assert (tuple(x.shape), tuple(x_test.shape)) == ((4000, *SHAPE), (1000, *SHAPE))
    assert x.dtype == x_test.dtype == torch.float32 and y.dtype == y_test.dtype == torch.int64
    assert sorted(set(y.tolist())) == sorted(set(y_test.tolist())) == list(range(10))
    assert pool.augment is None and pool.normalise is None  # no augmentation: the signals as they are
    assert (pool.num_classes, pool.input_shape) == (10, SHAPE)


def test_the_data_are_the_packages_default_split_and_the_same_every_time():
    from mnist1d.data import get_dataset_args, make_dataset

    reference = make_dataset(get_dataset_args())
    first = _pool()
    data._mnist1d_arrays.cache_clear()  # generate again, not from the process's cache
    second = _pool()
    for view in ("train", "test"):
        assert all(torch.equal(a, b) for a, b in zip(_arrays(getattr(first, view)), _arrays(getattr(second, view))))
    x, y = _arrays(first.train)
    x_test, y_test = _arrays(first.test)
    assert np.array_equal(x[:, 0].numpy(), reference["x"].astype(np.float32))
    assert np.array_equal(y.numpy(), reference["y"]) and np.array_equal(y_test.numpy(), reference["y_test"])
    assert np.array_equal(x_test[:, 0].numpy(), reference["x_test"].astype(np.float32))


def test_generating_leaves_the_global_generators_alone():
    data._mnist1d_arrays.cache_clear()
    random.seed(3)
    np.random.seed(3)
    expected = (random.random(), np.random.rand())
    random.seed(3)
    np.random.seed(3)
    _pool()  # make_dataset reseeds both with 42
    assert (random.random(), np.random.rand()) == expected


def test_validation_split_follows_data_seed_and_test_split_never_moves():
    a, b = load_splits("mnist1d", "", 0.2, seed=0), load_splits("mnist1d", "", 0.2, seed=1)
    assert (len(a.train), len(a.val), len(a.test)) == (3200, 800, 1000)
    assert a.test is not b.test and all(torch.equal(p, q) for p, q in zip(_arrays(a.test), _arrays(b.test)))
    train, val = set(a.train.indices.tolist()), set(a.val.indices.tolist())
    assert train.isdisjoint(val) and len(train | val) == 4000
    assert not torch.equal(a.val.indices, b.val.indices)
    assert a.augmentation == "none" and tuple(a.val.inputs.shape[1:]) == SHAPE


@pytest.mark.parametrize("arch, kwargs, parameters", [
    ("mlp1d", {}, 40 * 100 + 100 + 100 * 100 + 100 + 100 * 10 + 10),  # 15,210: 40-100-100-10
    ("mlp1d", {"hidden": 256}, 40 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10),
    ("mlp1d", {"depth": 1, "residual": False}, 40 * 100 + 100 + 100 * 10 + 10),
    ("cnn1d", {}, (25 * 5 + 25) + 2 * (25 * 25 * 3 + 25) + (25 * 5 * 10 + 10)),  # 5,210: 40 → 19 → 10 → 5
    ("cnn1d", {"channels": 8}, (8 * 5 + 8) + 2 * (8 * 8 * 3 + 8) + (8 * 5 * 10 + 10)),
    ("resnet1d", {}, 28_314),
    ("resnet1d", {"width": 8, "depth": 14}, None),
])
def test_models_map_signals_to_logits_with_their_parameter_counts(arch, kwargs, parameters):
    model = build_model(arch, num_classes=10, input_shape=SHAPE, **kwargs)
    real = sum(p.numel() for p in model.parameters())
    assert count_parameters(arch, num_classes=10, input_shape=SHAPE, **kwargs) == real  # the registry's meta build
    assert parameters is None or real == parameters
    model.eval()
    assert tuple(model(torch.randn(3, *SHAPE)).shape) == (3, 10)


def test_the_reference_mlp_adds_its_second_layer_to_its_first():
    torch.manual_seed(0)
    residual = build_model("mlp1d", num_classes=10, input_shape=SHAPE)
    plain = build_model("mlp1d", num_classes=10, input_shape=SHAPE, residual=False)
    plain.load_state_dict(residual.state_dict())
    x = torch.randn(4, *SHAPE)
    h = residual.first(x.flatten(1)).relu()
    assert torch.allclose(residual(x), residual.classifier(h + residual.hidden[0](h).relu()))
    assert not torch.allclose(residual(x), plain(x))


def test_model_arguments_and_bad_values():
    assert model_defaults("mlp1d") == {"hidden": 100, "depth": 2, "residual": True}
    assert model_defaults("cnn1d") == {"channels": 25}
    assert model_defaults("resnet1d") == {"width": 16, "depth": 8}
    for arch, kwargs, message in [
        ("resnet1d", {"depth": 9}, "6n \\+ 2"),  # the builder's own rule across its arguments
        ("cnn1d", {"channels": 0}, "channels 0 is not allowed: Input should be greater than or equal to 1"),
        ("mlp1d", {"depth": 0}, "depth 0 is not allowed: Input should be greater than or equal to 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            build_model(arch, num_classes=10, input_shape=SHAPE, **kwargs)
    with pytest.raises(ValueError, match="length at least 5"):
        build_model("cnn1d", num_classes=10, input_shape=(1, 2))
    with pytest.raises(ModelTooLarge):  # refused on the meta device, before allocating
        build_model("mlp1d", num_classes=10, input_shape=SHAPE, hidden=10**6)


def paper_recipe_accuracy(arch: str, seed: int, steps: int = 6000, **kwargs) -> float:
    """Test accuracy (%) after the MNIST-1D reference training loop (its train.py): Adam, lr 1e-2, no weight
    decay, batch 100 taken in order from all 4000 training signals, steps + 1 updates, the last model scored."""
    pool = _pool()
    x, y = _arrays(pool.train)
    x_test, y_test = _arrays(pool.test)
    torch.manual_seed(seed)
    model = build_model(arch, num_classes=10, input_shape=SHAPE, **kwargs)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=0)
    for step in range(steps + 1):
        start = (step * 100) % len(x)
        loss = F.cross_entropy(model(x[start:start + 100]), y[start:start + 100])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()  # the reference models have no batch norm; resnet1d's must use its running statistics
    with torch.no_grad():
        return 100 * (model(x_test).argmax(-1) == y_test).float().mean().item()


def test_a_short_training_run_learns():
    before = paper_recipe_accuracy("cnn1d", seed=0, steps=0)
    after = paper_recipe_accuracy("cnn1d", seed=0, steps=400)
    assert after > 60 and after > before + 30


def test_the_sweep_file_is_a_ban_study_with_the_reference_recipe():
    spec = load_spec(SWEEP)
    assert (spec.data.dataset, spec.model.arch, spec.generations) == ("mnist1d", "cnn1d", 2)
    # a teacher′ (seed noise, and Ens*2's same-size baseline), the equal-budget and the label-smoothing arms
    assert spec.side_arms() == ["control", "budget", "smoothing"] and spec.report_columns()[3] == "Ens*2"
    assert (spec.distill.objective, spec.distill.temperature) == ("ban", 1.0)
    train = spec.train
    assert (train.optimizer, train.lr, train.batch_size, train.weight_decay, train.lr_schedule) == (
        "adam", 0.01, 100, 0.0, "constant")
    assert plan.Work.of(spec).steps_per_epoch == 32  # 3200 training signals / 100
    assert spec.chains >= 6  # the exact signed-rank test can reach p < 0.05


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_the_papers_cnn_and_mlp_accuracy_with_the_papers_recipe():
    """The reference recipe's last step, averaged over 3 seeds, within 2 points of the README table's CNN 94% and
    MLP 68% (one seed's CNN spreads over about ±2 points). The table is not that recipe's own result: the
    reference's recorded one-seed run ends at 92.3% (CNN) and 65.1% (its MLPBase, 40-100-100-10, mlp1d's default).
    The MLP checked here is 256 wide (get_model_args' hidden_size, which the reference notebook does not pass to
    MLPBase): the width that reaches the table's 68%. mlp1d's default scores about 64.6% with this recipe, as the
    reference run does (bench/mnist1d_reference.py)."""
    seeds = range(3)
    cnn = np.mean([paper_recipe_accuracy("cnn1d", seed) for seed in seeds])
    mlp = np.mean([paper_recipe_accuracy("mlp1d", seed, hidden=256) for seed in seeds])
    assert abs(cnn - PAPER_ACCURACY["cnn"]) <= 2, f"cnn1d {cnn:.1f}% over 3 seeds; the README table's CNN: 94%"
    assert abs(mlp - PAPER_ACCURACY["mlp"]) <= 2, f"256-wide mlp1d {mlp:.1f}% over 3 seeds; the README table's MLP: 68%"
