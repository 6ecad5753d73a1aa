"""What the rules share: the model, its example input, and lazily computed passes and probes.

Every whole-model pass is computed at most once per check, on first use, so the cost of a check is
the handful of passes its selected rules need: a traced train-mode forward and one backward, a traced
eval-mode forward, and an eval forward of one sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

from cnncheck import trace as tracing
from cnncheck.layers import LayerKind
from cnncheck.locate import creation_site
from cnncheck.preserve import guarding_writes
from cnncheck.probes import same_randomness
from cnncheck.trace import ModuleInfo, Node, Trace, run_trace

_PROBED = frozenset(
    {LayerKind.CONV, LayerKind.POOL, LayerKind.BATCH_NORM, LayerKind.INSTANCE_NORM, LayerKind.DROPOUT}
)


@dataclass
class CheckContext:
    model: nn.Module
    user_model: nn.Module
    inputs: tuple[Any, ...]
    modules: dict[nn.Module, ModuleInfo]
    pm: Any = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    forward_error_explained: bool = False
    notes: list[str] = field(default_factory=list)  # for the report: what could not be checked, and why
    backward_error: str | None = None
    _cache: dict[str, Any] = field(default_factory=dict)

    # -- facts -----------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return type(self.user_model).__name__

    @property
    def example(self) -> torch.Tensor:
        return next(t for t in _leaves((self.inputs, self.kwargs)))

    @property
    def batch_size(self) -> int:
        return int(self.example.shape[0]) if self.example.dim() else 1

    @property
    def dtype(self) -> torch.dtype:
        return self.example.dtype if self.example.is_floating_point() else torch.float32

    def name_of(self, module: nn.Module) -> str:
        info = self.modules.get(module)
        return info.name if info is not None else type(module).__name__

    def modules_of(self, *kinds: LayerKind) -> list[tuple[nn.Module, ModuleInfo]]:
        return [(m, info) for m, info in self.modules.items() if info.kind in kinds]

    def location_of(self, module: nn.Module) -> str | None:
        return creation_site(self.model, self.name_of(module))

    # -- passes ----------------------------------------------------------------------------------
    @property
    def train_trace(self) -> Trace:
        """The model in train mode (through its own ``train()``), traced, with gradients watched."""
        if "train" not in self._cache:
            inputs, kwargs = tree_map(_requires_grad, (self.inputs, self.kwargs))
            saved: list[tuple[torch.Tensor, int]] = []

            def pack(t: torch.Tensor) -> torch.Tensor:
                saved.append((t, t._version))
                return t

            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                self._cache["train"] = run_trace(
                    self.model,
                    inputs,
                    self.modules,
                    kwargs=kwargs,
                    save_inputs=_PROBED,
                    before=lambda: self.model.train(),
                )
            if self._cache["train"].truncated:
                self.notes.append(
                    f"{self.model_name}.forward ran more ops than cnncheck records ({tracing.MAX_NODES:,} ops or "
                    f"{tracing.MAX_KEPT_BYTES >> 30} GiB of their outputs); the rules saw only the part of forward before that")
            overwritten = next(((t, v) for t, v in saved if t._version != v), None)
            if overwritten is not None:  # what autograd's backward would raise, without running it
                t, version = overwritten
                self._backward_failed(
                    f"a tensor of shape {tuple(t.shape)} that autograd saved for the backward pass is modified by "
                    f"an inplace operation later in forward (version {version}, now {t._version}); make that "
                    f"op out of place (e.g. relu(x), not relu_(x) or inplace=True)")
        return self._cache["train"]

    def local_gradients(self, starts: list[torch.Tensor], ends: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """The gradient at each of ``starts`` of a random projection of ``ends``, all tensors of the train
        trace: a backward pass through the part of the graph between them only (for redundant-bias, from
        the BatchNorms back to the biased layers), not through the whole model. A backward that fails
        is a note, and None for every start."""
        generator = torch.Generator(device="cpu").manual_seed(1)
        projections = [torch.randn(e.shape, generator=generator, dtype=e.dtype).to(e.device) for e in ends]
        try:
            grads = torch.autograd.grad(ends, starts, projections, allow_unused=True, retain_graph=True)
        except RuntimeError as exc:  # the student's model cannot be trained as written
            self._backward_failed(str(exc).splitlines()[0])
            return [None] * len(starts)
        return list(grads)

    def _backward_failed(self, reason: str) -> None:
        if self.backward_error is None:
            self.backward_error = reason
            self.notes.append(f"the backward pass of {self.model_name} fails, so training it would crash too: "
                              f"{reason} (redundant-bias-before-bn needs the gradient and reports nothing)")

    @property
    def eval_trace(self) -> Trace:
        """The model after its own ``eval()``, traced without gradients."""
        if "eval" not in self._cache:
            with torch.no_grad(), same_randomness(self.example):  # see eval_output_of_first_sample
                self._cache["eval"] = run_trace(
                    self.model,
                    self.inputs,
                    self.modules,
                    kwargs=self.kwargs,
                    save_inputs=_PROBED,
                    before=lambda: self.model.eval(),
                    only=frozenset({LayerKind.BATCH_NORM, LayerKind.DROPOUT}),
                )
        return self._cache["eval"]

    def eval_output_of_first_sample(self) -> Any:
        """The eval-mode output for the first sample alone (to test batch independence)."""
        if "single" not in self._cache:
            args, kwargs = first_sample((self.inputs, self.kwargs), self.batch_size)
            self.model.eval()
            try:
                # the eval pass's random numbers: a layer that draws them per sample even in eval mode
                # (FractionalMaxPool2d) gives the first sample the same draws in both passes
                with torch.no_grad(), same_randomness(self.example), guarding_writes():
                    self._cache["single"] = self.model(*args, **kwargs)
            except Exception as exc:  # a batch of one may fail where batch statistics are used
                self._cache["single"] = exc
        return self._cache["single"]

    def memo(self, key: Any, compute: Any) -> Any:
        """Cache a probe result shared by several rules (e.g. one BatchNorm probe for three rules)."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]


def first_sample(obj: Any, batch: int) -> Any:
    """``obj`` with every tensor of the batch size cut to its first sample."""
    return tree_map(lambda a: a[:1] if isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == batch else a, obj)


def _leaves(obj: Any) -> list[torch.Tensor]:
    leaves, _ = tree_flatten(obj)
    return [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]


def _requires_grad(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.detach().clone().requires_grad_(True)
    return value


def first_call(trace: Trace, module: nn.Module) -> Node | None:
    return next((n for n in trace.nodes if n.module is module), None)
