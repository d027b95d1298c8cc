"""Layer explainers: one module per layer type, registered by type.

Importing this package registers every built-in explainer. To add a layer
type, write a module with an `@register(nn.YourLayer)` Explainer subclass and
import it here.
"""

from . import activation, conv, flatten, linear, loss, optim, pool  # noqa: F401  (registers)
from .base import (
    ATOL,
    RTOL,
    Explainer,
    LayerCall,
    StepContext,
    Unsupported,
    explainer_for,
    register,
    registered_types,
)
from .optim import UpdateCall

__all__ = [
    "ATOL",
    "RTOL",
    "Explainer",
    "LayerCall",
    "StepContext",
    "Unsupported",
    "UpdateCall",
    "explainer_for",
    "register",
    "registered_types",
]
