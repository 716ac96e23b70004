"""Model registry: names -> (nn.Module, preprocessing, class labels)."""

from convscope.models.preprocessing import Preprocessing
from convscope.models.registry import BUILTIN_MODELS, DEFAULT_MODEL, load_model
from convscope.models.spec import LoadedModel

__all__ = ["BUILTIN_MODELS", "DEFAULT_MODEL", "LoadedModel", "Preprocessing", "load_model"]
