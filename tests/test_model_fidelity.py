"""Block structure against the reference code: szagoruyko/wide-residual-networks (WRN) and
KaimingHe/resnet-1k-layers (pre-activation bottleneck)."""

import pytest
import torch
from torch import nn

from banray.catalog.models import build_model
from banray.catalog.models.layers import PreActBlock

CIFAR = (3, 32, 32)


def blocks(model: nn.Module) -> list[PreActBlock]:
    return [module for module in model.modules() if isinstance(module, PreActBlock)]


def record_body_calls(block: PreActBlock, x: torch.Tensor) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(layer type, input, output) of each layer of the residual branch, in the order they ran."""
    calls = []
    hooks = [
        layer.register_forward_hook(lambda module, args, out: calls.append((type(module).__name__, args[0], out)))
        for layer in block.body
    ]
    try:
        block(x)
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def randomise_batch_norm(model: nn.Module) -> None:
    """Non-trivial eval-mode statistics, so that no BN layer is close to the identity."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            nn.init.normal_(module.weight)
            nn.init.normal_(module.bias)


def test_wrn_dropout_sits_between_the_second_bn_relu_and_the_second_conv():
    torch.manual_seed(0)
    model = build_model("wrn", num_classes=10, input_shape=CIFAR, depth=10, widen_factor=2, dropout=0.3).train()
    x = model[0](torch.randn(2, *CIFAR))
    for block in blocks(model):
        calls = record_body_calls(block, x)
        assert [kind for kind, _, _ in calls] == ["Conv2d", "BatchNorm2d", "ReLU", "Dropout", "Conv2d"]
        for (_, _, previous_out), (kind, current_in, _) in zip(calls, calls[1:]):
            assert current_in is previous_out, kind  # each layer reads the one before it, nothing else
        _, dropout_in, dropout_out = calls[3]
        assert (dropout_in >= 0).all()  # the ReLU after bn2 fed it
        assert (dropout_out == 0).float().mean() > 0.2  # and it is live in training
        x = block(x)


def test_wrn_state_dict_keys_survive_the_dropout_fix():
    # Checkpoints are loaded by state dict; these are the keys from before dropout moved.
    model = build_model("wrn", num_classes=10, input_shape=CIFAR, depth=10, widen_factor=2, dropout=0.3)
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    expected = (
        [f"preact.0.{name}" for name in bn]
        + ["body.0.weight"]
        + [f"body.2.{name}" for name in bn]
        + ["body.4.weight", "projection.weight"]
    )
    assert list(model[1].state_dict()) == expected


def test_preact_bottleneck_downsamples_in_the_first_1x1_conv():
    model = build_model("preact_resnet", num_classes=10, input_shape=CIFAR, depth=11, block="bottleneck")
    units = blocks(model)
    downsampling = [unit for unit in units if unit.projection is not None and unit.projection.stride == (2, 2)]
    assert len(downsampling) == 2  # the first block of stages 2 and 3
    for unit in units:
        first, middle = unit.body[0], unit.body[3]
        assert first.kernel_size == (1, 1) and middle.kernel_size == (3, 3)
        assert first.stride == ((2, 2) if unit in downsampling else (1, 1))
        assert middle.stride == (1, 1)


def test_downsampling_bottleneck_reads_only_the_pixels_its_stride_keeps():
    # With the stride on the 1×1 conv (and on the 1×1 projection), odd rows and columns never reach the output.
    torch.manual_seed(0)
    model = build_model("preact_resnet", num_classes=10, input_shape=CIFAR, depth=11, block="bottleneck", width=0.5)
    randomise_batch_norm(model)
    unit = next(unit for unit in blocks(model.eval()) if unit.projection is not None and unit.projection.stride[0] == 2)
    x = torch.randn(2, unit.preact[0].num_features, 16, 16)
    perturbed = x + torch.randn_like(x)
    perturbed[:, :, ::2, ::2] = x[:, :, ::2, ::2]
    with torch.no_grad():
        torch.testing.assert_close(unit(perturbed), unit(x))


def test_preact_bottleneck_block_output_shapes():
    model = build_model("preact_resnet", num_classes=10, input_shape=CIFAR, depth=11, block="bottleneck")
    shapes = []
    for unit in blocks(model):
        unit.register_forward_hook(lambda module, args, out: shapes.append(tuple(out.shape[1:])))
    assert model(torch.randn(2, *CIFAR)).shape == (2, 10)
    assert shapes == [(64, 32, 32), (128, 16, 16), (256, 8, 8)]


@pytest.mark.parametrize(
    "name, kwargs, count",
    [  # exact counts from before both fixes: moving a stride or a dropout adds and removes no parameters
        ("preact_resnet", {"depth": 11, "block": "bottleneck"}, 149_876),
        ("preact_resnet", {"depth": 164, "block": "bottleneck"}, 1_726_388),
        ("wrn", {"depth": 10, "widen_factor": 1, "dropout": 0.3}, 83_700),
    ],
)
def test_parameter_counts_are_unchanged(name, kwargs, count):
    model = build_model(name, num_classes=100, input_shape=CIFAR, **kwargs)
    assert sum(p.numel() for p in model.parameters()) == count
