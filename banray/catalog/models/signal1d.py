"""Models for 1-D signals of shape (C, L), such as MNIST-1D's (1, 40).

`mlp1d` and `cnn1d` are the MLP and CNN of the MNIST-1D reference code (Greydanus & Kobak, *Scaling down
deep learning*, github.com/greydanus/mnist1d, `models.py`: MLPBase and ConvBase), with PyTorch's default
initialisation as there; `resnet1d` is a small pre-activation ResNet (He et al., ECCV 2016) in 1-D.
"""

from __future__ import annotations

import torch
from torch import nn

from banray.catalog.models.layers import PreActBlock
from banray.catalog.models.registry import MODELS, Count, at_least


def _positive(model: str, **values) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{model} {name} must be at least 1, got {value}")


class _ResidualMLP(nn.Module):
    """Linear-ReLU, then `depth` − 1 layers h ← h + ReLU(W h + b) (plain h ← ReLU(W h + b) without `residual`)."""

    def __init__(self, in_features: int, hidden: int, depth: int, num_classes: int, residual: bool):
        super().__init__()
        self.residual = residual
        self.first = nn.Linear(in_features, hidden)
        self.hidden = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth - 1))
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.first(x.flatten(1)).relu()
        for layer in self.hidden:
            h = h + layer(h).relu() if self.residual else layer(h).relu()
        return self.classifier(h)


@MODELS.register("mlp1d", revision=1)
def mlp1d(
    *, num_classes: int, input_shape: tuple[int, ...], hidden: Count = 100, depth: Count = 2, residual: bool = True
) -> nn.Module:
    """`depth` hidden layers of `hidden` ReLU units on the flattened signal. As the reference MLPBase, every
    hidden layer after the first adds its output to its input (`residual`); 40-100-100-10 has 15,210 parameters."""
    _positive("mlp1d", hidden=hidden, depth=depth)
    in_features = 1
    for size in input_shape:
        in_features *= size
    return _ResidualMLP(in_features, hidden, depth, num_classes, residual)


def _conv_length(length: int, kernel: int, stride: int, padding: int) -> int:
    return (length + 2 * padding - kernel) // stride + 1


@MODELS.register("cnn1d", revision=1)
def cnn1d(*, num_classes: int, input_shape: tuple[int, ...], channels: Count = 25) -> nn.Module:
    """The reference ConvBase: Conv1d kernels 5, 3, 3, each stride 2, padding 1, `channels` wide, ReLU after
    each, then a linear classifier on the flattened features (length 40 → 19 → 10 → 5: 5,210 parameters)."""
    _positive("cnn1d", channels=channels)
    in_channels, length = input_shape
    for kernel in (5, 3, 3):
        length = _conv_length(length, kernel, 2, 1)
    if length < 1:
        raise ValueError(f"cnn1d needs signals of length at least 5, got {input_shape[1]}")
    return nn.Sequential(
        nn.Conv1d(in_channels, channels, 5, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv1d(channels, channels, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv1d(channels, channels, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(channels * length, num_classes),
    )


def _preact_block_1d(in_channels: int, out_channels: int, stride: int) -> PreActBlock:
    """BN-ReLU-conv3, BN-ReLU-conv3 on the residual branch, as banray's 2-D PreActBlock, in one dimension."""
    body = [
        nn.Conv1d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm1d(out_channels),
        nn.ReLU(),
        nn.Conv1d(out_channels, out_channels, 3, padding=1, bias=False),
    ]
    return PreActBlock(in_channels, out_channels, stride, body, dims=1)


@MODELS.register("resnet1d", revision=1)
def resnet1d(*, num_classes: int, input_shape: tuple[int, ...], width: Count = 16, depth: at_least(8) = 8) -> nn.Module:
    """Pre-activation ResNet-`depth` for 1-D signals: a kernel-3 conv to `width` channels, three stages of
    n = (depth − 2) / 6 basic blocks (strides 1, 2, 2; widths `width`, 2·`width`, 4·`width`), BN-ReLU, global
    average pooling and a linear classifier. depth 8, width 16 has 28,314 parameters."""
    blocks, remainder = divmod(depth - 2, 6)
    if remainder or blocks < 1:
        raise ValueError(f"resnet1d depth must be 6n + 2 with n ≥ 1 (8, 14, 20, ...), got {depth}")
    _positive("resnet1d", width=width)
    channels = width
    layers: list[nn.Module] = [nn.Conv1d(input_shape[0], channels, 3, padding=1, bias=False)]
    for planes, stride in ((width, 1), (2 * width, 2), (4 * width, 2)):
        for index in range(blocks):
            layers.append(_preact_block_1d(channels, planes, stride if index == 0 else 1))
            channels = planes
    layers += [nn.BatchNorm1d(channels), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    model = nn.Sequential(*layers)
    for module in model.modules():  # He-normal convolutions, as banray's 2-D ResNets
        if isinstance(module, nn.Conv1d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return model
