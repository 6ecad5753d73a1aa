"""What still behaves as in training after ``model.eval()``: facts about the eval pass that several
rules read (mode-not-propagated reports them; the BatchNorm rules leave them to it)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.modules.dropout import _DropoutNd

from cnncheck.changes import ArgumentChange, NoFix, call_argument
from cnncheck.layers import LayerKind
from cnncheck.ops import RANDOM_FUNCTIONS
from cnncheck.preserve import guarding_writes
from cnncheck.probes import mismatch
from cnncheck.trace import Node, Trace

MODAL_KINDS = (LayerKind.BATCH_NORM, LayerKind.DROPOUT)
# functional op -> (position of its ``training`` argument, its default)
TRAINING_ARGUMENT = {
    "batch_norm": (5, False),
    "instance_norm": (5, True),
    "dropout": (2, True),
    "dropout1d": (2, True),
    "dropout2d": (2, True),
    "dropout3d": (2, True),
    "alpha_dropout": (2, False),
    "feature_alpha_dropout": (2, False),
}


@dataclass(frozen=True)
class Leak:
    node: Node
    reason: str  # "module", "functional" or "random"


def eval_leaks(trace: Trace) -> list[Leak]:
    """What still behaves as in training during the eval pass."""
    leaks = []
    for node in trace.nodes:
        if node.module is not None:
            if node.kind in MODAL_KINDS and node.training:
                leaks.append(Leak(node, "module"))
            elif node.kind is LayerKind.DROPOUT and _drops_in_eval(node):
                leaks.append(Leak(node, "dropout-ignores-mode"))
        elif functional_training(node):
            leaks.append(Leak(node, "functional"))
        elif node.func_name in RANDOM_FUNCTIONS:
            leaks.append(Leak(node, "random"))
    return leaks


def _drops_in_eval(node: Node) -> bool:
    """A hand-written dropout in eval mode must be the identity; torch's own dropout is. One that calls
    torch's dropout is judged by the training argument of that call; one written out is run on an
    input without zeros (a dead ReLU before it would hide the mask)."""
    if isinstance(node.module, _DropoutNd) or node.probe_input is None:
        return False
    calls = [n for n in node.inner if n.module is None and n.func_name in TRAINING_ARGUMENT]
    if calls:
        return any(functional_training(call) for call in calls)
    telling = node.probe_input.abs() + 1
    with torch.no_grad(), guarding_writes():
        out = node.module(telling.clone())  # type: ignore[misc]
    return isinstance(out, torch.Tensor) and mismatch(out, telling) is not None


def functional_training(node: Node) -> bool:
    spec = TRAINING_ARGUMENT.get(node.func_name)
    if spec is None:
        return False
    position, default = spec
    value = node.kwargs.get("training", node.args[position] if len(node.args) > position else default)
    if node.func_name == "instance_norm":
        return False  # instance norm uses instance statistics in both modes by design
    return bool(value)


def has_running_statistics(node: Node) -> bool:
    """Whether a functional batch_norm call was handed running statistics to use in eval mode."""
    stats = [node.kwargs.get(k, node.args[i] if len(node.args) > i else None)
             for i, k in ((1, "running_mean"), (2, "running_var"))]
    return all(isinstance(s, torch.Tensor) for s in stats)


def training_follows_mode(node: Node, *, safe: bool) -> ArgumentChange | NoFix | None:
    """``training=self.training`` in a call of torch.nn.functional's dropouts or batch_norm. Safe where the
    call trains in eval mode (the eval pass is then what ``nn.Dropout`` does); unsafe where it is off in
    train mode (``training=False`` written: the train pass changes). Otherwise why not."""
    import torch.nn.functional as F

    location = node.location or ""
    if node.func is not getattr(F, node.func_name, None):
        return NoFix(location, f"{node.func_name} is not torch.nn.functional's (torch.{node.func_name} takes "
                     f"train, not training): call F.{node.func_name}(..., training=self.training) instead")
    if node.func_name == "instance_norm":
        return None
    if node.func_name == "batch_norm" and not has_running_statistics(node):
        return NoFix(location, "F.batch_norm has no running statistics to use in eval mode: register "
                     "running_mean and running_var buffers and pass them, or use nn.BatchNorm2d")
    return call_argument(node.func, node.func_name, "training", "self.training", node.location,
                         f"F.{node.func_name}(..., training=self.training): model.eval() switches it",
                         safe=safe)
