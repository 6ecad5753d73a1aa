"""Assertions on a model's architecture, for a team's own tests: parameter counts, the output shape,
the downsampling factor, layer kinds that must not be there, and rules that must be clean.

Each raises :class:`~cnncheck.CheckFailed` saying what was expected, what was found, where, and by how
much, in the style of ``torch.testing.assert_close``; each returns what it measured when it holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

from cnncheck.layer_table import Architecture, architecture, shape_text


def _failed(message: str) -> None:
    from cnncheck.api import CheckFailed

    __tracebackhide__ = True
    raise CheckFailed(message=message)


def _largest(model: nn.Module, count: int = 3) -> str:
    """The layers that own the most parameters, as a count's failure names them."""
    from cnncheck.layer_table import _owned_parameters

    owned = _owned_parameters(model)
    total = sum(p.numel() for ps in owned.values() for p in ps) or 1
    modules = dict(model.named_modules())
    sizes = sorted(((sum(p.numel() for p in ps), name) for name, ps in owned.items() if ps), reverse=True)[:count]
    return ", ".join(f"{name or '<model>'} {type(modules[name]).__name__} {n} ({100 * n / total:.1f}%)"
                     for n, name in sizes)


def _count(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a whole number of parameters, got {type(value).__name__} {value!r}")
    return value


def _count_problems(model: nn.Module, expected: int | None, most: int | None, least: int | None,
                    trainable: int | None) -> str | None:
    """What is wrong with the model's parameter counts, in one sentence, or None."""
    expected, most, least, trainable = (_count(v, n) for v, n in ((expected, "expected"), (most, "max"),
                                                                   (least, "min"), (trainable, "trainable")))
    if most is not None and least is not None and least > most:
        raise ValueError(f"min={least} is more than max={most}: no parameter count can hold both")
    unique = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in unique.values())
    learnable = sum(p.numel() for p in unique.values() if p.requires_grad)
    wrong = []
    if expected is not None and total != expected:
        wrong.append(f"expected {expected} ({_by(total - expected)})")
    if most is not None and total > most:
        wrong.append(f"expected at most {most} ({total - most} too many)")
    if least is not None and total < least:
        wrong.append(f"expected at least {least} ({least - total} too few)")
    sentence = f"{total} parameters, " + "; ".join(wrong) if wrong else ""
    if trainable is not None and learnable != trainable:
        sentence += ("; and " if sentence else "") + (
            f"{learnable} trainable parameters, expected {trainable} ({_by(learnable - trainable)}; "
            f"{total - learnable} are frozen)")
    if not sentence:
        return None
    largest = _largest(model)
    return sentence + (f"; the largest layers: {largest}" if largest else "")


def _by(difference: int) -> str:
    return f"{difference} more" if difference > 0 else f"{-difference} fewer"


def assert_param_count(model: nn.Module, expected: int | None = None, *, max: int | None = None,  # noqa: A002
                       min: int | None = None, trainable: int | None = None) -> int:  # noqa: A002
    """Assert the model's parameter count (each shared tensor once): exactly ``expected``, at most
    ``max``, at least ``min``, and ``trainable`` of them with ``requires_grad``. Needs no input; returns
    the count.

    >>> cnncheck.assert_param_count(model, max=5_000_000, trainable=3_199_106)
    """
    __tracebackhide__ = True
    if not isinstance(model, nn.Module):
        raise TypeError(f"cnncheck.assert_param_count expects a torch.nn.Module, got {type(model).__name__}")
    if expected is max is min is trainable is None:
        raise TypeError("cnncheck.assert_param_count: give expected, max, min or trainable")
    model = _unwrapped(model)
    problem = _count_problems(model, expected, max, min, trainable)
    if problem:
        _failed(f"{type(model).__name__} has {problem}")
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _unwrapped(model: nn.Module) -> nn.Module:
    """A ``torch.compile``'d model's own module, as every cnncheck function sees it."""
    from cnncheck.api import _uncompiled

    return _uncompiled(model)[0]


def _shape_problem(found: Any, expected: Any, where: str = "output") -> str | None:
    """Why ``found`` (a shape or a structure of shapes) is not ``expected`` (None: any size), or None."""
    if isinstance(expected, dict):
        if not isinstance(found, dict) or set(found) != set(map(str, expected)):
            return f"{where} is {shape_text(found)}, expected keys {sorted(map(str, expected))}"
        return next((p for k in expected if (p := _shape_problem(found[str(k)], expected[k], f"{where}[{k!r}]"))), None)
    if isinstance(expected, (tuple, list)) and expected and all(isinstance(e, (tuple, list, dict)) for e in expected):
        if isinstance(found, tuple) and all(isinstance(s, int) for s in found):
            return f"{where} is one tensor of shape {shape_text(found)}, expected {len(expected)} outputs"
        if not isinstance(found, (tuple, list)) or len(found) != len(expected):
            return f"{where} is {shape_text(found)}, expected {len(expected)} outputs"
        return next((p for i, e in enumerate(expected) if (p := _shape_problem(found[i], e, f"{where}[{i}]"))), None)
    if not isinstance(expected, (tuple, list)) or not all(e is None or (isinstance(e, int) and not isinstance(e, bool)
                                                                   and e >= 0) for e in expected):
        raise TypeError(f"expected output shape {expected!r}: give a tuple of sizes, None for any size, e.g. "
                        f"(None, 10), or a tuple/dict of them for several outputs")
    wanted = tuple(expected)
    if not isinstance(found, tuple) or not all(isinstance(s, int) for s in found):
        return f"{where} is {shape_text(found)}, expected a tensor of shape {_wanted(wanted)}"
    if len(found) != len(wanted):
        return f"{where} has shape {shape_text(found)}, expected {_wanted(wanted)} ({len(found)} dimensions, not {len(wanted)})"
    wrong = [f"dimension {i} is {f}, not {w}" for i, (f, w) in enumerate(zip(found, wanted)) if w is not None and f != w]
    return f"{where} has shape {shape_text(found)}, expected {_wanted(wanted)}: {'; '.join(wrong)}" if wrong else None


def _wanted(shape: tuple[Any, ...]) -> str:
    return "x".join("*" if s is None else str(s) for s in shape) or "a scalar"


def _last_layer(arch: Architecture) -> str:
    ran = [layer for layer in arch.layers if layer.status is None and layer.output_shape is not None]
    if not ran:
        return ""
    last = ran[-1]
    return f"; the last layer is {last.label} {last.type}({last.config})" if last.kind != "function" else (
        f"; the last op is {last.label}")


def assert_output_shape(model: nn.Module, example_input: Any, expected: Any, *, device: Any = None) -> Architecture:
    """Assert the shape of ``model(example_input)``: a tuple where None is a free dimension
    (``(None, 10)``), or a tuple/dict of them for a model with several outputs. Returns the
    architecture it measured.

    >>> cnncheck.assert_output_shape(model, (4, 1, 28, 28), (None, 10))
    """
    __tracebackhide__ = True
    arch = architecture(_unwrapped(model), example_input, device=device)
    problem = _shape_problem(arch.output_shape, expected, f"output on input {shape_text(arch.input_shape)}")
    if problem:
        _failed(f"{arch.model}'s {problem}{_last_layer(arch)}")
    return arch


def assert_architecture(model: nn.Module, example_input: Any, *, device: Any = None, params: int | None = None,
                        max_params: int | None = None, min_params: int | None = None,
                        trainable_params: int | None = None, output_shape: Any = None,
                        downsampling: int | float | Sequence[int | float] | None = None,
                        no_kinds: Iterable[str] = (), clean: Iterable[str] = ()) -> Architecture:
    """Assert several invariants at once, and report every one that fails:

    - ``params`` / ``max_params`` / ``min_params`` / ``trainable_params``: parameter counts;
    - ``output_shape``: as :func:`assert_output_shape`;
    - ``downsampling``: the input's spatial size over the last feature map's (32 for a ResNet);
    - ``no_kinds``: layer kinds forward must not run, e.g. ``("dropout",)``;
    - ``clean``: rule ids (or prefixes) that must pass, e.g. ``("redundant-bias-before-bn",)``; a rule
      that could not check the model fails too.

    Returns the architecture it measured.

    >>> cnncheck.assert_architecture(model, (2, 3, 224, 224), max_params=12_000_000, output_shape=(None, 1000),
    ...                              downsampling=32, no_kinds=("dropout",), clean=("bn",))
    """
    __tracebackhide__ = True
    from cnncheck.layer_table import check_kinds, of_kind

    no_kinds = check_kinds(no_kinds)
    clean = (clean,) if isinstance(clean, str) else tuple(clean)
    model = _unwrapped(model)
    arch = architecture(model, example_input, device=device)
    count = _count_problems(model, params, max_params, min_params, trainable_params)
    problems = [f"has {count}"] if count else []
    if output_shape is not None:
        problem = _shape_problem(arch.output_shape, output_shape, f"output on input {shape_text(arch.input_shape)}")
        if problem:
            problems.append(f"output_shape: its {problem}{_last_layer(arch)}")
    if downsampling is not None:
        wanted = tuple(downsampling) if isinstance(downsampling, Sequence) else downsampling
        found = arch.downsampling
        rank = max(1, len(arch.input_shape or ()) - 2)
        if not _same_factor(found, wanted, rank):
            problems.append(f"downsampling: {_factor(found)}, expected {_factor(wanted)} "
                            f"(input {shape_text(arch.input_shape)}, the last conv or pool gives {_last_map(arch)})")
    for kind in no_kinds:
        ran = [layer for layer in arch.layers if of_kind(layer, kind) and layer.status is None]
        if ran:
            named = ", ".join(f"{layer.label} {layer.type}({layer.config})" if layer.config or layer.kind != kind
                              or layer.name in ("", ) else f"{layer.label}" for layer in ran[:5])
            problems.append(f"no_kinds: forward runs {len(ran)} {kind} layer(s): {named}")
    if clean:
        problems += _unclean(model, example_input, clean, device)
    if problems:
        _failed(f"{arch.model} does not hold its architecture invariants:\n" + "\n".join(f"  - {p}" for p in problems))
    return arch


def _same_factor(found: Any, wanted: Any, rank: int) -> bool:
    """Whether two downsampling factors agree, one number standing for the same factor on every axis."""
    def axes(value: Any) -> tuple[Any, ...]:
        return tuple(value) if isinstance(value, tuple) else (value,) * rank

    return found is not None and axes(found) == axes(wanted)


def _factor(value: Any) -> str:
    from cnncheck.layer_table import _factor as factor

    return "none (no feature map)" if value is None else factor(value)


def _last_map(arch: Architecture) -> str:
    rank = len(arch.input_shape or ())
    maps = [layer for layer in arch.layers if layer.kind.startswith(("conv", "pool")) and layer.output_shape is not None
            and len(layer.output_shape) == rank and any(s > 1 for s in layer.output_shape[2:])]
    return f"{shape_text(maps[-1].output_shape)} after {maps[-1].label}" if maps else "none"


def _unclean(model: nn.Module, example_input: Any, rules: tuple[str, ...], device: Any) -> list[str]:
    from cnncheck.api import check_model
    from cnncheck.findings import RuleStatus

    report = check_model(model, example_input, checks=rules, device=device)
    problems = [f"clean: {f.rule} [{f.severity}] {f.module}: {f.message}" for f in report.findings]
    problems += [f"clean: {o.rule} could not check it ({o.status}): {o.reason}" for o in report.outcomes
                 if o.status in (RuleStatus.NOT_CHECKED, RuleStatus.CRASHED)]
    return problems
