"""A model's architecture as its ``forward`` runs it: the layer table that tests assert on and snapshot.

``architecture(model, example_input)`` runs one traced eval forward (the model is left exactly as it
was, as with ``check_model``) and returns an :class:`Architecture`: the layers in forward order with
their output shapes and parameter counts, the totals, the output shape and the downsampling factor.
Its text (``str(arch)``) is a stable table, with no file paths and no memory addresses: two instances
of one architecture give the same text whatever their weights or seed, so it can be snapshotted.
``cnncheck explain`` prints the same table.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from torch import nn

FUNCTION = "function"  # the kind of a functional op that changes a shape (flatten, mean)
FUNCTIONAL_ROWS = ("dropout", "batch_norm", "instance_norm")  # functional layers shown even when they keep the shape
PARAMETERS = "parameters"  # the kind of a module that owns parameters but is not itself a layer of the trace
NOT_RUN = "not run by forward"
USED = "not called; forward uses its parameters"
RAISED = "forward raised here"


@dataclass(frozen=True)
class Layer:
    """One row of the table: a layer (or a shape-changing functional op) as forward ran it."""

    name: str  # qualified module name ("" is the model itself); ``scope.op()`` for a functional op
    kind: str  # conv, linear, batch_norm, pool, dropout, ..., function, parameters
    type: str  # the module's class name, or the op's name
    config: str  # the module's arguments as its repr shows them, without the defaults
    output_shape: tuple[int, ...] | None  # with the batch dimension; None when forward never ran it
    params: int  # numel of the parameters it owns (a shared one counted once, at its first owner)
    trainable: int  # of which requires_grad
    formula: str | None = None  # the textbook formula with the layer's numbers, e.g. "(3*3*1 + 1) * 8"
    formula_count: int | None = None  # what the formula gives
    status: str | None = None  # None when it ran; NOT_RUN, USED or RAISED

    @property
    def label(self) -> str:
        return self.name or "<model>"


@dataclass(frozen=True, eq=False)
class Architecture:
    """The layer table of one model on one example input (see the module docstring)."""

    model: str
    input_shape: tuple[int, ...] | None
    output_shape: Any  # a shape, or the output's structure (tuple, list, dict) of shapes; None if forward raised
    layers: tuple[Layer, ...]
    total_params: int
    trainable_params: int
    downsampling: int | float | tuple[int | float, ...] | None
    stopped: str | None = field(default=None)  # why forward did not finish, for ``cnncheck explain``

    def __getitem__(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name or (name == "<model>" and layer.name == ""):
                return layer
        import difflib

        close = difflib.get_close_matches(name, [layer.label for layer in self.layers], n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"{self.model} has no layer named {name!r}{hint}")

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def where(self, *, kind: str | None = None, type: str | None = None) -> list[Layer]:  # noqa: A002
        """The layers of this kind (``"conv"``, ``"batch_norm"``, ...; ``"conv"`` includes the
        reparametrised ones) and/or type name (``"Conv2d"``). An unknown kind is a ValueError."""
        if kind is not None:
            check_kinds([kind])
        return [layer for layer in self.layers if (kind is None or of_kind(layer, kind))
                and (type is None or layer.type == type)]

    def to_dict(self) -> dict[str, Any]:
        """The table as JSON-ready data (``json.dumps(arch.to_dict())``)."""
        data = asdict(self)
        data["layers"] = [asdict(layer) for layer in self.layers]
        converted: dict[str, Any] = json.loads(json.dumps(data))  # tuples become lists, as JSON has them
        return converted

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Architecture):
            return NotImplemented  # a snapshot compares itself
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(str(self))

    def __str__(self) -> str:
        return render(self)

    __repr__ = __str__  # the table, in a REPL and in pytest's assertion messages


def kinds() -> tuple[str, ...]:
    """Every kind a row can have."""
    from cnncheck.layers import LayerKind

    return (*(k.value for k in LayerKind), "conv (reparametrised)", FUNCTION, PARAMETERS)


def check_kinds(wanted: Any) -> tuple[str, ...]:
    """``wanted`` as a tuple of kinds (one string is one kind); a kind no row can have is a ValueError
    that lists them, so that a typo does not pass as 'no such layer'."""
    names = (wanted,) if isinstance(wanted, str) else tuple(wanted)
    unknown = [k for k in names if k not in kinds()]
    if unknown:
        raise ValueError(f"unknown layer kind(s) {', '.join(map(repr, unknown))}; the kinds are {', '.join(kinds())}")
    return names


def of_kind(layer: Layer, kind: str) -> bool:
    return layer.kind == kind or layer.kind.startswith(f"{kind} (")


def shape_text(shape: Any) -> str:
    """A shape as the table writes it (``4x10``), or a structure of them for several outputs."""
    if shape is None:
        return "-"
    if isinstance(shape, tuple) and all(isinstance(s, int) for s in shape):
        return "x".join(map(str, shape)) or "scalar"
    if isinstance(shape, dict):
        return "{" + ", ".join(f"{k}: {shape_text(v)}" for k, v in shape.items()) + "}"
    if isinstance(shape, (tuple, list)):
        return "(" + ", ".join(shape_text(s) for s in shape) + ")"
    return str(shape)


def _factor(value: Any) -> str:
    if isinstance(value, tuple):
        return "x".join(_factor(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


HEADER = ("layer", "type", "kind", "output", "params", "formula")


def table_rows(arch: Architecture) -> list[tuple[str, ...]]:
    """The table's cells, one tuple per layer, in :data:`HEADER` order."""
    rows: list[tuple[str, ...]] = []
    for layer in arch.layers:
        output = f"({layer.status})" if layer.status else shape_text(layer.output_shape)
        formula = f"{layer.formula} = {layer.formula_count}" if layer.formula else "-"
        typed = f"{layer.type}({layer.config})" if layer.kind != FUNCTION else layer.type
        rows.append((layer.label, typed, layer.kind, output, str(layer.params), formula))
    return rows


def render(arch: Architecture) -> str:
    """The stable table: a header line, then one aligned row per layer (columns two spaces apart)."""
    extra = f", downsampling {_factor(arch.downsampling)}x" if arch.downsampling is not None else ""
    head = (f"{arch.model} on input {shape_text(arch.input_shape)}: output {shape_text(arch.output_shape)}, "
            f"{arch.total_params} parameters ({arch.trainable_params} trainable){extra}")
    rows = [HEADER, *table_rows(arch)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]

    def line(row: tuple[str, ...]) -> str:
        cells = [cell.rjust(widths[i]) if i == 4 else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        return "  ".join(cells).rstrip()

    return "\n".join([head, line(rows[0]), "  ".join("-" * w for w in widths), *map(line, rows[1:])])


def parse_table(text: str) -> dict[str, dict[str, str]]:
    """The rows of a rendered table (a snapshot's text), by layer name: each row's cells by
    :data:`HEADER` name. The dashes under the header give the columns."""
    lines = text.splitlines()
    dashes = next((i for i, line in enumerate(lines) if line.startswith("-") and set(line) <= {"-", " "}), None)
    if dashes is None:
        return {}
    spans, start = [], 0
    for run in lines[dashes].split("  "):
        spans.append((start, start + len(run)))
        start += len(run) + 2
    rows: dict[str, dict[str, str]] = {}
    for line in lines[dashes + 1:]:
        cells = [line[a:b + (len(line) if i == len(spans) - 1 else 0)].strip() for i, (a, b) in enumerate(spans)]
        rows[cells[0]] = dict(zip(HEADER, cells))
    return rows


def _arguments(typed: str) -> dict[str, str]:
    """``Conv2d(1, 8, kernel_size=3, bias=False)`` as ``{"type": "Conv2d", "0": "1", "1": "8",
    "kernel_size": "3", "bias": "False"}``."""
    name, _, inner = typed.partition("(")
    inner = inner[:-1] if inner.endswith(")") else inner
    items, depth, current = [], 0, ""
    for char in inner:
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            items.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        items.append(current.strip())
    parsed = {"type": name}
    for position, item in enumerate(items):
        key, sep, value = item.partition("=")
        parsed[key if sep else str(position)] = value if sep else item
    return parsed


def describe_changes(before: str, after: str) -> list[str]:
    """What changed between two rendered tables, layer by layer: ``conv1: kernel_size 3 -> 5, params
    72 -> 200``; layers added and removed; a changed total."""
    old, new = parse_table(before), parse_table(after)
    lines = []
    for name, row in new.items():
        if name not in old:
            lines.append(f"added {name}: {row['type']}, output {row['output']}, params {row['params']}")
            continue
        was = old[name]
        changes = []
        a, b = _arguments(was["type"]), _arguments(row["type"])
        for key in dict.fromkeys([*a, *b]):
            if a.get(key) != b.get(key):
                label = key if not key.isdigit() else f"argument {int(key) + 1}"
                changes.append(f"{label} {a.get(key, '(default)')} -> {b.get(key, '(default)')}")
        for column in ("kind", "output", "params"):
            if was[column] != row[column]:
                changes.append(f"{column} {was[column]} -> {row[column]}")
        if changes:
            lines.append(f"{name}: " + ", ".join(changes))
    lines += [f"removed {name}: {row['type']}, params {row['params']}" for name, row in old.items() if name not in new]
    head_before, head_after = (text.split("\n", 1)[0].split(": ", 1)[-1].split(", ") for text in (before, after))
    if head_before != head_after:
        lines.append("model: " + ", ".join(f"{a} -> {b}" for a, b in zip(head_before, head_after) if a != b))
    return lines


# -- building it ---------------------------------------------------------------------------------------------
def architecture(model: nn.Module, example_input: Any, *, device: Any = None) -> Architecture:
    """The layer table of ``model`` on ``example_input`` (a shape with the batch first, a tensor, a tuple
    or a dict of tensors, as for ``check_model``), from one traced eval forward on ``device`` (default:
    where the model is; another device works on a copy). Raises :class:`~cnncheck.CheckError` when
    forward does not run on that input, and leaves the model exactly as it was."""
    arch = build(model, example_input, device=device)
    if arch.stopped is not None:
        from cnncheck.api import CheckError

        raise CheckError(f"{arch.model}.forward does not run on {shape_text(arch.input_shape)}: {arch.stopped}")
    return arch


def build(model: nn.Module, example_input: Any, *, device: Any = None) -> Architecture:
    """As :func:`architecture`, but a forward that raises gives the table up to where it raised, with
    ``stopped`` saying why (``cnncheck explain`` shows it)."""
    return table_of(traced(model, example_input, device=device))


def table_of(run: Traced) -> Architecture:
    """The table of one traced forward (the picture draws the same run: :func:`cnncheck.flow.flow_of`)."""
    output = _output_structure(run.trace.output) if run.trace.error is None else None
    return _table(run.model, run.name, run.args, run.kwargs, run.trace, output)


@dataclass(frozen=True)
class Traced:
    """One traced eval forward: the model it ran (a copy on another device), its inputs and the trace."""

    model: nn.Module
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    trace: Any


def traced(model: nn.Module, example_input: Any, *, device: Any = None) -> Traced:
    """Run one eval forward of ``model`` under the trace, leaving the model exactly as it was."""
    import copy

    import torch

    from cnncheck.api import CheckError, _example_inputs, _model_device, _model_dtype, _refuse_unready, _uncompiled
    from cnncheck.preserve import preserved, preserved_global_state
    from cnncheck.trace import module_inventory, run_trace

    if not isinstance(model, nn.Module):
        raise TypeError(f"cnncheck.architecture expects a torch.nn.Module, got {type(model).__name__}")
    model, _ = _uncompiled(model)
    name = type(model).__name__
    _refuse_unready(model, name)
    home = _model_device(model)
    target = torch.device(device) if device is not None else home
    if target.type == "cuda" and not torch.cuda.is_available():
        raise CheckError(f"cannot run {name} on {target}: CUDA is not available on this machine", stage="device")
    args, kwargs = _example_inputs(example_input, target, _model_dtype(model), name)
    with preserved_global_state(cuda=target.type == "cuda"), torch.no_grad():
        work = model if target == home else copy.deepcopy(model).to(target)
        modules = module_inventory(work)
        with preserved(modules):
            trace = run_trace(work, args, modules, kwargs=kwargs, before=work.eval)
    return Traced(work, name, args, kwargs, trace)


def _output_structure(output: Any) -> Any:
    import torch

    if isinstance(output, torch.Tensor):
        return tuple(output.shape)
    if isinstance(output, dict):
        return {str(k): _output_structure(v) for k, v in output.items()}
    if isinstance(output, (tuple, list)):
        return type(output)(_output_structure(v) for v in output) if isinstance(output, list) else tuple(
            _output_structure(v) for v in output)
    return type(output).__name__


def _table(model: nn.Module, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], trace: Any,
           output: Any) -> Architecture:
    from cnncheck.explain import model_param_formulas
    from cnncheck.layers import classify

    owned = _owned_parameters(model)
    formulas = {c.name: c for c in model_param_formulas(model)}
    placed: list[tuple[float, Layer]] = []  # (where in forward it ran, row): the rows in forward order
    shown: set[str] = set()
    calls: dict[str, int] = {}
    for node in trace.nodes:
        if node.module is None:
            if changes_shape(node) or node.kind.value in FUNCTIONAL_ROWS:
                op = op_label(node)
                calls[op] = calls.get(op, 0) + 1
                label = op if calls[op] == 1 else f"{op}[{calls[op]}]"
                kind = node.kind.value if node.kind.value in (*FUNCTIONAL_ROWS, "conv", "pool", "linear") else FUNCTION
                placed.append((node.index, Layer(label, kind, node.func_name, "", node.out_shape, 0, 0)))
            continue
        calls[node.name] = calls.get(node.name, 0) + 1
        if node.name in shown:  # a module run again (a shared activation, a recurrent block): a row per call
            again = _layer(node.name, node.module, _kind(node), node.out_shape, {}, {})
            placed.append((node.index, replace(again, name=f"{node.name}[{calls[node.name]}]")))
            continue
        shown.add(node.name)
        placed.append((node.index, _layer(node.name, node.module, _kind(node), node.out_shape, owned, formulas)))
    raised_in = set(trace.failed.module_stack) if trace.failed is not None else set()
    last = float(len(trace.nodes))
    for qualified, module in model.named_modules():  # parameters that no row holds yet
        if qualified in shown or not owned.get(qualified):
            continue
        inside = [n for n in trace.nodes if not qualified or n.scope == qualified or n.scope.startswith(f"{qualified}.")]
        layer = qualified in formulas or not list(module.children())
        kind = classify(module).value if layer else PARAMETERS
        reading = [n.index for n in trace.nodes if _reads(n, owned[qualified])]
        if inside:  # it ran, as a block of ops (a norm written with F.layer_norm and a cast, say)
            first = reading[0] if reading and not layer else inside[0].index  # a holder: where its parameter is used
            status, shape, at = None, inside[-1].out_shape, first - 0.5
        elif reading:  # F.linear(x, self.qkv.weight): used, never called
            status, shape, at = USED, None, reading[0] - 0.5
        else:
            status, shape, at = (RAISED if qualified in raised_in else NOT_RUN), None, last
        placed.append((at, replace(_layer(qualified, module, kind, shape if layer else None, owned, formulas),
                                   status=status)))
    rows = [row for _, row in sorted(placed, key=lambda pair: pair[0])]  # sorted() is stable: ties keep their order
    unique = {id(p): p for p in model.parameters()}
    return Architecture(
        model=name,
        input_shape=tuple(args[0].shape) if args and hasattr(args[0], "shape") else None,
        output_shape=output,
        layers=tuple(rows),
        total_params=sum(p.numel() for p in unique.values()),
        trainable_params=sum(p.numel() for p in unique.values() if p.requires_grad),
        downsampling=_downsampling(args, trace) if trace.error is None else None,
        stopped=_stopped(trace),
    )


def _reads(node: Any, parameters: list[nn.Parameter]) -> bool:
    wanted = {id(p) for p in parameters}
    return any(id(value) in wanted for value in (*node.args, *node.kwargs.values()))


_ADDRESS = re.compile(r"\s*at 0x[0-9a-fA-F]+|0x[0-9a-fA-F]{6,}")
_PATH = re.compile(r"(?:[A-Za-z]:)?[\\/](?:[^\s,()'\"<>]+[\\/])+([^\s,()'\"<>/\\]+)")


def stable_text(text: str) -> str:
    """A module's repr as the table shows it: no memory address, no folder of a file path (a custom
    ``extra_repr`` may print a function or a path), so that the text is the same in every run."""
    return _PATH.sub(r"\1", _ADDRESS.sub("", text))


def _stopped(trace: Any) -> str | None:
    if trace.error is not None:
        return f"{type(trace.error).__name__}: {trace.error}"
    if trace.truncated:
        return f"forward ran more ops than cnncheck records ({len(trace.nodes)}); the table would be partial"
    return None


def _owned_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Each module's own parameters, a shared one only at its first owner (``named_modules`` order)."""
    seen: set[int] = set()
    owned: dict[str, list[nn.Parameter]] = {}
    for qualified, module in model.named_modules():
        fresh = [p for p in module._parameters.values() if p is not None and id(p) not in seen]
        seen.update(id(p) for p in fresh)
        owned[qualified] = fresh
    return owned


def _layer(qualified: str, module: nn.Module, kind: str, shape: tuple[int, ...] | None,
           owned: dict[str, list[nn.Parameter]], formulas: dict[str, Any]) -> Layer:

    params = owned.get(qualified, [])
    count = formulas.get(qualified)
    loose = [c for n, c in formulas.items() if c.kind == "parameter" and n.rsplit(".", 1)[0] == qualified
             and "." in n] + [c for n, c in formulas.items() if c.kind == "parameter" and not qualified and "." not in n]
    formula: str | None = None
    formula_count: int | None = None
    if count:  # with parameters beyond the layer's formula, counted as they are (a reparametrising gain)
        formula = count.formula + "".join(f" + {c.count} ({c.name.rsplit('.', 1)[-1]})" for c in loose)
        formula_count = count.count + sum(c.count for c in loose)
    return Layer(qualified, kind, type(module).__name__, module_config(module), shape, sum(p.numel() for p in params),
                 sum(p.numel() for p in params if p.requires_grad), formula, formula_count)


def module_config(module: nn.Module) -> str:
    """A module's arguments as the table and the picture show them: its repr inside the parentheses,
    without the defaults, an address or a folder."""
    from cnncheck.layers import short_repr

    return stable_text(short_repr(module)[len(type(module).__name__) + 1:-1])


def op_label(node: Any) -> str:
    """A functional op's row name: ``scope.op()``, after the module whose forward called it."""
    return f"{node.scope}.{node.func_name}()" if node.scope else f"{node.func_name}()"


def changes_shape(node: Any) -> bool:
    return node.in_shape is not None and node.in_shape != node.out_shape


def _kind(node: Any) -> str:
    """The layer's kind; for a convolution whose filters are computed from its parameters on every call
    (weight standardisation, a gain, experts mixed per sample), ``conv (reparametrised)``."""
    from cnncheck.checks.conv_params import weight_origin
    from cnncheck.layers import LayerKind

    found = weight_origin(node) if node.kind is LayerKind.CONV else None
    if found is not None and not found.direct and not found.rearranged:
        return "conv (reparametrised)"
    return str(node.kind.value)


def _downsampling(args: tuple[Any, ...], trace: Any) -> int | float | tuple[int | float, ...] | None:
    """The input's spatial size over that of the last convolution's or pooling's output (224 -> 7: 32).
    A global pool's 1x1 output is not a feature map (a strided conv's is), and neither is a
    transformer's attention map."""
    import torch

    from cnncheck.layers import LayerKind

    if not args or not isinstance(args[0], torch.Tensor) or args[0].dim() < 3:
        return None
    first = tuple(args[0].shape[2:])
    last = None
    for node in trace.nodes:
        if node.kind not in (LayerKind.CONV, LayerKind.POOL):
            continue
        out = node.outputs[0] if node.outputs else None
        if not isinstance(out, torch.Tensor) or out.dim() != args[0].dim():
            continue
        if node.kind is LayerKind.CONV or any(s > 1 for s in out.shape[2:]):  # a global pool's 1x1 is no map
            last = tuple(out.shape[2:])
    if last is None:
        return None
    factors = tuple(a // b if a % b == 0 else a / b for a, b in zip(first, last))
    return factors[0] if len(set(factors)) == 1 else factors
