"""The data flow of one forward, as the report draws it: layers, merges and shape changes, with edges.

A CNN's forward is mostly a sequence with branches (a residual add, a concat), so the layout is small
and our own: each node sits at its depth (the longest path from the input), and nodes that share a
depth sit side by side in lanes, the main path kept in lane 0 where it can be. A :class:`Flow` is
plain data (``to_dict``/``from_dict``): a grading worker sends it, and the supervisor draws it
(:mod:`cnncheck.picture`), so no markup from a submission's process reaches a report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

INPUT = "input"
MERGE = "merge"  # an op that joins two or more branches: add, cat, mul, stack
MERGE_OPS = {"add", "__add__", "__iadd__", "add_", "cat", "concat", "concatenate", "stack", "mul", "__mul__",
             "mul_", "__radd__", "sum", "hstack", "vstack"}
MAX_NODES = 2000  # beyond this, the picture is cut (and says so): a browser still draws it


@dataclass(frozen=True)
class FlowNode:
    id: int
    name: str  # the layer's qualified name, ``input``, or ``scope.op()``
    kind: str  # a layer kind (conv, pool, ...), ``input``, ``merge`` or ``function``
    type: str  # Conv2d, add, reshape, ...
    config: str  # the layer's arguments, without the defaults
    shape: tuple[int, ...] | None  # the output, batch first
    params: int
    sources: tuple[int, ...]
    depth: int
    lane: int
    note: str = ""  # "forward raised here"


@dataclass(frozen=True)
class Flow:
    model: str
    nodes: tuple[FlowNode, ...]
    cut: bool = False  # more nodes than MAX_NODES: the rest are not drawn

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "cut": self.cut, "nodes": [asdict(node) for node in self.nodes]}

    @classmethod
    def from_dict(cls, data: Any) -> Flow:
        """A flow from untrusted data (a grading worker's message): every field checked, else ValueError."""
        if not isinstance(data, dict) or not isinstance(data.get("nodes"), (list, tuple)) or len(data["nodes"]) > MAX_NODES:
            raise ValueError("not a flow")
        nodes = []
        for i, raw in enumerate(data["nodes"]):
            if not isinstance(raw, dict):
                raise ValueError("not a flow node")
            shape = raw.get("shape")
            node = FlowNode(
                id=_int(raw.get("id")), name=_str(raw.get("name")), kind=_str(raw.get("kind")),
                type=_str(raw.get("type")), config=_str(raw.get("config")),
                shape=None if shape is None else tuple(_int(s) for s in _list(shape)),
                params=_int(raw.get("params")), sources=tuple(_int(s) for s in _list(raw.get("sources"))),
                depth=_int(raw.get("depth")), lane=_int(raw.get("lane")), note=_str(raw.get("note", "")))
            if node.id != i or any(not 0 <= s < i for s in node.sources) or node.lane > MAX_NODES or node.depth > MAX_NODES:
                raise ValueError("a flow node out of order")
            nodes.append(node)
        return cls(_str(data.get("model")), tuple(nodes), bool(data.get("cut")))


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not -1 <= value < 1 << 62:
        raise ValueError("not an integer")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 2000:
        raise ValueError("not a string")
    return value


def _list(value: Any) -> list[Any] | tuple[Any, ...]:
    if not isinstance(value, (list, tuple)) or len(value) > MAX_NODES:
        raise ValueError("not a list")
    return value


def flow_of(run: Any) -> Flow:
    """The flow of one traced forward (:func:`cnncheck.layer_table.traced`)."""
    from cnncheck.layer_table import _kind, _owned_parameters, changes_shape, module_config, op_label
    from cnncheck.layers import classify

    trace = run.trace
    owned = _owned_parameters(run.model)
    nodes: list[FlowNode] = []
    by_trace: dict[int, tuple[int, ...]] = {}  # a trace node -> the flow nodes it stands for
    inputs: dict[str, int] = {}
    depth: dict[int, int] = {}
    busy: dict[int, set[int]] = {}
    lanes: dict[int, int] = {}
    seen_modules: set[str] = set()

    def place(name: str, kind: str, type_: str, config: str, shape: Any, params: int, sources: tuple[int, ...],
              note: str = "") -> int:
        index = len(nodes)
        level = 1 + max((depth[s] for s in sources), default=-1)
        wanted = lanes[sources[0]] if sources else 0
        taken = busy.setdefault(level, set())
        lane = wanted if wanted not in taken else min(set(range(len(taken) + 1)) - taken)
        taken.add(lane)
        depth[index], lanes[index] = level, lane
        nodes.append(FlowNode(index, name, kind, type_, config, tuple(shape) if shape else None, params,
                              sources, level, lane, note))
        return index

    def resolve(source: Any) -> tuple[int, ...]:
        if isinstance(source, str):
            if source.startswith("input"):
                if source not in inputs:
                    shape = _input_shape(run, source)
                    inputs[source] = place(INPUT if len(run.args) < 2 else source, INPUT, "input", "", shape, 0, ())
                return (inputs[source],)
            return ()
        return by_trace.get(id(source), ())

    cut = False
    for node in trace.nodes:
        sources = tuple(dict.fromkeys(s for src in node.sources for s in resolve(src)))
        if len(nodes) >= MAX_NODES:
            cut = True
            break
        if node.module is not None:
            first = node.name not in seen_modules
            seen_modules.add(node.name)
            params = sum(p.numel() for p in owned.get(node.name, [])) if first else 0
            by_trace[id(node)] = (place(node.name, _kind(node), type(node.module).__name__,
                                        module_config(node.module), node.out_shape, params, sources),)
            continue
        merges = len(sources) >= 2 and node.func_name in MERGE_OPS
        if merges or (changes_shape(node) and sources):
            by_trace[id(node)] = (place(op_label(node), MERGE if merges else "function", node.func_name, "",
                                        node.out_shape, 0, sources),)
        else:  # an op the picture does not draw (relu, a view that keeps the shape): it passes its sources on
            by_trace[id(node)] = sources
    failed = trace.failed
    if failed is not None and not cut:  # where forward raised: drawn, with what it was given
        sources = tuple(dict.fromkeys(s for src in failed.sources for s in resolve(src)))
        if failed.module is not None:
            name = failed.module_stack[-1] if failed.module_stack else ""
            params = sum(p.numel() for p in owned.get(name, [])) if name not in seen_modules else 0
            place(name, classify(failed.module).value, type(failed.module).__name__, module_config(failed.module),
                  None, params, sources, "forward raised here")
        else:
            from cnncheck.frames import function_name

            op = function_name(failed.func) if failed.func is not None else "forward"
            place(f"{op}()", "function", op, "", None, 0, sources, "forward raised here")
    return Flow(run.name, tuple(nodes), cut)


def _input_shape(run: Any, source: str) -> tuple[int, ...] | None:
    import torch

    try:
        index = int(source.split(":", 1)[1]) if ":" in source else 0
    except ValueError:
        index = 0
    value = run.args[index] if index < len(run.args) else None
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None
