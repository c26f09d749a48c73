"""Model registry: `build_model(name, num_classes=..., input_shape=..., **kwargs)`.

Every builder takes `num_classes` and `input_shape` (C, H, W) from the dataset plus its own
keyword arguments from the spec; a checkpoint stores exactly these to rebuild the model.
"""

from __future__ import annotations

import inspect
from typing import Callable

from torch import nn

from banray.registry import Registry

ModelBuilder = Callable[..., nn.Module]
MODELS: Registry[ModelBuilder] = Registry("model")

# Filled in from the dataset, never by the spec.
DATASET_ARGS = ("num_classes", "input_shape")


def build_model(name: str, *, num_classes: int, input_shape: tuple[int, ...], **kwargs) -> nn.Module:
    return MODELS[name](num_classes=num_classes, input_shape=tuple(input_shape), **kwargs)


def model_arguments(name: str) -> list[str]:
    """The keyword arguments a spec may set for model `name`."""
    params = inspect.signature(MODELS[name]).parameters
    return [p for p in params if p not in DATASET_ARGS]


@MODELS.register("cnn")
def small_cnn(*, num_classes: int, input_shape: tuple[int, ...], width: int = 32, dropout: float = 0.0) -> nn.Module:
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


@MODELS.register("mlp")
def mlp(
    *, num_classes: int, input_shape: tuple[int, ...], hidden: int = 128, depth: int = 2, dropout: float = 0.0
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
