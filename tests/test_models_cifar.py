import pytest
import torch

from banray.catalog.models import MODELS, build_model, model_arguments
from banray.catalog.models.registry import model_task

CIFAR = (3, 32, 32)

# The smallest configuration of every image model; a model registered without an entry here fails below.
TINY = {
    "cnn": [{"width": 4}],
    "mlp": [{"hidden": 8, "depth": 1}],
    "densenet_bc": [{"depth": 10, "growth_rate": 4}],
    "wrn": [{"depth": 10, "widen_factor": 1}],
    "preact_resnet": [
        {"depth": 11, "block": "bottleneck", "width": 0.5},
        {"depth": 8, "block": "basic", "width": 0.5},
    ],
}


def parameter_count(name: str, **kwargs) -> int:
    model = build_model(name, num_classes=100, input_shape=CIFAR, **kwargs)
    return sum(p.numel() for p in model.parameters())


SIGNAL_MODELS = {"cnn1d", "mlp1d", "resnet1d"}  # for 1-D signals: tests/test_mnist1d.py


def test_every_image_model_has_a_tiny_configuration():
    image_models = {name for name in MODELS.names() if model_task(name) == "classification"} - SIGNAL_MODELS
    assert image_models == set(TINY)
    assert set(MODELS.names()) - image_models - SIGNAL_MODELS == {"lstm_lm"}  # tested on tokens below


def test_language_model_forward_and_backward_on_tokens():
    torch.manual_seed(0)
    model = build_model("lstm_lm", num_classes=50, input_shape=(7,), hidden=16)
    logits, state = model(torch.randint(0, 50, (7, 3)))
    assert logits.shape == (7, 3, 50) and state[0].shape == (1, 3, 16)
    logits.logsumexp(dim=2).sum().backward()
    assert model.decoder.weight is model.embedding.weight  # tied
    for param_name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), param_name


@pytest.mark.parametrize("name, kwargs", [(name, kwargs) for name, configs in TINY.items() for kwargs in configs])
def test_forward_and_backward_on_cifar_shaped_input(name, kwargs):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, input_shape=CIFAR, **kwargs)
    logits = model(torch.randn(2, *CIFAR))
    assert logits.shape == (2, 10)
    logits.logsumexp(dim=1).sum().backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), param_name


@pytest.mark.parametrize(
    "name, kwargs, millions",
    [
        ("densenet_bc", {"depth": 100, "growth_rate": 12}, 0.8),
        ("wrn", {"depth": 28, "widen_factor": 10}, 36.5),
        ("wrn", {"depth": 28, "widen_factor": 1}, 0.37),
        # He et al.'s 10.2M; counting BatchNorm's affine parameters gives 10.35M, 1.5% more.
        ("preact_resnet", {"depth": 1001, "block": "bottleneck"}, 10.2),
        ("preact_resnet", {"depth": 164, "block": "bottleneck"}, 1.7),
    ],
)
def test_parameter_counts_match_the_literature(name, kwargs, millions):
    assert parameter_count(name, **kwargs) == pytest.approx(millions * 1e6, rel=0.02)


def test_densenet_depths_round_down_and_block_units_override_them():
    assert parameter_count("densenet_bc", depth=90, growth_rate=60) == parameter_count(
        "densenet_bc", depth=88, growth_rate=60
    )
    assert parameter_count("densenet_bc", depth=10, block_units=16) == parameter_count("densenet_bc", depth=100)


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("densenet_bc", {"depth": 9}, "depth 9 is not allowed: Input should be greater than or equal to 10"),
        ("densenet_bc", {"block_units": 0}, "block_units 0 is not allowed"),  # the range the builder declares
        ("wrn", {"depth": 27}, r"6n \+ 4 with n ≥ 1 \(10, 16, 22, 28"),
        ("wrn", {"depth": 4}, "depth 4 is not allowed"),
        ("preact_resnet", {"depth": 32}, r"bottleneck blocks must be 9n \+ 2 .*164, 1001"),
        ("preact_resnet", {"depth": 29, "block": "basic"}, r"basic blocks must be 6n \+ 2 .*110"),
        ("preact_resnet", {"block": "wide"}, "'basic' or 'bottleneck'"),
    ],
)
def test_bad_configurations_are_rejected(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model(name, num_classes=10, input_shape=CIFAR, **kwargs)


@pytest.mark.parametrize(
    "name, arguments",
    [
        ("densenet_bc", ["depth", "growth_rate", "compression", "bottleneck_width", "block_units", "drop_rate"]),
        ("wrn", ["depth", "widen_factor", "dropout"]),
        ("preact_resnet", ["depth", "block", "width"]),
    ],
)
def test_model_arguments_list_what_a_spec_may_set(name, arguments):
    assert model_arguments(name) == arguments
