"""Layer explainers: one module per layer type, registered by type.

Importing this package registers every built-in explainer. To add a layer
type, write a module with an `@register(nn.YourLayer)` Explainer subclass and
import it here.
"""

from . import (  # noqa: F401  (importing registers the explainers)
    activation,
    batchnorm,
    conv,
    dropout,
    elementwise,  # Add: x + y in a forward
    flatten,
    linear,
    loss,
    optim,
    pool,
    softmax,
)
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
