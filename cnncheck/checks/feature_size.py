"""``feature-size-mismatch``: the flattened feature map fits the next ``Linear``, batch intact."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, cast

import torch
from torch import nn

from cnncheck.batch_axis import batch_fold, hard_coded_batch
from cnncheck.changes import ArgumentChange, call_argument, layer_argument
from cnncheck.context import CheckContext
from cnncheck.findings import Finding, Severity
from cnncheck.formulas import output_size, output_size_text
from cnncheck.frames import function_name
from cnncheck.layers import LayerKind, as_tuple, short_repr
from cnncheck.ops import RESHAPES, requested_shape, shown_arguments
from cnncheck.repairs import is_repaired
from cnncheck.rules import Diagnosis, Repair, Rule
from cnncheck.trace import Node, Source


@dataclass(frozen=True)
class Geometry:
    """How one conv/pool layer maps a spatial size: the output-size formula's numbers."""

    node: Node
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    ceil_mode: bool = False
    adaptive: tuple[int, ...] | None = None

    def size(self, size: int, axis: int) -> int:
        if self.adaptive is not None:
            return self.adaptive[axis]
        return output_size(size, self.kernel[axis], self.stride[axis], self.padding[axis],
                           self.dilation[axis], self.ceil_mode)

    def text(self, size: int, axis: int) -> str:
        if self.adaptive is not None:
            return f"adaptive: output size {self.adaptive[axis]}"
        return output_size_text(size, self.kernel[axis], self.stride[axis], self.padding[axis],
                                self.dilation[axis], self.ceil_mode)

    def label(self) -> str:
        if self.node.module is not None:
            return f"{self.node.name} {_module_repr(self.node.module)}"
        return f"F.{self.node.func_name}(kernel_size={_one(self.kernel)}, stride={_one(self.stride)}) at {self.node.location}"


def check(ctx: CheckContext, rule: Rule) -> Iterator[Finding]:
    for finding in (_folded_batch(ctx, rule), _hard_coded_batch(ctx, rule)):
        if finding is not None:
            yield finding


def diagnose(ctx: CheckContext, rule: Rule) -> Diagnosis | None:
    """A forward that raises at a Linear (or a reshape for one) of the wrong size, repaired by handing it
    the features it expects, so the rules check the layers after it too."""
    failed = ctx.train_trace.failed
    finding = _explain_failure(ctx, rule) if failed is not None else None
    if finding is None:
        return None
    return Diagnosis(finding, _repair(ctx, failed))


def _repair(ctx: CheckContext, failed: Any) -> Repair | None:
    """The Linear module, the ``F.linear`` with the model's own weight, or the ``view(-1, K)`` line that
    raised, fitted to its size; None for a batch flattened into one vector (no size would be right)."""
    if not failed.inputs or failed.inputs[0].dim() < 2:
        return None
    module = failed.module if failed.func is None else None
    if module is not None:
        expected = getattr(module, "in_features", None)
        if ctx.modules[module].kind is not LayerKind.LINEAR or not isinstance(expected, int):
            return None
        name = ctx.modules[module].name
        return Repair(module, -1, expected, f"as if {name} received {expected} features (its input cut or "
                                            f"zero-padded to that size)")
    name = function_name(failed.func) if failed.func is not None else ""
    if name == "linear" and len(failed.inputs) > 1 and failed.inputs[1].dim() == 2 \
            and str(failed.sources[1]).startswith(("param:", "buffer:")):
        weight = failed.inputs[1]
        owner = str(failed.sources[1]).split(":", 1)[1]
        expected = int(weight.shape[1])
        return Repair(None, -1, expected, f"as if F.linear with {owner} received {expected} features (its "
                                          f"input cut or zero-padded to that size)", weight=weight)
    requested = _flat_request(failed) if name in ("view", "reshape") else None
    if requested is not None and failed.location is not None:
        return Repair(None, -1, requested, f"as if {name}(-1, {requested}) at {failed.location} received "
                                           f"{requested} features per sample (cut or zero-padded)",
                      reshape_at=failed.location)
    return None


def _flat_request(failed: Any) -> int | None:
    """K of a ``view(-1, K)`` or ``reshape(-1, K)`` call, else None."""
    requested = requested_shape(failed.args)
    if len(requested) == 2 and requested[0] == -1 and requested[1] > 0:
        return requested[1]
    return None


def _explain_failure(ctx: CheckContext, rule: Rule) -> Finding | None:
    failed = ctx.train_trace.failed
    assert failed is not None
    if not failed.inputs:
        return None
    x, source = failed.inputs[0], failed.sources[0]
    name = function_name(failed.func) if failed.func is not None else ""
    linear_failed = name == "linear" or (failed.func is None and failed.module is not None
                                         and ctx.modules[failed.module].kind is LayerKind.LINEAR)
    if linear_failed and x.dim() == 1 and ctx.batch_size > 1 and x.numel() % ctx.batch_size == 0:
        return _batch_flattened(ctx, rule, failed, x, source)
    if failed.func is None and failed.module is not None and ctx.modules[failed.module].kind is LayerKind.LINEAR:
        expected = getattr(failed.module, "in_features", None)
        linear_name = ctx.modules[failed.module].name
        if not isinstance(expected, int) or x.shape[-1] == expected:
            return None
        return _mismatch(ctx, rule, linear_name, failed.module, expected, int(x.shape[-1]), source, None)
    if name == "linear" and len(failed.inputs) > 1:
        weight = failed.inputs[1]
        if weight.dim() == 2 and weight.shape[1] != x.shape[-1]:
            return _mismatch(ctx, rule, ctx.name_of(ctx.model) if failed.module is None else ctx.modules[failed.module].name,
                             None, int(weight.shape[1]), int(x.shape[-1]), source, failed.location)
    requested = _flat_request(failed) if name in ("view", "reshape") and x.dim() >= 1 else None
    if requested is not None:
        per_sample = x.numel() // max(int(x.shape[0]), 1)
        linear = next((m for m, info in ctx.modules_of(LayerKind.LINEAR)
                       if getattr(m, "in_features", None) == requested), None)
        target = ctx.modules[linear].name if linear is not None else (failed.module_stack[-1] if failed.module_stack else "")
        return _mismatch(ctx, rule, target, linear, requested, per_sample, source, failed.location,
                         via=f"{name}(-1, {requested})")
    return None


def _batch_flattened(ctx: CheckContext, rule: Rule, failed: Any, x: torch.Tensor, source: Source) -> Finding:
    """``x.flatten(0)`` or ``x.view(-1)``: the whole batch became one vector before a Linear."""
    batch, per_sample = ctx.batch_size, x.numel() // ctx.batch_size
    target = ctx.modules[failed.module].name if failed.module is not None and failed.func is None else (
        ctx.name_of(ctx.model) if failed.module is None else ctx.modules[failed.module].name)
    culprit = next((n for n in _chain(source) if n.module is None and n.func_name in RESHAPES
                    and n.inputs and n.inputs[0].dim() > 1 and n.inputs[0].shape[0] == batch), None)
    how = f"{culprit.func_name}{shown_arguments(culprit.args)} " if culprit is not None else ""
    return rule.finding(
        target,
        f"{how}flattens the batch into the features: {target or ctx.model_name} gets one vector of "
        f"{x.numel()} = {batch} samples x {per_sample} features",
        expected=f"an input of shape ({batch}, {per_sample}): one row per sample",
        found=f"an input of shape ({x.numel()},)",
        fix="flatten from dim 1: x.flatten(1), torch.flatten(x, 1) or x.view(x.size(0), -1) keep the batch",
        location=culprit.location if culprit is not None else failed.location,
    )


def _mismatch(ctx: CheckContext, rule: Rule, target: str, linear: nn.Module | None, expected: int, found: int,
              source: Source, location: str | None, via: str | None = None) -> Finding:
    chain = _chain(source)
    feature_map = next((n for n in reversed(chain) if n.outputs and n.outputs[0].dim() >= 3), None)
    geometries = [g for g in (_geometry(n) for n in chain) if g is not None]
    details = _shape_trace(ctx, chain, geometries)
    label = f"{target} ({_module_repr(linear)})" if linear is not None else (target or ctx.model_name)
    message = f"{target or ctx.model_name} expects {expected} input features but gets {found}"
    producer = _linear_producer(chain)
    if producer is not None:  # a Linear's outputs, not a feature map: its out_features decide
        made_by = f"{producer.name} {_module_repr(producer.module)}" if producer.module is not None else "F.linear"
        out = getattr(linear, "out_features", "...")
        return rule.finding(
            target, f"{message}: the {found} outputs of {made_by}", expected=f"{expected} features",
            found=f"{found} features: the output size of {made_by}",
            fix=f"set in_features={found}" + (f": nn.Linear({found}, {out})" if linear is not None else "")
            + f", or give {producer.name if producer.module is not None else 'that F.linear'} {expected} outputs",
            details=["shape trace:", *details], location=ctx.location_of(linear) if linear is not None else location,
            change=_in_features(ctx, linear, found))
    expected_text, found_text, fix = f"{expected} features", f"{found} features", ""
    blamed: Geometry | None = None
    suggestion: _Blame | None = None
    if feature_map is not None:
        c, *spatial = feature_map.outputs[0].shape[1:]
        dims = "x".join(str(s) for s in spatial)
        found_text = f"{found} = {c}*{'*'.join(str(s) for s in spatial)}: a {c}x{dims} feature map"
        if expected % c == 0:
            side = math.isqrt(expected // c)
            if len(spatial) == 2 and side * side * c == expected:
                expected_text = f"{expected} = {c}*{side}*{side}: a {c}x{side}x{side} feature map"
                message = f"{target or ctx.model_name} expects {expected} = {c}*{side}*{side} input features but gets {found} = {c}*{dims.replace('x', '*')}"
                suggestion = _blame(chain, geometries, side, label)
                if suggestion is not None:
                    blamed, fix = suggestion.geometry, suggestion.text
        if blamed is None and geometries:
            blamed = max(geometries, key=lambda g: _reduction(g))
        if blamed is not None:
            before = "x".join(str(s) for s in blamed.node.inputs[0].shape[2:])
            after = "x".join(str(s) for s in blamed.node.outputs[0].shape[2:])
            message += f": {blamed.label()} turns {before} into {after}"
            if after != dims:
                message += f", and the map reaches {dims}"
    if via:
        message += f" (at {via})"
    fix = fix or (
        f"make the feature map fit, or set in_features={found}"
        + (f": nn.Linear({found}, {getattr(linear, 'out_features', '...')})" if linear is not None else "")
    )
    where = (ctx.location_of(blamed.node.module) if blamed is not None and blamed.node.module is not None
             else blamed.node.location if blamed is not None else location)
    change = _suggested_change(ctx, suggestion) if suggestion is not None else _in_features(ctx, linear, found)
    return rule.finding(target, message, expected=expected_text, found=found_text, fix=fix,
                        details=["shape trace:", *details], location=where, change=change)


def _suggested_change(ctx: CheckContext, suggestion: _Blame) -> ArgumentChange | None:
    """The stride or padding that the explanation suggests, at the call that built the layer or in the
    functional call: unsafe, it changes the architecture (the student may have meant fc1 to change)."""
    node, keyword, value = suggestion.geometry.node, suggestion.keyword, suggestion.value
    description = f"{keyword}={value}: the map then fits the Linear after it"
    if node.module is not None:
        return layer_argument(type(node.module), node.name, keyword, str(value), ctx.site_of(node.module),
                              description, safe=False)
    return call_argument(node.func, node.func_name, keyword, str(value), node.location, description, safe=False)


def _in_features(ctx: CheckContext, linear: nn.Module | None, found: int) -> ArgumentChange | None:
    """``in_features`` set to the number the trace measured: unsafe, the feature map may be what is wrong."""
    if not isinstance(linear, nn.Linear):
        return None
    return layer_argument(type(linear), ctx.name_of(linear), "in_features", str(found), ctx.site_of(linear),
                          f"in_features={found}: what the flattened map measures", safe=False)


def _linear_producer(chain: list[Node]) -> Node | None:
    """The Linear (layer or ``F.linear``) after the last feature map whose outputs reach the mismatched
    call, if one made its features."""
    last_map = max((i for i, n in enumerate(chain) if n.outputs and n.outputs[0].dim() >= 3), default=-1)
    return next((n for n in reversed(chain[last_map + 1:])
                 if (n.module is not None and n.kind is LayerKind.LINEAR)
                 or (n.module is None and n.func_name == "linear")), None)


def _chain(source: Source) -> list[Node]:
    chain: list[Node] = []
    while isinstance(source, Node):
        chain.append(source)
        source = source.sources[0] if source.sources else "const"
    return list(reversed(chain))


def _geometry(node: Node) -> Geometry | None:
    if not node.outputs or not node.inputs or node.inputs[0].dim() < 3 or node.outputs[0].dim() != node.inputs[0].dim():
        return None
    rank = node.inputs[0].dim() - 2
    module = node.module
    if module is not None and node.inner:  # a layer of the student's own code: the conv or pool op it ran
        calls = [n for n in node.inner if n.module is None and n.kind in (LayerKind.CONV, LayerKind.POOL)]
        inner = _geometry(calls[0]) if len(calls) == 1 else None
        return replace(inner, node=node) if inner is not None else None
    if module is not None and node.kind in (LayerKind.CONV, LayerKind.POOL):
        if hasattr(module, "output_size") and not hasattr(module, "kernel_size"):
            out = tuple(node.outputs[0].shape[2:])
            return Geometry(node, (), (), (), (), adaptive=out)
        padding = getattr(module, "padding", 0)
        if isinstance(padding, str):
            return None
        stride = getattr(module, "stride", None) or getattr(module, "kernel_size", 1)
        return Geometry(
            node,
            as_tuple(getattr(module, "kernel_size", 1), rank),
            as_tuple(stride, rank),
            as_tuple(padding, rank),
            as_tuple(getattr(module, "dilation", 1), rank),
            bool(getattr(module, "ceil_mode", False)),
        )
    name = node.func_name
    if module is None and name.startswith("adaptive_"):
        return Geometry(node, (), (), (), (), adaptive=tuple(node.outputs[0].shape[2:]))
    if module is None and node.kind is LayerKind.CONV and len(node.inputs) > 1 and "transpose" not in name:
        weight = node.inputs[1]
        args = list(node.args) + [None] * 7
        return Geometry(node, tuple(weight.shape[2:]), as_tuple(args[3] or node.kwargs.get("stride", 1), rank),
                        as_tuple(args[4] or node.kwargs.get("padding", 0), rank),
                        as_tuple(args[5] or node.kwargs.get("dilation", 1), rank))
    if module is None and node.kind is LayerKind.POOL:
        args = list(node.args) + [None] * 6
        kernel = args[1] if args[1] is not None else node.kwargs.get("kernel_size", 1)
        stride = args[2] if args[2] not in (None, []) else node.kwargs.get("stride") or kernel
        padding = args[3] if args[3] is not None else node.kwargs.get("padding", 0)
        dilation = args[4] if name.startswith("max") and args[4] is not None else node.kwargs.get("dilation", 1)
        return Geometry(node, as_tuple(kernel, rank), as_tuple(stride, rank), as_tuple(padding, rank),
                        as_tuple(dilation, rank), bool(node.kwargs.get("ceil_mode", False)))
    return None


@dataclass(frozen=True)
class _Blame:
    """The layer whose stride or padding made the map too small or large, and the value that fits."""

    geometry: Geometry
    keyword: str  # "stride" or "padding"
    value: int
    text: str


def _blame(chain: list[Node], geometries: list[Geometry], side: int, label: str) -> _Blame | None:
    """The layer whose stride, set as a pooling layer usually has it, or else whose padding, set to keep
    the size ("same" padding), makes the map ``side`` wide."""
    first = next((n for n in chain if n.inputs and n.inputs[0].dim() >= 4), None)
    if first is None:
        return None
    start = int(first.inputs[0].shape[2])

    def fits(index: int, **change: tuple[int, ...]) -> bool:
        trial = list(geometries)
        trial[index] = replace(geometries[index], **cast("dict[str, Any]", change))
        return _run(trial, start) == side

    for index, geometry in enumerate(geometries):
        if geometry.adaptive is not None:
            continue
        for stride in dict.fromkeys([geometry.kernel[0], 2, 1]):
            if stride != geometry.stride[0] and fits(index, stride=(stride,) * len(geometry.stride)):
                return _Blame(geometry, "stride", stride,
                              f"{geometry.label()} with stride={stride} instead of {geometry.stride[0]} would give "
                              f"the {side}x{side} map that {label} expects")
    for index, geometry in enumerate(geometries):
        if geometry.adaptive is not None or geometry.node.kind is not LayerKind.CONV or not geometry.kernel:
            continue
        same = geometry.dilation[0] * (geometry.kernel[0] - 1) // 2
        if same != geometry.padding[0] and fits(index, padding=(same,) * len(geometry.padding)):
            return _Blame(geometry, "padding", same,
                          f"{geometry.label()} with padding={same} instead of {geometry.padding[0]} would keep its "
                          f"input size and give the {side}x{side} map that {label} expects")
    return None


def _run(geometries: list[Geometry], size: int) -> int:
    for geometry in geometries:
        size = geometry.size(size, 0)
    return size


def _reduction(geometry: Geometry) -> float:
    before, after = geometry.node.inputs[0].shape[2], geometry.node.outputs[0].shape[2]
    return before / max(after, 1)


def _shape_trace(ctx: CheckContext, chain: list[Node], geometries: list[Geometry]) -> list[str]:
    by_node = {id(g.node): g for g in geometries}
    lines = []
    if chain and chain[0].inputs:
        lines.append(f"  input {_dims(chain[0].inputs[0])}")
    for node in chain:
        if not node.outputs:
            continue
        if is_repaired(node.outputs[0]):
            lines.append(f"  -> {_dims(node.outputs[0])}  cnncheck's repair: cut or zero-padded to fit the next layer")
            continue
        what = f"{node.name} {_module_repr(node.module)}" if node.module is not None else f"{node.func_name}(...)"
        line = f"  -> {_dims(node.outputs[0])}  after {what}"
        geometry = by_node.get(id(node))
        if geometry is not None and node.inputs[0].dim() >= 3:
            size = int(node.inputs[0].shape[2])
            line += f"   [H: {geometry.text(size, 0)}]"
        lines.append(line)
    return lines


def _dims(t: torch.Tensor) -> str:
    return "x".join(str(s) for s in t.shape[1:]) if t.dim() > 1 else str(tuple(t.shape))


def _module_repr(module: nn.Module | None) -> str:
    if module is None:
        return ""
    return short_repr(module) if not any(True for _ in module.children()) else type(module).__name__


def _one(values: tuple[int, ...]) -> int | tuple[int, ...]:
    return values[0] if len(set(values)) == 1 else values


def _folded_batch(ctx: CheckContext, rule: Rule) -> Finding | None:
    node = batch_fold(ctx)
    if node is None:
        return None
    batch = ctx.batch_size
    before, after = node.inputs[0], node.outputs[0]
    per_sample = before.numel() // batch
    rows = f"one vector of {after.numel()}" if after.dim() == 1 else f"{after.shape[0]} rows of {after.shape[-1]}"
    return rule.finding(
        node.scope,
        f"{node.func_name}{shown_arguments(node.args)} folds part of the batch into the features: "
        f"{batch} samples of {per_sample} features become {rows}",
        expected=f"batch size {batch} kept: x.flatten(1) or x.view(x.size(0), -1) gives {batch}x{per_sample}",
        found=f"{tuple(before.shape)} -> {tuple(after.shape)}: the model's output has batch size "
        f"{after.shape[0]}, not {batch}",
        fix="flatten with x.flatten(1) or x.view(x.size(0), -1), and size the next Linear to the "
        "features per sample",
        location=node.location,
    )


def _hard_coded_batch(ctx: CheckContext, rule: Rule) -> Finding | None:
    found = hard_coded_batch(ctx)
    if found is None:
        return None
    became = f"becomes {found.after}" if found.after is not None else "cannot be reshaped, and forward raises"
    return rule.finding(
        found.scope,
        f"{found.call} writes the batch size {found.rows} into forward: one sample of shape {found.before} "
        f"{became}, so the model works only for batches of {found.rows}",
        expected="as many rows as the input has samples: 1 for a batch of 1",
        found=f"{found.call}: {found.rows} rows whatever the batch size",
        fix="take the batch size from the input: x.view(x.size(0), -1), or x.flatten(1)",
        location=found.location,
    )




RULE = Rule(
    id="feature-size-mismatch",
    summary="The flattened feature map does not fit the next Linear's `in_features` (explained with the "
    "shape trace and the layer whose output-size formula made it so), or a reshape folds part of the "
    "batch into the features.",
    why=(
        "Each conv and pooling layer maps a spatial size H to floor((H + 2p - d(k-1) - 1)/s) + 1. One "
        "unexpected stride (a MaxPool2d(kernel_size=2, stride=5) turns 28x28 into 6x6, not 14x14) changes "
        "the number of features that reach the classifier. PyTorch then reports only 'mat1 and mat2 "
        "shapes cannot be multiplied'; worse, `x.view(-1, n)` may silently fold samples together."
    ),
    fix="Fix the layer that shrinks the map wrongly, or size the Linear to the real feature count; flatten "
    "with `x.flatten(1)` so the batch dimension is never touched.",
    severity=Severity.ERROR,
    check=check,
    autofix="Unsafe only (`cnncheck check --fix --unsafe-fixes`; `--diff --unsafe-fixes` shows it), since it "
    "changes the architecture: the stride or padding that the explanation suggests, at the call that builds "
    "that layer (or in the functional call), or, when no such change fits, the Linear's `in_features` set to "
    "the number of features the trace measured. Not when the call also builds other layers (a loop), or the "
    "value is given as a variable.",
    compares_values=False,
    diagnose=diagnose,
    flagged_example="""
self.layer1 = nn.Sequential(nn.Conv2d(1, 32, 5, 1, 2), nn.ReLU(), nn.MaxPool2d(kernel_size=2, stride=5))
self.layer2 = nn.Sequential(nn.Conv2d(32, 64, 5, 1, 2), nn.ReLU(), nn.MaxPool2d(2, 2))
self.fc1 = nn.Linear(7 * 7 * 64, 1000)     # the map is 3x3 here, not 7x7
""",
    clean_example="nn.MaxPool2d(kernel_size=2, stride=2)   # 28 -> 14 -> 7: 7*7*64 features",
)
