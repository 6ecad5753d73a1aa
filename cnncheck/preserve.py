"""Leave the user's model exactly as it was: state snapshots, restored bit for bit.

Parameters, buffers, ``.grad``, ``requires_grad``, ``training`` flags, the torch/numpy/``random`` RNG
states and the TF32 switches are all put back after a check, whatever the student's code did.
"""

from __future__ import annotations

import contextlib
import gc
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class _ModuleState:
    module: nn.Module
    training: bool
    parameters: dict[str, nn.Parameter | None]
    buffers: dict[str, torch.Tensor | None]
    attributes: dict[str, torch.Tensor]  # plain tensor attributes (d2l.ai keeps running statistics so)


@dataclass
class _TensorState:
    tensor: torch.Tensor
    data: torch.Tensor
    grad: torch.Tensor | None
    requires_grad: bool


@contextlib.contextmanager
def preserved(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Snapshot every module's state on entry and restore it on exit."""
    module_states = [
        _ModuleState(m, m.training, dict(m._parameters), dict(m._buffers), _tensor_attributes(m)) for m in modules
    ]
    tensors: dict[int, _TensorState] = {}
    for state in module_states:
        for t in [*state.parameters.values(), *state.buffers.values(), *state.attributes.values()]:
            if t is not None and id(t) not in tensors:
                tensors[id(t)] = _TensorState(t, t.detach().clone(), t.grad, t.requires_grad)
    try:
        yield
    finally:
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
                if not torch.equal(ts.tensor.detach(), ts.data):
                    ts.tensor.detach().copy_(ts.data)
                ts.tensor.grad = ts.grad
                if ts.tensor.is_leaf:
                    ts.tensor.requires_grad_(ts.requires_grad)


def _tensor_attributes(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: v for n, v in vars(module).items() if isinstance(v, torch.Tensor)}


@contextlib.contextmanager
def preserved_global_state(seed: int = 0, cuda: bool = False) -> Iterator[None]:
    """Seed every RNG for a deterministic check, turn TF32 off for a check on CUDA, pause the garbage
    collector, and restore all of it afterwards. The TF32 switches are touched only on CUDA and only when on: in torch 2.14 merely
    setting ``torch.backends.cuda.matmul.allow_tf32`` (even to its default) moves every later CPU
    matmul and conv to a slower path, the user's own training included."""
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    switched = []
    collecting = gc.isenabled()
    try:
        # the check allocates tens of thousands of short-lived objects; each full collection they trigger
        # walks every object of the process (a timm model is hundreds of thousands): pause it meanwhile
        gc.disable()
        if cuda:
            for backend in (torch.backends.cuda.matmul, torch.backends.cudnn):
                if backend.allow_tf32:
                    backend.allow_tf32 = False
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
        elif torch.cuda.is_initialized():
            pass  # CUDA was first touched by the check: there was no state to restore
        np.random.set_state(numpy_state)
        random.setstate(python_state)
