"""What a module that is not torch's own implementation is, decided from the ops its forward ran.

The tracer runs such a module's forward op by op and, once it returns, asks :func:`recognize` what
the ops were: a convolution (a conv op on a weight made from the module's own parameters), a
BatchNorm (torch's ``batch_norm`` on its input, or per-channel batch statistics computed by hand), a
pooling layer (pooling ops or reductions over space), or a block whose ops are the model's dataflow.
Attributes (``kernel_size``, ``running_mean``...) only decide when the ops say nothing, as for a
convolution written with loops.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cnncheck.layers import LayerKind, state_tensors
from cnncheck.ops import (
    BATCH_NORM_FUNCTIONS,
    BIASED_FUNCTIONS,
    CONV_FUNCTIONS,
    COPIES,
    DROPOUT_FUNCTIONS,
    LAYOUT_FUNCTIONS,
    POOL_FUNCTIONS,
    REDUCTIONS,
    RESHAPES,
    argument,
    batch_norm_arguments,
    reduced_dims,
)

if TYPE_CHECKING:
    from cnncheck.trace import Node

# children that a layer may run inside itself and still be one layer: activations, identities
_LEAF_HELPERS = frozenset({LayerKind.OTHER, LayerKind.IDENTITY})
_LAYER_FUNCTIONS = (CONV_FUNCTIONS | POOL_FUNCTIONS | BATCH_NORM_FUNCTIONS | DROPOUT_FUNCTIONS
                    | {"linear", "layer_norm", "group_norm", "instance_norm"})


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a tensor handed to an op inside a layer came from."""

    params: frozenset[str]  # the layer's own parameters it was computed from
    from_input: bool  # computed from the layer's input
    ops: tuple[str, ...]  # the ops on the way, innermost first

    @property
    def direct(self) -> bool:
        """The parameter itself: untouched, or only copied (``.detach()``, ``.contiguous()``, ``.to()``)."""
        return all(op in COPIES for op in self.ops) and len(self.params) == 1 and not self.from_input

    @property
    def rearranged(self) -> bool:
        """One parameter moved around (transposed, flipped, reshaped), values unchanged."""
        return len(self.params) == 1 and not self.from_input and not self.direct and all(
            op in LAYOUT_FUNCTIONS for op in self.ops)


def own_tensor_names(module: nn.Module, prefix: str) -> dict[int, str]:
    """id -> qualified name of the module's own parameters, buffers and plain tensor attributes."""
    own: dict[str, torch.Tensor] = {n: p for n, p in module._parameters.items() if p is not None}
    own.update({n: t for n, t in state_tensors(module).items() if n not in own})
    return {id(t): f"{prefix}.{name}" if prefix else name for name, t in own.items()}


def uses_own_statistics(module: nn.Module, call: Node) -> bool:
    """Whether a ``batch_norm`` call is handed running statistics that ``module`` holds itself."""
    named = batch_norm_arguments(call.func, call.args, call.kwargs)
    held = {id(t) for t in state_tensors(module).values()}
    return all(isinstance(named.get(n), torch.Tensor) and id(named[n]) in held for n in ("running_mean", "running_var"))


def origin(source: Any, inner: list[Node], own: Iterable[str], first: int) -> Origin:
    """Follow ``source`` back through the ops recorded inside the layer (index >= ``first``)."""
    own = set(own)
    params: set[str] = set()
    ops: list[str] = []
    from_input = False
    frontier = [source]
    seen: set[int] = set()
    while frontier:
        src = frontier.pop()
        if isinstance(src, str):
            kind, _, name = src.partition(":")
            if kind == "param" and name in own:
                params.add(name)
            elif kind == "input":
                from_input = True
            continue
        if id(src) in seen:
            continue
        seen.add(id(src))
        if src.index < first:
            from_input = True  # made before the layer ran: its input
            continue
        ops.append(src.func_name or src.name)
        frontier.extend(src.sources)
    return Origin(frozenset(params), from_input, tuple(ops))


@dataclass(frozen=True, slots=True)
class Recognition:
    """The kind of a layer, or None for a block whose inner ops are the model's dataflow."""

    kind: LayerKind | None
    evidence: str  # what decided it, for explain and for the rules


def recognize(module: nn.Module, static: LayerKind, name: str, inner: list[Node], first: int,
              inputs: list[torch.Tensor], outputs: list[torch.Tensor], batch_norm: Node | None,
              own: Iterable[str]) -> Recognition:
    """The kind of one call of ``module`` from the ops it ran (``inner``, recorded from ``first``)."""
    own = set(own)
    children = [n for n in inner if n.module is not None and n.module is not module]
    # ops of a child of its own that is no layer (timm's GELU, an activation written out) are helpers too
    deeper = [n for n in inner if n.module is None and n.scope != name
              and (n.func_name in _LAYER_FUNCTIONS or _spatial_reduction(n))]
    if any(n.kind not in _LEAF_HELPERS for n in children) or deeper:
        return Recognition(None, "runs layers of its own inside")
    functions = [n for n in inner if n.module is None]
    on_input = [n for n in functions if _from_input(n, inner, own, first)]
    layer_ops = [n for n in on_input if n.func_name in _LAYER_FUNCTIONS or _spatial_reduction(n)]
    convs = [n for n in layer_ops if n.func_name in CONV_FUNCTIONS]
    if len(convs) == 1 and len(layer_ops) == 1 and origin(_weight_source(convs[0]), inner, own, first).params:
        if _transformed_after(convs[0], on_input) or (outputs and outputs[0].dim() != convs[0].outputs[0].dim()):
            return Recognition(None, f"{convs[0].func_name} and an activation after it: a block")
        return Recognition(LayerKind.CONV, f"calls {convs[0].func_name} on its own weights")
    norms = [n for n in layer_ops if n.func_name in BATCH_NORM_FUNCTIONS]
    if norms and len(norms) == len(layer_ops):
        if len(norms) > 1 or _bn_block(inputs, outputs, inner, first, batch_norm):
            return Recognition(None, "does more around its batch_norm call than one layer does")
        return Recognition(LayerKind.BATCH_NORM, "calls batch_norm on its input")
    if len(layer_ops) == 1 and layer_ops[0].func_name == "linear" \
            and origin(_weight_source(layer_ops[0]), inner, own, first).params:
        if _transformed_after(layer_ops[0], on_input):
            return Recognition(None, "linear and an activation after it: a block")
        return Recognition(LayerKind.LINEAR, "calls linear on its own weights")
    if layer_ops and all(n.func_name in DROPOUT_FUNCTIONS for n in on_input):
        return Recognition(LayerKind.DROPOUT, f"calls {layer_ops[0].func_name} and nothing else")
    statistics = _batch_statistics(on_input)
    others = [n for n in layer_ops if n.func_name not in POOL_FUNCTIONS and not _spatial_reduction(n)]
    # (statistics by hand and a batch_norm call to normalise with them are one BatchNorm)
    if others and not (statistics and all(n.func_name in BATCH_NORM_FUNCTIONS for n in others)):
        return Recognition(None, "runs several layer ops: a block")
    if statistics:
        if outputs and inputs and outputs[0].shape == inputs[0].shape:
            return Recognition(LayerKind.BATCH_NORM, "normalises with statistics over the batch")
        return Recognition(None, "statistics over the batch and a change of shape: a block")
    if layer_ops and _flattens_after(layer_ops[-1], on_input, inputs, outputs):
        return Recognition(None, "pools and flattens: a block")
    if any(n.func_name in POOL_FUNCTIONS for n in layer_ops) or (layer_ops and _smaller(inputs, outputs)):
        return Recognition(LayerKind.POOL, "pools or reduces over space")
    if not layer_ops and _filter_bank_on_input(module, name, on_input, inner, own, first, inputs, outputs):
        return Recognition(LayerKind.CONV, "computes with a filter bank of its own on its input, by hand")
    if static is not LayerKind.OTHER:
        return Recognition(static, "its attributes: its forward runs no layer op (computed by hand)")
    return Recognition(None, "no layer op of its own")


def _filter_bank_on_input(module: nn.Module, name: str, on_input: list[Node], inner: list[Node], own: set[str],
                          first: int, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> bool:
    """A convolution written out (``F.unfold`` and a matrix product, loops over windows): a parameter of
    its own shaped like filters, (C_out, C_in, *kernel), combined with its input by an op, and a feature
    map out of a feature map. Only such a layer is compared numerically with ``F.conv*d``."""
    if not inputs or not outputs or inputs[0].dim() < 3 or outputs[0].dim() != inputs[0].dim():
        return False
    banks = {f"{name}.{p_name}" if name else p_name
             for p_name, p in module.named_parameters(recurse=False) if p.dim() == inputs[0].dim()}
    return bool(banks) and any(origin(src, inner, own, first).params & banks for n in on_input for src in n.sources)


# what a layer may do to its conv's or linear's result and stay that layer: a bias or scale of its own,
# a reshape (an activation after it makes a block: the bias is no longer a constant of the output)
_ARITHMETIC = frozenset({
    "add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "__sub__", "__rsub__", "mul", "mul_", "__mul__",
    "__rmul__", "__imul__", "div", "div_", "__truediv__", "__itruediv__", "true_divide",
})


def _transformed_after(call: Node, on_input: list[Node]) -> bool:
    return any(n.index > call.index and n.func_name not in LAYOUT_FUNCTIONS and n.func_name not in _ARITHMETIC
               for n in on_input)


def _flattens_after(last: Node, on_input: list[Node], inputs: list[torch.Tensor],
                    outputs: list[torch.Tensor]) -> bool:
    """A reshape that drops dims after the last pooling op, giving an output of lower rank: pool then
    flatten in one forward (a reduction with keepdim=False, timm's flattening global pool, is a pool)."""
    return bool(inputs and outputs) and outputs[0].dim() < inputs[0].dim() and any(
        n.index > last.index and n.func_name in RESHAPES and n.inputs and n.outputs
        and n.outputs[0].dim() < n.inputs[0].dim() for n in on_input)


def _smaller(inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> bool:
    """An output with fewer elements than the input: a reduction over space that pools, not one that
    only feeds a normalisation or a gate of the same shape (GlobalResponseNorm, squeeze-excite)."""
    return bool(inputs and outputs) and outputs[0].numel() < inputs[0].numel()


def _weight_source(node: Node) -> Any:
    weight = argument(node, "weight", 1)
    for tensor, source in zip(node.inputs, node.sources):
        if tensor is weight:
            return source
    return None


def _from_input(node: Node, inner: list[Node], own: set[str], first: int) -> bool:
    """Whether the op's first tensor argument was computed from the layer's input."""
    if not node.sources:
        return False
    return origin(node.sources[0], inner, own, first).from_input


def _spatial_reduction(node: Node) -> bool:
    """A mean, max, sum... over spatial dims only (not the batch, not the channels) of a feature map."""
    if node.func_name not in REDUCTIONS or not node.inputs or node.inputs[0].dim() < 3:
        return False
    dims = reduced_dims(node)
    return bool(dims) and all(d >= 2 for d in dims)


def _batch_statistics(on_input: list[Node]) -> bool:
    """A mean or variance over the batch dim of (a tensor made from) the input, with or without the
    spatial dims: a BatchNorm written out by hand (the d2l.ai chapter's, a CS231n spatial batchnorm)."""
    means = [n for n in on_input if n.func_name in ("mean", "var", "std", "var_mean", "std_mean", "sum")]
    return any(0 in reduced_dims(n) and n.inputs and n.inputs[0].dim() >= 2 for n in means)


def _bn_block(inputs: list[torch.Tensor], outputs: list[torch.Tensor], inner: list[Node], first: int,
              batch_norm: Node | None) -> bool:
    """A module around torch's ``batch_norm`` is a block, not a BatchNorm layer, when it changes the
    shape of its input or prepares that call's input with an op of its own (a ReLU, a dropout): probing
    it whole would compare a transformed input with F.batch_norm. An activation after the call (timm's
    BatchNormAct2d) keeps it one layer: the call itself is verified."""
    if outputs and inputs and outputs[0].shape != inputs[0].shape:
        return True
    if batch_norm is None:
        return False  # no running statistics of its own handed over: its formula is probed whole
    # an op of its own made the input (even one that returns its input: relu_, dropout in eval)
    source = batch_norm.sources[0] if batch_norm.sources else None
    return source is not None and not isinstance(source, str) and source.index >= first


def batch_norm_call(node: Node) -> Node | None:
    """The ``batch_norm`` call through which a BatchNorm-like layer normalised its own input, if it
    made one: then torch's op did the arithmetic, and only the arguments can be wrong."""
    if not node.inputs:
        return None
    return next((n for n in node.inner if n.module is None and n.func_name in BATCH_NORM_FUNCTIONS
                 and batch_norm_arguments(n.func, n.args, n.kwargs).get("input") is node.inputs[0]), None)


def conv_calls(node: Node) -> list[Node]:
    """The conv ops a convolution layer made in its forward."""
    return [n for n in node.inner if n.module is None and n.func_name in CONV_FUNCTIONS]


def layer_bias(node: Node) -> torch.Tensor | None:
    """The bias a conv or linear call adds: its ``bias`` argument for a functional call; for a layer,
    the bias handed to the one conv/linear op it ran (whatever the parameter is called), else its
    ``bias`` attribute."""
    if node.module is None:
        bias = argument(node, "bias", 2)
        return bias if isinstance(bias, torch.Tensor) else None
    calls = [n for n in node.inner if n.module is None and n.func_name in BIASED_FUNCTIONS]
    if len(calls) == 1:
        return layer_bias(calls[0])
    bias = getattr(node.module, "bias", None)
    return bias if isinstance(bias, torch.Tensor) else None


def verified_by_op(node: Node) -> bool:
    """A layer whose arithmetic was torch's own op on its input: one conv call, or a batch_norm call on
    its own input. Nothing needs to re-run it."""
    return (node.kind is LayerKind.CONV and len(conv_calls(node)) == 1) or (
        node.kind is LayerKind.BATCH_NORM and batch_norm_call(node) is not None)
