"""Numeric comparison with the ``torch.nn.functional`` references, and what every probe shares.

A probe runs one layer alone, on the input it received in the traced forward or on a synthetic input
of its shape, always on a private copy (:func:`private_copy`) so that its buffers can be set to telling
values and the model's stay as they are. What a BatchNorm must do lives beside the BN rules
(``cnncheck.checks.batchnorm_semantics``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True, slots=True)
class Mismatch:
    """How two tensors differ, in the style of ``torch.testing.assert_close``."""

    count: int
    total: int
    worst: float
    index: tuple[int, ...]
    expected: float
    found: float
    rtol: float
    atol: float

    def __str__(self) -> str:
        idx = ", ".join(str(i) for i in self.index)
        return (
            f"{self.count} of {self.total} elements differ; worst at [{idx}]: "
            f"expected {self.expected:.6g}, found {self.found:.6g} (|diff| {self.worst:.3g}, "
            f"rtol {self.rtol:g}, atol {self.atol:g})"
        )


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) for comparing a layer with its functional reference, scaled to the dtype."""
    return {
        torch.float64: (1e-7, 1e-9),
        torch.float32: (1e-4, 1e-5),
        torch.bfloat16: (2e-2, 2e-2),
        torch.float16: (5e-3, 5e-3),
    }.get(dtype, (1e-4, 1e-5))


def mismatch(found: torch.Tensor, expected: torch.Tensor, scale: float | torch.Tensor = 1.0,
             whole: bool = False) -> Mismatch | None:
    """None when ``found`` matches ``expected`` within the dtype's tolerance (times ``scale``).

    ``whole=True`` measures every element against the largest magnitude of ``expected`` (atol =
    rtol * max|expected|): right for a model's output, whose scale can be anything from 1e-5 to 1e10.
    """
    if found.shape != expected.shape:
        return Mismatch(found.numel(), expected.numel(), float("inf"), (), float("nan"), float("nan"), 0, 0)
    rtol, atol = tolerance(found.dtype)
    if isinstance(scale, torch.Tensor):  # a per-element atol scale; rtol stays as it is
        atol = atol * scale.detach().double().to(found.device)  # type: ignore[assignment]
    else:
        rtol, atol = rtol * scale, atol * scale
    f64, e64 = found.detach().double(), expected.detach().double()
    if whole:
        atol = rtol * float(e64.abs().max()) if e64.numel() else atol
    diff = (f64 - e64).abs()
    bad = diff > atol + rtol * e64.abs()
    bad |= torch.isnan(f64) != torch.isnan(e64)
    count = int(bad.sum())
    if count == 0:
        return None
    flat = int(torch.where(bad, diff.nan_to_num(float("inf")), -1.0).argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), found.shape))
    return Mismatch(count, found.numel(), float(diff.reshape(-1)[flat]), index,
                    float(e64.reshape(-1)[flat]), float(f64.reshape(-1)[flat]), rtol, atol)


@contextmanager
def same_randomness(x: torch.Tensor) -> Iterator[None]:
    """The same random numbers (dropout masks, if a layer draws any) in every probe call on ``x``'s
    device; the caller's RNG state comes back afterwards."""
    with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
        torch.manual_seed(11)
        yield




def private_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` for a probe to run and change. Tensors that are not graph leaves (a running
    statistic updated with its autograd history, as in a BatchNorm whose update forgot ``detach``) are
    copied detached: ``copy.deepcopy`` refuses them."""
    memo: dict[int, Any] = {}
    for sub in module.modules():
        for value in [*vars(sub).values(), *sub._buffers.values()]:
            if isinstance(value, torch.Tensor) and not value.is_leaf:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(module, memo)
