"""The model registry: `build_model(name, num_classes=..., input_shape=..., **kwargs)`.

Every builder takes `num_classes` and `input_shape` (C, H, W) from the dataset plus its own keyword
arguments from the spec; a checkpoint stores exactly these to rebuild the model.

Each model is registered with its code revision (`MODELS.register(name, revision=n)`): the number to bump
when a change to its code changes the function that the same kwargs and weights compute. A checkpoint
records it, and a teacher or a teacher-logit cache made by another revision is never taken for the model.

Kwargs come from specs and from checkpoints' metadata, so `build_model` first builds the model on torch's
meta device (shapes only, no memory) and refuses one with more than MAX_PARAMETERS parameters before
allocating anything (ModelTooLarge). Builders create their tensors without naming a device and never read
a tensor's values (the meta device has none), which is what lets the meta device hold them.

Each builder declares the range of its arguments in its signature (`width: Count`, `depth: at_least(10)`);
a spec's kwargs are checked against it before anything is built (argument_problem).
"""

from __future__ import annotations

import inspect
import threading
import typing
from typing import Annotated, Any, Callable

import pydantic
import torch
from torch import nn

from banray.catalog.registry import Registry

ModelBuilder = Callable[..., nn.Module]


class ModelRegistry(Registry[ModelBuilder]):
    """The models by name, each with the revision of the function its code computes."""

    def __init__(self):
        super().__init__("model")
        self._revisions: dict[str, int] = {}

    def register(self, name: str, *, revision: int) -> Callable[[ModelBuilder], ModelBuilder]:
        add = super().register(name)

        def add_with_revision(builder: ModelBuilder) -> ModelBuilder:
            add(builder)
            self._revisions[name] = revision
            return builder

        return add_with_revision

    def revision(self, name: str) -> int:
        """The revision of model `name`'s code."""
        self[name]  # an unknown name: the KeyError that names the allowed models
        return self._revisions[name]


MODELS = ModelRegistry()

# Filled in from the dataset, never by the spec.
DATASET_ARGS = ("num_classes", "input_shape")

# A builder declares the range of each argument in its signature, as pydantic bounds (`depth: at_least(10)`);
# spec validation checks a spec's kwargs against them (argument_problem), so a new builder declares its own.
Count = Annotated[int, pydantic.Field(ge=1)]  # channels, units, layers: zero builds no network
Dropout = Annotated[float, pydantic.Field(ge=0, lt=1)]  # 1 drops every activation: the output is constant
Scale = Annotated[float, pydantic.Field(gt=0)]  # a factor on channel counts
Share = Annotated[float, pydantic.Field(gt=0, le=1)]  # a share of channels kept


def at_least(minimum: int) -> Any:
    """A whole-number argument of `minimum` or more (a depth below it has no block)."""
    return Annotated[int, pydantic.Field(ge=minimum)]

# The most parameters build_model allocates: far above every paper model (WRN-28-10 has 36.5 M), far below
# what would exhaust a node's memory before the first batch.
MAX_PARAMETERS = 2_000_000_000
# The most parameter tensors a build may create. The meta build costs no memory per element but Python
# time and objects per tensor, so absurd depths (wrn depth 10**9) stop here instead of running for hours;
# the deepest paper model (PreAct-ResNet-1001) has about 3,000; hitting the cap costs about two seconds.
MAX_PARAMETER_TENSORS = 20_000


class _ModelError(ValueError):
    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message  # the message without the model and kwargs it names


class ModelTooLarge(_ModelError):
    """A model whose kwargs ask for more than MAX_PARAMETERS parameters (or MAX_PARAMETER_TENSORS tensors)."""


class ModelBuildError(_ModelError):
    """A builder failed with something other than TypeError or ValueError (RuntimeError from torch, an
    IndexError on a short input_shape, ...): the kwargs cannot build the model."""


class ModelArgumentOutOfRange(_ModelError):
    """A kwarg outside the range its builder declares (a zero width, a negative depth, dropout 1)."""


def _describe(name: str, kwargs: dict[str, Any]) -> str:
    text = f"model {name!r} with kwargs {kwargs!r}"
    return text if len(text) <= 300 else text[:297] + "..."


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


_counting = threading.local()  # the tensor count of the meta build running on this thread, if any


def _count_registration(module: nn.Module, name: str, param) -> None:
    limit = getattr(_counting, "limit", None)
    if limit is None or param is None:
        return
    _counting.tensors += 1
    if _counting.tensors > limit:
        raise ModelTooLarge(f"more than {limit:,} parameter tensors")


# Global (every nn.Module in the process), but a no-op outside a meta build on the calling thread.
nn.modules.module.register_module_parameter_registration_hook(_count_registration)


def _call(name: str, builder: ModelBuilder, num_classes: int, input_shape: tuple[int, ...], kwargs: dict) -> nn.Module:
    try:
        return builder(num_classes=num_classes, input_shape=input_shape, **kwargs)
    except (TypeError, ValueError):
        raise
    except Exception as exc:
        reason = _first_line(exc)
        raise ModelBuildError(f"{_describe(name, kwargs)} cannot be built: {reason}", reason) from exc


def count_parameters(name: str, *, num_classes: int, input_shape: tuple[int, ...], **kwargs) -> int:
    """The number of parameters of model `name` with these arguments, from a build on the meta device that
    allocates nothing; ModelArgumentOutOfRange for a kwarg outside its builder's declared range, ModelTooLarge
    above MAX_PARAMETERS, and the builder's errors as build_model raises them."""
    builder = MODELS[name]
    _check_ranges(name, kwargs)
    input_shape = tuple(input_shape)
    outer = getattr(_counting, "limit", None), getattr(_counting, "tensors", 0)  # a builder may build others
    _counting.limit, _counting.tensors = MAX_PARAMETER_TENSORS, 0
    try:
        with torch.device("meta"):
            model = _call(name, builder, num_classes, input_shape, kwargs)
    except ModelTooLarge as exc:
        reason = f"too large: it creates {exc}, over the cap of {MAX_PARAMETER_TENSORS:,} (MAX_PARAMETER_TENSORS)"
        raise ModelTooLarge(f"{_describe(name, kwargs)} is {reason}", reason) from None
    finally:
        _counting.limit, _counting.tensors = outer
    count = sum(p.numel() for p in model.parameters())  # each shared (tied) parameter once
    if count > MAX_PARAMETERS:
        reason = f"too large: {count:,} parameters, over the cap of {MAX_PARAMETERS:,} (MAX_PARAMETERS)"
        raise ModelTooLarge(f"{_describe(name, kwargs)} is {reason}", reason)
    return count


def build_model(name: str, *, num_classes: int, input_shape: tuple[int, ...], **kwargs) -> nn.Module:
    """The model `name` built from the dataset's arguments and its kwargs. Raises KeyError for an unknown
    name; TypeError or ValueError as the builder raises them (unknown or ill-typed kwargs, invalid values);
    ModelArgumentOutOfRange (a ValueError) for a kwarg outside the range its builder declares; ModelTooLarge
    (a ValueError) above the parameter cap, checked on the meta device before allocating;
    ModelBuildError (a ValueError) for any other error of the builder."""
    builder = MODELS[name]
    count_parameters(name, num_classes=num_classes, input_shape=input_shape, **kwargs)
    return _call(name, builder, num_classes, tuple(input_shape), kwargs)


def model_task(name: str) -> str:
    """The task a model is built for: "classification" unless its builder declares another."""
    return getattr(MODELS[name], "task", "classification")


def model_arguments(name: str) -> list[str]:
    """The keyword arguments a spec may set for model `name`."""
    return list(model_defaults(name))


def model_defaults(name: str) -> dict[str, Any]:
    """The spec-settable keyword arguments of model `name` with their defaults (None where it has none)."""
    params = inspect.signature(MODELS[name]).parameters
    return {p: (v.default if v.default is not inspect.Parameter.empty else None) for p, v in params.items()
            if p not in DATASET_ARGS}


def uses_dropout(name: str, kwargs: dict[str, Any]) -> bool:
    """Whether model `name` with `kwargs` (over its defaults) drops activations at random: some argument its builder
    declares as a Dropout rate is above 0."""
    hints = typing.get_type_hints(MODELS[name], include_extras=True)
    values = {**model_defaults(name), **kwargs}
    return any(hints.get(argument) == Dropout and isinstance(rate, (int, float)) and rate > 0
               for argument, rate in values.items())


def _check_ranges(name: str, kwargs: dict[str, Any]) -> None:
    """ModelArgumentOutOfRange for the first kwarg outside its builder's declared range: kwargs from a spec are
    checked at validation already, those from a checkpoint's metadata only here."""
    for argument, value in kwargs.items():
        problem = argument_problem(name, argument, value)
        if problem is not None:
            reason = f"{argument} {value!r} is not allowed: {problem}"
            raise ModelArgumentOutOfRange(f"{_describe(name, kwargs)}: {reason}", reason)


def argument_problem(name: str, argument: str, value: Any) -> str | None:
    """Why `value` lies outside the range model `name`'s builder declares for `argument`, or None."""
    hint = typing.get_type_hints(MODELS[name], include_extras=True).get(argument, Any)
    try:
        pydantic.TypeAdapter(hint).validate_python(value)
    except pydantic.ValidationError as exc:
        return exc.errors()[0]["msg"]
    return None
