"""How an iteration's steps are ordered and grouped for the iteration view.

Stored order is forward (call order), backward (reverse call order), then the
optimizer's updates. The page shows them as sections -- forward pass, loss,
backward pass, weight update -- each a run of consecutive steps per layer,
numbered 1..N across the whole iteration.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from storage import LayerInfo, StepRecord

SECTION_TITLES = {
    "forward": "Forward pass",
    "loss": "Loss",
    "backward": "Backward pass",
    "update": "Weight update",
}


@dataclass
class Section:
    key: str  # "forward", "loss", "backward", "update"
    title: str
    groups: list[tuple[str, list[tuple[int, StepRecord]]]] = field(
        default_factory=list
    )  # (layer, numbered steps)


def is_loss_layer(name: str, layers: dict[str, LayerInfo]) -> bool:
    """The criterion's forward steps form the Loss section (its type ends in 'Loss')."""
    info = layers.get(name)
    return info.type.endswith("Loss") if info is not None else name == "loss"


def sections(steps: list[StepRecord], layers: dict[str, LayerInfo]) -> list[Section]:
    """The steps in stored order, numbered from 1, in sections of consecutive layer groups."""
    out = {key: Section(key, title) for key, title in SECTION_TITLES.items()}
    for number, step in enumerate(sorted(steps, key=lambda s: s.position), start=1):
        key = step.phase
        if step.phase == "forward" and is_loss_layer(step.layer, layers):
            key = "loss"
        section = out.setdefault(key, Section(key, key.title()))
        if section.groups and section.groups[-1][0] == step.layer:
            section.groups[-1][1].append((number, step))
        else:
            section.groups.append((step.layer, [(number, step)]))
    return [s for s in out.values() if s.groups]
