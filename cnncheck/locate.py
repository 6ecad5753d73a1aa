"""Where a layer was built: ``file:line`` of the assignment in the user's ``__init__``.

Found from the source of the parent module's class: ``self.conv1 = nn.Conv2d(...)`` gives the line;
a child of ``nn.Sequential(...)`` or of a list literal gives the line of its own argument.
"""

from __future__ import annotations

import ast
import functools
import inspect
import linecache
import os
import re
import textwrap
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

_TORCH_DIR = os.path.dirname(torch.__file__)
_STEP = re.compile(r"\.?([^.\[]+)|\[([^\]]+)\]")


@dataclass(frozen=True, slots=True)
class Site:
    """Where a layer was built: its file and line, and the column (0-based, in characters) where the
    call that built it starts, when it is one (two layers built on one line differ there)."""

    file: str
    line: int
    column: int | None = None

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}"


def creation_site(model: nn.Module, qualname: str) -> str | None:
    """``file:line`` where the layer named ``qualname`` (as cnncheck names it) was created."""
    site = creation_position(model, qualname)
    return site.location if site is not None else None


def creation_position(model: nn.Module, qualname: str) -> Site | None:
    """The :class:`Site` where the layer named ``qualname`` was created."""
    try:
        found = _site(model, _steps(qualname))
    except Exception:  # source unavailable (REPL, zipped module): the location is optional
        return None
    if found is None:
        return None
    filename, node = found
    node = _through_helper(filename, node)
    call = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else node
    line = cast("ast.stmt | ast.expr", node).lineno
    if not isinstance(call, ast.Call) or call.lineno != line:
        return Site(filename, line)
    text = linecache.getline(filename, line).encode("utf-8")  # ast's columns count UTF-8 bytes
    return Site(filename, line, len(text[:call.col_offset].decode("utf-8", errors="replace")))


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
        element = _element(_through_helper(filename, node), last)
        return (filename, element) if element is not None else container_site
    found = _assignment(type(parent), last, getattr(parent, last, None))
    if found is None and isinstance(parent, (nn.Sequential, nn.ModuleDict)) and len(steps) > 1:
        # nn.Sequential(OrderedDict([("conv1", nn.Conv2d(...)), ...])): a named element of the container's call
        container_site = _site(root, steps[:-1])
        element = _named_element(container_site[1], last) if container_site is not None else None
        return (container_site[0], element) if container_site is not None and element is not None else None
    return found


def _through_helper(filename: str, node: ast.AST) -> ast.AST:
    """The call that a function of the same file returns, when ``node`` calls it (``self.layer1 =
    conv_bn(1, 8)``, with ``def conv_bn(...): return nn.Sequential(nn.Conv2d(...), ...)``): the layers are
    built there. A helper with several returns, or none that is a call, leaves ``node`` as it is."""
    for _ in range(3):  # a helper that calls a helper
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else node
        if not isinstance(value, ast.Call) or not isinstance(value.func, ast.Name):
            return node
        tree = _parsed(filename)
        helpers = [f for f in getattr(tree, "body", []) if isinstance(f, ast.FunctionDef) and f.name == value.func.id]
        if len(helpers) != 1:
            return node
        returned = [n.value for n in ast.walk(helpers[0]) if isinstance(n, ast.Return) and n.value is not None]
        if len(returned) != 1 or not isinstance(returned[0], ast.Call):
            return node
        node = returned[0]
    return node


def _child(module: Any, step: str) -> Any:
    if step.isdigit():
        indexable = not isinstance(module, nn.Module) or hasattr(module, "__getitem__")
        return module[int(step)] if indexable else getattr(module, step)
    if step.startswith(("'", '"')):
        return module[ast.literal_eval(step)]
    return getattr(module, step)


def _element(node: ast.AST, step: str) -> ast.AST | None:
    value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else node
    if isinstance(value, ast.Call) and len(value.args) == 1:  # nn.ModuleList(nn.Conv2d(...) for ...)
        value = value.args[0] if isinstance(value.args[0], (ast.ListComp, ast.GeneratorExp)) else value
    if isinstance(value, (ast.ListComp, ast.GeneratorExp)):  # each element is built by the same expression
        return value.elt if step.isdigit() else None
    if isinstance(value, ast.Call):
        elements = _element_nodes(value, keywords=True)
    elif isinstance(value, (ast.List, ast.Tuple)):
        elements = None if any(isinstance(e, ast.Starred) for e in value.elts) else list(value.elts)
    else:
        return None
    if elements is not None and step.isdigit():
        index = int(step)
        return elements[index] if index < len(elements) else None
    return None


def _named_element(node: ast.AST, key: str) -> ast.AST | None:
    """The expression that builds the element ``key`` of a container call given an ``OrderedDict([(key,
    layer), ...])`` or a ``{key: layer}`` literal."""
    value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else node
    if not isinstance(value, ast.Call) or len(value.args) != 1:
        return None
    given = value.args[0]
    pairs: list[tuple[ast.expr | None, ast.expr]] = []
    if isinstance(given, ast.Dict):
        pairs = list(zip(given.keys, given.values))
    elif isinstance(given, ast.Call) and len(given.args) == 1 and isinstance(given.args[0], (ast.List, ast.Tuple)):
        pairs = [(e.elts[0], e.elts[1]) for e in given.args[0].elts if isinstance(e, ast.Tuple) and len(e.elts) == 2]
    return next((v for k, v in pairs if isinstance(k, ast.Constant) and k.value == key), None)


def _assignment(cls: type, attr: str, value: Any = None) -> tuple[str, ast.AST] | None:
    """Where ``cls`` (or the nearest base that assigns it) assigns ``self.<attr>``. A class that assigns it
    more than once (the branches of an ``if``) gives the one assignment whose call builds what ``value``
    is (its class, and a Sequential's children's classes in order); when several fit, or none, there is no
    site: a wrong line would send a student, and a fix, to a layer that is fine."""
    for klass in cls.__mro__:
        if klass in (nn.Module, object):
            break
        found = _class_assignments(klass).get(attr)
        if found:
            fitting = [site for site in found if _builds(site[1], value)] if len(found) > 1 else found
            return fitting[0] if len(fitting) == 1 else None
    return None


def _builds(node: ast.AST, value: Any) -> bool:
    """Whether the assignment ``node`` may have built ``value``: a call to a class of another name did not
    (a call to a function may have); a container's elements are compared the same way, in order."""
    built = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else node
    if value is None:
        return True
    if not isinstance(built, ast.Call):  # a literal list or dict is no module; a name may hold anything
        literal = (ast.List, ast.Tuple, ast.Dict, ast.ListComp, ast.DictComp)
        return not (isinstance(built, literal) and isinstance(value, nn.Module))
    name = _callee_name(built)
    if name[:1].isupper() and name != type(value).__name__:
        return False
    elements = _element_nodes(built)
    children = list(value.children()) if isinstance(value, (nn.Sequential, nn.ModuleList)) else None
    if elements is None or children is None:
        return True
    if len(elements) != len(children):
        return False
    return all(_builds(element, child) for element, child in zip(elements, children))


def _callee_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _element_nodes(call: ast.Call, *, keywords: bool = False) -> list[ast.expr] | None:
    """A container call's elements, when they are written out (``nn.Sequential(a, b)``,
    ``nn.ModuleList([a, b])``); ``keywords``: whether keyword arguments may come with them."""
    elements = list(call.args)
    if len(elements) == 1 and isinstance(elements[0], (ast.List, ast.Tuple)):
        elements = list(elements[0].elts)
    elif len(elements) == 1 and (isinstance(elements[0], (ast.Dict, ast.ListComp, ast.GeneratorExp)) or (
            isinstance(elements[0], ast.Call) and _callee_name(elements[0]) == "OrderedDict")):
        return None  # named, or built by a loop: not one argument per element
    if (call.keywords and not keywords) or any(isinstance(e, ast.Starred) for e in elements):
        return None
    return elements


def _last_definition(filename: str, klass: type) -> ast.AST | None:
    """A module-level class defined more than once (a notebook exported cell by cell): the last
    definition, the one that runs (``inspect`` gives the first)."""
    if klass.__qualname__ != klass.__name__:
        return None
    tree = _parsed(filename)
    defined = [n for n in getattr(tree, "body", []) if isinstance(n, ast.ClassDef) and n.name == klass.__name__]
    return defined[-1] if len(defined) > 1 else None


@functools.lru_cache(maxsize=512)
def _class_assignments(klass: type) -> dict[str, list[tuple[str, ast.AST]]]:
    """Every assignment to ``self.<attr>`` in the class's source, in order, by attribute."""
    try:
        filename = inspect.getsourcefile(klass)
        lines, start = inspect.getsourcelines(klass)
    except (OSError, TypeError):
        return {}
    if filename is None:
        return {}
    tree = _last_definition(filename, klass)
    if tree is None:
        text = "".join(lines)
        tree = ast.parse(textwrap.dedent(text))
        ast.increment_lineno(tree, start - 1)
        indent = len(text) - len(text.lstrip(" \t"))  # dedent took it off every line: columns get it back
        for node in ast.walk(tree):
            for attribute in ("col_offset", "end_col_offset"):
                if isinstance(getattr(node, attribute, None), int):
                    setattr(node, attribute, getattr(node, attribute) + indent)
    found: dict[str, list[tuple[str, ast.AST]]] = {}
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        for target in targets:
            if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
                found.setdefault(target.attr, []).append((filename, node))
    for sites in found.values():
        sites.sort(key=lambda site: (getattr(site[1], "lineno", 0), getattr(site[1], "col_offset", 0)))
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
