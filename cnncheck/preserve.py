"""Leave the user's model exactly as it was: state snapshots, restored bit for bit.

Parameters, buffers, ``.grad``, ``requires_grad``, ``training`` flags, the torch/numpy/``random`` RNG
states and the TF32 switches are all put back after a check, whatever the student's code did.

Copying a large parameter costs more than the check itself (vgg11_bn holds 0.5 GB), and forward almost
never writes one. A parameter of :data:`LAZY_BYTES` (16 MiB) or more is therefore copied only when a call is about
to write it or to hand out its memory (:func:`before_call`, which the tracer and
:func:`guarding_writes` call for every torch call of the student's code). Buffers, plain tensor
attributes and small parameters, which forward does update, are copied on entry.
"""

from __future__ import annotations

import contextlib
import gc
import random
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode


@dataclass
class _ModuleState:
    module: nn.Module
    training: bool
    parameters: dict[str, nn.Parameter | None]
    buffers: dict[str, torch.Tensor | None]
    attributes: dict[str, torch.Tensor]  # plain tensor attributes (d2l.ai keeps running statistics so)


LAZY_BYTES = 16 << 20
"""Parameters of at least this many bytes are copied on their first write, not on entry. Below it a copy
costs less than watching for writes: the probes that call the model outside the tracer then run without
the guard's per-op cost (a 4 MiB classifier made mobilenetv3_small_050's check 5% slower)."""


@dataclass(eq=False)
class _TensorState:
    tensor: torch.Tensor
    memory: torch.Tensor  # the original storage, shape and strides: ``p.data = other`` must be undone too
    data: torch.Tensor | None  # the copy of the values; None for a large parameter nothing wrote yet
    version: int  # of a large parameter not copied yet: a change behind cnncheck's back is then seen
    grad: torch.Tensor | None
    requires_grad: bool

    @classmethod
    def of(cls, tensor: torch.Tensor, lazy: bool) -> _TensorState:
        memory = tensor.detach()
        return cls(tensor, memory, None if lazy else memory.clone(), tensor._version if lazy else -1, tensor.grad,
                   tensor.requires_grad)

    def restore(self) -> None:
        if self.tensor.data_ptr() != self.memory.data_ptr():
            self.tensor.data = self.memory  # ``p.data = other`` gave it other memory: its own comes back
        if self.data is not None and not torch.equal(self.memory, self.data):
            self.memory.copy_(self.data)
        elif self.data is None and self.tensor._version != self.version:
            warnings.warn(
                f"cnncheck: a parameter of shape {tuple(self.memory.shape)} was changed in place by a call "
                "cnncheck did not see, and could not be restored", RuntimeWarning, stacklevel=4)
        self.tensor.grad = self.grad
        if self.tensor.is_leaf:
            self.tensor.requires_grad_(self.requires_grad)


_UNCOPIED: dict[int, list[_TensorState]] = {}
"""Large parameters of the checks in progress that no call has written yet, by their storage address."""


@contextlib.contextmanager
def preserved(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Snapshot every module's state on entry and restore it on exit."""
    module_states = [
        _ModuleState(m, m.training, dict(m._parameters), dict(m._buffers), _tensor_attributes(m)) for m in modules
    ]
    tensors: dict[int, _TensorState] = {}
    for state in module_states:
        parameters = {id(t) for t in state.parameters.values()}
        for t in [*state.parameters.values(), *state.buffers.values(), *state.attributes.values()]:
            if t is not None and id(t) not in tensors:
                lazy = id(t) in parameters and t.nbytes >= LAZY_BYTES
                tensors[id(t)] = ts = _TensorState.of(t, lazy)
                if lazy:
                    _UNCOPIED.setdefault(_address(t), []).append(ts)
    try:
        yield
    finally:
        for ts in tensors.values():
            if ts.data is None:
                _forget(ts)
        for state in module_states:
            state.module._parameters.clear()
            state.module._parameters.update(state.parameters)
            state.module._buffers.clear()
            state.module._buffers.update(state.buffers)
            for name in [n for n in _tensor_attributes(state.module) if n not in state.attributes]:
                del state.module.__dict__[name]  # a tensor the check's forward passes left behind
            state.module.__dict__.update(state.attributes)
            # ``training`` is restored directly: a student's train() override must not run again
            object.__setattr__(state.module, "training", state.training)
        with torch.no_grad():
            for ts in tensors.values():
                ts.restore()


def before_call(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> None:
    """Copy each large parameter that ``func(*args, **kwargs)`` may write before it runs."""
    if not _UNCOPIED or not _may_write(func, kwargs):
        return
    for t in _arguments(args, kwargs):
        for ts in _UNCOPIED.pop(_address(t), ()):
            ts.data = ts.memory.clone()


class _WriteGuard(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        before_call(func, args, kwargs)
        return func(*args, **(kwargs or {}))


def guarding_writes() -> contextlib.AbstractContextManager[Any]:
    """Run the student's code outside the tracer (a probe that calls a layer of the model itself) so that
    the large parameters it writes are copied first."""
    return _WriteGuard() if _UNCOPIED else contextlib.nullcontext()


_WRITING_NAMES = frozenset({"__setitem__", "numpy", "data_ptr", "untyped_storage", "storage", "_typed_storage",
                            "__dlpack__", "__array__", "share_memory_"})
"""Calls that write a tensor, or hand out its memory for code cnncheck cannot see to write."""


def _may_write(func: Any, kwargs: dict[str, Any] | None) -> bool:
    name = getattr(func, "__name__", "")
    if name in ("__get__", "__set__"):  # an attribute: only ``.data`` shares the memory outside autograd
        return getattr(getattr(func, "__self__", None), "__name__", None) == "data"
    in_place = name.endswith("_") and not name.endswith("__")  # add_, normal_, _foreach_mul_
    return in_place or name in _WRITING_NAMES or bool(kwargs and "out" in kwargs)


def _arguments(args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> Iterator[torch.Tensor]:
    for value in [*args, *(kwargs or {}).values()]:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):  # torch._foreach_add_(params, ...)
            yield from (v for v in value if isinstance(v, torch.Tensor))


def _address(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # a tensor without storage (a functional or meta wrapper)
        return -1


def _forget(ts: _TensorState) -> None:
    address = _address(ts.memory)
    waiting = [other for other in _UNCOPIED.get(address, []) if other is not ts]
    if waiting:
        _UNCOPIED[address] = waiting
    else:
        _UNCOPIED.pop(address, None)


def _tensor_attributes(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: v for n, v in vars(module).items() if isinstance(v, torch.Tensor)}


@contextlib.contextmanager
def preserved_global_state(seed: int = 0, cuda: bool = False) -> Iterator[None]:
    """Seed every RNG for a deterministic check, turn TF32 off for a check on CUDA, pause the garbage
    collector, and restore all of it afterwards. The TF32 switches are touched only on CUDA and only when on: in torch 2.14 merely
    setting ``torch.backends.cuda.matmul.allow_tf32`` (even to its default) moves every later CPU
    matmul and conv to a slower path, the user's own training included."""
    torch_state = torch.get_rng_state()
    cuda_states = (
        torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None  # type: ignore[no-untyped-call]
    )
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    switched: list[Any] = []  # the TF32 backends (torch.backends.cuda.matmul, torch.backends.cudnn) turned off
    collecting = gc.isenabled()
    try:
        # the check allocates tens of thousands of short-lived objects; each full collection they trigger
        # walks every object of the process (a timm model is hundreds of thousands): pause it meanwhile
        gc.disable()
        if cuda:
            for backend in (torch.backends.cuda.matmul, torch.backends.cudnn):
                if backend.allow_tf32:
                    backend.allow_tf32 = False  # type: ignore[union-attr]  # the cudnn stub lacks allow_tf32
                    switched.append(backend)
        torch.manual_seed(seed)
        yield
    finally:
        if collecting:
            gc.enable()
        for backend in switched:
            backend.allow_tf32 = True
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        elif torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
            pass  # CUDA was first touched by the check: there was no state to restore
        np.random.set_state(numpy_state)
        random.setstate(python_state)
