"""Pieces shared by the CIFAR architectures."""

from __future__ import annotations

import torch
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


class PreActBlock(nn.Module):
    """BN-ReLU-conv layers on the residual branch; the shortcut is the identity or a 1×1 conv projection.
    `dims` 2 for images, 1 for signals."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, body: list[nn.Module], dims: int = 2):
        super().__init__()
        norm, conv = (nn.BatchNorm1d, nn.Conv1d) if dims == 1 else (nn.BatchNorm2d, nn.Conv2d)
        self.out_channels = out_channels
        self.preact = nn.Sequential(norm(in_channels), nn.ReLU(inplace=True))
        self.body = nn.Sequential(*body)
        changes_shape = stride != 1 or in_channels != out_channels
        self.projection = conv(in_channels, out_channels, 1, stride=stride, bias=False) if changes_shape else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.preact(x)
        # A projection reads the pre-activated input, as in the reference code; an identity keeps the raw input.
        shortcut = x if self.projection is None else self.projection(activated)
        return shortcut + self.body(activated)
