"""Pieces shared by the CIFAR architectures."""

from __future__ import annotations

from torch import nn


def init_weights(model: nn.Module) -> None:
    """He-normal convolutions (fan-out, as the reference Torch code of DenseNet, ResNet and WRN), BN at identity,
    zero linear biases."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)


def with_preact_head(body: list[nn.Module], channels: int, num_classes: int) -> nn.Sequential:
    """`body` followed by the pre-activation classifier head (BN-ReLU, global average pool, linear), initialised."""
    model = nn.Sequential(
        *body,
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels, num_classes),
    )
    init_weights(model)
    return model
