"""BatchNorm rules: statistics per channel, batch statistics in train mode, running ones in eval."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any, cast

import torch
from torch import nn

from cnncheck.batch_axis import batch_fold, hard_coded_batch
from cnncheck.checks.batchnorm_semantics import (
    eval_problems,
    is_stock_batchnorm,
    per_channel_dims,
    statistics_dims,
    train_problems,
)
from cnncheck.context import CheckContext, NotChecked
from cnncheck.eval_mode import eval_leaks, training_follows_mode
from cnncheck.findings import Finding, Severity
from cnncheck.layers import (
    LayerKind,
    affine_parameters,
    running_buffers,
    short_repr,
    state_tensors,
    statistic,
)
from cnncheck.ops import LAYOUT_FUNCTIONS, batch_norm_arguments
from cnncheck.recognize import batch_norm_call, uses_own_statistics
from cnncheck.rules import Diagnosis, Pass, Rule
from cnncheck.trace import Node, Trace


def _describe_dims(dims: tuple[int, ...], rank: int) -> str:
    names = ["N", "C", "H", "W", "D"] if rank == 4 else ["N", "C"] + [f"S{i}" for i in range(rank - 2)]
    names = names if rank != 5 else ["N", "C", "D", "H", "W"]
    if not dims:
        return "no dims (no statistics at all)"
    return "(" + ", ".join(names[d] for d in dims) + ")"


def reduction_of(ctx: CheckContext, node: Node) -> tuple[int, ...] | None:
    """The dims a BN-like layer takes its train-mode statistics over (memoised; measured once)."""
    assert node.module is not None and node.probe_input is not None
    x = node.probe_input
    if is_stock_batchnorm(node.module) or verified_call(node) is not None:
        return per_channel_dims(x)
    return cast("tuple[int, ...] | None", ctx.memo(("dims", id(node.module)), lambda: statistics_dims(node.module, x)))


def _is_per_channel(ctx: CheckContext, node: Node) -> bool:
    x = node.probe_input
    if x is None or x.dim() < 2:
        return False
    dims = reduction_of(ctx, node)
    return dims is None or set(dims) == set(per_channel_dims(x))


# -- bn-not-per-channel ------------------------------------------------------------------------------
def diagnose_per_channel(ctx: CheckContext, rule: Rule) -> Diagnosis | None:
    """A forward that raises in a BatchNorm built for another number of channels. Not repaired: cutting
    its input to the channels it has statistics for would hand the layers after it a map they were not
    built for, and flag them for a defect that is not theirs; the rules read forward up to it."""
    failed = ctx.train_trace.failed
    if failed is None or failed.module is None or ctx.modules.get(failed.module) is None or not failed.inputs:
        return None
    info = ctx.modules[failed.module]
    if info.kind is not LayerKind.BATCH_NORM:
        return None
    finding = _num_features(ctx, rule, failed.module, info.name, failed.inputs[0], sized_by_buffers=True)
    return Diagnosis(finding) if finding is not None else None


def check_per_channel(ctx: CheckContext, rule: Rule) -> Iterator[Finding]:
    trace = ctx.train_trace
    for node in trace.module_nodes(LayerKind.BATCH_NORM):
        module, x = node.module, node.probe_input
        if module is None or x is None or x.dim() < 2:
            continue
        finding = _num_features(ctx, rule, module, node.name, x) or _shapes(ctx, rule, node)
        if finding is None and not is_stock_batchnorm(module) and verified_call(node) is None:
            finding = _statistics(ctx, rule, node)
        if finding is None:
            finding = _flattened(ctx, rule, trace, node)
        if finding is not None:
            yield finding


def _num_features(ctx: CheckContext, rule: Rule, module: nn.Module, name: str, x: torch.Tensor,
                  sized_by_buffers: bool = False) -> Finding | None:
    """``num_features`` against the channels a BN-like layer receives. When its forward raised, a layer
    without ``num_features`` is sized by its running statistics (torch's error names only sizes)."""
    declared = getattr(module, "num_features", None)
    names = running_buffers(module)
    if sized_by_buffers and not isinstance(declared, int) and names is not None:
        declared = statistic(module, names[0]).numel()
    channels = int(x.shape[1]) if x.dim() > 1 else None
    if not isinstance(declared, int) or channels is None or declared == channels:
        return None
    return rule.finding(
        name,
        f"{type(module).__name__}({declared}) receives {channels} channels",
        expected=f"num_features = {channels}, the channel count of its input {tuple(x.shape)}",
        found=f"num_features = {declared}",
        fix=f"build it as {type(module).__name__}({channels}): one mean, variance, gamma and beta per "
        f"channel of the layer before it",
        location=ctx.location_of(module),
    )


def _shapes(ctx: CheckContext, rule: Rule, node: Node) -> Finding | None:
    module, x = node.module, node.probe_input
    assert module is not None and x is not None
    channels = int(x.shape[1])
    tensors: dict[str, torch.Tensor] = dict(module.named_parameters(recurse=False))
    names = running_buffers(module)
    if names is not None:
        tensors.update({n: statistic(module, n) for n in names})
    wrong = {n: t for n, t in tensors.items() if t is not None and t.numel() != channels}
    if not wrong:
        return None
    listing = ", ".join(f"{n} {tuple(t.shape)}" for n, t in wrong.items())
    per_pixel = any(t.numel() == math.prod(x.shape[1:]) for t in wrong.values()) and x.dim() > 2
    what = "per channel-and-pixel, not per channel" if per_pixel else "not one value per channel"
    return rule.finding(
        node.name,
        f"{type(module).__name__}'s parameters/statistics are {what}",
        expected=f"gamma, beta, running mean and variance of shape ({channels},): one per channel",
        found=listing,
        location=ctx.location_of(module),
    )


def _statistics(ctx: CheckContext, rule: Rule, node: Node) -> Finding | None:
    x = node.probe_input
    assert x is not None and node.module is not None
    dims = reduction_of(ctx, node)
    expected = per_channel_dims(x)
    if dims is None or set(dims) == set(expected):
        return None
    rank = x.dim()
    return rule.finding(
        node.name,
        f"{type(node.module).__name__} takes its statistics over {_describe_dims(dims, rank)}, not per channel",
        expected=f"mean and variance per channel over {_describe_dims(expected, rank)}, e.g. "
        f"x.mean(dim={expected}, keepdim=True)",
        found=f"statistics over {_describe_dims(dims, rank)} on an input of shape {tuple(x.shape)}",
        fix="reduce over the batch and every spatial position of each channel: "
        f"mean = x.mean(dim={expected}, keepdim=True), var = x.var(dim={expected}, unbiased=False, keepdim=True)",
        location=_forward_line(ctx, node),
    )


_STATISTICS = frozenset({"mean", "var", "std", "var_mean", "std_mean", "sum", "batch_norm"})


def _forward_line(ctx: CheckContext, node: Node, running: bool = False) -> str | None:
    """Where a BatchNorm computes what the finding is about: for a layer written by hand, the line of its
    ``forward`` that takes the batch statistics, or with ``running`` the one that updates its running
    statistics (else its first op); for torch's own layer, whose forward is right, the line that builds it
    with the wrong arguments."""
    assert node.module is not None
    if is_stock_batchnorm(node.module) or not node.inner:
        return ctx.location_of(node.module)
    ops = [n for n in node.inner if n.module is None and n.location]
    if running:
        names = running_buffers(node.module) or ()
        updates = [n for n in ops if any(isinstance(src, str) and src.rsplit(".", 1)[-1].split(":")[-1] in names
                                         for src in n.sources)]
        if updates:
            return updates[0].location
    statistics = [n for n in ops if n.func_name in _STATISTICS]
    chosen = statistics or ops
    return chosen[0].location if chosen else ctx.location_of(node.module)


def _flattened(ctx: CheckContext, rule: Rule, trace: Trace, node: Node) -> Finding | None:
    x = node.probe_input
    assert x is not None and node.module is not None
    if x.dim() != 2:
        return None
    source = node.sources[0] if node.sources else None
    while isinstance(source, Node) and (source.func_name in LAYOUT_FUNCTIONS or isinstance(source.module, nn.Flatten)):
        origin = source.sources[0] if source.sources else None
        if isinstance(origin, Node) and origin.outputs and origin.outputs[0].dim() >= 3:
            shape = tuple(origin.outputs[0].shape)
            if math.prod(shape[2:]) > 1 and math.prod(shape[1:]) == x.shape[1]:
                return rule.finding(
                    node.name,
                    f"{type(node.module).__name__} normalises a flattened {shape[1]}x"
                    f"{'x'.join(map(str, shape[2:]))} feature map: statistics per channel-pixel, not per channel",
                    expected=f"BatchNorm{len(shape) - 2}d({shape[1]}) before the flatten",
                    found=f"{type(node.module).__name__}({x.shape[1]}) after it ({x.shape[1]} separate "
                    f"statistics)",
                    fix=f"move the norm before the flatten as nn.BatchNorm{len(shape) - 2}d({shape[1]})",
                    severity=Severity.WARNING,
                    location=ctx.location_of(node.module),
                )
        source = origin
    return None


# -- bn-train-behaviour --------------------------------------------------------------------------------
def check_train(ctx: CheckContext, rule: Rule) -> Iterator[Finding]:
    for node in ctx.train_trace.module_nodes(LayerKind.BATCH_NORM):
        module, x = node.module, node.probe_input
        if module is None or x is None or x.dim() < 2 or not node.training:
            continue
        kept = _statistics_with_history(module)
        problems = [
            f"its running statistics ({', '.join(kept)}) are updated with their autograd history: each "
            f"batch's graph stays attached to them, so memory and time grow with every training step (and "
            f"backward may reach into earlier batches); update them under torch.no_grad() or from "
            f".detach()ed batch statistics"
        ] if kept else []
        if is_stock_batchnorm(module) or verified_call(node) is not None:
            problems += _hyperparameter_problems(module)  # torch's op does the arithmetic
        elif _per_channel_shapes(module, x) and _is_per_channel(ctx, node):
            problems += train_problems(module, x)
        for problem in problems:
            running = "running" in problem or "num_batches_tracked" in problem  # an update, not the normalising
            yield rule.finding(node.name, f"{type(module).__name__} in train mode: {problem}",
                               location=_forward_line(ctx, node, running))
    yield from _functional_calls(ctx, rule)


def _statistics_with_history(module: nn.Module) -> list[str]:
    """The layer's own tensors (buffers, plain attributes) that a train-mode forward left attached to the
    autograd graph: a running statistic updated from the batch without detach or no_grad."""
    return [n for n, t in state_tensors(module).items() if t.grad_fn is not None]


def verified_call(node: Node) -> Node | None:
    """The ``batch_norm`` call through which a BatchNorm-like layer normalised its own input with its
    own running statistics (timm's BatchNormAct2d, a student's ``return F.batch_norm(x, ...)``): torch's
    op did the arithmetic, whatever activation follows, so no probe re-runs the layer."""
    call = batch_norm_call(node)
    return call if call is not None and node.module is not None and uses_own_statistics(node.module, call) else None


def _hyperparameter_problems(module: nn.Module) -> list[str]:
    """eps and momentum of a layer whose arithmetic is torch's batch_norm: PyTorch's momentum is the
    weight of the new batch, so 0.9 or 0.99 (Keras' weight of the old value) makes the running
    estimates follow the last batch; eps and momentum given by position (``BatchNorm2d(64, 64, 3)``)
    land in the wrong arguments."""
    momentum, eps = getattr(module, "momentum", None), getattr(module, "eps", None)
    name = type(module).__name__
    problems = []
    if isinstance(eps, (int, float)) and not isinstance(eps, bool) and not 0 < eps < 1:
        problems.append(
            f"eps={eps:g}: eps is added to the variance to avoid dividing by zero and should be tiny (1e-5); "
            f"passed by position, {name}(C, {eps:g}, ...) sets eps, not another channel count"
        )
    if isinstance(momentum, (int, float)) and not isinstance(momentum, bool) and momentum > 1:
        problems.append(
            f"momentum={momentum:g} is not a weight between 0 and 1: the running estimates diverge; "
            f"{name}(num_features, eps, momentum) takes them in that order, so pass them by keyword"
        )
    elif isinstance(momentum, (int, float)) and not isinstance(momentum, bool) and 0.5 < momentum <= 1:
        problems.append(
            f"momentum={momentum:g} is Keras' convention (the weight of the old value); PyTorch's momentum is "
            f"the weight of the new batch, running = (1 - momentum) * running + momentum * batch, so the "
            f"running estimates follow the last batch only: use momentum={1 - momentum:.2g}"
        )
    return problems


def _functional_calls(ctx: CheckContext, rule: Rule) -> Iterator[Finding]:
    """``F.batch_norm`` calls made with a module's own running statistics (a block around the stock op,
    or a functional forward): torch's op is right by construction, so what can be wrong is what the
    student hands it, judged against the roles the module gave its tensors."""
    calls = [n for n in ctx.train_trace.nodes if n.module is None and n.func_name == "batch_norm"]
    calls += [c for n in ctx.train_trace.module_nodes(LayerKind.BATCH_NORM) if (c := batch_norm_call(n)) is not None]
    if not calls:
        return
    owners = {id(t): (m, name) for m in ctx.modules
              for name, t in [*m._buffers.items(), *m._parameters.items()] if t is not None}
    updates: dict[int, list[Node]] = {}
    for node in calls:
        args = batch_norm_arguments(node.func, node.args, node.kwargs)
        mean = args.get("running_mean")
        if not isinstance(mean, torch.Tensor) or id(mean) not in owners or not args.get("training"):
            continue
        updates.setdefault(id(mean), []).append(node)
        owner, _ = owners[id(mean)]
        label = ctx.name_of(owner)
        for problem in _argument_problems(owner, args, owners):
            yield rule.finding(label, f"{type(owner).__name__}'s F.batch_norm call: {problem}",
                               location=node.location or ctx.location_of(owner))
    for key, same in updates.items():
        if len(same) > 1:
            owner, name = owners[key]
            yield rule.finding(
                ctx.name_of(owner),
                f"{type(owner).__name__} hands {name} to F.batch_norm(training=True) {len(same)} times in one "
                f"forward: its running statistics are updated {len(same)} times per batch, each time with "
                f"the statistics of a different tensor",
                expected="one F.batch_norm call per set of running statistics and forward",
                found=f"{len(same)} calls (at {', '.join(str(c.location) for c in same)})",
                location=same[0].location or ctx.location_of(owner),
            )


def _argument_problems(owner: nn.Module, args: dict[str, Any], owners: dict[int, Any]) -> list[str]:
    problems = []
    names = running_buffers(owner)
    mean, var = args.get("running_mean"), args.get("running_var")
    if names is not None and mean is owner._buffers.get(names[1]) and var is owner._buffers.get(names[0]):
        problems.append(f"running_mean and running_var are swapped: {names[1]} is passed as the running mean "
                        f"and {names[0]} as the running variance")
    params = owner._parameters
    scale = next((params[n] for n in ("weight", "gamma", "scale") if params.get(n) is not None), None)
    shift = next((params[n] for n in ("bias", "beta", "shift") if params.get(n) is not None), None)
    weight, bias = args.get("weight"), args.get("bias")
    if scale is not None and shift is not None and weight is shift and bias is scale:
        problems.append(f"weight and bias are swapped: {owners[id(shift)][1]} is passed as gamma (the scale) and "
                        f"{owners[id(scale)][1]} as beta (the shift)")
    declared, used = getattr(owner, "momentum", None), args.get("momentum")
    if (isinstance(declared, float) and isinstance(used, (int, float)) and declared != 0.5
            and abs(float(used) - (1 - declared)) < 1e-9):
        problems.append(
            f"it passes momentum={float(used):g} = 1 - self.momentum: Keras' convention (the weight of the old "
            f"value), but F.batch_norm's momentum is the weight of the new batch; pass self.momentum={declared:g}"
        )
    return problems


def _per_channel_shapes(module: nn.Module, x: torch.Tensor) -> bool:
    channels = int(x.shape[1])
    if getattr(module, "num_features", channels) != channels:
        return False
    gamma, beta = affine_parameters(module, channels)
    return all(t is None or t.numel() == channels for t in (gamma, beta))


# -- bn-eval-behaviour ---------------------------------------------------------------------------------
def check_eval(ctx: CheckContext, rule: Rule) -> Iterator[Finding]:
    trace = ctx.eval_trace
    explained = False
    for node in trace.module_nodes(LayerKind.BATCH_NORM):
        module, x = node.module, node.probe_input
        if module is None or x is None or x.dim() < 2 or node.training:
            continue  # still training after eval(): that is mode-not-propagated's finding
        if not _per_channel_shapes(module, x) or not _is_per_channel(ctx, _train_call(ctx, node) or node):
            explained = True  # bn-not-per-channel's finding; its eval behaviour follows from it
            continue
        if is_stock_batchnorm(module):  # torch's own forward: only its configuration can be wrong
            if _untracked(module):
                explained = True
                yield _untracked_stock_finding(ctx, rule, node.name, module)
            continue
        call = verified_call(node) or batch_norm_call(node)
        problems = _eval_call_problems(module, call) if call is not None else eval_problems(module, x)
        change = training_follows_mode(call, safe=True) if call is not None and call.module is None else None
        for problem in problems:
            explained = True
            yield rule.finding(node.name, f"{type(module).__name__} in eval mode: {problem}",
                               location=_forward_line(ctx, node), change=change)
    if explained or trace.error is not None or ctx.batch_size < 2 or _mode_leaks(trace):
        return
    finding = _batch_dependence(ctx, rule)
    if finding is not None:
        yield finding


def _untracked(module: nn.Module) -> bool:
    """Whether torch's own BatchNorm has no running statistics, so that its eval-mode forward falls back
    to the batch's: built with ``track_running_stats=False``, or its buffers set to None."""
    return getattr(module, "running_mean", None) is None and getattr(module, "running_var", None) is None


def _untracked_stock_finding(ctx: CheckContext, rule: Rule, name: str, module: nn.Module) -> Finding:
    """torch's BatchNorm without running statistics is correct code used by choice or by mistake: the
    fix is its configuration (or a layer ignore when batch statistics at inference are intended), not
    the hand-written layer's forward."""
    kind = type(module).__name__
    built = short_repr(module)
    if getattr(module, "track_running_stats", True) is False:
        why = "track_running_stats=False"
        keep = (f"keep the default track_running_stats=True: {built.replace(', track_running_stats=False', '')} "
                f"instead of {built}")
    else:
        why = "its running_mean and running_var are None"
        keep = ("keep its running buffers: the default track_running_stats=True, without setting running_mean "
                "and running_var to None")
    # a layer ignore names the layer; the model itself is ignored by the rule's id
    ignore = f'"{rule.id}:{_glob_literal(name)}"' if name else f'"{rule.id}"'
    scope = "this layer" if name else "the rule for this model"
    return rule.finding(
        name,
        f"{kind} in eval mode normalises with the statistics of whatever batch it is given ({why}): a "
        f"sample's output depends on the rest of its batch",
        expected=f"in eval mode, normalisation with running_mean and running_var, the estimates {kind} keeps "
        f"with track_running_stats=True",
        found=f"batch statistics in eval mode because {why}",
        fix=f"{keep}, so that eval mode uses the running estimates; or, if batch statistics at inference are "
        f"intended, ignore {scope}: cnncheck.check_model(model, example_input, ignore=[{ignore}])",
        location=ctx.location_of(module),
    )


def _glob_literal(name: str) -> str:
    """``name`` as a layer-ignore glob that matches only itself (a ModuleDict key may hold ``*?[``)."""
    return re.sub(r"([*?[])", r"[\1]", name)


def _eval_call_problems(module: nn.Module, call: Node) -> list[str]:
    """A layer that normalises through torch's batch_norm: in eval mode the call must use the running
    statistics (training=False)."""
    named = batch_norm_arguments(call.func, call.args, call.kwargs)
    if not named.get("training"):
        return []
    if named.get("running_mean") is None:
        return ["it has no running statistics (track_running_stats=False, or None handed to batch_norm), so in "
                "eval mode it normalises with the statistics of whatever batch it is given"]
    return ["it still normalises with the batch's statistics instead of its running statistics: its "
            "batch_norm call gets training=True (does its forward check self.training?)"]


def _train_call(ctx: CheckContext, node: Node) -> Node | None:
    """The same layer's call in the train trace, where its statistics dims are measured."""
    return next((n for n in ctx.train_trace.nodes if n.module is node.module and n.probe_input is not None), None)


def _mode_leaks(trace: Trace) -> bool:
    """Train-mode layers or random ops in the eval pass: mode-not-propagated explains those."""
    return bool(eval_leaks(trace))


def _batch_dependence(ctx: CheckContext, rule: Rule) -> Finding | None:
    single = ctx.eval_output_of_first_sample()
    if isinstance(single, Exception):
        if batch_fold(ctx) is not None:
            return None  # a reshape folds samples together: feature-size-mismatch explains it
        written = hard_coded_batch(ctx)
        if written is not None:
            raise NotChecked(f"{written.call} at {written.location} writes the batch size into forward (see "
                             f"feature-size-mismatch), so one sample cannot be compared with its batch")
        ctx.require(Pass.ONE_SAMPLE)  # not checked, and why: what a batch of one raised
    diff = _first_sample_differs(ctx.eval_trace.output, single, ctx.batch_size)
    if diff is None or not _depends_in_float64(ctx):
        return None
    return rule.finding(
        "",
        f"in eval mode the output of {ctx.model_name} for one sample depends on the other samples in the batch",
        expected="model(x)[:1] == model(x[:1]) in eval mode",
        found=str(diff),
    )


def _first_sample_differs(full: Any, single: Any, batch: int) -> Any:
    """How the first sample's output within the batch differs from its output alone, or None."""
    from torch.utils._pytree import tree_flatten

    from cnncheck.probes import mismatch

    leaves = [[t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)] for out in (full, single)]
    for a, b in zip(*leaves):
        if a.dim() == 0 or a.shape[0] != batch or b.dim() == 0 or b.shape[0] != 1:
            continue  # (a batch of one squeezed to a scalar: nothing to compare sample by sample)
        diff = mismatch(b, a[:1], scale=10, whole=True)
        if diff is not None:
            return diff
    return None


def _depends_in_float64(ctx: CheckContext) -> bool:
    """Whether a sample's eval output still depends on the batch when a copy of the model runs in
    float64: an output that is rounding noise (a filter standardised to zero over identical channels)
    differs in float32 from one batch size to another without depending on the other samples."""
    from torch.utils._pytree import tree_map

    from cnncheck.context import first_sample
    from cnncheck.probes import private_copy, same_randomness

    def wide(a: Any) -> Any:
        return a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a

    try:
        model = private_copy(ctx.model).double().eval()
        with torch.no_grad(), same_randomness(ctx.example):
            args, kwargs = tree_map(wide, ctx.fresh_inputs())
            full = model(*args, **kwargs)
        with torch.no_grad(), same_randomness(ctx.example):
            args, kwargs = first_sample(tree_map(wide, ctx.fresh_inputs()), ctx.batch_size)
            single = model(*args, **kwargs)
    except Exception:  # noqa: BLE001 - the model does not run in float64: keep the float32 verdict
        return True
    return _first_sample_differs(full, single, ctx.batch_size) is not None


PER_CHANNEL = Rule(
    id="bn-not-per-channel",
    summary="A BatchNorm-like layer whose statistics or gamma/beta are not one per channel over "
    "`(N, *spatial)`: `num_features` differs from its input's channels, a hand-written BN reduces over "
    "the wrong dims, or gamma/beta are shaped `(C, H, W)`. Warning: a BatchNorm1d on flattened conv "
    "feature maps.",
    why=(
        "In a CNN every position of a channel's feature map comes from the same filter, so BatchNorm "
        "takes one mean and variance per channel over the whole mini-batch and every position, and "
        "learns one gamma and beta per channel. Per-pixel statistics break translation equivariance and "
        "are estimated from only N values each; whole-tensor statistics mix channels of different scale."
    ),
    fix="Use `nn.BatchNorm2d(C)` with C the channels of the layer before, or reduce over "
    "`dim=(0, 2, 3)` with gamma/beta of shape `(C,)` in a hand-written layer.",
    severity=Severity.ERROR,
    check=check_per_channel,
    diagnose=diagnose_per_channel,
    flagged_example="""
mean = x.mean(dim=0, keepdim=True)            # per pixel: statistics of shape (1, C, H, W)
var = x.var(dim=0, unbiased=False, keepdim=True)
""",
    clean_example="""
mean = x.mean(dim=(0, 2, 3), keepdim=True)    # per channel
var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
""",
    limits="A BatchNorm-like layer is recognised by what its forward runs, whatever its attributes are "
    "called: torch's `batch_norm` on its input, or a mean/variance over the batch dim written out (the d2l.ai "
    "chapter's BatchNorm, a CS231n spatial batchnorm). Its running statistics may be buffers or plain tensor "
    "attributes under any mean/variance name (`moving_mean`, `mu`, `sigma2`). A layer that normalises through "
    "torch's `batch_norm` is per channel by construction; the reduction dims of a BN written out are measured "
    "by dataflow: one input element is pushed far out, and the statistics are taken over every dim along which "
    "other outputs move with it (an activation applied in the same forward does not change that).",
)

TRAIN_BEHAVIOUR = Rule(
    id="bn-train-behaviour",
    summary="In train mode a BatchNorm-like layer does not normalise with the batch's per-channel mean "
    "and biased variance, or updates running_mean, running_var (unbiased) or num_batches_tracked "
    "wrongly for its momentum.",
    why=(
        "Training normalises with the current batch's statistics (biased variance) and keeps running "
        "estimates for eval: running = (1 - momentum) * running + momentum * batch, with the unbiased "
        "variance, or a cumulative average when momentum is None. PyTorch's momentum is the weight of "
        "the new batch; Keras' is the weight of the old value. Using 0.1 in Keras' formula makes the "
        "running estimate follow the last batch only, and eval accuracy collapses."
    ),
    fix="Compare with `F.batch_norm(x, running_mean, running_var, weight, bias, training=True, "
    "momentum=momentum, eps=eps)`, or use `nn.BatchNorm2d`.",
    severity=Severity.ERROR,
    check=check_train,
    flagged_example="""
self.running_mean = self.momentum * self.running_mean + (1 - self.momentum) * mean   # momentum=0.1
""",
    clean_example="""
self.running_mean = (1 - self.momentum) * self.running_mean + self.momentum * mean
""",
    limits="A layer that normalises its own input through torch's `batch_norm` with its own running "
    "statistics (timm's BatchNormAct2d, with any activation after it) is verified through that call: its "
    "arguments, eps and momentum (a Keras-style `momentum=0.99`, or eps and momentum given by position as in "
    "`BatchNorm2d(64, 64, 3, 1)`), not re-run. Running statistics updated with their autograd history (no "
    "`detach` or `no_grad`) are reported: the graph grows every step. A frozen BatchNorm (fixed statistics by "
    "design, never updated) is not a defect. A hand-written layer with momentum > 0.5 may use either "
    "convention. A common activation (ReLU, GELU, SiLU, ...) in the "
    "same forward, before or after the normalisation, is accepted, and the running estimates are judged "
    "against the tensor that was normalised. A module that changes its input's shape, runs a pool or "
    "dropout inside, or hands its own running statistics to `F.batch_norm` and does more than that call "
    "(an activation first, a pool after) is a block, not a BatchNorm layer: its ops are traced, and an "
    "`F.batch_norm` call among them is checked for what it is handed (running mean and variance, gamma "
    "and beta in their places, the module's own momentum, one update per forward); a hard-coded "
    "`training=True` there is `mode-not-propagated`. A normalisation written out inside such a block is "
    "not recognised.",
)

EVAL_BEHAVIOUR = Rule(
    id="bn-eval-behaviour",
    summary="In eval mode a BatchNorm-like layer normalises with batch statistics or changes a buffer, "
    "or the model's output for one sample depends on the other samples in the batch.",
    why=(
        "At inference the prediction for an image must not depend on which other images share its "
        "batch. BatchNorm in eval mode uses its running estimates and leaves them untouched."
    ),
    fix="In forward, use the batch statistics only `if self.training`, and the running buffers otherwise; "
    "do not update buffers when not training.",
    severity=Severity.ERROR,
    check=check_eval,
    needs=frozenset({Pass.TRAIN, Pass.EVAL}),
    flagged_example="""
def forward(self, x):               # ignores self.training
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    ...
""",
    clean_example="""
def forward(self, x):
    return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                        self.training, self.momentum, self.eps)
""",
    autofix="Safe: a hand-written layer whose forward calls `F.batch_norm` with running statistics and a "
    "hard-coded `training=True` (by keyword or by position) gets `training=self.training`, as "
    "`mode-not-propagated` gives it. A layer that computes its statistics itself is the student's to fix.",
)
