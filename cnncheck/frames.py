"""Where a call comes from: the user's own frame of an op, of an exception, or the torch layer whose
``forward`` made a functional call. The tracer asks on every op, so whether a code object is the
user's is decided once per code object."""

from __future__ import annotations

import os
import sys
import weakref
from types import CodeType
from typing import Any

import torch
from torch import nn

from cnncheck.layers import from_torch

_TORCH_DIR = os.path.dirname(torch.__file__)
_CNNCHECK_DIR = os.path.dirname(__file__)
_SKIP_DIRS = (_TORCH_DIR, _CNNCHECK_DIR, os.path.dirname(os.__file__))
_USER_CODE: weakref.WeakKeyDictionary[CodeType, bool] = weakref.WeakKeyDictionary()  # code of unloaded models goes


def is_user_code(code: CodeType) -> bool:
    """Code outside torch, cnncheck and the standard library."""
    known = _USER_CODE.get(code)
    if known is None:
        filename = code.co_filename
        known = _USER_CODE[code] = not filename.startswith(_SKIP_DIRS) and not filename.startswith("<frozen")
    return known


def function_name(func: Any) -> str:
    name = getattr(func, "__name__", None) or repr(func)
    if name == "__get__":
        owner = getattr(func, "__self__", None)
        name = getattr(owner, "__name__", name)
    return str(name)


def user_location() -> str | None:
    """``file:line`` of the innermost frame outside torch, cnncheck and the standard library."""
    frame = sys._getframe(1)
    while frame is not None:
        if is_user_code(frame.f_code):
            return f"{frame.f_code.co_filename}:{frame.f_lineno}"
        frame = frame.f_back  # type: ignore[assignment]
    return None


_MODULE_CALL = os.path.join(_TORCH_DIR, "nn", "modules", "module.py")


def module_call_site() -> str | None:
    """``file:line`` of the code that called the module whose forward hook is running, when that code is
    the user's; None when torch's own code made the call (an ``nn.Sequential`` running its children: each
    call is then a place of its own, not a line run again)."""
    frame = sys._getframe(1)
    while frame is not None and (frame.f_code.co_filename == _MODULE_CALL
                                 or frame.f_code.co_filename.startswith(_CNNCHECK_DIR)):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None or not is_user_code(frame.f_code):
        return None
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def calling_torch_module(known: dict[nn.Module, Any]) -> nn.Module | None:
    """The torch module whose ``forward`` made the current functional call, when it is not one of
    ``known``: a layer built inside ``forward`` (``nn.Dropout(0.5)(x)``), new on every call."""
    frame = sys._getframe(1)
    while frame is not None:
        if is_user_code(frame.f_code):
            return None  # reached the student's code without passing through a torch module
        owner = frame.f_locals.get("self") if frame.f_code.co_filename.startswith(_TORCH_DIR) else None
        if isinstance(owner, nn.Module) and from_torch(owner):
            return None if owner in known else owner
        frame = frame.f_back  # type: ignore[assignment]
    return None


def calling_module_name(known: dict[nn.Module, Any]) -> str:
    """The name of the innermost module of ``known`` whose code is running (its ``self``): for a pass
    that does not hook every module."""
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self") if "self" in frame.f_code.co_varnames else None
        info = known.get(owner) if isinstance(owner, nn.Module) else None
        if info is not None:
            return str(info.name)
        frame = frame.f_back  # type: ignore[assignment]
    return ""


def traceback_location(exc: BaseException | None) -> str | None:
    """``file:line`` of the deepest frame of ``exc``'s traceback that is the user's own code."""
    if exc is None:
        return None
    found = None
    tb = exc.__traceback__
    while tb is not None:
        if is_user_code(tb.tb_frame.f_code):
            found = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    return found
