"""The library entry points: ``check_model`` and one assertion per concern."""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import os
import sys
import types
from collections.abc import Iterable, Sequence
from typing import Any, cast

import torch
from torch import nn
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter
from torch.utils._pytree import tree_flatten, tree_map

from cnncheck.context import CheckContext
from cnncheck.engine import UnexplainedFailure, run_rules
from cnncheck.findings import Finding, Report
from cnncheck.plugins import (
    PluginProblem,
    all_rules,
    call_each,
    first_result,
    plugin_kind,
    plugin_manager,
    registered,
)
from cnncheck.preserve import preserved, preserved_global_state
from cnncheck.rules import matches, select_rules
from cnncheck.trace import module_inventory
from cnncheck.verdict import CRASH_ADVICE

_PACKAGE_DIR = os.path.dirname(__file__)


class CheckError(Exception):
    """The model could not be checked: it does not run on the example input, or is not ready. ``stage``
    says which step could not be taken, as reports show it: ``forward`` (it raised), ``device`` (the
    device asked for is not here), ``unsupported`` (TorchScript, a compiled part, lazy or meta layers)."""

    def __init__(self, message: str, stage: str = "forward") -> None:
        super().__init__(message)
        self.stage = stage


class CheckFailed(AssertionError):
    """A cnncheck assertion failed: ``.report`` holds every finding of a rule assertion (None for an
    architecture invariant, whose message says what was expected and what was found)."""

    def __init__(self, report: Report | None = None, *, message: str | None = None) -> None:
        super().__init__(message if message is not None else str(report))
        self.report = report


def check_model(
    model: nn.Module,
    example_input: Any,
    *,
    device: str | torch.device | None = None,
    checks: Iterable[str] | None = None,
    ignore: Iterable[str] = (),
    plugins: Iterable[Any] = (),
) -> Report:
    """Check ``model`` for the correctness rules and return a :class:`~cnncheck.Report`.

    ``example_input`` is a shape with the batch first, ``(4, 1, 28, 28)``, a tensor, a tuple of
    tensors passed as positional arguments, or a dict passed as keyword arguments (a plugin's
    ``cnncheck_example_input`` hook may build it instead). ``device`` runs the checks on that device
    (default: where the model's parameters are) on a copy, so the user's model stays where it was.
    ``checks`` selects rule ids or prefixes (default: all). ``ignore`` removes rules by id or prefix,
    or, as ``"rule-id:module-glob"``, suppresses one rule's findings on matching layers (a deliberate
    design); such a layer ignore that suppresses nothing is listed in ``Report.unused_ignores``.
    ``plugins`` are registered for this call only. The model is left exactly as it was.

    A ``torch.compile``'d model is checked through the module it wraps (its Python forward, never the
    compiled graph); a TorchScript model (``torch.jit.script``/``trace``) raises :class:`CheckError`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"cnncheck.check_model expects a torch.nn.Module, got {type(model).__name__}: "
            f"{_short_repr(model)}. Pass the model instance, e.g. check_model(ConvNet(), (4, 1, 28, 28))."
        )
    model, notes = _uncompiled(model)
    with registered(plugins):
        return _check(model, example_input, device, checks, list(ignore), notes)


def _check(model: nn.Module, example_input: Any, device: str | torch.device | None,
           checks: Iterable[str] | None, ignore: list[str], notes: Sequence[str] = ()) -> Report:
    name = type(model).__name__
    _refuse_unready(model, name)
    pm = plugin_manager()
    problems: list[PluginProblem] = []
    layer_ignores = [pattern for pattern in ignore if ":" in pattern]
    registered = all_rules(pm, problems)
    rules = select_rules(registered, checks, [p for p in ignore if ":" not in p])
    home = _model_device(model)
    target = torch.device(device) if device is not None else home
    if target.type == "cuda" and not torch.cuda.is_available():
        raise CheckError(f"cannot check {name} on {target}: CUDA is not available on this machine", stage="device")
    built = first_result(pm, "cnncheck_example_input", problems, model=model, input_shape=example_input,
                         device=target)
    args, kwargs = _example_inputs(built if built is not None else example_input, target, _model_dtype(model), name)

    with preserved_global_state(cuda=target.type == "cuda"), contextlib.ExitStack() as stack:
        work = model if target == home else copy.deepcopy(model).to(target)
        modules = module_inventory(work, lambda module: plugin_kind(pm, problems, module))
        stack.enter_context(preserved(modules))
        ctx = CheckContext(model=work, user_model=model, inputs=args, kwargs=kwargs, modules=modules, pm=pm)
        stack.callback(ctx.remove_repairs)
        try:
            results = run_rules(ctx, rules, registered)
        except UnexplainedFailure as unexplained:
            failure = ctx.train_trace.error
            assert failure is not None
            raise _forward_failed(name, ctx, failure, unexplained.crashed) from _without_cnncheck_frames(failure)
        report = Report(
            model_name=name,
            input_shape=tuple(ctx.example.shape),
            device=str(target),
            rules_run=tuple(r.id for r in rules),
            findings=results.findings,
            outcomes=results.outcomes,
        )
        report.notes.extend([*notes, *ctx.notes])
    _apply_layer_ignores(report, layer_ignores)
    for _ in call_each(pm, "cnncheck_report", problems, report=report, model=model):
        pass
    report.plugin_problems.extend(dict.fromkeys(problems))
    return report


def _apply_layer_ignores(report: Report, patterns: list[str]) -> None:
    """Suppress findings matched by ``rule:module-glob`` patterns; list the patterns that match none."""
    used: set[str] = set()
    kept: list[Finding] = []
    for finding in report.findings:
        hits = [p for p in patterns if _layer_ignore_matches(p, finding.rule, finding.module)]
        used.update(hits)
        (report.suppressed if hits else kept).append(finding)
    report.findings = kept
    report.unused_ignores = [p for p in patterns if p not in used]


def _layer_ignore_matches(pattern: str, rule_id: str, module: str) -> bool:
    rule_pattern, _, module_glob = pattern.partition(":")
    return matches(rule_id, [rule_pattern]) and fnmatch.fnmatchcase(module, module_glob or "*")


def _forward_failed(name: str, ctx: CheckContext, error: BaseException, crashed: dict[str, str]) -> CheckError:
    shape = "x".join(str(s) for s in ctx.example.shape)
    failed = ctx.train_trace.failed
    where = ""
    if failed is not None:
        if failed.module_stack and failed.module_stack[-1]:
            where += f" in {failed.module_stack[-1]}"
        if failed.location:
            where += f" at {failed.location}"
    crashes = "".join(f"\nwhile explaining it, rule {rule} crashed: {reason} ({CRASH_ADVICE})"
                      for rule, reason in crashed.items())
    return CheckError(
        f"{name}.forward raised {type(error).__name__}{where} on an input of shape {shape}: {error}\n"
        f"cnncheck needs the model to run on its example input; fix the error above or pass the input "
        f"shape the model expects.{crashes}"
    )


def _without_cnncheck_frames(error: BaseException) -> BaseException:
    """Drop cnncheck's own frames from the student's traceback: they show the student's code only."""
    kept = []
    tb = error.__traceback__
    while tb is not None:
        if not tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR):
            kept.append(tb)
        tb = tb.tb_next
    rebuilt = None
    for frame_tb in reversed(kept):
        rebuilt = types.TracebackType(rebuilt, frame_tb.tb_frame, frame_tb.tb_lasti, frame_tb.tb_lineno)
    return error.with_traceback(rebuilt)


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _uncompiled(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """The module ``torch.compile`` wraps, and a note saying so; ``model`` itself when it is not compiled.

    The wrapper's forward would compile the model (slow) and run a graph cnncheck cannot trace; the
    wrapped module holds the very same parameters, so checking it checks the user's model.
    """
    wrapper = _compiled_wrapper_class()
    if wrapper is None or not isinstance(model, wrapper):
        return model, []
    original = cast(nn.Module, model._orig_mod)
    note = (f"checked the module that torch.compile wraps (_orig_mod, {type(original).__name__}): "
            f"cnncheck runs its Python forward, not the compiled graph")
    return original, [note]


def _compiled_wrapper_class() -> type[nn.Module] | None:
    """torch.compile's wrapper class, or None while nothing has imported torch._dynamo.

    No model can be compiled before torch._dynamo is imported (even unpickling one imports it), and
    importing it here would cost every check most of a second.
    """
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    return getattr(eval_frame, "OptimizedModule", None)


def _refuse_compiled_code(model: nn.Module) -> None:
    """Refuse TorchScript and compiled submodules before anything touches the model.

    cnncheck sees forward through module hooks and a TorchFunctionMode. TorchScript runs neither (its
    forward is compiled code, and ScriptModules refuse hooks), so a check would stop half way and leave
    running statistics and ``training`` flags changed. A compiled submodule would compile inside the check.
    """
    if isinstance(model, torch.jit.ScriptModule):
        name, made_by = _scripted_origin(model)
        raise CheckError(
            f"cannot check {name}: it is a TorchScript module ({made_by} returned it), and a TorchScript "
            f"module cannot be checked because its forward is compiled TorchScript code that cnncheck "
            f"cannot trace. Check the Python model before torch.jit.script/trace instead: pass the {name} "
            f"itself, e.g. cnncheck.check_model({name}(), shape), and script or trace it after the check.",
            stage="unsupported",
        )
    name = type(model).__name__
    scripted, compiled = _compiled_submodules(model)
    if scripted:
        described = [f"'{path}' ({inner} from {made_by})" for path, (inner, made_by) in scripted.items()]
        raise CheckError(
            f"cannot check {name}: its {_submodules(described, 'a TorchScript module', 'TorchScript modules')}"
            f", and a TorchScript module cannot be checked because its forward is compiled TorchScript code "
            f"that cnncheck cannot trace (the rules would not see the layers inside it). Check the Python "
            f"model before torch.jit.script/trace instead: build {name} with the plain Python layers there, "
            f"e.g. cnncheck.check_model({name}(), shape), and script or trace them after the check.",
            stage="unsupported",
        )
    if compiled:
        described = [f"'{path}' (wrapping a {inner})" for path, inner in compiled.items()]
        where = _submodules(described, "compiled with torch.compile", "compiled with torch.compile")
        raise CheckError(
            f"cannot check {name}: its {where}, and cnncheck runs forward in Python, so the check would "
            f"compile it. Check the model before compiling that part: build {name} with the plain Python "
            f"layers there, or compile the whole model instead (cnncheck then checks the module "
            f"torch.compile wraps).",
            stage="unsupported",
        )


def _compiled_submodules(model: nn.Module) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    """The outermost TorchScript submodules (path: (class, made by)) and compiled ones (path: class)."""
    wrapper = _compiled_wrapper_class()
    kinds = (torch.jit.ScriptModule, wrapper) if wrapper is not None else torch.jit.ScriptModule
    scripted: dict[str, tuple[str, str]] = {}
    compiled: dict[str, str] = {}
    if not any(isinstance(module, kinds) for module in model.modules()):
        return scripted, compiled  # the common case, without building every module's name
    for path, module in model.named_modules():
        if any(path.startswith(outer + ".") for outer in [*scripted, *compiled]):
            continue  # the layers inside one are reported with it
        if isinstance(module, torch.jit.ScriptModule):
            scripted[path] = _scripted_origin(module)
        elif wrapper is not None and isinstance(module, wrapper):
            compiled[path] = type(module._orig_mod).__name__
    return scripted, compiled


def _scripted_origin(module: torch.jit.ScriptModule) -> tuple[str, str]:
    """The Python class a TorchScript module was made from, and which torch.jit call made it."""
    made_by = (
        "torch.jit.trace" if isinstance(module, torch.jit.TracedModule)  # type: ignore[attr-defined]  # not re-exported
        else "torch.jit.script"
    )
    return getattr(module, "original_name", type(module).__name__), made_by


def _submodules(described: list[str], one: str, many: str) -> str:
    """``submodule 'a' (...) is <one>`` or ``submodules 'a' (...) and 'b' (...) are <many>``."""
    if len(described) == 1:
        return f"submodule {described[0]} is {one}"
    return f"submodules {', '.join(described[:-1])} and {described[-1]} are {many}"


def _refuse_unready(model: nn.Module, name: str) -> None:
    _refuse_compiled_code(model)
    tensors = [*model.parameters(), *model.buffers()]
    lazy = [n for n, m in model.named_modules() if isinstance(m, nn.modules.lazy.LazyModuleMixin)]
    if lazy or any(isinstance(t, (UninitializedParameter, UninitializedBuffer)) for t in tensors):
        raise CheckError(
            f"{name} has lazy layers that are not initialised yet ({', '.join(lazy) or 'uninitialised parameters'}). "
            f"Run the model once on a real input (model(torch.randn(shape))), then check it.",
            stage="unsupported",
        )
    if any(t.is_meta for t in tensors):
        raise CheckError(
            f"{name} is on the meta device: its parameters have no values to check. Materialise it "
            f"first, e.g. model.to_empty(device='cpu') and re-initialise the weights.",
            stage="unsupported",
        )


def _model_device(model: nn.Module) -> torch.device:
    for t in [*model.parameters(), *model.buffers()]:
        return t.device
    return torch.device("cpu")


def _model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _example_inputs(example: Any, device: torch.device, dtype: torch.dtype,
                    name: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(example, torch.Size) or (
        isinstance(example, (tuple, list)) and example and all(isinstance(s, int) for s in example)
    ):
        shape = tuple(example)
        if any(s <= 0 for s in shape) or len(shape) < 2:
            raise ValueError(
                f"input shape {shape} for {name} is not valid: give the batch first and every size "
                f"positive, e.g. (4, 1, 28, 28)"
            )
        generator = torch.Generator().manual_seed(0)
        return (torch.randn(shape, generator=generator, dtype=dtype).to(device),), {}
    if isinstance(example, torch.Tensor):
        return (_private(example, device),), {}
    moved = tree_map(lambda t: _private(t, device) if isinstance(t, torch.Tensor) else t, example)
    has_tensor = any(isinstance(leaf, torch.Tensor) for leaf in tree_flatten(example)[0])
    if isinstance(example, (tuple, list)) and example and has_tensor:
        return tuple(moved), {}
    if isinstance(example, dict) and has_tensor:
        return (), dict(moved)
    raise TypeError(
        f"example_input for {name} must be a shape like (4, 1, 28, 28), a tensor, a tuple of "
        f"tensors or a dict of them; got {type(example).__name__}: {_short_repr(example)}"
    )


def _private(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The check's own copy of a tensor the caller gave: forward may change its input in place."""
    return t.detach().to(device, copy=True)


def _assert(model: nn.Module, example_input: Any, checks: Sequence[str] | None, **options: Any) -> Report:
    __tracebackhide__ = True
    report = check_model(model, example_input, checks=checks, **options)
    if not report.ok:
        raise CheckFailed(report)
    return report


def assert_cnn_correct(model: nn.Module, example_input: Any, **options: Any) -> Report:
    """Raise :class:`CheckFailed` listing every finding of every rule; return the report if clean."""
    __tracebackhide__ = True
    return _assert(model, example_input, options.pop("checks", None), **options)


def assert_conv_params(model: nn.Module, example_input: Any, **options: Any) -> Report:
    """Every convolution has ``(C_in/groups * prod(kernel) + [bias]) * C_out`` parameters."""
    __tracebackhide__ = True
    return _assert(model, example_input, ["conv-param-formula"], **options)


def assert_pooling_parameter_free(model: nn.Module, example_input: Any, **options: Any) -> Report:
    """Pooling layers own no parameters and never mix channels."""
    __tracebackhide__ = True
    return _assert(model, example_input, ["pool-has-parameters", "pool-mixes-channels"], **options)


def assert_no_redundant_bias(model: nn.Module, example_input: Any, **options: Any) -> Report:
    """No conv/linear bias is cancelled by a BatchNorm that follows it."""
    __tracebackhide__ = True
    return _assert(model, example_input, ["redundant-bias-before-bn"], **options)


def assert_bn_per_channel(model: nn.Module, example_input: Any, **options: Any) -> Report:
    """BatchNorm statistics and gamma/beta are one per channel over (N, *spatial)."""
    __tracebackhide__ = True
    return _assert(model, example_input, ["bn-not-per-channel"], **options)


def assert_bn_train_eval(model: nn.Module, example_input: Any, **options: Any) -> Report:
    """BatchNorm and dropout behave correctly in train and eval mode, and the mode reaches them."""
    __tracebackhide__ = True
    rules = ["bn-train-behaviour", "bn-eval-behaviour", "mode-not-propagated"]
    return _assert(model, example_input, rules, **options)
