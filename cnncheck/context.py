"""What the rules share: the model, its example input, and lazily computed passes and probes.

Every whole-model pass is computed at most once per check, on first use, so the cost of a check is
the handful of passes its selected rules need: a traced train-mode forward and one backward, a traced
eval-mode forward, and an eval forward of one sample.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

from cnncheck import trace as tracing
from cnncheck.frames import traceback_location
from cnncheck.layers import LayerKind
from cnncheck.locate import Site, creation_position, creation_site
from cnncheck.preserve import guarding_writes
from cnncheck.probes import same_randomness
from cnncheck.repairs import Repairs
from cnncheck.rules import Diagnosis, Pass, Repair
from cnncheck.trace import ModuleInfo, Node, Trace, run_trace


class NotChecked(Exception):
    """A rule read a pass that failed (or cannot exist): it is not checked, for the reason given."""


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
    notes: list[str] = field(default_factory=list)  # for the report: what could not be checked, and why
    backward_error: str | None = None
    diagnoses: list[Diagnosis] = field(default_factory=list)  # why the train forward raised, in order
    read: set[Pass] = field(default_factory=set)  # the passes the running rule read beyond its needs
    _repairs: Repairs = field(default_factory=Repairs)
    _cache: dict[Any, Any] = field(default_factory=dict)
    given_non_finite: str | None = field(init=False, default=None)
    """The buffers or example input that hold NaN or Inf as given, before any pass (the train forward
    updates running statistics, and a NaN input would make them NaN too). Parameters, which forward does
    not change and which dominate the bytes, are searched only when the output is not finite."""

    def __post_init__(self) -> None:
        self.given_non_finite = self._non_finite_tensors("_buffers") or self._non_finite_inputs()

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

    def fresh_inputs(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """A copy of the example inputs for one pass: forward may change its input in place (``x.mul_(2)``),
        and the next pass must see what the first one saw."""
        return cast(
            "tuple[tuple[Any, ...], dict[str, Any]]",
            tree_map(lambda a: a.clone() if isinstance(a, torch.Tensor) else a, (self.inputs, self.kwargs)),
        )

    def name_of(self, module: nn.Module) -> str:
        info = self.modules.get(module)
        return info.name if info is not None else type(module).__name__

    def modules_of(self, *kinds: LayerKind) -> list[tuple[nn.Module, ModuleInfo]]:
        return [(m, info) for m, info in self.modules.items() if info.kind in kinds]

    def location_of(self, module: nn.Module) -> str | None:
        return creation_site(self.model, self.name_of(module))

    def site_of(self, module: nn.Module) -> Site | None:
        """Where the layer was built, with the column of its call (for a fix, :mod:`cnncheck.changes`)."""
        return creation_position(self.model, self.name_of(module))

    def layer_parameters(self, module: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """A layer's parameters by name, without those of a sub-module that the train forward neither ran
        nor read a parameter of: a child forward forgot belongs to ``layer-not-used``, and would make a
        pool that runs no child "own" its parameters, or a conv count them."""
        named = list(module.named_parameters())
        parts = [m for name, m in module.named_modules() if name and m._parameters]
        if not parts:
            return named
        trace = self.train_trace
        read = trace.tensors_read()
        forgotten = {id(p) for m in parts if id(m) not in trace.called
                     for p in m._parameters.values() if p is not None and id(p) not in read}
        return [(name, p) for name, p in named if id(p) not in forgotten]

    # -- passes ----------------------------------------------------------------------------------
    @property
    def train_trace(self) -> Trace:
        """The model in train mode (through its own ``train()``), traced, with gradients watched."""
        if "train" not in self._cache:
            # as in a training step, the input takes no gradient when parameters do: autograd then saves
            # just what training saves (x.std() on the input saves nothing, so a later x.div_() is legal);
            # a model with no trainable parameter gets one, so that its biases' gradients can still be read
            trainable = any(p.requires_grad for p in self.model.parameters())
            inputs, kwargs = self.fresh_inputs() if trainable else tree_map(_requires_grad, (self.inputs, self.kwargs))
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
        return cast(Trace, self._cache["train"])

    def local_gradients(self, starts: list[torch.Tensor], ends: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """The gradient at each of ``starts`` of a random projection of ``ends``, all tensors of the train
        trace: a backward pass through the part of the graph between them only (for redundant-bias, from
        the BatchNorms back to the biased layers), not through the whole model. A backward that fails
        is a note, and None for every start."""
        self.read.add(Pass.GRADIENTS)
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
                              f"{reason}")

    @property
    def eval_trace(self) -> Trace:
        """The model after its own ``eval()``, traced without gradients."""
        self.read.add(Pass.EVAL)  # a rule that reads it without declaring it is judged as if it had
        if "eval" not in self._cache:
            with torch.no_grad(), same_randomness(self.example):  # see eval_output_of_first_sample
                inputs, kwargs = self.fresh_inputs()
                self._cache["eval"] = run_trace(
                    self.model,
                    inputs,
                    self.modules,
                    kwargs=kwargs,
                    save_inputs=_PROBED,
                    before=lambda: self.model.eval(),
                    only=frozenset({LayerKind.BATCH_NORM, LayerKind.DROPOUT}),
                )
        return cast(Trace, self._cache["eval"])

    def eval_output_of_first_sample(self) -> Any:
        """The eval-mode output for the first sample alone (to test batch independence)."""
        self.read.add(Pass.ONE_SAMPLE)  # compared with the eval output: partial_reason says when it cannot be
        return self._first_sample_output()

    def _first_sample_output(self) -> Any:
        if "single" not in self._cache:
            args, kwargs = first_sample(self.fresh_inputs(), self.batch_size)
            self.model.eval()
            try:
                # the eval pass's random numbers: a layer that draws them per sample even in eval mode
                # (FractionalMaxPool2d) gives the first sample the same draws in both passes
                with torch.no_grad(), same_randomness(self.example), guarding_writes():
                    self._cache["single"] = self.model(*args, **kwargs)
            except Exception as exc:  # a batch of one may fail where batch statistics are used
                self._cache["single"] = exc
        return self._cache["single"]

    def first_sample_failure(self) -> Trace | None:
        """When the eval forward of the first sample alone raises: that pass again, traced, to find the
        op that assumed the batch size. None when it runs (nothing is read for a verdict)."""
        if self.batch_size < 2:
            return None
        if not isinstance(self._first_sample_output(), Exception):
            return None
        if "single-trace" not in self._cache:
            args, kwargs = first_sample(self.fresh_inputs(), self.batch_size)
            with torch.no_grad(), same_randomness(self.example):
                self._cache["single-trace"] = run_trace(self.model, args, self.modules, kwargs=kwargs,
                                                        before=lambda: self.model.eval())
        return cast(Trace, self._cache["single-trace"])

    # -- what each pass gives the rules ----------------------------------------------------------
    def require(self, need: Pass) -> None:
        """Run the pass ``need`` if it has not run yet. A train or eval forward that raised still gives its
        ops up to the failure, and the rules read those (:meth:`partial_reason` then says what they
        missed); a pass with nothing to give raises :class:`NotChecked` with the reason."""
        if need is Pass.TRAIN:
            _ = self.train_trace
        elif need is Pass.EVAL:
            _ = self.eval_trace
        elif need is Pass.GRADIENTS:
            self._require_gradients()
        elif need is Pass.ONE_SAMPLE:
            single = self.eval_output_of_first_sample()
            if isinstance(single, Exception):
                raise NotChecked(f"forward raises on a batch of one sample in eval mode: {_error_text(single)}")

    def _train_failure(self) -> str | None:
        """Why the train forward did not run to its end, if it did not."""
        trace = self.train_trace
        if trace.error is None:
            return None
        last = self.diagnoses[-1] if self.diagnoses else None
        if last is not None and last.repair is None:
            finding = last.finding
            return (f"forward stops at {finding.module or self.model_name}, where {finding.rule} explains why "
                    f"({finding.message})")
        repaired = "; ".join(d.repair.what for d in self.diagnoses if d.repair is not None)
        return f"{'checked ' + repaired + ', but then ' if repaired else ''}forward raises {_error_text(trace.error)}"

    def _require_gradients(self) -> None:
        failure = self._train_failure()
        if failure is not None:
            raise NotChecked(f"{failure}, so no backward pass can run")
        outputs = _leaves(self.train_trace.output)
        if not outputs:
            raise NotChecked(f"{self.model_name}.forward returns {_describe(self.train_trace.output)}, not a "
                             "tensor: no training step can take gradients of it")
        if not any(t.requires_grad for t in outputs):
            raise NotChecked(f"the output of {self.model_name}.forward carries no gradient "
                             f"({self._why_no_gradient(outputs)}), so no layer before it would ever train")
        if self.backward_error is not None:
            raise NotChecked(f"the backward pass fails: {self.backward_error}")

    def _why_no_gradient(self, outputs: list[torch.Tensor]) -> str:
        """What cut the gradient off, as far as the tensors tell: the student must know where to look."""
        if any(t.is_inference() for t in outputs):
            return "forward runs under torch.inference_mode()"
        trainable = any(p.requires_grad for p in self.model.parameters())
        float_input = any(t.is_floating_point() for t in _leaves((self.inputs, self.kwargs)))
        if not trainable:
            input_note = "" if float_input else f", and its input is a {self.example.dtype} tensor"
            return f"no parameter of {self.model_name} requires grad{input_note}"
        return "forward runs under torch.no_grad(), or detaches its result"

    def require_finite(self, needs: frozenset[Pass]) -> None:
        """Raise :class:`NotChecked` when a value the probes would compare holds NaN or Inf."""
        found = self.non_finite(needs)
        if found is not None:
            raise NotChecked(f"{found}: numeric probes cannot compare outputs computed from NaN or Inf")

    def partial_reason(self, needs: frozenset[Pass]) -> str | None:
        """Why the rules saw only part of the passes in ``needs``, if they did."""
        if "train" not in self._cache:
            return None
        failure = self._train_failure()
        reasons = [f"{failure}; the rules saw only the part of forward before it" if failure else None]
        if self.train_trace.truncated:
            reasons.append(f"{self.model_name}.forward ran more ops than cnncheck records ({tracing.MAX_NODES:,} ops "
                           f"or {tracing.MAX_KEPT_BYTES >> 30} GiB of their outputs); the rules saw only the part "
                           f"before that")
        if Pass.EVAL in needs and self.train_trace.error is None and self.eval_trace.error is not None:
            reasons.append(f"forward raises in eval mode: {_error_text(self.eval_trace.error)}; the rules saw only "
                           f"the part of the eval forward before it")
        if Pass.ONE_SAMPLE in needs:
            reasons.append(self._unbatched_output())
        return "; ".join(r for r in reasons if r) or None

    def _unbatched_output(self) -> str | None:
        """Why one sample's eval output alone cannot be compared with its row of the batch's output: forward
        returns no tensor whose first dim is the batch (None, a string, a scalar loss)."""
        if self.batch_size < 2:
            return None  # a batch of one: the comparison was never made
        output = (self.eval_trace if "eval" in self._cache else self.train_trace).output
        if any(t.dim() and t.shape[0] == self.batch_size for t in _leaves(output)):
            return None
        return (f"{self.model_name}.forward returns {_describe(output)}, with no batch of {self.batch_size} "
                f"samples first, so cnncheck cannot compare one sample's eval output with its output in the batch")

    # -- values the numeric probes compare ---------------------------------------------------------
    def non_finite(self, needs: frozenset[Pass]) -> str | None:
        """What holds NaN or Inf among the values that the numeric probes compare: the parameters and
        buffers, the example input, else (made by forward from finite values) a probed layer's input or the
        model's output, in the train pass and, for rules in ``needs`` of it, the eval pass. NaN compares
        equal to NaN in :func:`cnncheck.probes.mismatch` and never above a tolerance, so a probe on such
        values passes or fails by accident. The first time it is found, a note for the report."""
        found = self.given_non_finite or self.memo("non-finite", self._non_finite_forward)
        if found is None and Pass.EVAL in needs and self.eval_trace.error is None:
            found = self.memo("non-finite-eval", self._non_finite_eval_output)
        if found is not None:
            note = (f"{found}: cnncheck's numeric probes cannot compare outputs computed from NaN or Inf, so the "
                    f"rules that rest on them are not checked; find where the values come from (a training run "
                    f"that diverged, an init or a forward that divides by zero or takes the log of a negative "
                    f"number) and check again")
            if note not in self.notes:
                self.notes.append(note)
        return found

    def _non_finite_tensors(self, kind: str) -> str | None:
        """The first ``kind`` ("_parameters" or "_buffers") that hold NaN or Inf, named as in
        ``named_parameters()``; one batched pass decides whether any does, before the names are looked for."""
        if _all_finite([t for m in self.modules for t in getattr(m, kind).values()]):
            return None
        found: list[str] = []
        seen: set[int] = set()
        for module, info in self.modules.items():
            for name, t in getattr(module, kind).items():
                if t is None or id(t) in seen:
                    continue
                seen.add(id(t))
                count = _non_finite_count(t)
                if count is not None:
                    found.append(f"{info.name + '.' if info.name else ''}{name} holds {count}")
        if len(found) > 3:
            found[3:] = [f"{len(found) - 3} more tensors too"]
        return ", ".join(found) or None

    def _non_finite_inputs(self) -> str | None:
        named = [(f"argument {i + 1} of forward", a) for i, a in enumerate(self.inputs)]
        named += [(f"keyword argument {k!r} of forward", a) for k, a in self.kwargs.items()]
        one = len(_leaves((self.inputs, self.kwargs))) == 1
        for label, arg in named:
            count = next((c for t in _leaves(arg) if (c := _non_finite_count(t)) is not None), None)
            if count is not None:
                return f"{'the example input' if one else 'the example input, ' + label + ','} holds {count}"
        return None

    def _non_finite_forward(self) -> str | None:
        """A parameter that holds NaN or Inf, else a value forward made from finite ones: the input of a layer that a probe re-runs (it reads that
        input), or the output (compared sample by sample); then the op that first made one. The layers'
        inputs are searched only when the output is not finite: NaN and Inf pass through activations,
        pools, norms and Linears to it, and scanning every activation would cost a check more than the
        rare forward that cleans them up before returning (``nan_to_num``) is worth."""
        trace = self.train_trace
        if trace.error is None and _all_finite(_leaves(trace.output)):
            return None  # a NaN inside forward reaches the output (ReLU, pooling and norms keep it): done
        given = self._non_finite_tensors("_parameters")
        if given is not None:
            return given
        for node in trace.nodes:
            x = node.probe_input if node.module is not None and node.kind in _PROBED else None
            count = _non_finite_count(x) if x is not None else None
            if count is not None:
                return f"the input of {self._label(node)} holds {count}{self._first_made(trace.nodes)}"
        count = next((c for t in _leaves(trace.output) if (c := _non_finite_count(t)) is not None), None)
        if count is not None:
            return f"the output of {self.model_name}.forward holds {count}{self._first_made(trace.nodes)}"
        return None

    def _non_finite_eval_output(self) -> str | None:
        count = next((c for t in _leaves(self.eval_trace.output) if (c := _non_finite_count(t)) is not None), None)
        return f"in eval mode the output of {self.model_name}.forward holds {count}" if count is not None else None

    def _first_made(self, nodes: list[Node]) -> str:
        """', first made by log at net.py:12': the first op (inside a layer if it is one) whose output is
        not finite, so the student knows which line to read."""
        for node in nodes:
            if any(_non_finite_count(t) is not None for t in node.outputs):
                return self._first_made(node.inner) or f", first made by {self._label(node)}"
        return ""

    def _label(self, node: Node) -> str:
        if node.module is not None:
            return f"{self.name_of(node.module) or self.model_name} ({type(node.module).__name__})"
        return f"{node.func_name} at {node.location}" if node.location else node.func_name

    # -- checking past a diagnosed failure -------------------------------------------------------
    def explained_failure(self, diagnosis: Diagnosis) -> None:
        self.diagnoses.append(diagnosis)
        if diagnosis.repair is not None:
            finding = diagnosis.finding
            self.notes.append(f"{finding.rule}: {finding.message}; the other rules checked the rest of forward "
                              f"{diagnosis.repair.what}")

    def repair(self, repair: Repair) -> None:
        """From now on, run every pass with the input of the call that ``repair`` names fitted to the size
        it expects."""
        self._repairs.add(repair)
        self._cache.clear()
        self.backward_error = None

    def remove_repairs(self) -> None:
        self._repairs.remove()

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


def _describe(value: Any) -> str:
    """What forward returned, as a student would write it: None, a str ('done'), a tensor of shape ()."""
    if value is None:
        return "None"
    if isinstance(value, str):
        return f"a str ({value[:40]!r})"
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def _checkable(t: torch.Tensor | None) -> bool:
    return (t is not None and not t.is_meta and t.layout is torch.strided and t.is_floating_point()
            and t.numel() > 0)


def _all_finite(tensors: Iterable[torch.Tensor | None]) -> bool:
    """Whether every float tensor is finite, in one fused norm per device and dtype rather than a check
    per tensor (a timm model has hundreds). False also when a norm overflows: the caller then counts."""
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in tensors:
        if _checkable(t):
            groups.setdefault((t.device, t.dtype), []).append(t.detach())  # type: ignore[union-attr]
    with torch.no_grad():
        return all(bool(torch.isfinite(torch.stack(torch._foreach_norm(group, 1))).all()) for group in groups.values())


def _non_finite_count(t: torch.Tensor) -> str | None:
    """'3 NaN', '2 Inf' or '3 NaN and 2 Inf' for a tensor that holds such values, else None."""
    if not _checkable(t):
        return None
    with torch.no_grad():
        if bool(torch.isfinite(t.sum())):  # a NaN or Inf anywhere makes the sum one; the sum allocates nothing
            return None
        nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
    if not nan and not inf:
        return None  # finite values whose sum overflows
    return " and ".join(part for part in (f"{nan} NaN" if nan else "", f"{inf} Inf" if inf else "") if part)


def _requires_grad(value: Any) -> Any:
    """A float input as an interior node of the graph: gradients reach it, and forward may still change it
    in place (``x.relu_()`` is legal on a batch, not on a leaf that requires grad)."""
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.detach().requires_grad_(True).clone()
    return value


def _error_text(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    where = traceback_location(exc)
    return f"{type(exc).__name__}: {message}" + (f" (at {where})" if where else "")


def first_call(trace: Trace, module: nn.Module) -> Node | None:
    return next((n for n in trace.nodes if n.module is module), None)
