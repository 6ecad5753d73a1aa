"""Parameter counts layer by layer, from the textbook formulas rather than from ``numel()``.

Conv, linear, norm and embedding layers are counted from their hyper-parameters; any other parameter
a module owns directly (ConvNeXt's ``layer_scale``, a class token) counts as its ``numel``. A tied
parameter (the same tensor in two places) is counted once, where it is first met.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.nn.modules import batchnorm, conv, instancenorm

from cnncheck.formulas import Count, conv_param_formula


@dataclass(frozen=True, slots=True)
class LayerCount:
    """One layer's (or one loose parameter's) parameter count and the formula that produced it."""

    name: str
    kind: str
    formula: str
    count: int


_FORMULA_PARAMS = frozenset({"weight", "bias"})  # what the layer formulas below account for
_WEIGHTED = (conv._ConvNd, nn.Linear, nn.Embedding, nn.EmbeddingBag)


def _present(module: nn.Module, name: str) -> bool:
    return module._parameters.get(name) is not None  # a parametrized weight is not the layer's own


def _norm(size: int, label: str, module: nn.Module) -> Count:
    n = int(_present(module, "weight")) + int(_present(module, "bias"))
    return Count(n * size, f"{n}*{label}" if n > 1 else label)


def _layer_formula(module: nn.Module) -> tuple[str, Count] | None:
    """The kind and formula of a layer of known type, or None for anything else."""
    bias = _present(module, "bias")
    if isinstance(module, _WEIGHTED) and not _present(module, "weight"):
        return None  # weight norm or a parametrization owns the weight: count what is there by numel
    if isinstance(module, conv._ConvNd):
        return "conv", conv_param_formula(
            module.in_channels, module.out_channels, module.kernel_size, module.groups, bias,
            transposed=module.transposed,
        )
    if isinstance(module, nn.Linear):
        i, o = module.in_features, module.out_features
        return "linear", Count((i + bias) * o, f"({i} + 1) * {o}" if bias else f"{i} * {o}")
    if isinstance(module, batchnorm._BatchNorm):
        return "batch_norm", _norm(module.num_features, str(module.num_features), module)
    if isinstance(module, instancenorm._InstanceNorm):
        return "instance_norm", _norm(module.num_features, str(module.num_features), module)
    if isinstance(module, nn.GroupNorm):
        return "group_norm", _norm(module.num_channels, str(module.num_channels), module)
    if isinstance(module, nn.LayerNorm):
        shape = tuple(module.normalized_shape)
        return "layer_norm", _norm(math.prod(shape), "*".join(map(str, shape)) or "1", module)
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        n, d = module.num_embeddings, module.embedding_dim
        return "embedding", Count(n * d, f"{n} * {d}")
    return None


def model_param_formulas(model: nn.Module) -> list[LayerCount]:
    """Every layer's parameter count, from its formula, in ``named_modules()`` order."""
    seen: set[int] = set()
    counts: list[LayerCount] = []
    for name, module in model.named_modules():
        own = {n: p for n, p in module._parameters.items() if p is not None}
        fresh: dict[str, nn.Parameter] = {}
        for pname, p in own.items():
            if id(p) not in seen:
                seen.add(id(p))
                fresh[pname] = p
        covered = [n for n in own if n in _FORMULA_PARAMS]
        known = _layer_formula(module) if covered and all(n in fresh for n in covered) else None
        if known is not None:
            kind, count = known
            counts.append(LayerCount(name, kind, count.formula, count.value))
            fresh = {n: p for n, p in fresh.items() if n not in _FORMULA_PARAMS}
        for pname, p in fresh.items():  # loose or tied-elsewhere parameters
            full = f"{name}.{pname}" if name else pname
            counts.append(LayerCount(full, "parameter", "numel", p.numel()))
    return counts


def total_param_count(model: nn.Module) -> int:
    """The model's parameter count, each layer from its formula and each tied tensor once."""
    return sum(c.count for c in model_param_formulas(model))


@dataclass(frozen=True, slots=True)
class ExplainedLayer:
    """One row of ``cnncheck explain``: a layer as forward ran it."""

    name: str
    layer: str
    kind: str
    output_shape: tuple[int, ...] | None
    formula: str
    params: int


@dataclass(frozen=True, slots=True)
class Explanation:
    model: str
    input_shape: tuple[int, ...]
    layers: tuple[ExplainedLayer, ...]
    formula_total: int
    numel_total: int
    stopped: tuple[str, ...] = ()

    def render(self) -> str:
        shape = "x".join(map(str, self.input_shape))
        rows = [("layer", "kind", "output", "parameters (formula)", "params")]
        row: ExplainedLayer | tuple[str, str, str, str, str]  # a layer, then a rendered row
        for row in self.layers:
            out = "x".join(map(str, row.output_shape[1:])) if row.output_shape else "-"
            formula = f"{row.formula} = {row.params}" if row.formula and row.formula != "numel" else (
                str(row.params) if row.params else "-")
            rows.append((f"{row.name or '<model>'} {row.layer}", row.kind, out, formula, str(row.params)))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = [f"{self.model} on input {shape} (output shapes without the batch dimension)"]
        for i, row in enumerate(rows):
            lines.append("  ".join(cell.ljust(widths[j]) if j < 4 else cell.rjust(widths[j]) for j, cell in enumerate(row)))
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.extend(self.stopped)
        verdict = "matches" if self.formula_total == self.numel_total else "DOES NOT match"
        lines.append(f"total: {self.formula_total} parameters by formula; sum(p.numel()) = {self.numel_total} "
                     f"({verdict})")
        return "\n".join(lines)


def explain_model(model: nn.Module, example_input: Any) -> Explanation:
    """The model layer by layer, as its ``forward`` runs them in eval mode: kind, output shape, the
    parameter formula with the layer's numbers, and totals that must agree with ``sum(p.numel())``."""
    import torch

    from cnncheck.api import _example_inputs, _model_device, _model_dtype
    from cnncheck.layers import short_repr
    from cnncheck.preserve import preserved, preserved_global_state
    from cnncheck.trace import module_inventory, run_trace

    name = type(model).__name__
    args, kwargs = _example_inputs(example_input, _model_device(model), _model_dtype(model), name)
    modules = module_inventory(model)
    with preserved_global_state(cuda=_model_device(model).type == "cuda"), preserved(modules), torch.no_grad():
        trace = run_trace(model, args, modules, kwargs=kwargs, before=model.eval)
    stopped: list[str] = []
    if trace.error is not None:
        stopped.append(f"forward stopped here: {type(trace.error).__name__}: {trace.error}")
        stopped += _diagnosis(model, example_input)
    formulas = {c.name: c for c in model_param_formulas(model)}
    rows: list[ExplainedLayer] = []
    shown: set[str] = set()
    for node in trace.nodes:
        if node.module is None and node.in_shape != node.out_shape and node.in_shape is not None:
            where = node.location.rsplit("/", 1)[-1] if node.location else node.scope or "forward"
            rows.append(ExplainedLayer(f"{node.func_name}()", f"at {where}", "function", node.out_shape, "", 0))
            continue
        if node.module is None or node.name in shown:
            continue
        shown.add(node.name)
        count = formulas.get(node.name)
        own = [c for n, c in formulas.items() if n.startswith(f"{node.name}.") and c.kind == "parameter"
               and n.count(".") == node.name.count(".") + (1 if node.name else 0)]
        loose = sum(c.count for c in own)
        formula = count.formula if count else ("numel" if loose else "")
        if count and own:  # parameters beyond the layer's formula, counted as they are (a reparametrising gain)
            formula += "".join(f" + {c.count} ({c.name.rsplit('.', 1)[-1]})" for c in own)
        rows.append(ExplainedLayer(node.name, short_repr(node.module), _kind(node), node.out_shape,
                                   formula, (count.count if count else 0) + loose))
    raised_in = set(trace.failed.module_stack) if trace.failed is not None else set()
    for count in formulas.values():  # parameters of layers that forward never ran, or that raised
        owner = count.name.rsplit(".", 1)[0] if count.kind == "parameter" else count.name
        if owner not in shown and count.name not in shown:
            status = "(forward raised here)" if owner in raised_in or count.name in raised_in else "(not run by forward)"
            rows.append(ExplainedLayer(count.name, status, count.kind, None, count.formula, count.count))
    unique = {id(p): p for p in model.parameters()}
    return Explanation(name, tuple(args[0].shape) if args else (), tuple(rows),
                       sum(c.count for c in formulas.values()), sum(p.numel() for p in unique.values()),
                       tuple(stopped))


def _kind(node: Any) -> str:
    """The layer's kind; for a convolution whose filters are computed from its parameters on every call
    (weight standardisation, a gain, experts mixed per sample), ``conv (reparametrised)``."""
    from cnncheck.checks.conv_params import weight_origin
    from cnncheck.layers import LayerKind

    found = weight_origin(node) if node.kind is LayerKind.CONV else None
    if found is not None and not found.direct and not found.rearranged:
        return "conv (reparametrised)"
    return str(node.kind.value)


def _diagnosis(model: nn.Module, example_input: Any) -> list[str]:
    """cnncheck's explanation of a forward that does not run, when a rule has one."""
    from cnncheck.api import CheckError, check_model

    try:
        report = check_model(model, example_input, checks=["feature-size-mismatch", "bn-not-per-channel"])
    except CheckError:
        return []
    return [line for f in report.findings for line in (f.message, f"fix: {f.fix}")]
