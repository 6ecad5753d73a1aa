"""Where forward loses the batch axis: a reshape that folds samples together. Read by
feature-size-mismatch, which reports it, and by the BatchNorm rules, which leave it to that rule."""

from __future__ import annotations

import math

import torch
from torch.utils._pytree import tree_flatten

from cnncheck.context import CheckContext
from cnncheck.ops import RESHAPES
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
