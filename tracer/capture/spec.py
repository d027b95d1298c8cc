"""Plain specs of modules and optimizers: what an explainer reads of them, as data.

A captured call does not point at its `nn.Module`, and a captured iteration does not
point at the optimizer: each carries a spec instead, built on the training thread at
the moment of the call (or of the step). A spec holds

- `type`: the name of the registered explainer type it matched ("Conv2d", "Hardtanh"
  for an nn.ReLU6), or None for a type with no explainer;
- `lineage`: the class names from its own class up to that type ("ReLU6", "Hardtanh");
- `settings`: the plain public attributes (numbers, strings, booleans, None and tuples
  of them: stride, padding, eps, momentum, p, reduction...), and which parameters it
  has (`params`: local name -> present);
- `arrays`: its buffers as NumPy arrays (BatchNorm's running statistics before the
  call, a loss's class weights);
- for optimizers, `param_groups`: each group's hyper-parameters.

Explainers read a spec as they read a module (`spec.stride`, `spec.bias is not None`),
so the same code explains a live capture, a captured iteration sent to another
process, and one read back from a store by `cnnviz explain`. Turning a spec back into
anything is a lookup in the explainer registry by name: no class named by a store is
ever imported. Specs go to and from JSON with `to_json` / `from_json`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_PLAIN = (bool, int, float, str, type(None))


def plain(value: Any, depth: int = 0) -> tuple[bool, Any]:
    """(True, value as plain data) for numbers, strings, None and nested tuples/lists of
    them (lists become tuples); a 0-d tensor or NumPy scalar becomes its number.
    (False, None) for anything else."""
    if isinstance(value, _PLAIN):
        return True, value
    if isinstance(value, (tuple, list)) and depth < 3:
        items = [plain(v, depth + 1) for v in value]
        if all(ok for ok, _ in items):
            return True, tuple(v for _, v in items)
        return False, None
    if isinstance(value, np.generic) and value.ndim == 0:
        return True, value.item()
    if hasattr(value, "numel") and hasattr(value, "item"):  # a torch scalar tensor (an lr)
        try:
            if value.numel() == 1 and not value.requires_grad:
                return True, value.item()
        except Exception:
            return False, None
    return False, None


def _tuples(value: Any) -> Any:
    """JSON gives lists back: settings hold tuples, as the modules do."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def _json_number(value: Any) -> Any:
    """Floats JSON cannot write (inf, NaN) as strings that `_tuples_back` reads again."""
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": repr(value)}
    if isinstance(value, tuple):
        return [_json_number(v) for v in value]
    return value


def _from_json_number(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"float"}:
        return float(value["float"])
    if isinstance(value, list):
        return [_from_json_number(v) for v in value]
    return value


@dataclass
class Spec:
    """The common part of a module spec and an optimizer spec."""

    type: str | None  # the registered type's name; None: no explainer for it
    lineage: tuple[str, ...]  # own class name first, up to the registered type
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def cls(self) -> str:
        """The class's own name ("ReLU6"), as shown to people."""
        return self.lineage[0] if self.lineage else (self.type or "")

    def is_a(self, name: str) -> bool:
        return name in self.lineage


@dataclass
class ModuleSpec(Spec):
    params: dict[str, bool] = field(default_factory=dict)  # local name -> not None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # buffers, by local name
    text: str = ""  # the first line of repr(), for a type with no explainer only

    def __getattr__(self, name: str) -> Any:
        # Only called for names that are not fields: the module's settings.
        if name.startswith("__"):
            raise AttributeError(name)
        settings = self.__dict__.get("settings", {})
        if name in settings:
            return settings[name]
        arrays = self.__dict__.get("arrays", {})
        if name in arrays:
            return arrays[name]
        params = self.__dict__.get("params", {})
        if name in params:
            return True if params[name] else None  # `spec.bias is not None`
        raise AttributeError(f"{self.cls} spec has no setting {name!r}")

    def __repr__(self) -> str:
        if self.text:
            return self.text
        shown = ", ".join(f"{k}={v!r}" for k, v in self.settings.items() if k != "training")
        return f"{self.cls}({shown})"

    def to_json(self) -> dict:
        """JSON-ready dict; the arrays are left out (the caller stores them apart)."""
        return {
            "type": self.type,
            "lineage": list(self.lineage),
            "settings": {k: _json_number(v) for k, v in self.settings.items()},
            "params": dict(self.params),
            "arrays": sorted(self.arrays),
            "text": self.text,
        }

    @classmethod
    def from_json(cls, data: dict, arrays: dict[str, np.ndarray]) -> ModuleSpec:
        return cls(
            type=data["type"],
            lineage=tuple(data["lineage"]),
            settings=_tuples({k: _from_json_number(v) for k, v in data["settings"].items()}),
            params={str(k): bool(v) for k, v in data["params"].items()},
            arrays={k: arrays[k] for k in data["arrays"]},
            text=str(data.get("text", "")),
        )


@dataclass
class OptimizerSpec(Spec):
    # Each group's hyper-parameters (no "params"), as at optimizer.step().
    param_groups: list[dict[str, Any]] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"{self.cls}(groups={len(self.param_groups)})"

    def to_json(self) -> dict:
        return {
            "type": self.type,
            "lineage": list(self.lineage),
            "settings": {k: _json_number(v) for k, v in self.settings.items()},
            "param_groups": [
                {k: _json_number(v) for k, v in group.items()} for group in self.param_groups
            ],
        }

    @classmethod
    def from_json(cls, data: dict) -> OptimizerSpec:
        return cls(
            type=data["type"],
            lineage=tuple(data["lineage"]),
            settings=_tuples({k: _from_json_number(v) for k, v in data["settings"].items()}),
            param_groups=[
                _tuples({k: _from_json_number(v) for k, v in group.items()})
                for group in data["param_groups"]
            ],
        )


def plain_settings(obj: Any) -> dict[str, Any]:
    """The public attributes of an object that are plain data, by name."""
    settings = {}
    for key, value in vars(obj).items():
        if key.startswith("_"):
            continue
        ok, value = plain(value)
        if ok:
            settings[key] = value
    return settings


def plain_group(group: dict) -> dict[str, Any]:
    """A parameter group's hyper-parameters as plain data ("params" left out)."""
    out = {}
    for key, value in group.items():
        if key == "params":
            continue
        ok, value = plain(value)
        if ok:
            out[str(key)] = value
    return out


# ---------------------------------------------------------------- from live objects


def _lineage(obj: Any, registered: type | None) -> tuple[str, ...]:
    names = []
    for cls in type(obj).__mro__:
        names.append(cls.__name__)
        if cls is registered or registered is None:
            break
    return tuple(names)


def module_spec(module: Any, buffers: dict[str, np.ndarray] | None = None) -> ModuleSpec:
    """The spec of a module at this moment. `buffers`: copies already made of its
    buffers (a leaf module's call has them); otherwise they are copied here."""
    from ..explainers.base import registered_class
    from .records import to_numpy

    registered = registered_class(module)
    if registered is None:
        text = repr(module).splitlines()
        return ModuleSpec(type=None, lineage=_lineage(module, None), text=text[0] if text else "")
    if buffers is None:
        buffers = {
            local: a
            for local, b in module.named_buffers(recurse=False)
            if b is not None and (a := to_numpy(b)) is not None
        }
    return ModuleSpec(
        type=registered.__name__,
        lineage=_lineage(module, registered),
        settings=plain_settings(module),
        # Which parameters and buffers it has: `spec.bias is not None` as on the module.
        params={
            **{local: p is not None for local, p in module._parameters.items()},
            **{local: False for local, b in module._buffers.items() if b is None},
        },
        arrays=dict(buffers),
    )


def optimizer_spec(optimizer: Any) -> OptimizerSpec:
    from ..explainers.base import registered_class

    registered = registered_class(optimizer)
    return OptimizerSpec(
        type=registered.__name__ if registered is not None else None,
        lineage=_lineage(optimizer, registered),
        settings=plain_group(getattr(optimizer, "defaults", {}) or {}),
        param_groups=[plain_group(g) for g in optimizer.param_groups],
    )
