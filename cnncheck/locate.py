"""Where a layer was built: ``file:line`` of the assignment in the user's ``__init__``.

Found from the source of the parent module's class: ``self.conv1 = nn.Conv2d(...)`` gives the line;
a child of ``nn.Sequential(...)`` or of a list literal gives the line of its own argument.
"""

from __future__ import annotations

import ast
import functools
import inspect
import os
import re
import textwrap
from typing import Any, cast

import torch
from torch import nn

_TORCH_DIR = os.path.dirname(torch.__file__)
_STEP = re.compile(r"\.?([^.\[]+)|\[([^\]]+)\]")


def creation_site(model: nn.Module, qualname: str) -> str | None:
    """``file:line`` where the layer named ``qualname`` (as cnncheck names it) was created."""
    try:
        site = _site(model, _steps(qualname))
    except Exception:  # source unavailable (REPL, zipped module): the location is optional
        return None
    return f"{site[0]}:{cast('ast.stmt | ast.expr', site[1]).lineno}" if site else None


def _steps(qualname: str) -> list[str]:
    return [m.group(1) or m.group(2) for m in _STEP.finditer(qualname) if m.group(0)]


def _site(root: nn.Module, steps: list[str]) -> tuple[str, ast.AST] | None:
    if not steps:
        return None
    parent = root
    for step in steps[:-1]:
        parent = _child(parent, step)
    last = steps[-1]
    if last.isdigit() or last.startswith(("'", '"')):
        # an element of a container: the container's own creation, then the element's argument
        container_site = _site(root, steps[:-1])
        if container_site is None:
            return None
        filename, node = container_site
        element = _element(node, last)
        return (filename, element) if element is not None else container_site
    return _assignment(type(parent), last)


def _child(module: Any, step: str) -> Any:
    if step.isdigit():
        indexable = not isinstance(module, nn.Module) or hasattr(module, "__getitem__")
        return module[int(step)] if indexable else getattr(module, step)
    if step.startswith(("'", '"')):
        return module[ast.literal_eval(step)]
    return getattr(module, step)


def _element(node: ast.AST, step: str) -> ast.AST | None:
    value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else node
    if isinstance(value, ast.Call):
        elements = list(value.args)
        if len(elements) == 1 and isinstance(elements[0], (ast.List, ast.Tuple)):
            elements = list(elements[0].elts)
    elif isinstance(value, (ast.List, ast.Tuple)):
        elements = list(value.elts)
    else:
        return None
    if step.isdigit() and not any(isinstance(e, ast.Starred) for e in elements):
        index = int(step)
        return elements[index] if index < len(elements) else None
    return None


def _assignment(cls: type, attr: str) -> tuple[str, ast.AST] | None:
    for klass in cls.__mro__:
        if klass in (nn.Module, object):
            break
        found = _class_assignments(klass).get(attr)
        if found is not None:
            return found
    return None


@functools.lru_cache(maxsize=512)
def _class_assignments(klass: type) -> dict[str, tuple[str, ast.AST]]:
    try:
        filename = inspect.getsourcefile(klass)
        lines, start = inspect.getsourcelines(klass)
    except (OSError, TypeError):
        return {}
    if filename is None:
        return {}
    tree = ast.parse(textwrap.dedent("".join(lines)))
    ast.increment_lineno(tree, start - 1)
    found: dict[str, tuple[str, ast.AST]] = {}
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        for target in targets:
            if (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id == "self"
                and target.attr not in found
            ):
                found[target.attr] = (filename, node)
    return found


def call_in_function(locations: list[str], names: tuple[str, ...]) -> str | None:
    """``file:line`` of a call to one of ``names`` (``is_grad_enabled``) in a function that ran one of
    the ops at ``locations`` (``file:line`` each): the line that decides what those ops do."""
    for location in dict.fromkeys(locations):
        filename, _, line = location.rpartition(":")
        if not line.isdigit():
            continue
        tree = _parsed(filename)
        if tree is None:
            continue
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if not func.lineno <= int(line) <= (func.end_lineno or func.lineno):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Call):
                    callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                    if callee in names:
                        return f"{filename}:{node.lineno}"
    return None


@functools.lru_cache(maxsize=64)
def _parsed(filename: str) -> ast.AST | None:
    try:
        with open(filename, encoding="utf-8") as source:
            return ast.parse(source.read())
    except (OSError, SyntaxError, ValueError):
        return None
