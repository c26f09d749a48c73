"""Models, chosen by name: `build_model(name, num_classes=..., input_shape=..., **kwargs)`.

Importing this package registers every model module below.
"""

from banray.catalog.models import densenet  # noqa: F401  (registers densenet_bc)
from banray.catalog.models import lstm  # noqa: F401  (registers lstm_lm)
from banray.catalog.models import preact_resnet  # noqa: F401  (registers preact_resnet)
from banray.catalog.models import signal1d  # noqa: F401  (registers mlp1d, cnn1d, resnet1d)
from banray.catalog.models import small  # noqa: F401  (registers cnn, mlp)
from banray.catalog.models import wrn  # noqa: F401  (registers wrn)
from banray.catalog.models.registry import (
    MAX_PARAMETERS,
    MODELS,
    ModelBuildError,
    ModelTooLarge,
    argument_problem,
    build_model,
    count_parameters,
    model_arguments,
    model_defaults,
    uses_dropout,
)

__all__ = [
    "MAX_PARAMETERS", "MODELS", "ModelBuildError", "ModelTooLarge", "argument_problem", "build_model",
    "count_parameters",
    "model_arguments", "model_defaults", "uses_dropout",
]
