"""``@cnncheck.model(...)``: declare a model class or factory to check, with its input shape."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

T = TypeVar("T")

MARK = "__cnncheck__"
INVARIANTS = ("params", "max_params", "min_params", "trainable_params", "output_shape", "downsampling",
              "no_kinds", "clean")
"""The invariants ``cnncheck.assert_architecture`` takes (kept here: this module must not import torch)."""


class ModelSpec(NamedTuple):
    """What ``@cnncheck.model`` recorded. (A NamedTuple: the pytest plugin imports this module at
    every pytest start, and a dataclass costs milliseconds to create.)"""

    input_shape: tuple[int, ...] | None = None
    ignore: tuple[str, ...] = ()
    variants: tuple[tuple[str, Mapping[str, Any]], ...] = ()
    invariants: tuple[tuple[str, Any], ...] = ()  # assert_architecture's keywords: the invariants item


def model(
    input_shape: Sequence[int] | None = None,
    *,
    ignore: Sequence[str] = (),
    variants: Mapping[str, Mapping[str, Any]] | None = None,
    **invariants: Any,
) -> Any:
    """Mark an ``nn.Module`` subclass or a factory function as a model for cnncheck to check.

    ``ignore`` lists rule ids not to check for this model. ``variants`` maps an id to the keyword
    arguments of one variant; each variant is checked as its own model, ``name[id]``. Any invariant
    of ``cnncheck.assert_architecture`` (``max_params=``, ``output_shape=``, ``downsampling=``,
    ``no_kinds=``, ``clean=``, ...) becomes one more pytest item, ``MODEL::invariants[device]``.

    >>> @cnncheck.model(input_shape=(4, 1, 28, 28))
    ... class ConvNet(nn.Module): ...
    >>> @cnncheck.model(input_shape=(2, 3, 32, 32), variants={"narrow": {"width": 8}, "wide": {"width": 64}})
    ... def make(width): ...
    """

    unknown = sorted(set(invariants) - set(INVARIANTS))
    if unknown:
        raise TypeError(f"cnncheck.model: unknown invariant(s) {', '.join(unknown)}; the invariants are "
                        f"{', '.join(INVARIANTS)}")

    def mark(target: T) -> T:
        spec = ModelSpec(
            tuple(input_shape) if input_shape else None,
            tuple(ignore),
            tuple((str(k), dict(v)) for k, v in (variants or {}).items()),
            tuple(invariants.items()),
        )
        setattr(target, MARK, spec)
        return target

    return mark


def spec_of(target: Any) -> ModelSpec | None:
    return getattr(target, MARK, None) if MARK in getattr(target, "__dict__", {}) else None
