"""Running forward as if a diagnosed defect were fixed, so that the rules check the layers after it.

A :class:`~cnncheck.rules.Repair` names one call: a layer (its first input is fitted by a forward
pre-hook), every ``F.linear`` with a given weight, or the reshape at one line of the student's code
(both fitted by a :class:`~torch.overrides.TorchFunctionMode`). Either stays in place for every later
pass, traced or not, until :meth:`Repairs.remove`."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from cnncheck.frames import function_name, user_location
from cnncheck.rules import Repair

_REPAIRED = "_cnncheck_repaired"


def fitted(x: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """``x`` cut, or padded with zeros, to ``size`` along ``dim`` (marked: see :func:`is_repaired`)."""
    have = int(x.shape[dim])
    if have >= size:
        out = x.narrow(dim, 0, size)
    else:
        after = x.dim() - 1 - dim % x.dim()
        out = torch.nn.functional.pad(x, [0, 0] * after + [0, size - have])
    setattr(out, _REPAIRED, True)
    return out


def is_repaired(t: torch.Tensor) -> bool:
    """Whether ``t`` is cnncheck's own fitted input, not a tensor the student's forward made."""
    return bool(getattr(t, _REPAIRED, False))


class _FittedCalls(TorchFunctionMode):
    """Fits the input of the functional calls that repairs name: ``F.linear`` by its weight, a reshape by
    the ``file:line`` that calls it (its input becomes ``(N, size)``, one row of features per sample)."""

    def __init__(self) -> None:
        super().__init__()
        self.weights: dict[int, tuple[torch.Tensor, int]] = {}
        self.reshapes: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if args and isinstance(args[0], torch.Tensor) and args[0].dim() >= 1:
            name = function_name(func)
            size: int | None
            if name == "linear" and len(args) > 1 and id(args[1]) in self.weights:
                weight, size = self.weights[id(args[1])]
                if args[1] is weight:
                    args = (fitted(args[0], -1, size), *args[1:])
            elif name in ("view", "reshape") and self.reshapes and args[0].dim() >= 2:
                size = self.reshapes.get(user_location() or "")
                if size is not None:
                    args = (fitted(args[0].flatten(1), -1, size), *args[1:])
        return func(*args, **kwargs)


class Repairs:
    """The repairs in place for one check."""

    def __init__(self) -> None:
        self._hooks: list[Any] = []
        self._calls: _FittedCalls | None = None

    def add(self, repair: Repair) -> None:
        if repair.module is not None:
            self._hooks.append(repair.module.register_forward_pre_hook(_fit_first_input(repair)))
            return
        if self._calls is None:
            self._calls = _FittedCalls()
            self._calls.__enter__()  # type: ignore[no-untyped-call]  # left by remove(), after the last pass
        if repair.weight is not None:
            self._calls.weights[id(repair.weight)] = (repair.weight, repair.size)
        if repair.reshape_at is not None:
            self._calls.reshapes[repair.reshape_at] = repair.size

    def remove(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        if self._calls is not None:
            self._calls.__exit__(None, None, None)  # type: ignore[no-untyped-call]
            self._calls = None


def _fit_first_input(repair: Repair) -> Any:
    def fit(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if not args or not isinstance(args[0], torch.Tensor) or args[0].dim() == 0:
            return None
        return (fitted(args[0], repair.dim, repair.size), *args[1:])

    return fit
