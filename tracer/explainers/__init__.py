"""Layer explainers: one module per layer type, registered by type.

Every module in this package is imported here, which registers its explainers:
to add a layer type, write a module with an `@register(nn.YourLayer,
functional=[F.your_layer])` Explainer subclass. There is no list to edit.
"""

import importlib
import pkgutil

from .base import (
    ATOL,
    RTOL,
    Explainer,
    Functional,
    LayerCall,
    StepContext,
    Unsupported,
    explainer_for,
    functional_form,
    functional_forms,
    register,
    registered_types,
)
from .optim import UpdateCall

# Discovery: importing every module of the package registers its explainers.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "ATOL",
    "RTOL",
    "Explainer",
    "Functional",
    "LayerCall",
    "StepContext",
    "Unsupported",
    "UpdateCall",
    "explainer_for",
    "functional_form",
    "functional_forms",
    "register",
    "registered_types",
]
