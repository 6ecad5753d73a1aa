"""The structural rules: ``layer-not-used``, ``bn-reused`` and ``parameter-without-gradient``.

Each reads the dataflow of the traced forwards (which layers ran, which tensors each op received), not
the order of an ``nn.Sequential`` or a count of hook calls: a layer called through a custom forward, a
weight read with ``F.linear(x, self.fc.weight)`` and a BatchNorm called in a loop are all seen.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from cnncheck.context import CheckContext, NotChecked, _leaves
from cnncheck.findings import Finding, Severity
from cnncheck.layers import LayerKind, layer_label, running_buffers, short_repr
from cnncheck.rules import Pass, Rule
from cnncheck.trace import Node, Trace, storage_of


def _ran(traces: Iterable[Trace]) -> tuple[set[str], set[int]]:
    """The names of the modules that ran (called, ops of theirs recorded inside them, or a child of theirs
    that did: every dotted prefix of such a name, ``""`` the model included), and the ids of the tensors
    that any op received. One pass over the traces; each layer is then one lookup."""
    names: set[str] = {""}
    read: set[int] = set()
    for trace in traces:
        for node in trace.every_node():
            parts = (node.name if node.module is not None else node.scope).split(".")
            names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        read |= trace.tensors_read()
    return names, read


def _inside(name: str, names: Iterable[str]) -> bool:
    """Whether any of ``names`` is the module ``name`` or one inside it (the model, ``""``, holds all)."""
    return any(not name or n == name or n.startswith(f"{name}.") for n in names)


# -- layer-not-used -----------------------------------------------------------------------------------------
def check_not_used(ctx: CheckContext, rule: Rule) -> Iterator[Finding]:
    traces = [ctx.train_trace, ctx.eval_trace]
    names, read = _ran(traces)
    shared = _shared_parameters(ctx.model)
    for module, info in ctx.modules.items():
        if info.hidden:  # kept in a plain list: mode-not-propagated's case, and not in model.parameters()
            continue
        own = [p for p in module._parameters.values() if p is not None]
        stateful = info.kind in (LayerKind.DROPOUT, LayerKind.BATCH_NORM) and not list(module.children())
        if not own and not stateful:
            continue
        if info.name in names or any(id(module) in trace.called for trace in traces):
            continue  # it ran (a container ran when one of its children did)
        if any(id(p) in read for p in own) or any(id(q) in read for p in own for q in shared.get(id(p), ())):
            continue  # its parameters are used without calling it: F.linear(x, self.fc.weight), tied weights
        if info.kind is LayerKind.DROPOUT and _rate_handed_to_an_op(ctx.train_trace, info.name, module):
            continue  # F.scaled_dot_product_attention(..., dropout_p=self.attn_drop.p): its rate is used
        count = sum(p.numel() for p in own)
        what = f"{count} parameter(s) that never train" if count else "it does nothing"
        yield rule.finding(
            info.name,
            f"{layer_label(info.name, module)} is never used: forward does not run it in train or eval mode on the example input",
            expected="every layer built in __init__ is run by forward (or its parameters read)",
            found=f"{short_repr(module)}: not called in a train or an eval forward, and no op reads its "
            f"parameters; {what}" + (", and they inflate the model's parameter count" if count else ""),
            location=ctx.location_of(module),
        )


def _rate_handed_to_an_op(trace: Trace, name: str, module: nn.Module) -> bool:
    """Whether an op in the dropout's parent passed its rate as ``dropout_p`` (fused attention)."""
    parent = name.rpartition(".")[0]
    rate = getattr(module, "p", None)
    for node in trace.every_node():
        if node.module is None and (node.scope == parent or node.scope.startswith(f"{parent}.") or not parent):
            given = node.kwargs.get("dropout_p", node.args[4] if node.func_name == "scaled_dot_product_attention"
                                    and len(node.args) > 4 else None)
            if given is not None and given == rate:
                return True
    return False


def _shared_parameters(model: nn.Module) -> dict[int, list[nn.Parameter]]:
    """Parameters that are one tensor under two names, or views of one storage: tied weights."""
    by_storage: dict[int, list[nn.Parameter]] = defaultdict(list)
    for p in model.parameters(recurse=True):
        storage = storage_of(p)
        if storage is not None:
            by_storage[storage].append(p)
    return {id(p): group for group in by_storage.values() for p in group if len(group) > 1}


NOT_USED = Rule(
    id="layer-not-used",
    summary="A layer with parameters (or a dropout or BatchNorm) that no pass of forward runs, in train "
    "or eval mode, and whose parameters no op reads.",
    why=(
        "A layer built in `__init__` and never called still counts in `sum(p.numel())`, still goes to the "
        "optimizer and still fills the checkpoint, but it never changes the output and never trains. "
        "Almost always a call was forgotten (`x = self.bn2(x)` left out of forward), so the model trained "
        "is not the model designed."
    ),
    fix="Call the layer where forward should use it, or delete it from `__init__`.",
    severity=Severity.WARNING,
    check=check_not_used,
    needs=frozenset({Pass.TRAIN, Pass.EVAL}),
    compares_values=False,
    needs_whole_passes=True,
    flagged_example="""
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.bn = nn.BatchNorm2d(8)       # built ...
        self.fc = nn.Linear(8, 10)
    def forward(self, x):
        x = F.relu(self.conv(x))         # ... but never called
        return self.fc(x.mean(dim=(2, 3)))
""",
    clean_example="x = F.relu(self.bn(self.conv(x)))",
    limits="Used means: called in the traced train or eval forward (a layer run only in train mode, like "
    "inception's aux head, is used), a child of it ran, or an op read one of its parameters (a weight "
    "passed to `F.linear`, a table indexed by a method, a tied weight); a dropout whose rate an op of its "
    "parent receives (`F.scaled_dot_product_attention(..., dropout_p=self.attn_drop.p)`, as timm's "
    "attention does) is used too. A layer that only a branch the "
    "example input does not reach would run looks unused: give an input that takes that branch, or "
    "ignore the rule for that layer.",
)


# -- bn-reused ------------------------------------------------------------------------------------------------
def check_reused(ctx: CheckContext, rule: Rule) -> Iterator[Finding]:
    calls: dict[int, list[Node]] = defaultdict(list)
    for node in ctx.train_trace.every_node():
        if node.module is not None and node.kind is LayerKind.BATCH_NORM and running_buffers(node.module) \
                and _tracks(node.module):
            calls[id(node.module)].append(node)
    for nodes in calls.values():
        if len(nodes) < 2 or _shared_branch(nodes):
            continue
        module = nodes[0].module
        assert module is not None
        name = nodes[0].name
        # a call made by torch's own code (an nn.Sequential running its children) is a place of its own
        places = list(dict.fromkeys(
            f"at {n.call_site}" if n.call_site else
            f"by the forward of {repr(n.scope) if n.scope else 'the model'} (call {i + 1})"
            for i, n in enumerate(nodes)))
        shapes = list(dict.fromkeys(str(tuple(n.inputs[0].shape)) for n in nodes if n.inputs))
        in_loop = len(places) == 1
        message = (f"{layer_label(name, module)} runs {len(nodes)} times in one forward"
                   + (", step after step at one line (a loop)" if in_loop else f", at {len(places)} places"))
        yield rule.finding(
            name,
            message,
            expected="one BatchNorm per place it normalises: its running statistics describe one layer's "
            "activations, updated once per training step",
            found=f"{len(nodes)} calls in one train forward (inputs {', '.join(shapes)}): its running mean and "
            f"variance mix the distributions of {'every step of the loop' if in_loop else 'different layers'} "
            f"and move {len(nodes)} times per step",
            fix="Build one BatchNorm for each place (an nn.ModuleList of them for a loop, one per step) "
            "instead of calling the same one again." if in_loop else None,
            location=ctx.location_of(module),
            details=[f"called {place}" for place in places[:5]],
        )


def _shared_branch(nodes: list[Node]) -> bool:
    """Whether the calls are one place of the network run on several inputs (the encoder of a Siamese net,
    a head shared by two views): the same layer feeds every call, and no call's input is computed from
    another call's output, as it is in a loop. Its statistics then describe one layer's activations."""
    feeders = {_feeder(node) for node in nodes}
    if len(feeders) != 1 or None in feeders:
        return False
    return not any(_computed_from(later, earlier) for i, earlier in enumerate(nodes) for later in nodes[i + 1:])


def _feeder(node: Node) -> object:
    source = node.sources[0] if node.sources else None
    if isinstance(source, Node):
        return id(source.module) if source.module is not None else (source.func_name, source.location)
    return None  # the model's input itself, or a constant: not a layer that is shared


def _computed_from(later: Node, earlier: Node) -> bool:
    seen: set[int] = set()
    stack = [s for s in later.sources if isinstance(s, Node)]
    while stack:
        node = stack.pop()
        if node is earlier:
            return True
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(s for s in node.sources if isinstance(s, Node))
    return False


def _tracks(module: nn.Module) -> bool:
    return getattr(module, "track_running_stats", True) is not False


REUSED = Rule(
    id="bn-reused",
    summary="One BatchNorm (or any norm with running statistics) runs at more than one place in one "
    "forward, or at every step of a loop.",
    why=(
        "A BatchNorm's running mean and variance estimate the distribution of one layer's activations; "
        "eval mode normalises with them. Called at two places, it averages two different distributions, "
        "so in eval mode neither place is normalised right, and it updates its statistics twice per "
        "training step. In a loop, each step's activations differ too, and one set of statistics serves "
        "none of them."
    ),
    fix="Build one BatchNorm for each place it normalises (`self.bn1`, `self.bn2`), and keep each "
    "call to its own.",
    severity=Severity.WARNING,
    check=check_reused,
    compares_values=False,
    flagged_example="""
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
    def forward(self, x):
        x = F.relu(self.bn(self.conv1(x)))
        return F.relu(self.bn(self.conv2(x)))     # the same BatchNorm again
""",
    clean_example="self.bn1, self.bn2 = nn.BatchNorm2d(16), nn.BatchNorm2d(16)",
    limits="Counted in the traced train forward, for modules that keep running statistics. A sub-network "
    "run on several inputs (the shared encoder of a Siamese net: the same layer feeds the BatchNorm at every "
    "call, and no call's input comes from another's output) is one place and is not flagged; a loop is. "
    "A BatchNorm with `track_running_stats=False` keeps no running statistics, nor do LayerNorm and GroupNorm: "
    "sharing those only shares weights. A functional `F.batch_norm` handed the same buffers twice is `bn-train-behaviour`'s case.",
)


# -- parameter-without-gradient -------------------------------------------------------------------------------
def check_no_gradient(ctx: CheckContext, rule: Rule) -> Iterator[Finding]:
    trace = ctx.train_trace
    names, read = _ran([trace])
    outputs = [t for t in _leaves(trace.output) if t.requires_grad and t.is_floating_point()]
    used: list[tuple[str, nn.Module, str, nn.Parameter]] = []
    seen: set[int] = set()
    for module, info in ctx.modules.items():
        for pname, p in module._parameters.items():
            if p is None or id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            if not info.hidden and (info.name in names or id(p) in read):
                used.append((info.name, module, pname, p))
    if not used:
        return
    if not _leaves(trace.output):
        ctx.require(Pass.GRADIENTS)  # not checked: forward returns no tensor to take gradients of
    reached = _reached_leaves(outputs)
    missing: dict[str, list[tuple[str, nn.Parameter]]] = defaultdict(list)
    owners: dict[str, nn.Module] = {}
    for name, module, pname, p in used:
        if id(p) not in reached:
            missing[name].append((pname, p))
            owners[name] = module
    causes = {name: _cause(owners[name], params, read, reached, trace, name) for name, params in missing.items()}
    if not outputs and all(cause.endswith(f"({_CUT_OUTSIDE})") for cause in causes.values()):
        yield _no_gradient_at_all(ctx, rule, used)  # one cause for all of them: the output itself
        return
    for name, params in missing.items():
        module = owners[name]
        listing = ", ".join(f"{pname} {tuple(p.shape)}" for pname, p in params)
        count = sum(p.numel() for _, p in params)
        named = ", ".join(f"'{_join(name, pname)}'" for pname, _ in params)
        subject = f"parameter {named} gets" if len(params) == 1 else f"parameters {named} get"
        cause = causes[name]
        yield rule.finding(
            name,
            (f"{layer_label(name, module)} is used by forward, but its " if name else f"{type(module).__name__}'s ")
            + f"{subject} no gradient in a train step, so {'it never trains' if len(params) == 1 else 'they never train'}",
            expected="every parameter with requires_grad=True that forward uses gets a gradient from the loss",
            found=f"no gradient reaches {listing} ({count} values): {cause}",
            location=_first_read(trace, params) or ctx.location_of(module),
        )


def _first_read(trace: Trace, params: list[tuple[str, nn.Parameter]]) -> str | None:
    """The student's line of forward that first hands one of ``params`` (or its ``.data``) to an op: where
    the graph is cut, or just before."""
    storages = {storage_of(p) for _, p in params}
    for node in trace.every_node():
        if node.module is None and node.location and any(storage_of(t) in storages for t in node.tensors_received()):
            return node.location
    return None


def _cause(module: nn.Module, params: list[tuple[str, nn.Parameter]], read: set[int], reached: set[int],
           trace: Trace, name: str) -> str:
    them = "it" if len(params) == 1 else "them"
    if _never_read(module, params, read, reached, trace, name):
        return f"the layer ran, but no op of its forward reads {them}"
    return f"the graph from {them} to the output is cut ({_cut_hint(trace, name)})"


def _no_gradient_at_all(ctx: CheckContext, rule: Rule, used: list[tuple[str, nn.Module, str, nn.Parameter]]) -> Finding:
    """Forward's output carries no gradient at all (no_grad or inference_mode around all of it, or a
    detached result): one finding for the model instead of one per layer."""
    try:
        ctx.require(Pass.GRADIENTS)
        why = "its output carries no gradient"
    except NotChecked as exc:
        why = str(exc)
    count = sum(p.numel() for *_, p in used)
    return rule.finding(
        "", f"none of the {len(used)} trainable parameters that forward uses gets a gradient in a train step: {why}",
        expected="forward's output carries a gradient back to the parameters that make it",
        found=f"an output without a gradient: {count} trainable values never train",
        fix="Run forward without torch.no_grad() or torch.inference_mode() around it, and without detaching "
        "its result; to freeze the model on purpose, call model.requires_grad_(False).")


def _never_read(module: nn.Module, params: list[tuple[str, nn.Parameter]], read: set[int], reached: set[int],
                trace: Trace, name: str) -> bool:
    """Whether the layer ran without reading these parameters at all (rather than with its graph cut): no op
    received them, and either its own ops were recorded (a hand-written layer), or its other parameters got
    a gradient, or its output is in the graph (a torch layer given an extra parameter it never uses)."""
    if any(id(p) in read for _, p in params):
        return False
    if any(storage_of(p) in trace.storages_read() for _, p in params):
        return False  # read through .data or a view: its graph is cut, not forgotten
    mine = {id(p) for _, p in params}
    siblings_reached = any(id(q) in reached for q in module.parameters(recurse=False) if id(q) not in mine)
    ops_inside = any(n.module is None and _inside(name, (n.scope,)) for n in trace.every_node())
    output_in_graph = any(n.module is module and any(t.requires_grad for t in n.outputs) for n in trace.every_node())
    return siblings_reached or ops_inside or output_in_graph


def _reached_leaves(outputs: list[torch.Tensor]) -> set[int]:
    """The ids of the leaf tensors a backward from ``outputs`` would give a gradient (maybe a zero one):
    the variables of the autograd graph's AccumulateGrad nodes, found by walking the graph, which costs
    no backward pass."""
    reached = {id(t) for t in outputs if t.grad_fn is None and t.requires_grad}
    stack: list[Any] = [t.grad_fn for t in outputs if t.grad_fn is not None]
    seen: set[int] = set()
    while stack:
        function = stack.pop()
        if function is None or id(function) in seen:
            continue
        seen.add(id(function))
        variable = getattr(function, "variable", None)
        if variable is not None:
            reached.add(id(variable))
        stack.extend(next_function for next_function, _ in function.next_functions)
    return reached


def _join(module: str, parameter: str) -> str:
    return f"{module}.{parameter}" if module else parameter


def _cut_hint(trace: Trace, name: str) -> str:
    """Where the gradient is likely cut, from the ops recorded in the layer: a detach, .data, an integer
    cast, or none of them (then torch.no_grad() around the call)."""
    inside = [n for n in trace.every_node() if _inside(name, (n.scope, n.name if n.module is not None else n.scope))]
    ops = {n.func_name for n in inside}
    if {"detach", "detach_"} & ops:
        return "a .detach() in its forward"
    integer = [n for n in inside for t in n.outputs if isinstance(t, torch.Tensor) and not t.is_floating_point()
               and not t.is_complex()]
    if integer:
        return f"an integer cast ({integer[0].func_name}) in its forward"
    return _CUT_OUTSIDE


_CUT_OUTSIDE = "its forward runs under torch.no_grad(), reads .data, or its output is detached later"


NO_GRADIENT = Rule(
    id="parameter-without-gradient",
    summary="A parameter with `requires_grad=True` that forward uses, but that gets no gradient in a "
    "train step, so it never trains.",
    why=(
        "The optimizer only moves parameters that receive a gradient. A `.detach()`, a `.data`, a "
        "`torch.no_grad()` block inside forward or an integer cast cuts the graph between a parameter and "
        "the loss: the parameter looks trainable (`requires_grad=True`, counted, given to the optimizer) "
        "and silently keeps its initial value. A gradient that is zero for one batch is not this: the "
        "parameter is still in the graph."
    ),
    fix="Remove the `.detach()`, `.data` or `torch.no_grad()` around the layer's computation, or, if the "
    "parameter is meant to stay fixed, freeze it (`p.requires_grad_(False)`) or make it a buffer. A parameter "
    "that forward never reads is a forgotten term: use it in forward, or delete it.",
    severity=Severity.ERROR,
    check=check_no_gradient,
    needs=frozenset({Pass.TRAIN}),  # the graph is walked, not run backward; no gradient at all is a finding
    compares_values=False,  # it walks the autograd graph: a NaN flows through it as well as any number
    needs_whole_passes=True,
    flagged_example="""
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.scale = nn.Parameter(torch.ones(8, 1, 1))
        self.fc = nn.Linear(8, 10)
    def forward(self, x):
        x = self.conv(x) * self.scale.detach()    # scale never trains
        return self.fc(x.mean(dim=(2, 3)))
""",
    clean_example="x = self.conv(x) * self.scale",
    limits="Checked on the autograd graph of the train forward's outputs (walked, not run backward): a "
    "parameter that forward used (a layer it called, or a tensor an op read) and that the graph does not "
    "reach gets no gradient at all and is flagged; one whose gradient is zero is in the graph and is not. Frozen parameters, buffers and layers forward never uses "
    "(`layer-not-used`) are left out.",
)
