"""Parameter counts layer by layer, from the textbook formulas rather than from ``numel()``.

Conv, linear, norm and embedding layers are counted from their hyper-parameters; any other parameter
a module owns directly (ConvNeXt's ``layer_scale``, a class token) counts as its ``numel``. A tied
parameter (the same tensor in two places) is counted once, where it is first met.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn
from torch.nn.modules import batchnorm, conv, instancenorm

from cnncheck.formulas import Count, conv_param_formula

if TYPE_CHECKING:
    from cnncheck.layer_table import Architecture


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


@dataclass(frozen=True)
class Explanation:
    """What ``cnncheck explain`` prints: the architecture table, why forward stopped (when it did, with
    cnncheck's diagnosis), and the formula total against ``sum(p.numel())``."""

    architecture: Architecture
    formula_total: int
    numel_total: int
    stopped: tuple[str, ...] = ()

    def render(self) -> str:
        verdict = "matches" if self.formula_total == self.numel_total else "DOES NOT match"
        return "\n".join([str(self.architecture), *self.stopped,
                          f"total: {self.formula_total} parameters by formula; sum(p.numel()) = "
                          f"{self.numel_total} ({verdict})"])


def explain_model(model: nn.Module, example_input: Any) -> Explanation:
    """The model layer by layer, as its ``forward`` runs them in eval mode (the same table as
    ``cnncheck.architecture``), with totals that must agree with ``sum(p.numel())``."""
    from cnncheck.layer_table import build

    arch = build(model, example_input)
    stopped: list[str] = []
    if arch.stopped is not None:
        stopped.append(f"forward stopped: {arch.stopped}")
        stopped += _diagnosis(model, example_input)
    unique = {id(p): p for p in model.parameters()}
    return Explanation(arch, total_param_count(model), sum(p.numel() for p in unique.values()), tuple(stopped))


def _diagnosis(model: nn.Module, example_input: Any) -> list[str]:
    """cnncheck's explanation of a forward that does not run, when a rule has one."""
    from cnncheck.api import CheckError, check_model

    try:
        report = check_model(model, example_input, checks=["feature-size-mismatch", "bn-not-per-channel"])
    except CheckError:
        return []
    return [line for f in report.findings for line in (f.message, f"fix: {f.fix}")]
