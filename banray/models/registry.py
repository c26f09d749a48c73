"""The model registry: `build_model(name, num_classes=..., input_shape=..., **kwargs)`.

Every builder takes `num_classes` and `input_shape` (C, H, W) from the dataset plus its own keyword
arguments from the spec; a checkpoint stores exactly these to rebuild the model.
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


def model_task(name: str) -> str:
    """The task a model is built for: "classification" unless its builder declares another."""
    return getattr(MODELS[name], "task", "classification")


def model_arguments(name: str) -> list[str]:
    """The keyword arguments a spec may set for model `name`."""
    params = inspect.signature(MODELS[name]).parameters
    return [p for p in params if p not in DATASET_ARGS]
