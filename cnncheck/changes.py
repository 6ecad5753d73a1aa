"""The change to the source that a finding asks for, as plain data a rule computes where it sees the model.

A rule knows what is wrong in numbers (the stride that would give the map fc1 expects, the call whose
``training`` argument is fixed) but not the text of the file. It attaches a :class:`Change` to its
finding; :mod:`cnncheck.fixes`, in the process that runs ``cnncheck check`` or pytest, locates the
change in the file with libcst and turns it into a :class:`~cnncheck.fixes.Fix`, or says why it cannot.
A change that comes from a sandboxed worker is a request, never an edit: it names a call or a class,
and is applied only where it is found exactly, in the files of the submission that sent it.

This module imports neither torch nor libcst: the pytest plugin and the reports read changes back.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cnncheck.locate import Site

_FUNCTIONAL_POSITIONS = {  # where torch.nn.functional takes these arguments: its builtins and dispatchers
    # (conv2d; max_pool2d, which dispatches on return_indices) have no signature to read
    ("conv1d", "stride"): 3, ("conv2d", "stride"): 3, ("conv3d", "stride"): 3,
    ("conv1d", "padding"): 4, ("conv2d", "padding"): 4, ("conv3d", "padding"): 4,
    ("avg_pool1d", "stride"): 2, ("avg_pool2d", "stride"): 2, ("avg_pool3d", "stride"): 2,
    ("avg_pool1d", "padding"): 3, ("avg_pool2d", "padding"): 3, ("avg_pool3d", "padding"): 3,
    ("max_pool1d", "stride"): 2, ("max_pool2d", "stride"): 2, ("max_pool3d", "stride"): 2,
    ("max_pool1d", "padding"): 3, ("max_pool2d", "padding"): 3, ("max_pool3d", "padding"): 3,
}


@dataclass(frozen=True, slots=True)
class ArgumentChange:
    """Set the argument ``keyword`` (or the ``position``-th positional one) of the call to a name ending
    in ``callee`` that starts on the line ``location`` (``file:line``) to ``value``, Python source.
    A current value that is a constant (``True``, ``5``, ``7 * 7 * 64``) is replaced; one computed from
    names is left alone, since other calls may share it. ``layer``: the qualified name of the layer the
    call built, when it builds one (in ``__init__``): every layer that call builds must then ask for the
    same change; "" for a call in forward."""

    location: str
    callee: str
    keyword: str
    position: int | None
    value: str
    description: str
    safe: bool = True
    layer: str = ""
    column: int | None = None  # where the call starts on its line (0-based characters), when known
    kind: str = "argument"

    @property
    def site(self) -> str:
        """The call's place: ``file:line``, and ``:column`` when known."""
        return self.location if self.column is None else f"{self.location}:{self.column}"

    @property
    def key(self) -> str:
        return f"{self.site}:{self.callee}:{self.keyword}"


@dataclass(frozen=True, slots=True)
class RegisterChange:
    """Wrap the plain list (``container="list"``) or dict that ``class_name``'s methods assign to
    ``self.<attribute>`` in ``nn.ModuleList`` / ``nn.ModuleDict``; ``location`` is ``file:line`` of the
    class. The rule that asks has checked that every item is a module (and every key a name
    ``nn.ModuleDict`` accepts)."""

    location: str
    class_name: str
    attribute: str
    container: str
    description: str
    safe: bool = True
    kind: str = "register"

    @property
    def key(self) -> str:
        return f"{self.location}:{self.class_name}.{self.attribute}"


@dataclass(frozen=True, slots=True)
class NoFix:
    """A finding its rule knows it cannot fix, and why: ``--fix`` and ``--diff`` say so instead of nothing.
    ``location`` is the finding's ``file:line``, or "" when it has none."""

    location: str
    reason: str
    kind: str = "none"

    @property
    def key(self) -> str:
        return f"{self.location}:none"


Change = ArgumentChange | RegisterChange | NoFix


def change_from_dict(data: Mapping[str, Any] | None) -> Change | None:
    """A change read back from JSON; None for anything that is not one. A worker's message is untrusted,
    and a value is source code written into a file: only the values cnncheck's rules ask for pass
    (``False``, ``True``, ``self.training``, a whole number), and names must be identifiers."""
    if not isinstance(data, Mapping):
        return None
    kind = data.get("kind")
    try:
        if kind == "argument":
            change: Change = ArgumentChange(
                _text(data, "location"), _name(data, "callee"), _name(data, "keyword"), _index(data, "position"),
                _value(data), _text(data, "description"), data.get("safe") is True, _text(data, "layer", ""),
                _index(data, "column"))
        elif kind == "none":
            change = NoFix(_text(data, "location"), _text(data, "reason"))
        elif kind == "register" and data.get("container") in ("list", "dict"):
            change = RegisterChange(_text(data, "location"), _name(data, "class_name"), _name(data, "attribute"),
                                    str(data["container"]), _text(data, "description"), data.get("safe") is True)
        else:
            return None
    except (KeyError, ValueError):
        return None
    return change


_VALUE = re.compile(r"(False|True|self\.training|\d{1,9})")


def _text(data: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise ValueError(key)
    return value


def _index(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _name(data: Mapping[str, Any], key: str) -> str:
    value = _text(data, key)
    if not value.isidentifier():
        raise ValueError(key)
    return value


def _value(data: Mapping[str, Any]) -> str:
    value = _text(data, "value")
    if not _VALUE.fullmatch(value):
        raise ValueError("value")
    return value


def layer_argument(layer_class: type, name: str, keyword: str, value: str, site: Site | None,
                   description: str, *, safe: bool = True) -> ArgumentChange | None:
    """The change of ``keyword`` at the call that built the layer ``name``, of ``layer_class``, with the argument's
    position read from the class's own ``__init__``; None when that ``__init__`` takes no such argument
    (a hand-written subclass with a signature of its own) or the layer's line is unknown."""
    if site is None:
        return None
    try:
        parameters = list(inspect.signature(layer_class).parameters.values())  # its __init__, without self
    except (TypeError, ValueError):
        return None
    position = _position(parameters, keyword)
    if position is None and not any(p.name == keyword for p in parameters):
        return None
    return ArgumentChange(site.location, layer_class.__name__, keyword, position, value, description, safe,
                          layer=name, column=site.column)


def call_argument(function: Any, name: str, keyword: str, value: str, location: str | None, description: str,
                  *, position: int | None = None, safe: bool = True) -> ArgumentChange | None:
    """The change of ``keyword`` in a functional call (``F.dropout(x, p)``), positioned by ``function``'s
    signature, or by ``position`` where a builtin has none."""
    if location is None:
        return None
    try:
        found = _position(list(inspect.signature(function).parameters.values()), keyword)
    except (TypeError, ValueError):
        found = None
    position = found if found is not None else position if position is not None else _FUNCTIONAL_POSITIONS.get(
        (name, keyword))
    if position is None:
        return None
    return ArgumentChange(location, name, keyword, position, value, description, safe)


def _position(parameters: list[inspect.Parameter], keyword: str) -> int | None:
    """The index of ``keyword`` among the parameters that may be passed by position."""
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    for index, parameter in enumerate(parameters):
        if parameter.kind not in positional:
            return None
        if parameter.name == keyword:
            return index
    return None
