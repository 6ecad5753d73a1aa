"""``redundant-bias-before-bn``: a conv/linear bias that a following BatchNorm cancels."""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import torch
from torch import nn
from torch.nn.modules.pooling import _AdaptiveAvgPoolNd, _AdaptiveMaxPoolNd, _AvgPoolNd, _MaxPoolNd

from cnncheck.changes import ArgumentChange, NoFix, layer_argument
from cnncheck.checks.batchnorm_semantics import cancels_channel_constant, is_stock_batchnorm
from cnncheck.context import CheckContext
from cnncheck.findings import Finding, Severity
from cnncheck.layers import LayerKind, affine_parameters, from_torch, layer_label
from cnncheck.ops import argument, batch_norm_arguments, torch_layer_op
from cnncheck.recognize import batch_norm_call, conv_calls, layer_bias
from cnncheck.rules import Pass, Rule
from cnncheck.trace import Node, Trace

# Ops that carry a per-channel constant through as a constant (so a mean subtraction still removes it).
# pixel_unshuffle spreads each channel over r*r channels, each of them still constant; pixel_shuffle is
# not here: it packs r*r conv channels, with r*r different biases, into one output channel, so a norm
# over that channel removes only their mean.
_PASS_FUNCTIONS = frozenset(
    {
        "add", "add_", "__add__", "__iadd__", "__radd__", "sub", "sub_", "__sub__", "__isub__", "__rsub__",
        "cat", "concat", "concatenate", "view", "reshape", "flatten", "contiguous", "clone", "squeeze",
        "unsqueeze", "to", "float", "double", "half", "__getitem__", "max_pool1d", "max_pool2d",
        "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
        "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
        "adaptive_max_pool3d", "max_pool2d_with_indices", "identity", "interpolate", "upsample",
        "upsample_nearest2d", "upsample_bilinear2d", "transpose", "permute", "movedim", "pixel_unshuffle",
        "channel_shuffle", "roll", "flip",
    }
)
_SPATIAL_REDUCTIONS = frozenset({"mean", "amax", "amin"})
_SCALING_FUNCTIONS = frozenset({"mul", "mul_", "__mul__", "__imul__", "__rmul__", "div", "__truediv__", "__itruediv__"})
_PASS_MODULES: tuple[type, ...] = (
    _MaxPoolNd, _AvgPoolNd, _AdaptiveAvgPoolNd, _AdaptiveMaxPoolNd, nn.Identity, nn.Flatten, nn.Unflatten,
)



def check(ctx: CheckContext, rule: Rule) -> Iterator[Finding]:
    trace = ctx.train_trace
    verdicts: dict[int, list[tuple[Node, list[Node] | None]]] = {}
    candidates: list[tuple[Node, list[Node]]] = []
    for node in trace.nodes:
        bias = _bias_of(node)
        if bias is None:
            continue
        sinks = _cancelling_sinks(ctx, trace, node)
        verdicts.setdefault(id(bias), []).append((node, sinks))
        if sinks:
            candidates.append((node, sinks))
    confirmed = _confirmed(ctx, candidates)
    if ctx.backward_error is not None:
        ctx.require(Pass.GRADIENTS)  # no gradient to confirm a verdict with: not checked, and why
    for calls in verdicts.values():
        calls[:] = [(node, sinks if id(node) in confirmed else None) for node, sinks in calls]
    for calls in verdicts.values():
        if any(sinks is None for _, sinks in calls):
            continue  # one call where the bias matters is enough for it to matter
        node, sinks = calls[0]
        assert sinks is not None
        bias = _bias_of(node)
        assert bias is not None
        norms = ", ".join(dict.fromkeys(_norm_label(s) for s in sinks))
        layer = (layer_label(node.name, node.module) if node.module is not None
                 else f"F.{node.func_name}(...) in {node.scope or '<model>'}.forward")
        kind = type(node.module).__name__ if node.module is not None else node.func_name
        location = ctx.location_of(node.module) if node.module is not None else node.location
        fix = (
            f"build it without a bias: {kind}(..., bias=False); the BatchNorm's beta already adds one "
            f"learnable shift per channel"
            if node.module is not None
            else "drop the bias argument of this call; the BatchNorm's beta already adds one shift per channel"
        )
        yield rule.finding(
            node.name if node.module is not None else node.scope,
            f"the bias of {layer} ({bias.numel()} parameters) is cancelled by {norms}",
            expected=f"no bias before {norms}: its mean subtraction removes any per-channel constant",
            found=f"{bias.numel()} bias parameters that never change the output in training "
            f"(gradient 0 for every channel)",
            fix=fix,
            location=location,
            change=_without_bias(ctx, node.name, node.module, location),
        )


def _without_bias(ctx: CheckContext, name: str, module: nn.Module | None, location: str | None,
                  ) -> ArgumentChange | NoFix | None:
    """``bias=False`` at the call that built a torch conv or linear (or a subclass of one, whose ``bias``
    argument torch's ``__init__`` takes); a hand-written layer's arguments mean what its author says."""
    if module is None:
        return NoFix(location or "", "a functional call: drop its bias argument (the BatchNorm's beta adds one)")
    if not isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
        return NoFix(location or "", f"{type(module).__name__} is a hand-written layer: build it without its bias "
                     f"parameter yourself")
    change = layer_argument(type(module), name, "bias", "False", ctx.site_of(module),
                            f"{type(module).__name__}(..., bias=False): the BatchNorm after it cancels the bias")
    if change is None and location:
        return NoFix(location, f"{type(module).__name__}(...) takes no bias argument that cnncheck can set")
    return change


def _bias_of(node: Node) -> torch.Tensor | None:
    if node.kind not in (LayerKind.CONV, LayerKind.LINEAR) or not node.outputs or not node.outputs[0].requires_grad:
        return None
    return layer_bias(node)


def _confirmed(ctx: CheckContext, candidates: list[tuple[Node, list[Node]]]) -> set[int]:
    """The candidates whose bias the BatchNorms really cancel: the gradient at the layer's output of a
    random projection of the norms' outputs sums to zero over each channel: for each candidate a short
    backward through the part of the graph between it and its norms, never through the whole model,
    and none at all when the bias goes straight into torch's own BatchNorm."""
    confirmed = set()
    for node, sinks in candidates:  # one short backward each: from its own norms back to it
        if all(_feeds_torch_batch_norm(node, sink) for sink in sinks):
            confirmed.add(id(node))  # straight into torch's own BatchNorm: cancelled by construction
            continue
        ends = [t for s in sinks for t in s.outputs[:1] if t.requires_grad]
        grad = ctx.local_gradients([node.outputs[0]], ends)[0] if ends else None
        if ctx.backward_error is None and _cancelled_numerically(
                grad, 1 if node.kind is LayerKind.CONV else -1, ctx.dtype, _gain(sinks)):
            confirmed.add(id(node))
    return confirmed


def _feeds_torch_batch_norm(node: Node, sink: Node) -> bool:
    """``sink`` is torch's own BatchNorm in training, and takes ``node``'s output as it is."""
    if not sink.sources or sink.sources[0] is not node:
        return False
    if sink.module is not None:
        return is_stock_batchnorm(sink.module) and bool(sink.training) and sink.module.training
    return sink.func_name == "batch_norm" and bool(argument(sink, "training", 5, False))


def _gain(sinks: list[Node]) -> float:
    """How much the norms amplify the rounding of the gradient that passes them: max |gamma| / sigma
    over their channels (a channel of almost equal values has sigma ~ sqrt(eps), a gain of ~300)."""
    gain = 1.0
    for sink in sinks:
        x = sink.inputs[0] if sink.inputs else None
        if x is None or x.dim() < 2 or not x.is_floating_point():
            continue
        dims = tuple(d for d in range(x.dim()) if d != 1)
        sigma = torch.sqrt(x.detach().double().var(dims, unbiased=False) + 1e-5)
        gamma = (affine_parameters(sink.module, x.shape[1])[0] if sink.module is not None
                 else batch_norm_arguments(sink.func, sink.args, sink.kwargs).get("weight")
                 if sink.func_name == "batch_norm" else None)
        fits = isinstance(gamma, torch.Tensor) and gamma.numel() == x.shape[1]
        scale = (cast(torch.Tensor, gamma).detach().double().abs().reshape(-1).to(sigma.device) if fits
                 else torch.ones_like(sigma))
        gain = max(gain, float((scale / sigma).max()))
    return gain


def _cancelling_sinks(ctx: CheckContext, trace: Trace, start: Node) -> list[Node] | None:
    """The mean-subtracting norms that every path from ``start`` ends in, or None if some path escapes."""
    sinks: list[Node] = []
    frontier, seen = [start], {id(start)}
    while frontier:
        node = frontier.pop()
        if trace.feeds_output(node):
            return None
        consumers = trace.consumers(node)
        if not consumers:
            return None
        for consumer in consumers:
            if id(consumer) in seen:
                continue
            seen.add(id(consumer))
            if _cancels(ctx, consumer):
                sinks.append(consumer)
            elif _passes_constant(consumer):
                frontier.append(consumer)
            else:
                return None
    return sinks or None


def _convolves_constant_to_constant(node: Node) -> bool:
    """A convolution without zero padding maps a per-channel constant to a per-channel constant (each
    output sums the same filter over the same constant); zero padding makes the borders differ, and a
    strided transposed conv overlaps unevenly. Judged on the conv op that ran (for a layer, the one
    inside it, after any padding of its own)."""
    if node.module is not None:
        if any(n.func_name == "pad" for n in node.inner):
            return False
        if not node.inner:  # torch's own conv layer
            padding = getattr(node.module, "padding", None)
            transposed = bool(getattr(node.module, "transposed", False))
            return not transposed and (padding == "valid" or _all_zero(padding))
        calls = conv_calls(node)
        return len(calls) == 1 and _convolves_constant_to_constant(calls[0])
    if "transpose" in node.func_name:
        return False
    padding = argument(node, "padding", 4, 0)
    return padding == "valid" or _all_zero(padding)


def _all_zero(padding: object) -> bool:
    values = padding if isinstance(padding, (tuple, list)) else (padding,)
    return all(isinstance(v, int) and v == 0 for v in values)


def _cancels(ctx: CheckContext, node: Node) -> bool:
    if node.module is not None:
        if isinstance(node.module, nn.GroupNorm):  # one group per channel is an InstanceNorm
            return node.module.num_groups == node.module.num_channels
        if node.kind not in (LayerKind.BATCH_NORM, LayerKind.INSTANCE_NORM) or not node.training:
            return False
        if is_stock_batchnorm(node.module) or from_torch(node.module) or node.probe_input is None:
            return True
        call = batch_norm_call(node)
        if call is not None:  # torch's batch_norm on the layer's own input: cancels when it uses batch statistics
            return bool(batch_norm_arguments(call.func, call.args, call.kwargs).get("training"))
        # a student's norm may do more than subtract the mean (an activation first, one mean for
        # the whole tensor): ask it whether a per-channel constant survives
        x = node.probe_input
        return bool(ctx.memo(("cancels", id(node.module)), lambda: cancels_channel_constant(node.module, x)))
    if node.func_name == "batch_norm":
        training = node.kwargs.get("training", node.args[5] if len(node.args) > 5 else False)
        return bool(training)
    if node.func_name == "group_norm":
        groups = node.kwargs.get("num_groups", node.args[1] if len(node.args) > 1 else None)
        return bool(node.inputs) and node.inputs[0].dim() > 1 and groups == node.inputs[0].shape[1]
    return node.func_name == "instance_norm"


def _passes_constant(node: Node) -> bool:
    """Whether ``node`` carries a per-channel constant of its input through as a per-channel constant.
    (A wrong yes costs nothing: every verdict is confirmed by the bias gradient being 0.)"""
    if node.kind is LayerKind.CONV:
        return _convolves_constant_to_constant(node)
    if node.module is not None:
        if node.inner:  # a layer of the student's own code (a pool written with F.max_pool2d): its ops decide
            return all(_passes_constant(n) for n in node.inner)
        op = torch_layer_op(node.module)
        return _op_passes_constant(*op) if op is not None else isinstance(node.module, _PASS_MODULES)
    if node.func_name == "pad":
        return _op_passes_constant("pad", argument(node, "mode", 2, "constant"))
    if node.func_name in _PASS_FUNCTIONS:
        return _op_passes_constant(node.func_name, None)
    if node.func_name in _SPATIAL_REDUCTIONS:  # a mean or max over positions, not over channels
        dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        dims = (dims,) if isinstance(dims, int) else dims
        rank = node.inputs[0].dim() if node.inputs else 0
        return isinstance(dims, (tuple, list)) and rank > 1 and all(d % rank != 1 for d in dims)
    return node.func_name in _SCALING_FUNCTIONS and all(
        _same_everywhere(t, src, node.inputs[0]) for t, src in zip(node.inputs[1:], node.sources[1:]))


def _op_passes_constant(name: str, mode: str | None) -> bool:
    """Whether the functional op ``name`` carries a per-channel constant through as one; ``mode`` is
    the mode of a ``pad``, ignored for any other op."""
    if name == "pad":  # replicated, reflected or circular borders copy the constant; zeros do not
        return mode != "constant"
    return name in _PASS_FUNCTIONS


def _same_everywhere(factor: torch.Tensor, source: object, x: torch.Tensor) -> bool:
    """A factor that is one number per channel at most, the same for every sample and position, and not
    computed from the input (a parameter, a buffer, a constant): scaling by it keeps a per-channel
    constant one (a pool with a learnable scale)."""
    if isinstance(source, Node) or (isinstance(source, str) and source.startswith("input:")):
        return False
    shape = [1] * (x.dim() - factor.dim()) + list(factor.shape)
    return len(shape) == x.dim() and all(size == 1 for d, size in enumerate(shape) if d != 1)


def _cancelled_numerically(grad: torch.Tensor | None, channel_dim: int, dtype: torch.dtype, gain: float) -> bool:
    """The gradient summed over each channel is zero up to rounding: relative to its magnitude, and to
    what the norms' ``gain`` makes of float rounding on the way (the projected gradient is about 1 per
    element). When no gradient reaches the layer at all (None, or exactly 0: nothing downstream depends
    on it) the gradient says nothing, and the dataflow verdict, whose sinks each cancel a per-channel
    constant, stands alone."""
    if grad is None:
        return True
    moved = grad.movedim(channel_dim, 0).reshape(grad.shape[channel_dim], -1).double()
    total, magnitude = moved.sum(dim=1), moved.abs().sum(dim=1)
    eps = torch.finfo(dtype).eps
    rounding = 10 * eps * gain * moved.shape[1]
    return bool(((total.abs() <= eps ** 0.5 * magnitude + rounding) | (magnitude == 0)).all())


def _norm_label(node: Node) -> str:
    if node.module is not None:
        return layer_label(node.name, node.module)
    return f"F.{node.func_name} at {node.location}" if node.location else f"F.{node.func_name}"


RULE = Rule(
    id="redundant-bias-before-bn",
    summary="A conv or linear bias that reaches a BatchNorm (or InstanceNorm) only through ops that "
    "keep a per-channel constant, so the norm's mean subtraction cancels it.",
    why=(
        "BatchNorm subtracts each channel's batch mean, and any per-channel constant, such as the "
        "preceding conv's bias, goes with it: the bias gets a zero gradient and never affects the output "
        "in training. Those parameters are wasted memory and compute, and they mislead readers. BN's own "
        "beta already provides the per-channel shift."
    ),
    fix="Build the layer with `bias=False`, e.g. `nn.Conv2d(64, 128, 3, padding=1, bias=False)` followed "
    "by `nn.BatchNorm2d(128)`.",
    severity=Severity.WARNING,
    check=check,
    needs=frozenset({Pass.TRAIN, Pass.GRADIENTS}),
    flagged_example="""
nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU())
""",
    clean_example="""
nn.Sequential(nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(64))  # ReLU in between: kept
""",
    autofix="Safe: `cnncheck check --fix` adds `bias=False` (or changes `bias=True`) at the call that builds "
    "the conv or linear, keeping the call's layout and comments. Not when that call also builds a layer whose "
    "bias is not cancelled (a loop, or a block class used with and without a BatchNorm), when `bias` is "
    "given as a variable or through `**kwargs`, for a hand-written layer, or for a functional conv.",
    limits="Follows the traced dataflow: identity, max/avg pooling, a mean or max over positions, "
    "reshapes, transposes, interpolation, replicate/reflect padding, residual adds, channel "
    "concatenation and a conv without zero padding (a 1x1 conv of a constant is a constant) carry the "
    "constant; anything else (ReLU, dropout in training, a zero-padded conv, zero padding) ends the search. "
    "A finding is confirmed numerically: the bias's gradient must be zero in train mode; when no gradient "
    "reaches the layer at all (a residual branch whose last BN is zero-initialised, as timm does) the "
    "dataflow verdict stands alone. "
    "LayerNorm and GroupNorm do not cancel a per-channel constant and are not flagged, except a "
    "GroupNorm with one group per channel, which is an InstanceNorm. A student's own norm layer counts "
    "only if it cancels a per-channel constant on a probe input.",
)
