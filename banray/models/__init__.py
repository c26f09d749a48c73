"""Models, chosen by name: `build_model(name, num_classes=..., input_shape=..., **kwargs)`.

Importing this package registers every model module below.
"""

from banray.models import small  # noqa: F401  (registers cnn, mlp)
from banray.models.registry import MODELS, build_model, model_arguments

__all__ = ["MODELS", "build_model", "model_arguments"]
