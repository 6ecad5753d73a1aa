"""Where forward loses the batch axis: a reshape that folds samples together, or one that writes the
batch size into forward. Read by feature-size-mismatch, which reports them, and by the BatchNorm rules,
which leave them to that rule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.utils._pytree import tree_flatten

from cnncheck.context import CheckContext
from cnncheck.frames import function_name
from cnncheck.ops import RESHAPES, requested_shape, shown_arguments
from cnncheck.trace import Node


def batch_fold(ctx: CheckContext) -> Node | None:
    """The reshape that folds samples together, when the model's output lost its batch size."""
    batch = ctx.batch_size
    trace = ctx.train_trace
    outputs = [t for t in tree_flatten(trace.output)[0] if isinstance(t, torch.Tensor) and t.dim()]
    if not outputs or any(t.shape[0] == batch for t in outputs):
        return None  # the batch comes out intact (it may be regrouped on the way, e.g. into patches)
    for node in trace.nodes:
        if node.module is not None or node.func_name not in RESHAPES or not node.inputs or not node.outputs:
            continue
        before, after = node.inputs[0], node.outputs[0]
        if before.dim() and before.shape[0] == batch and after.dim() and after.shape[0] != batch \
                and not _merges_leading_dims(before.shape, after.shape):
            return node
    return None


def _merges_leading_dims(before: torch.Size, after: torch.Size) -> bool:
    """(N, H, W, C) -> (N*H*W, C): rows of whole elements, samples kept apart (per-pixel logits for a
    cross-entropy), unlike (N, 512) -> (2N, 256), which cuts each sample in two."""
    return any(tuple(before[k:]) == tuple(after[1:]) and math.prod(before[:k]) == after[0]
               for k in range(2, len(before)))


@dataclass(frozen=True)
class HardCodedBatch:
    """A reshape that makes ``rows`` rows whatever the batch: ``call`` at ``location`` in ``scope``, which
    turned one sample of shape ``before`` into ``after`` (None when the reshape itself raised)."""

    call: str  # "view(4, -1)"
    rows: int
    scope: str
    location: str | None
    before: tuple[int, ...]
    after: tuple[int, ...] | None


def hard_coded_batch(ctx: CheckContext) -> HardCodedBatch | None:
    """The reshape that makes ``ctx.batch_size`` rows whatever the batch (``x.view(4, -1)``), found where
    the forward of one sample alone raises."""
    trace = ctx.first_sample_failure()
    if trace is None:
        return None
    batch = ctx.batch_size
    for node in trace.nodes:
        if node.module is None and node.func_name in RESHAPES and node.inputs and node.outputs \
                and node.inputs[0].dim() and node.inputs[0].shape[0] == 1 and node.outputs[0].dim() >= 2 \
                and node.outputs[0].shape[0] == batch and _requested_rows(node.args) == batch:
            return HardCodedBatch(f"{node.func_name}{shown_arguments(node.args)}", batch, node.scope, node.location,
                                  tuple(node.inputs[0].shape), tuple(node.outputs[0].shape))
    failed = trace.failed
    if failed is not None and failed.func is not None and function_name(failed.func) in RESHAPES \
            and failed.inputs and failed.inputs[0].dim() and failed.inputs[0].shape[0] == 1 \
            and _requested_rows(failed.args) == batch:
        return HardCodedBatch(f"{function_name(failed.func)}{shown_arguments(failed.args)}", batch,
                              failed.module_stack[-1] if failed.module_stack else "", failed.location,
                              tuple(failed.inputs[0].shape), None)
    return None


def _requested_rows(args: tuple[object, ...]) -> int | None:
    sizes = requested_shape(args)
    return sizes[0] if sizes else None
