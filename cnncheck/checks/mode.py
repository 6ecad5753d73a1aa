"""``mode-not-propagated``: ``model.train()``/``model.eval()`` reaches every BN and dropout that runs."""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from cnncheck.changes import NoFix, RegisterChange
from cnncheck.checks.batchnorm_semantics import follows_grad_mode
from cnncheck.context import CheckContext
from cnncheck.eval_mode import (
    MODAL_KINDS,
    TRAINING_ARGUMENT,
    Leak,
    eval_leaks,
    functional_training,
    has_running_statistics,
    training_follows_mode,
)
from cnncheck.findings import Finding, Severity
from cnncheck.layers import LayerKind, from_torch
from cnncheck.locate import call_in_function
from cnncheck.recognize import batch_norm_call
from cnncheck.rules import Pass, Rule
from cnncheck.trace import Node


def check(ctx: CheckContext, rule: Rule) -> Iterator[Finding]:
    reported: set[str] = set()
    for leak in eval_leaks(ctx.eval_trace):
        finding = _eval_finding(ctx, rule, leak)
        key = finding.module + (finding.location or "")
        if key not in reported:
            reported.add(key)
            yield finding
    for node in ctx.train_trace.module_nodes(*MODAL_KINDS):
        if node.training is False and node.name not in reported and not _frozen_on_purpose(ctx, node):
            reported.add(node.name)
            yield _train_finding(ctx, rule, node)
    for node in ctx.train_trace.module_nodes(LayerKind.BATCH_NORM):
        if node.name not in reported and _follows_grad_mode(node):
            reported.add(node.name)
            yield _grad_mode_finding(ctx, rule, node)
    for node in ctx.train_trace.nodes:
        if _dropout_never_on(node) and (node.location or node.scope) not in reported:
            reported.add(node.location or node.scope)
            yield _fixed_training(ctx, rule, node, False, "never drops: its training argument is False, so "
                                  "model.train() cannot switch it on",
                                  "pass training=self.training, or use an nn.Dropout layer registered in __init__")


def _follows_grad_mode(node: Node) -> bool:
    """Whether a hand-written BatchNorm in eval mode computes something else with gradients on than
    under ``torch.no_grad()``: it picks its mode by ``torch.is_grad_enabled()``, not ``self.training``
    (the d2l.ai chapter's BatchNorm). torch's own batch_norm follows ``training`` alone."""
    x = node.probe_input
    if node.module is None or x is None or x.dim() < 2 or from_torch(node.module) or batch_norm_call(node) is not None:
        return False
    return follows_grad_mode(node.module, x)


def _grad_mode_finding(ctx: CheckContext, rule: Rule, node: Node) -> Finding:
    module = node.module
    assert module is not None
    name = type(module).__name__
    line = call_in_function([n.location for n in node.inner if n.location], ("is_grad_enabled",))
    return rule.finding(
        node.name,
        f"{name} chooses between batch and running statistics by torch.is_grad_enabled(), not self.training: "
        f"model.eval() alone does not switch it, and evaluating without torch.no_grad() (validation with "
        f"gradients on, a GAN's discriminator, test-time adaptation) still normalises with, and updates, the "
        f"statistics of each batch",
        expected="eval mode (self.training is False) uses the running statistics, whatever the grad mode",
        found="in eval mode with gradients enabled it normalises with the batch's statistics",
        fix="decide by the module's mode: `if not self.training:` (pass self.training to the function that "
        "normalises), as nn.BatchNorm2d does",
        location=line or ctx.location_of(module),
    )


def _fixed_training(ctx: CheckContext, rule: Rule, node: Node, value: bool, effect: str, fix: str) -> Finding:
    """A functional call whose ``training`` argument is fixed to ``value``, written or by default."""
    if node.func_name == "batch_norm" and not has_running_statistics(node):  # training=False would raise
        fix = ("give it running statistics: register running_mean and running_var buffers, pass them and "
               "training=self.training, or use nn.BatchNorm2d, which keeps them")
    return rule.finding(
        node.scope,
        f"F.{node.func_name}(...) in {node.scope or ctx.model_name}.forward {effect}",
        expected=f"F.{node.func_name}(..., training=self.training)",
        found=f"training={value}" if _mentions_training(node.location)
        else f"no training argument (F.{node.func_name} defaults to training={value})",
        fix=fix,
        location=node.location,
        change=training_follows_mode(node, safe=value),
    )


def _dropout_never_on(node: Node) -> bool:
    """A functional dropout with a drop rate that is off even in train mode. (A batch_norm call with
    training=False in train mode is a frozen BatchNorm by design, FrozenBatchNorm2d for one.)"""
    if node.module is not None or not node.func_name.endswith("dropout") or node.func_name not in TRAINING_ARGUMENT:
        return False
    rate = node.kwargs.get("p", node.args[1] if len(node.args) > 1 else 0.5)
    return isinstance(rate, (int, float)) and rate > 0 and not functional_training(node)


def _frozen_on_purpose(ctx: CheckContext, node: Node) -> bool:
    """A layer left in eval mode by a ``train()`` override that passed the mode on to the other layers
    below it (``super().train(mode)`` then ``self.bn.eval()``: BatchNorm frozen for fine-tuning)."""
    owner = _overriding_ancestor(ctx, ctx.modules[node.module].name)  # type: ignore[index]
    by_name = {info.name: m for m, info in ctx.modules.items()}
    if owner is None or owner not in by_name:
        return False
    # ask the override itself: with every layer below it in eval mode, does train(True) switch others on?
    # (flags restored at once; the check's own snapshot restores anything else the override touches)
    top = by_name[owner]
    below = [m for m in top.modules() if m is not top]
    flags = {m: m.training for m in top.modules()}
    try:
        for m in flags:
            m.training = False
        top.train(True)
        return any(m.training for m in below if m is not node.module)
    except Exception:  # the student's override raised: not a deliberate freeze we can confirm
        return False
    finally:
        for m, flag in flags.items():
            m.training = flag


def _eval_finding(ctx: CheckContext, rule: Rule, leak: Leak) -> Finding:
    node = leak.node
    if leak.reason == "dropout-ignores-mode":
        return rule.finding(
            node.name,
            f"{type(node.module).__name__} still drops activations in eval mode",
            expected="the identity in eval mode (self.training is False)",
            found="its eval-mode output differs from its input",
            fix="apply the mask only `if self.training`, e.g. F.dropout(x, self.p, self.training)",
            location=ctx.location_of(node.module),  # type: ignore[arg-type]
        )
    if leak.reason == "functional" and node.unregistered is not None:
        layer = type(node.unregistered).__name__
        return rule.finding(
            node.scope,
            f"an nn.{layer} built inside {node.scope or ctx.model_name}.forward is a new layer on every call, "
            f"always in training mode: model.eval() never reaches it",
            expected=f"one nn.{layer} registered in __init__, switched by model.train()/model.eval()",
            found=f"nn.{layer}(...) created during forward (training=True)",
            fix=f"create it once in __init__ (self.layer = nn.{layer}(...)) and call self.layer(x) in forward",
            location=node.location,
        )
    if leak.reason == "functional":
        return _fixed_training(ctx, rule, node, True, "runs in training mode even after model.eval()",
                               "pass training=self.training so that model.eval() switches it off")
    if leak.reason == "random":
        return rule.finding(
            node.scope,
            f"torch.{node.func_name} in {node.scope or ctx.model_name}.forward draws random numbers in eval mode",
            expected="no randomness in eval mode",
            found=f"a call to {node.func_name} during the eval-mode forward",
            fix="apply the random mask only `if self.training`, or use nn.Dropout",
            location=node.location,
        )
    module = node.module
    assert module is not None
    info = ctx.modules[module]
    kind = "BatchNorm" if node.kind is LayerKind.BATCH_NORM else "dropout"
    if info.hidden:
        container = info.name.rsplit("[", 1)[0]
        return rule.finding(
            info.name,
            f"{kind} {info.name} is kept in a plain Python container ({container}), so model.eval() never reaches it",
            expected="training=False after model.eval()",
            found="training=True: it still uses batch statistics / random masks at inference",
            fix="register it: wrap the container in nn.ModuleList([...]) or nn.ModuleDict({...}) "
            "(also needed for .to(device), .parameters() and state_dict)",
            location=ctx.location_of(module),
            change=_registration(ctx, info.name, ctx.location_of(module)),
        )
    blocker = _train_override(ctx, info.name)
    if blocker is not None:
        return rule.finding(
            info.name,
            f"{blocker}.train() is overridden and does not pass the mode on, so model.eval() never reaches {info.name}",
            expected="training=False after model.eval()",
            found="training=True",
            fix="call super().train(mode) in the override (and return self)",
            location=_override_location(ctx, blocker),
        )
    return rule.finding(
        info.name,
        f"{kind} {info.name} is still in training mode after model.eval()",
        expected="training=False after model.eval()",
        found="training=True while forward runs (does forward call .train() on it?)",
        fix="do not switch modes inside forward; let model.train()/model.eval() set them",
        location=ctx.location_of(module),
    )


def _registration(ctx: CheckContext, hidden_name: str, location: str | None) -> RegisterChange | NoFix | None:
    """Wrap the plain list or dict that hides ``hidden_name`` (``blocks[0].bn``: ``blocks``) in
    nn.ModuleList / nn.ModuleDict, when every item is a module and every key a name nn.ModuleDict takes;
    otherwise why not (a tuple, a list that also holds functions, a key such as "train")."""
    import inspect

    owner_name, _, attribute = hidden_name.split("[", 1)[0].rpartition(".")
    owner = next((m for m, info in ctx.modules.items() if info.name == owner_name and not info.hidden), None)
    value = vars(owner).get(attribute) if owner is not None else None
    where = f"self.{attribute}"
    if type(value) is list:
        container, items = "list", list(value)
    elif type(value) is dict:
        bad = next((k for k in value if not (isinstance(k, str) and k and "." not in k
                                             and not hasattr(nn.ModuleDict, k))), None)
        if bad is not None:
            return NoFix(location or "", f"{where} has the key {bad!r}, which nn.ModuleDict does not take (keys are "
                         f"non-empty strings without a dot, and not the name of a ModuleDict method): rename it")
        container, items = "dict", list(value.values())
    else:
        kind = type(value).__name__
        return NoFix(location or "", f"{where} is a {kind}; cnncheck registers plain lists and dicts: make it "
                     f"nn.ModuleList(...)") if value is not None else None
    other = next((item for item in items if not isinstance(item, nn.Module)), None)
    if other is not None:
        return NoFix(location or "", f"{where} also holds {getattr(other, '__name__', type(other).__name__)}, "
                     f"which is not a layer: keep the layers in an nn.ModuleList of their own")
    try:
        _lines, start = inspect.getsourcelines(type(owner))
        class_location = f"{inspect.getsourcefile(type(owner))}:{start}"
    except (OSError, TypeError):
        return None
    wrapper = "nn.ModuleList" if container == "list" else "nn.ModuleDict"
    return RegisterChange(class_location, type(owner).__name__, attribute, container,
                          f"self.{attribute} = {wrapper}(...): model.eval(), .to() and .parameters() reach its layers")


def _mentions_training(location: str | None) -> bool:
    """Whether the source line of a call passes ``training`` (torch always forwards it as a keyword,
    so only the student's own line tells whether it was written or defaulted)."""
    import linecache

    if not location or ":" not in location:
        return True
    filename, _, line = location.rpartition(":")
    return not line.isdigit() or "training" in linecache.getline(filename, int(line))


def _train_finding(ctx: CheckContext, rule: Rule, node: Node) -> Finding:
    info = ctx.modules[node.module]  # type: ignore[index]
    blocker = _train_override(ctx, info.name)
    reason = f"{blocker}.train() is overridden and does not pass the mode on" if blocker else "it stays in eval mode"
    return rule.finding(
        info.name,
        f"model.train() does not reach {info.name}: {reason}",
        expected="training=True after model.train()",
        found="training=False: it will never use batch statistics or drop activations while training",
        fix="call super().train(mode) in any train() override; do not call .eval() on layers in forward",
        location=_override_location(ctx, blocker) if blocker else ctx.location_of(node.module),  # type: ignore[arg-type]
    )


def _train_override(ctx: CheckContext, name: str) -> str | None:
    """The nearest ancestor (by name) whose class overrides ``train``: its name, or its class name when it
    is the model itself."""
    prefix = _overriding_ancestor(ctx, name)
    if prefix is None:
        return None
    return type(ctx.model).__name__ if prefix == "" else prefix


def _overriding_ancestor(ctx: CheckContext, name: str) -> str | None:
    """The qualified name of the nearest ancestor of ``name`` whose class overrides ``train``."""
    by_name = {info.name: m for m, info in ctx.modules.items()}
    parts = name.split(".")
    for i in range(len(parts) - 1, -1, -1):
        prefix = ".".join(parts[:i])
        ancestor = by_name.get(prefix)
        if ancestor is None:
            continue
        for klass in type(ancestor).__mro__:
            if klass is nn.Module:
                break
            if "train" in vars(klass):
                return prefix
    return None


def _override_location(ctx: CheckContext, blocker: str | None) -> str | None:
    import inspect

    by_name = {info.name: m for m, info in ctx.modules.items()}
    module = by_name.get("" if blocker == type(ctx.model).__name__ else blocker or "")
    if module is None:
        return None
    for klass in type(module).__mro__:
        if "train" in vars(klass):
            try:
                _lines, start = inspect.getsourcelines(vars(klass)["train"])
                return f"{inspect.getsourcefile(klass)}:{start}"
            except (OSError, TypeError):
                return None
    return None


RULE = Rule(
    id="mode-not-propagated",
    summary="`model.train()` / `model.eval()` does not reach a BatchNorm or dropout that forward runs: "
    "layers kept in a plain list or dict, `train()` overridden without calling super, "
    "`F.batch_norm(..., training=True)` or `F.dropout(x, p)` hard-coded in forward.",
    why=(
        "`model.eval()` walks the registered submodules and sets `training=False` on each. A layer the "
        "walk cannot reach keeps using batch statistics or random masks at inference: predictions "
        "change from run to run and with the batch they are in. A functional call with a fixed "
        "`training` argument ignores the mode entirely (and `F.dropout` defaults to training=True)."
    ),
    fix="Keep layers in `nn.ModuleList`/`nn.ModuleDict`, call `super().train(mode)` in any override, and "
    "pass `training=self.training` to functional BN and dropout calls.",
    severity=Severity.ERROR,
    check=check,
    needs=frozenset({Pass.TRAIN, Pass.EVAL}),
    flagged_example="""
self.bns = [nn.BatchNorm2d(c) for c in channels]      # a plain list: not registered
...
x = F.dropout(x, 0.5)                                  # training=True by default, even in eval
""",
    clean_example="""
self.bns = nn.ModuleList(nn.BatchNorm2d(c) for c in channels)
...
x = F.dropout(x, 0.5, training=self.training)
""",
    autofix="Safe: `cnncheck check --fix` passes `training=self.training` to `F.dropout`, `F.dropout1d/2d/3d`, "
    "`F.alpha_dropout`, `F.feature_alpha_dropout` and `F.batch_norm` (with running statistics) calls that "
    "lack it or hard-code `True`, by keyword or by position, inside a method; and wraps a plain list or dict "
    "of layers assigned once in the class (`self.bns = [...]`, a comprehension, or `[]` filled later) in "
    "`nn.ModuleList(...)` / `nn.ModuleDict(...)` when every item is a module, every key a string, and no "
    "list or dict method that those lack is called on it. Unsafe (`--unsafe-fixes`): a hard-coded "
    "`training=False` becomes `self.training`, which changes the train pass. Not fixed, and said why: "
    "`torch.dropout` (its argument is `train`), `F.batch_norm` without running statistics, calls outside a "
    "method, tuples, a list that also holds functions, keys `nn.ModuleDict` refuses (`\"train\"`, a dot), "
    "containers assigned more than once, used in an operation (`[x] + self.bns`) or assigned before "
    "`super().__init__()`.",
    limits="Also flagged: a hand-written BatchNorm that picks batch or running statistics by "
    "`torch.is_grad_enabled()` instead of `self.training` (the d2l.ai chapter's), with the line of that call; "
    "a layer built inside forward (`nn.Dropout(0.5)(x)`, new and in training mode on "
    "every call), random ops (`torch.randn`, `rand_like`, ...) in the eval pass, and a functional dropout "
    "whose training argument is False, which model.train() cannot switch on. Not flagged: a layer that a "
    "`train()` override puts in eval mode after calling `super().train(mode)` (a BatchNorm frozen for "
    "fine-tuning), and `F.batch_norm(..., training=False)` in train mode (a frozen BatchNorm).",
)
