"""One traced execution of ``forward()``: which module or op produced and consumed each tensor.

Module hooks see every registered module call (and the layers a student keeps in a plain list or
dict: they are found and hooked too); a :class:`~torch.overrides.TorchFunctionMode` sees every
functional call made outside a layer (``F.conv2d``, ``x + y``, ``x.view(...)``). A layer we know
(conv, pooling, norm, dropout, linear, or any module without children) is one node: the ops inside
it are its implementation, not dataflow of the model. Rules share the resulting graph.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Union, cast

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from cnncheck.frames import (
    calling_module_name,
    calling_torch_module,
    function_name,
    module_call_site,
    traceback_location,
    user_location,
)
from cnncheck.layers import LayerKind, classify, from_torch
from cnncheck.ops import MODAL_FUNCTIONS, batch_norm_arguments, function_kind
from cnncheck.preserve import before_call
from cnncheck.recognize import own_tensor_names, recognize, uses_own_statistics, verified_by_op

Source = Union["Node", str]
"""Where a tensor came from: the node that produced it, or ``input:I``, ``param:NAME``,
``buffer:NAME``, ``const``."""



@dataclass(frozen=True, slots=True)
class ModuleInfo:
    name: str
    kind: LayerKind
    hidden: bool  # kept in a plain list/dict/tuple attribute: invisible to named_modules()
    atomic: bool  # one node in the graph; the ops inside are its implementation
    decided: bool = False  # kind and atomic come from the ops it ran (see cnncheck.recognize)
    evidence: str = ""  # what decided its kind


@dataclass(eq=False)
class Node:
    """One call: a layer (module node) or a functional op outside any layer (function node)."""

    index: int
    name: str
    kind: LayerKind
    module: nn.Module | None
    func: Any
    scope: str
    inputs: list[torch.Tensor]
    sources: list[Source]
    outputs: list[torch.Tensor]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    training: bool | None = None
    location: str | None = None
    saved_input: torch.Tensor | None = None
    unregistered: nn.Module | None = None  # the torch layer built in forward that made this call
    call_site: str | None = None  # a module node's: the student's line that called it (norms only)
    inner: list[Node] = field(default_factory=list)  # the ops a layer that is not torch's own ran inside

    @property
    def is_module(self) -> bool:
        return self.module is not None

    def tensors_received(self) -> Iterator[torch.Tensor]:
        """The tensors handed to this call: its inputs, and every tensor among its arguments."""
        for value in (*self.inputs, *self.args, *self.kwargs.values()):
            if isinstance(value, torch.Tensor):
                yield value
            elif isinstance(value, (list, tuple)):
                yield from (v for v in value if isinstance(v, torch.Tensor))

    @property
    def probe_input(self) -> torch.Tensor | None:
        """The input to probe this layer with: a copy taken at call time for a student's layer (its
        input may be changed in place later); else the live tensor, detached. A probe that runs a layer
        on it runs it on a copy (``x.clone()``): an in-place op in the layer must not touch a tensor of
        the traced graph, which the redundant-bias rule still differentiates."""
        if self.saved_input is not None:
            return self.saved_input
        return self.inputs[0].detach() if self.inputs else None

    @property
    def in_shape(self) -> tuple[int, ...] | None:
        return tuple(self.inputs[0].shape) if self.inputs else None

    @property
    def out_shape(self) -> tuple[int, ...] | None:
        return tuple(self.outputs[0].shape) if self.outputs else None

    @property
    def func_name(self) -> str:
        return function_name(self.func) if self.func is not None else ""

    def __repr__(self) -> str:
        return f"Node({self.index}, {self.name!r}, {self.kind.value})"


@dataclass
class FailedCall:
    """Where ``forward`` raised: the innermost module, and the functional op if one was running."""

    module_stack: list[str]
    module: nn.Module | None
    func: Any
    inputs: list[torch.Tensor]
    sources: list[Source]
    args: tuple[Any, ...]
    location: str | None


@dataclass
class Trace:
    nodes: list[Node]
    modules: dict[nn.Module, ModuleInfo]
    output: Any = None
    output_sources: list[Source] = field(default_factory=list)
    error: BaseException | None = None
    failed: FailedCall | None = None
    truncated: bool = False  # stopped recording at MAX_NODES ops or MAX_KEPT_BYTES of their outputs
    called: set[int] = field(default_factory=set)  # id() of every module whose forward ran, light pass or not
    _consumers: dict[int, list[Node]] | None = None
    _read: set[int] | None = None
    _storages_read: set[int] | None = None

    def consumers(self, node: Node) -> list[Node]:
        if self._consumers is None:
            table: dict[int, list[Node]] = {}
            for n in self.nodes:
                for src in n.sources:
                    if isinstance(src, Node):
                        table.setdefault(id(src), [])
                        if n not in table[id(src)]:
                            table[id(src)].append(n)
            self._consumers = table
        return self._consumers.get(id(node), [])

    def feeds_output(self, node: Node) -> bool:
        return any(src is node for src in self.output_sources)

    def every_node(self) -> Iterator[Node]:
        """Every call, and the ops inside the layers recognised from their own code (``Node.inner``)."""
        stack = list(reversed(self.nodes))
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.inner))

    def tensors_read(self) -> set[int]:
        """The ids of every tensor that a call received: a layer's inputs, an op's arguments (a weight read
        with ``F.linear(x, self.fc.weight)`` is among them)."""
        if self._read is None:  # one walk of a finished trace serves every rule that asks
            self._read = {id(t) for node in self.every_node() for t in node.tensors_received()}
        return self._read

    def storages_read(self) -> set[int]:
        """The storages (``data_ptr``) of those tensors: a parameter read through ``.data`` or a view is
        among them, though not by its id (tensors without a storage of their own are left out)."""
        if self._storages_read is None:
            found = (storage_of(t) for node in self.every_node() for t in node.tensors_received())
            self._storages_read = {s for s in found if s is not None}
        return self._storages_read

    def module_nodes(self, *kinds: LayerKind) -> Iterator[Node]:
        """The first call of every module of the given kinds, in execution order."""
        seen: set[int] = set()
        for n in self.nodes:
            if n.module is not None and n.kind in kinds and id(n.module) not in seen:
                seen.add(id(n.module))
                yield n

def module_inventory(model: nn.Module, placed: Callable[[nn.Module], LayerKind | None] | None = None,
                     ) -> dict[nn.Module, ModuleInfo]:
    """Every module reachable from ``model``: registered ones by their qualified names, and those
    kept in plain lists, tuples or dicts (which ``model.train()`` never reaches) as ``parent.attr[i]``.
    ``placed`` gives a plugin's kind for a module, which then stands whatever the module runs.
    """
    inventory: dict[nn.Module, ModuleInfo] = {}
    _visit(model, "", False, inventory, placed)
    return inventory


def _visit(module: nn.Module, prefix: str, hidden: bool, inventory: dict[nn.Module, ModuleInfo],
           placed: Callable[[nn.Module], LayerKind | None] | None) -> None:
    """(A module-level function, not a closure: a recursive closure is a reference cycle that keeps the
    whole inventory for the garbage collector, whose passes over it cost more than a check.)"""
    subs = list(module.named_modules(prefix=prefix))
    for name, sub in subs:
        if sub in inventory:
            continue
        answer = placed(sub) if placed is not None else None
        kind = answer or classify(sub)
        atomic = kind is not LayerKind.OTHER or _torch_leaf(sub)
        inventory[sub] = ModuleInfo(name, kind, hidden, atomic, decided=answer is not None,
                                    evidence="a plugin's cnncheck_classify_module" if answer else "")
    for name, sub in subs:
        for attr, value in vars(sub).items():
            if not isinstance(value, _CONTAINERS) or attr.startswith("_"):
                continue
            for label, item in _container_items(value):
                if isinstance(item, nn.Module) and item not in inventory:
                    dotted = f"{name}.{attr}" if name else attr
                    _visit(item, f"{dotted}{label}", True, inventory, placed)


def _torch_leaf(module: nn.Module) -> bool:
    """torch's own childless modules (ReLU, Flatten, ...) are one node each; a student's own
    unclassified module is traced inside, so functional convs and norms in it are seen."""
    return from_torch(module) and not any(True for _ in module.children())


_TORCH_LAYERS = (_BatchNorm, _ConvNd)
"""Subclasses of torch's layers with a forward of their own (timm's BatchNormAct2d, StdConv2d): their
inputs are copied for the probes only once the ops they ran show that a probe will be needed."""


def _shapes_only(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Meta tensors of the same shapes and dtypes: what a light pass keeps of torch's own layers, whose
    rules there need shapes and training flags, not values (the activations are freed as in a plain eval)."""
    return [torch.empty(t.shape, dtype=t.dtype, device="meta") for t in tensors]


MAX_NODES = 200_000
MAX_KEPT_BYTES = 2 << 30
"""What one trace records at most: a forward that loops for ever would otherwise keep every
intermediate tensor alive until its timeout. The largest timm CNNs run about 10,000 ops."""

_NAMES: dict[Any, str] = {}


def _name_of(func: Any) -> str:
    """``function_name``, remembered: asked for every op of every pass."""
    try:
        name = _NAMES.get(func)
    except TypeError:  # an unhashable callable
        return function_name(func)
    if name is None:
        name = _NAMES[func] = function_name(func)
    return name


_CONTAINERS = (list, tuple, dict)


def _container_items(value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, nn.Module):
        return []
    if isinstance(value, (list, tuple)):
        return [(f"[{i}]", v) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return [(f"[{k!r}]", v) for k, v in value.items()]
    return []


def _tensors(obj: Any) -> list[torch.Tensor]:
    """The tensors in a call's arguments or result, in order. Called on every op and module call, so
    plain tuples, lists and dicts are walked directly; anything else goes through torch's pytree."""
    found: list[torch.Tensor] = []
    _collect(obj, found)
    return found


def _collect(obj: Any, found: list[torch.Tensor]) -> None:
    if isinstance(obj, torch.Tensor):
        found.append(obj)
    elif type(obj) in (tuple, list):
        for item in obj:
            _collect(item, found)
    elif type(obj) is dict:
        for item in obj.values():
            _collect(item, found)
    elif obj is None or isinstance(obj, (int, float, bool, str, torch.dtype, torch.device, torch.Size)):
        return
    else:
        leaves, _ = tree_flatten(obj)
        found.extend(leaf for leaf in leaves if isinstance(leaf, torch.Tensor))


@dataclass
class _Frame:
    module: nn.Module
    info: ModuleInfo | None
    recording: bool
    inputs: list[torch.Tensor]
    sources: list[Source]
    training: bool
    saved_input: torch.Tensor | None = None
    skipped: bool = False
    input_version: int = -1
    # a layer that is not torch's own is traced inside from here until it returns (cnncheck.recognize)
    first_inner: int | None = None
    batch_norm: Node | None = None  # its call of torch's batch_norm with its own running statistics
    call_site: str | None = None  # the student's line that called it (kept for norms: bn-reused reads it)


class _Tracer(TorchFunctionMode):
    def __init__(
        self,
        model: nn.Module,
        modules: dict[nn.Module, ModuleInfo],
        save_inputs: frozenset[LayerKind],
        only: frozenset[LayerKind] | None = None,
    ) -> None:
        super().__init__()
        self.modules = modules
        self.only = only
        self.inside = 0  # recording frames of layers traced inside (a light pass records ops only there)
        self.truncated = False
        self.kept_bytes = 0
        self.save_inputs = save_inputs
        self.nodes: list[Node] = []
        self.producers: dict[int, tuple[torch.Tensor, Node]] = {}
        self.named: dict[int, str] = {}
        for module, info in (modules.items() if only is None else ()):  # a light pass follows no dataflow
            for pname, p in module._parameters.items():
                if p is not None:
                    self.named.setdefault(id(p), f"param:{_join(info.name, pname)}")
            for bname, b in module._buffers.items():
                if b is not None:
                    self.named.setdefault(id(b), f"buffer:{_join(info.name, bname)}")
            if not from_torch(module):  # torch's own layers keep no tensors outside parameters and buffers
                for aname, value in vars(module).items():
                    if isinstance(value, torch.Tensor) and not aname.startswith("_"):
                        self.named.setdefault(id(value), f"attr:{_join(info.name, aname)}")
        self.inputs: dict[int, str] = {}
        self.stack: list[_Frame] = []
        self.suppress = 0
        self.busy = False
        self.current_call: tuple[Any, tuple[Any, ...], dict[str, Any]] | None = None
        self.current_location: str | None = None

    # -- tensors -------------------------------------------------------------------------------
    def source_of(self, tensor: torch.Tensor) -> Source:
        entry = self.producers.get(id(tensor))
        if entry is not None and entry[0] is tensor:
            return entry[1]
        return self.named.get(id(tensor)) or self.inputs.get(id(tensor), "const")

    def produced(self, node: Node) -> None:
        for t in node.outputs:
            self.producers[id(t)] = (t, node)

    def scope(self) -> str:
        """The innermost module whose forward is running (a light pass hooks only some: ask the frames)."""
        if self.only is not None:
            return calling_module_name(self.modules)
        for frame in reversed(self.stack):
            if frame.info is not None:
                return frame.info.name
        return ""

    # -- functional ops ------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if self.busy:
            return func(*args, **kwargs)
        before_call(func, args, kwargs)
        if self.suppress:
            return func(*args, **kwargs)
        if self.only is not None and not self.inside and _name_of(func) not in MODAL_FUNCTIONS:
            return func(*args, **kwargs)  # a light pass: only the ops whose result depends on the mode
        self.current_call = (func, args, kwargs)
        out = func(*args, **kwargs)
        self.current_call = None
        self.busy = True
        try:
            self._record_function(func, args, kwargs, out)
        finally:
            self.busy = False
        return out

    def _record_function(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        outputs = _tensors(out)
        if not outputs or self.truncated:
            return
        self.kept_bytes += sum(t.nbytes for t in outputs if id(t) not in self.producers)
        if len(self.nodes) >= MAX_NODES or self.kept_bytes > MAX_KEPT_BYTES:
            self.truncated = True  # a forward that never ends, or one far larger than any CNN: keep what we have
            return
        inputs = _tensors((args, kwargs))
        name = _name_of(func)
        node = Node(
            index=len(self.nodes),
            name=name,
            kind=function_kind(name),
            module=None,
            func=func,
            scope=self.scope(),
            inputs=inputs,
            sources=[self.source_of(t) for t in inputs],
            outputs=outputs,
            args=args,
            kwargs=kwargs,
            location=user_location(),
        )
        if node.kind in (LayerKind.DROPOUT, LayerKind.BATCH_NORM):
            node.unregistered = calling_torch_module(self.modules)
        self.nodes.append(node)
        self.produced(node)
        if name == "batch_norm":
            self._note_batch_norm(node, args, kwargs)

    # -- module calls --------------------------------------------------------------------------
    def pre_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.busy:
            return
        self.busy = True
        try:
            info = self.modules.get(module)
            own_code = info is not None and not from_torch(module)
            recording = info is not None and (info.atomic or own_code) and not self.suppress
            if recording and self.only is not None and info is not None and info.kind not in self.only:
                self.suppress += 1  # a layer a light pass does not look into (a conv's own batch_norm)
                self.stack.append(_Frame(module, info, False, [], [], module.training, skipped=True))
                return
            inputs = _tensors((args, kwargs)) if recording else []
            sources = [self.source_of(t) for t in inputs]
            frame = _Frame(module, info, recording, inputs, sources, module.training)
            if recording and info is not None and info.kind is LayerKind.BATCH_NORM:
                frame.call_site = module_call_site()
            if recording and info is not None:
                if own_code and inputs:
                    frame.input_version = _version(inputs[0])
                    if info.kind in self.save_inputs and not isinstance(module, _TORCH_LAYERS):
                        frame.saved_input = inputs[0].detach().clone()  # before forward can change it in place
                if own_code:
                    frame.first_inner = len(self.nodes)  # traced inside; recognised when it returns
                    self.inside += 1
                else:
                    self.suppress += 1
            self.stack.append(frame)
        finally:
            self.busy = False

    def post_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        if self.busy:
            return
        self.busy = True
        try:
            if not self.stack or self.stack[-1].module is not module:
                return
            frame = self.stack.pop()
            if frame.skipped:
                self.suppress -= 1
            if not frame.recording or frame.info is None:
                return
            outputs = _tensors(output)
            inner: list[Node] = []
            if frame.first_inner is None:
                self.suppress -= 1
            else:
                self.inside -= 1
                if self._recognised_kind(frame, outputs) is None:
                    return  # a block: its inner ops are the graph
                inner = self.nodes[frame.first_inner:]
                self._forget_nodes_from(frame.first_inner)
            info = self.modules[module]
            node = Node(
                index=len(self.nodes),
                name=info.name,
                kind=info.kind,
                module=module,
                func=None,
                scope=self.scope(),
                inputs=frame.inputs if self.only is None or not from_torch(module) else _shapes_only(frame.inputs),
                sources=frame.sources,
                outputs=outputs if self.only is None or not from_torch(module) else _shapes_only(outputs),
                training=frame.training,
                inner=inner,
                call_site=frame.call_site,
            )
            node.saved_input = frame.saved_input
            if (node.saved_input is None and frame.first_inner is not None and info.kind in self.save_inputs
                    and frame.inputs and _version(frame.inputs[0]) == frame.input_version and not verified_by_op(node)):
                node.saved_input = frame.inputs[0].detach().clone()  # intact so far; the probes need it later
            self.nodes.append(node)
            self.produced(node)
        finally:
            self.busy = False

    def _forget_nodes_from(self, index: int) -> None:
        """Drop the ops recorded inside a layer that is one node after all."""
        for node in self.nodes[index:]:
            for t in node.outputs:
                if self.producers.get(id(t), (None, None))[1] is node:
                    del self.producers[id(t)]
        del self.nodes[index:]

    def _recognised_kind(self, frame: _Frame, outputs: list[torch.Tensor]) -> LayerKind | None:
        """The kind of a module that is not torch's own, from the ops it just ran; None for a block.
        Decided at its first call and kept, so that every pass sees the same layers."""
        info = frame.info
        assert info is not None and frame.first_inner is not None
        if not info.decided:
            own = own_tensor_names(frame.module, info.name).values()
            found = recognize(frame.module, info.kind, info.name, self.nodes[frame.first_inner:], frame.first_inner,
                              frame.inputs, outputs, frame.batch_norm, own)
            info = replace(info, kind=found.kind or LayerKind.OTHER, atomic=found.kind is not None, decided=True,
                           evidence=found.evidence)
            self.modules[frame.module] = info
        return info.kind if info.atomic else None

    def _note_batch_norm(self, node: Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Remember a ``batch_norm`` call that takes the innermost provisional layer's own running
        statistics, per channel of the layer's input (a flattened input stays a layer, so that its
        per-pixel statistics are judged)."""
        frame = next((f for f in reversed(self.stack) if f.first_inner is not None), None)
        if frame is None or not frame.inputs:
            return
        named = batch_norm_arguments(node.func, args, kwargs)
        x, mean, outer = named.get("input"), named.get("running_mean"), frame.inputs[0]
        if (uses_own_statistics(frame.module, node) and isinstance(x, torch.Tensor) and x.dim() == outer.dim()
                and x.dim() >= 2 and x.shape[1] == outer.shape[1] == cast(torch.Tensor, mean).numel()):
            frame.batch_norm = node



def storage_of(t: torch.Tensor) -> int | None:
    """Where ``t``'s values live (its storage's ``data_ptr``): shared by a parameter, its ``.data`` and its
    views; None for a tensor without a storage of its own."""
    try:
        return int(t.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):  # a sparse or nested tensor, a tensor subclass without one
        return None


def _version(t: torch.Tensor) -> int:
    """How often ``t`` was changed in place; an inference tensor (``torch.inference_mode()`` in forward)
    has no counter, and cannot be changed in place outside that mode anyway."""
    try:
        return t._version
    except RuntimeError:  # "Inference tensors do not track version counter"
        return -2


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def run_trace(
    model: nn.Module,
    inputs: tuple[Any, ...],
    modules: dict[nn.Module, ModuleInfo],
    *,
    save_inputs: frozenset[LayerKind] = frozenset(),
    before: Callable[[], object] | None = None,
    kwargs: dict[str, Any] | None = None,
    only: frozenset[LayerKind] | None = None,
) -> Trace:
    """Run ``model(*inputs, **kwargs)`` once, recording the graph. An exception in ``forward`` is caught and
    kept in ``Trace.error`` with the call that raised it; the nodes before it are kept too. ``only``
    makes a light pass: layers of those kinds and the mode-dependent ops (``MODAL_FUNCTIONS``), no
    dataflow; for the eval pass, whose rules need nothing else."""
    tracer = _Tracer(model, modules, save_inputs, only)
    kwargs = kwargs or {}
    for i, t in enumerate(_tensors((inputs, kwargs))):
        tracer.inputs[id(t)] = f"input:{i}"
    handles = []
    for module, info in modules.items():
        if only is not None and info.kind not in only and (not info.atomic or from_torch(module)):
            continue  # a light pass: torch's own layers of other kinds run no mode-dependent op inside
        handles.append(module.register_forward_pre_hook(tracer.pre_hook, with_kwargs=True))
        handles.append(module.register_forward_hook(tracer.post_hook, with_kwargs=True))
    trace = Trace(nodes=tracer.nodes, modules=modules)
    handles.append(torch.nn.modules.module.register_module_forward_pre_hook(
        lambda module, _: trace.called.add(id(module))))  # one global hook: cheap, and sees every module
    try:
        if before is not None:
            before()
        with tracer:
            trace.output = model(*inputs, **kwargs)
        trace.output_sources = [tracer.source_of(t) for t in _tensors(trace.output)]
    except Exception as exc:  # the student's forward raised: keep it for the diagnosing rules
        trace.error = exc
        trace.failed = _failed_call(tracer, exc)
    finally:
        for handle in handles:
            handle.remove()
        trace.truncated = tracer.truncated
    return trace


def _failed_call(tracer: _Tracer, exc: BaseException) -> FailedCall:
    names = [f.info.name for f in tracer.stack if f.info is not None]
    recording = [f for f in tracer.stack if f.recording]
    innermost = recording[-1] if recording else (tracer.stack[-1] if tracer.stack else None)
    func = None
    args: tuple[Any, ...] = ()
    inputs: list[torch.Tensor] = []
    if tracer.current_call is not None:
        func, args, kwargs = tracer.current_call
        inputs = _tensors((args, kwargs))
    elif innermost is not None:
        inputs = innermost.inputs
    return FailedCall(
        module_stack=names,
        module=innermost.module if innermost is not None else None,
        func=func,
        inputs=inputs,
        sources=[tracer.source_of(t) for t in inputs],
        args=tuple(args),
        location=traceback_location(exc),
    )
