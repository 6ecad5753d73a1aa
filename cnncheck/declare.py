"""``@cnncheck.model(...)``: declare a model class or factory to check, with its input shape."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

MARK = "__cnncheck__"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    input_shape: tuple[int, ...] | None = None
    ignore: tuple[str, ...] = ()


def model(input_shape: Sequence[int] | None = None, *, ignore: Sequence[str] = ()) -> Any:
    """Mark an ``nn.Module`` subclass or a factory function as a model for cnncheck to check.

    >>> @cnncheck.model(input_shape=(4, 1, 28, 28))
    ... class ConvNet(nn.Module): ...
    """

    def mark(target: T) -> T:
        setattr(target, MARK, ModelSpec(tuple(input_shape) if input_shape else None, tuple(ignore)))
        return target

    return mark


def spec_of(target: Any) -> ModelSpec | None:
    return getattr(target, MARK, None) if MARK in getattr(target, "__dict__", {}) else None
