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


# ---------------------------------------------------------------- views of one iteration

INPUT = "input"  # the batch, its labels and the weights before the step
WHATIF = "whatif"  # the what-if section
STAGE_TITLES = {INPUT: "Input", **SECTION_TITLES, WHATIF: "What if"}


@dataclass(frozen=True)
class View:
    """What the iteration page shows: one phase, or one layer of a phase.

    `phase` is "input", a section key ("forward", "loss", "backward", "update") or
    "whatif"; `layer` narrows a section to that layer's steps (None: the whole phase)."""

    phase: str = INPUT
    layer: str | None = None

    @property
    def title(self) -> str:
        title = STAGE_TITLES.get(self.phase, self.phase.title())
        return f"{title} · {self.layer}" if self.layer is not None else title


def layers_of(section: Section) -> list[str]:
    """The layers of a section in the order they first act (a module called twice once)."""
    return list(dict.fromkeys(layer for layer, _ in section.groups))


def find_view(parts: list[Section], phase: str | None, layer: str | None) -> View | None:
    """The view that `phase` and `layer` name, or None when this iteration has no such thing.

    No phase is the input; a layer needs a phase that has it."""
    phase = phase or INPUT
    if phase in (INPUT, WHATIF):
        return View(phase) if layer is None else None
    section = next((s for s in parts if s.key == phase), None)
    if section is None or (layer is not None and layer not in layers_of(section)):
        return None
    return View(phase, layer)


def walk(parts: list[Section], *, by_layer: bool = True) -> list[View]:
    """Every view in the student's order: input, each phase (or each layer of each phase),
    what if."""
    out = [View(INPUT)]
    for section in parts:
        if by_layer:
            out += [View(section.key, layer) for layer in layers_of(section)]
        else:
            out.append(View(section.key))
    return [*out, View(WHATIF)]


def neighbours(parts: list[Section], view: View) -> tuple[View | None, View | None]:
    """The views before and after `view`: layer by layer from a layer, the input or what
    if; phase by phase from a whole phase."""
    order = walk(parts, by_layer=view.layer is not None or view.phase in (INPUT, WHATIF))
    at = order.index(view)
    return (order[at - 1] if at > 0 else None, order[at + 1] if at + 1 < len(order) else None)


def in_view(parts: list[Section], view: View) -> list[Section]:
    """The sections (with only the view's layer's groups, for a layer) the view shows."""
    shown = []
    for section in parts:
        if section.key != view.phase:
            continue
        groups = [g for g in section.groups if view.layer is None or g[0] == view.layer]
        shown.append(Section(section.key, section.title, groups))
    return shown
