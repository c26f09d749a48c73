"""Small models for the 8×8 digits and the synthetic dataset."""

from __future__ import annotations

from torch import nn

from banray.catalog.models.registry import MODELS, Count, Dropout, at_least


@MODELS.register("cnn", revision=1)
def small_cnn(
    *, num_classes: int, input_shape: tuple[int, ...], width: Count = 32, dropout: Dropout = 0.0
) -> nn.Module:
    """Two 3×3 conv-BN-ReLU stages, pooled to 4×4 and a linear classifier: about a second per epoch on digits."""
    channels = input_shape[0]
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, 2 * width, 3, padding=1, stride=2, bias=False),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(4),  # keeps the layout of a digit; global pooling would discard it
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(2 * width * 16, num_classes),
    )


@MODELS.register("mlp", revision=1)
def mlp(
    *, num_classes: int, input_shape: tuple[int, ...], hidden: Count = 128, depth: at_least(0) = 2,
    dropout: Dropout = 0.0,
) -> nn.Module:
    """`depth` hidden layers of `hidden` ReLU units on the flattened input."""
    in_features = 1
    for size in input_shape:
        in_features *= size
    layers: list[nn.Module] = [nn.Flatten()]
    for _ in range(depth):
        layers += [nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        in_features = hidden
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)
