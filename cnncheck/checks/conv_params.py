"""``conv-param-formula``: a convolution's parameters follow ``(C_in/groups * prod(k) + [bias]) * C_out``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.conv import _ConvNd

from cnncheck.context import CheckContext, first_call
from cnncheck.findings import Finding, Severity
from cnncheck.formulas import conv_param_formula, expected_conv_weight_shape
from cnncheck.layers import LayerKind, as_tuple, conv_weight, from_torch, is_transposed
from cnncheck.ops import argument
from cnncheck.preserve import guarding_writes
from cnncheck.probes import mismatch
from cnncheck.recognize import Origin, conv_calls, origin, own_tensor_names
from cnncheck.rules import Pass, Rule
from cnncheck.trace import Node


def check(ctx: CheckContext, rule: Rule) -> Iterator[Finding]:
    for module, info in ctx.modules_of(LayerKind.CONV):
        node = first_call(ctx.train_trace, module)
        calls = conv_calls(node) if node is not None else []
        if node is not None and len(calls) == 1:
            yield from _check_conv_call(ctx, rule, module, node, calls[0])
        else:
            yield from _check_conv(ctx, rule, module, info.name)


def _check_conv_call(ctx: CheckContext, rule: Rule, module: nn.Module, node: Node, call: Node) -> Iterator[Finding]:
    """A layer whose forward called torch's conv op: the op did the arithmetic, so what can be wrong is
    what the layer owns beyond the filters and bias it handed to the op. A weight made from its
    parameters (standardised, scaled by a gain, mixed from experts, weight_norm) is a
    reparametrisation, not an error; a weight merely stored in another layout is judged as stored."""
    found = weight_origin(node)
    assert found is not None
    if found.rearranged:
        yield from _check_conv(ctx, rule, module, node.name)  # its stored layout, and its numerics
        return
    if not found.direct:
        return  # a reparametrised filter bank: computed from its parameters on every call
    weight, bias = argument(call, "weight", 1), argument(call, "bias", 2)
    groups = int(argument(call, "groups", 6, 1) or 1)
    transposed = "transpose" in call.func_name
    first, second, *kernel = weight.shape
    c_in, c_out = (int(first), int(second) * groups) if transposed else (int(second) * groups, int(first))
    declared = [getattr(module, n, None) for n in ("in_channels", "out_channels", "groups")]
    if all(isinstance(v, int) for v in declared) and declared != [c_in, c_out, groups]:
        yield from _check_conv(ctx, rule, module, node.name)  # its attributes say another conv than it runs
        return
    kernel_size = tuple(int(k) for k in kernel)
    owned = {id(p): p for _, p in ctx.layer_parameters(module)}
    # the bias handed to the op, or one added after it under a name of its own
    has_bias = (isinstance(bias, torch.Tensor) and id(bias) in owned) or _conv_bias(module, weight, c_out) is not None
    expected = conv_param_formula(c_in, c_out, kernel_size, groups, has_bias, transposed=transposed)
    finding = _count_finding(ctx, rule, module, node.name, _describe(module, c_in, c_out, kernel_size, groups),
                             expected, sum(p.numel() for p in owned.values()))
    if finding is not None:
        yield finding


def _count_finding(ctx: CheckContext, rule: Rule, module: nn.Module, name: str, title: str, expected: Any,
                   count: int) -> Finding | None:
    """A layer that owns another number of parameters than its formula gives."""
    if count == expected.value:
        return None
    extra = [f"{n}: {_shape(tuple(p.shape))}" for n, p in ctx.layer_parameters(module)]
    return rule.finding(name, f"{title} should have {expected.value} parameters, it has {count}",
                        expected=str(expected), found=f"{count} parameters ({', '.join(extra)})",
                        location=ctx.location_of(module))


def weight_origin(node: Node) -> Origin | None:
    """Where the filters that a convolution layer handed to its one conv op came from: one of its
    parameters as it is, moved around, or computed from its parameters (a reparametrisation)."""
    calls = conv_calls(node)
    if node.module is None or len(calls) != 1:
        return None
    own = own_tensor_names(node.module, node.name).values()
    return origin(_argument_source(calls[0], "weight", 1), node.inner, own, node.inner[0].index)


def _argument_source(call: Node, name: str, position: int) -> object:
    value = argument(call, name, position)
    return next((src for t, src in zip(call.inputs, call.sources) if t is value), None)


def _check_conv(ctx: CheckContext, rule: Rule, module: nn.Module, name: str) -> Iterator[Finding]:
    groups = int(getattr(module, "groups", 1) or 1)
    transposed = is_transposed(module)
    found_weight = conv_weight(module)
    geometry = _declared_geometry(module, found_weight[1] if found_weight else None, groups, transposed)
    if geometry is None:
        return  # placed as a conv by a plugin, with neither attributes nor a filter bank to read
    c_in, c_out, kernel = geometry
    rank = len(kernel)
    bias = _conv_bias(module, found_weight[1] if found_weight else None, c_out)
    has_bias = isinstance(bias, torch.Tensor)
    expected = conv_param_formula(c_in, c_out, kernel, groups, has_bias, transposed=transposed)
    owned = {id(p): p for _, p in ctx.layer_parameters(module)}
    count = sum(p.numel() for p in owned.values())
    if found_weight is not None and id(found_weight[1]) not in owned:
        # a reparametrized weight (weight_norm: g and v): the formula counts the filters it computes
        count = found_weight[1].numel() + (bias.numel() if has_bias else 0)  # type: ignore[union-attr]
    shape = expected_conv_weight_shape(c_in, c_out, kernel, groups, transposed)
    title = _describe(module, c_in, c_out, kernel, groups)
    where = ctx.location_of(module)
    if found_weight is None:
        yield rule.finding(name, f"{title} has no filter weights", expected=f"a weight of shape "
                           f"{_shape(shape)}", found="no parameter with 3 or more dims", location=where)
        return
    weight_name, weight = found_weight
    if tuple(weight.shape) != shape:
        hint = ""
        swapped = (shape[1] * groups, shape[0] // groups, *shape[2:]) if not transposed else None
        if swapped is not None and tuple(weight.shape) == swapped:
            hint = " (input and output channels are swapped: PyTorch stores (C_out, C_in/groups, *kernel))"
        yield rule.finding(
            name,
            f"{title}: {weight_name} has the wrong shape{hint}",
            expected=f"{weight_name} of shape {_shape(shape)}: one {'x'.join(map(str, kernel))} filter over "
            f"{c_in // groups} input channel(s) for each of the {c_out} output channels",
            found=f"{weight_name} of shape {_shape(tuple(weight.shape))}",
            location=where,
        )
        return
    if has_bias and bias.numel() != c_out:  # type: ignore[union-attr]
        yield rule.finding(name, f"{title}: the bias must have one value per output channel",
                           expected=f"bias of shape ({c_out},)", found=f"bias of shape {_shape(tuple(bias.shape))}",  # type: ignore[union-attr]
                           location=where)
        return
    finding = _count_finding(ctx, rule, module, name, title, expected, count)
    if finding is not None:
        yield finding
        return
    if not _stock(module):
        mismatch_text = _numeric_mismatch(ctx, module, weight, bias if has_bias else None, rank, groups, transposed)
        if mismatch_text:
            yield rule.finding(
                name,
                f"{title} does not compute a convolution with its own weights",
                expected=f"the output of F.conv{'_transpose' if transposed else ''}{rank}d(x, weight, bias, "
                f"stride, padding, dilation, groups)",
                found=mismatch_text,
                fix="compare your forward with F.conv2d: each output channel sums the filter over all input "
                "channels of its group, plus that channel's bias",
                location=where,
            )


def _numeric_mismatch(ctx: CheckContext, module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None,
                      rank: int, groups: int, transposed: bool) -> str | None:
    node = first_call(ctx.train_trace, module)
    if node is None or node.probe_input is None or not node.outputs or len(node.inputs) != 1:
        return None  # re-called with fewer inputs than forward was given, it would not be the same call
    x = node.probe_input
    ctx.require_finite(frozenset({Pass.TRAIN}))  # a NaN weight would compare as anything
    with torch.no_grad(), guarding_writes():
        found = module(x.clone())  # the layer may change its input in place
    if not isinstance(found, torch.Tensor):
        return None
    kernel = tuple(int(k) for k in weight.shape[2:])
    candidates = [_declared_call(module, rank)] if _declares_geometry(module) else _geometries(kernel, rank)
    expected = None
    shapes = []
    for stride, padding, dilation, out_pad in candidates:
        try:
            with torch.no_grad():
                if transposed:
                    fn = getattr(F, f"conv_transpose{rank}d")
                    attempt = fn(x, weight, bias, stride, padding, out_pad, groups, dilation)
                else:
                    fn = getattr(F, f"conv{rank}d")
                    attempt = fn(x, weight, bias, stride, padding, dilation, groups)
        except Exception as exc:  # its attributes do not describe a valid convolution
            if len(candidates) == 1:
                return f"its attributes do not describe a valid convolution: {exc}"
            continue
        shapes.append(tuple(attempt.shape))
        if attempt.shape == found.shape:
            if mismatch(found, attempt, scale=10) is None:
                return None
            expected = expected if expected is not None else attempt
    if expected is not None:
        return str(mismatch(found, expected, scale=10))
    if len(candidates) > 1:
        return (f"output of shape {_shape(tuple(found.shape))}, which no stride and padding of a "
                f"{'x'.join(map(str, kernel))} F.conv{rank}d gives")
    return f"output of shape {_shape(tuple(found.shape))} where F.conv gives {_shape(shapes[0])}"


def _declares_geometry(module: nn.Module) -> bool:
    return any(hasattr(module, n) for n in ("stride", "padding", "dilation"))


def _declared_call(module: nn.Module, rank: int) -> tuple[Any, Any, Any, Any]:
    stride = as_tuple(getattr(module, "stride", 1), rank)
    padding = getattr(module, "padding", 0)
    padding = padding if isinstance(padding, str) else as_tuple(padding, rank)
    dilation = as_tuple(getattr(module, "dilation", 1), rank)
    return stride, padding, dilation, as_tuple(getattr(module, "output_padding", 0), rank)


def _geometries(kernel: tuple[int, ...], rank: int) -> list[tuple[Any, Any, Any, Any]]:
    """Strides and paddings to try for a convolution written by hand that names neither: the ones whose
    output has the layer's shape are compared."""
    zero = (0,) * rank
    return [((s,) * rank, (p,) * rank, (1,) * rank, zero) for s in (1, 2, 3, 4) for p in range(max(kernel) + 1)]


def _declared_geometry(module: nn.Module, weight: torch.Tensor | None, groups: int,
                       transposed: bool) -> tuple[int, int, tuple[int, ...]] | None:
    """(C_in, C_out, kernel) from the layer's attributes; for a layer a plugin placed as a conv
    without them, read from its filter bank (then only its numerics can be wrong)."""
    declared = [getattr(module, n, None) for n in ("in_channels", "out_channels", "kernel_size")]
    if all(v is not None for v in declared):
        rank = weight.dim() - 2 if weight is not None else _rank(module)
        return int(declared[0]), int(declared[1]), as_tuple(declared[2], rank)  # type: ignore[arg-type]
    if weight is None:
        return None
    first, second, *kernel = weight.shape
    if transposed:
        return int(first), int(second) * groups, tuple(int(k) for k in kernel)
    return int(second) * groups, int(first), tuple(int(k) for k in kernel)


def _conv_bias(module: nn.Module, weight: torch.Tensor | None, c_out: int) -> torch.Tensor | None:
    """``bias``, or a student's bias under a name of its own: the one other parameter, of C_out values."""
    bias = getattr(module, "bias", None)
    if isinstance(bias, torch.Tensor) or "bias" in vars(module).get("_parameters", {}):
        return bias if isinstance(bias, torch.Tensor) else None
    others = [p for p in module.parameters(recurse=False) if p is not weight]
    return others[0] if len(others) == 1 and others[0].dim() == 1 and others[0].numel() == c_out else None


def _stock(module: nn.Module) -> bool:
    """A torch convolution running torch's own forward: it is the reference, nothing to compare."""
    return isinstance(module, _ConvNd) and from_torch(module)


def _rank(module: nn.Module) -> int:
    kernel = getattr(module, "kernel_size", 1)
    return len(kernel) if isinstance(kernel, (tuple, list)) else 2


def _describe(module: nn.Module, c_in: int, c_out: int, kernel: tuple[int, ...], groups: int) -> str:
    extra = f", groups={groups}" if groups > 1 else ""
    k = kernel[0] if len(set(kernel)) == 1 else kernel
    return f"{type(module).__name__}({c_in}, {c_out}, kernel_size={k}{extra})"


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


RULE = Rule(
    id="conv-param-formula",
    summary="A convolution whose parameter shapes or count differ from "
    "`(C_in/groups * prod(kernel) + [bias]) * C_out`, or a hand-written convolution whose output "
    "differs from `F.conv*d` with its own weights.",
    why=(
        "Each output channel of a convolution has one filter spanning every input channel of its "
        "group, `k_h x k_w x C_in/groups` weights, plus one bias: `(k_h*k_w*C_in/groups + 1) * C_out` "
        "parameters. Swapping C_in and C_out in the formula (as in `(N*M*L + 1) * K` with K the input "
        "channels) or in a hand-written weight tensor gives a layer that either crashes or silently "
        "computes something else. For transposed convolutions the weight is "
        "`(C_in, C_out/groups, *kernel)`."
    ),
    fix=(
        "Store the filters as `(C_out, C_in/groups, *kernel)` with one bias per output channel, or use "
        "`nn.Conv2d(C_in, C_out, kernel_size)`, which does. Use `cnncheck.conv_param_count(...)` to "
        "compute the expected number."
    ),
    severity=Severity.ERROR,
    check=check,
    compares_values=False,  # except for a convolution by hand: see _numeric_mismatch
    flagged_example="""
class MyConv(nn.Module):
    def __init__(self, c_in, c_out, k):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = c_in, c_out, k
        self.weight = nn.Parameter(torch.randn(c_in, c_out, k, k))  # swapped channels
        self.bias = nn.Parameter(torch.zeros(c_out))
""",
    clean_example="""
self.conv = nn.Conv2d(1, 32, kernel_size=5, padding=2)   # (5*5*1 + 1) * 32 = 832 parameters
""",
    limits="A convolution is recognised by what its forward runs, whatever its attributes are called: one "
    "conv op (`F.conv2d`, ...) on a weight made from its own parameters. Then torch's op did the arithmetic, "
    "and the rule judges what the layer owns beyond the filters and bias it handed to the op; a TF-style "
    "`F.pad` before the op is part of its input. A weight computed from its parameters on every call "
    "(weight standardisation, a learnable gain, `weight_norm`, CondConv's experts mixed per sample) is a "
    "reparametrisation, not an error; a weight only stored in another layout (transposed, flipped) is judged "
    "as stored. A convolution written out (`F.unfold` and a matrix product with a filter bank of its own) is "
    "compared numerically with `F.conv*d`, over the strides and paddings that give its output shape. A layer "
    "called with several inputs is never re-called with fewer. A plugin's `cnncheck_classify_module` answer "
    "overrides the recognition.",
)
