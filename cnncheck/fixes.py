"""Fixes in the student's own file, computed with libcst so that comments and layout are kept.

A :class:`Fix` is plain data: the span of one file that is replaced and its replacement. Fixes are
computed by the process that runs ``cnncheck check`` or pytest (never by the sandboxed worker, whose
messages are untrusted) from the :class:`~cnncheck.changes.Change` each finding asks for, the sites where
each checked model built the layers those changes concern (:attr:`~cnncheck.results.ModelResult.layer_sites`)
and the files on disk. A change becomes a fix only where it is found exactly:

- an argument (``bias=False``, ``training=self.training``, ``stride=2``, ``in_features=576``): one call to
  the named layer or function starts on the line, its current value is a constant or absent, and, for a
  call that builds layers, every layer it built in every model checked asks for the same change (a call in
  a loop, or in a block class used with and without a BatchNorm, that also builds a layer whose bias
  matters is left alone);
- a registration: the class assigns the plain list or dict to ``self.<attribute>`` exactly once, as a
  literal or comprehension, never calls a method on it that ``nn.ModuleList``/``nn.ModuleDict`` lack, and
  the file imports ``nn`` or ``torch``.

Safe fixes keep what the model computes in train mode and repair what the rule found; unsafe ones (the
stride, padding or ``in_features`` after a feature-size mismatch, which change the architecture, and a
written ``training=False``, which changes the train pass) are applied only with ``--unsafe-fixes``. libcst is imported only when a fix is computed: the worker imports
every cnncheck module.
"""

from __future__ import annotations

import difflib
import os
import re
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnncheck.changes import ArgumentChange, Change, NoFix, RegisterChange

if TYPE_CHECKING:
    from cnncheck.findings import Finding
    from cnncheck.results import ModelResult

REDUNDANT_BIAS = "redundant-bias-before-bn"
_INSTALLED = ("site-packages", "dist-packages")
_MISSING_METHODS = {  # what a plain list or dict has and nn.ModuleList / nn.ModuleDict lack
    "list": {"clear", "copy", "count", "index", "remove", "reverse", "sort"},
    "dict": {"copy", "fromkeys", "get", "popitem", "setdefault"},
}
Allowed = Callable[["ModelResult"], "Sequence[str | os.PathLike[str]] | None"]


@dataclass(frozen=True, slots=True)
class Fix:
    """Replace the text of ``file`` from ``start_line:start_col`` up to ``end_line:end_col`` (1-based; the
    end is the position just after the last replaced character, as SARIF's regions) with ``replacement``."""

    file: str
    start_line: int
    start_col: int
    end_line: int
    end_col: int
    replacement: str
    description: str
    safe: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fix:
        return cls(file=str(data["file"]), start_line=int(data["start_line"]), start_col=int(data["start_col"]),
                   end_line=int(data["end_line"]), end_col=int(data["end_col"]),
                   replacement=str(data["replacement"]), description=str(data["description"]),
                   safe=bool(data.get("safe", True)))

    def shown(self) -> str:
        """The edit in one line: the new code, or for a call laid out over lines, what the fix does."""
        return self.replacement if "\n" not in self.replacement and "\r" not in self.replacement else self.description

    def how_applied(self) -> str:
        if self.safe:
            return "`cnncheck check --fix` makes it"
        return "an unsafe fix, it changes what the model computes: `cnncheck check --fix --unsafe-fixes` makes it"


@dataclass
class FixPlan:
    """The fixes of one run, one per change (:attr:`~cnncheck.changes.ArgumentChange.key`), and why each
    other change asked for has none (by the place it names)."""

    fixes: dict[str, Fix] = field(default_factory=dict)
    unfixable: dict[str, str] = field(default_factory=dict)

    def fix_for(self, finding: Finding) -> Fix | None:
        return self.fixes.get(finding.change.key) if finding.change is not None else None

    def applied(self, *, unsafe: bool) -> list[Fix]:
        """The fixes ``--fix`` writes: the safe ones, and the unsafe ones too when asked."""
        return [fix for fix in self.fixes.values() if fix.safe or unsafe]

    @property
    def hidden(self) -> int:
        """How many unsafe fixes wait for ``--unsafe-fixes``."""
        return sum(not fix.safe for fix in self.fixes.values())


def plan_fixes(results: Sequence[ModelResult], *, allowed: Allowed | None = None) -> FixPlan:
    """The fixes for the changes the findings of ``results`` ask for. ``allowed(result)``: the files and
    folders that result's changes may edit (its submission, or the checked paths); None, or no function,
    allows any file outside an installed library."""
    asked: dict[str, tuple[Change, dict[str, set[str]]]] = {}  # key -> the change, model -> its layers asking
    shown: dict[str, str] = {}  # key -> the place a refusal names: the finding's line, where the student looks
    plan = FixPlan()
    for result in results:
        roots = allowed(result) if allowed is not None else None
        for finding in result.findings:
            change = finding.change
            if change is None:
                continue
            place = finding.location or change.location or f"{result.id} {finding.module or '<model>'}"
            if isinstance(change, NoFix):
                plan.unfixable.setdefault(place, change.reason)
                continue
            if not change.safe and result.shape_note:  # measured on a guessed input: the model may be right
                plan.unfixable.setdefault(place, f"an unsafe fix measured on an inferred input shape ({result.shape_note}"
                                          f"): give the shape the model is built for, with --input-shape or "
                                          f"@cnncheck.model(input_shape=...)")
                continue
            problem = _not_editable(Path(change.location.rpartition(":")[0]), roots)
            if problem:
                plan.unfixable.setdefault(place, problem)
                continue
            asking = change.layer if isinstance(change, ArgumentChange) and change.layer else finding.module
            asked.setdefault(change.key, (change, defaultdict(set)))[1][result.id].add(asking)
            shown.setdefault(change.key, place)
    sources = _Sources()
    for key, (change, per_model) in asked.items():
        reason = _shared_site(change, per_model, results) if isinstance(change, ArgumentChange) else None
        if reason is None:
            try:
                fix, reason = located(change, sources)
            except Exception as exc:  # a file libcst reads in a way we did not foresee: no fix, and why
                fix, reason = None, f"cnncheck could not compute this fix ({type(exc).__name__}: {exc}); please report it"
            if fix is not None:
                plan.fixes[key] = fix
                continue
        plan.unfixable.setdefault(shown[key], reason or "no fix")
    _drop_what_would_not_compile(plan)
    return plan


def _drop_what_would_not_compile(plan: FixPlan) -> None:
    """A file that its fixes (the safe ones, or all) would leave unable to compile keeps every line: the
    fix is cnncheck's error, never the student's to find at the next check."""
    for file, fixes in by_file(plan.fixes.values()).items():
        source = _read(Path(file))
        for chosen in ([f for f in fixes if f.safe], fixes):
            try:
                compile(fixed_text(source, chosen).removeprefix(BOM), file, "exec", dont_inherit=True)
            except (SyntaxError, ValueError) as exc:
                for key in [k for k, fix in plan.fixes.items() if fix.file == file]:
                    location = f"{file}:{plan.fixes.pop(key).start_line}"
                    plan.unfixable[location] = (f"cnncheck's edit would not compile ({type(exc).__name__}: {exc}), "
                                                f"so the file is left as it is; please report it")
                break


def _shared_site(change: ArgumentChange, per_model: Mapping[str, set[str]],
                 results: Sequence[ModelResult]) -> str | None:
    """Why the layers built at the change's call are not all asking for it (None when they are, or when
    the call builds no layer): in every model, the layers of its class built there must be exactly those
    with the change."""
    if not change.layer:
        return None
    site = change.site
    for result in results:
        sites = result.layer_sites
        built = set(sites.get(site, ())) if sites is not None else None
        marked = per_model.get(result.id, set())
        if built is None:
            if marked:
                return f"{result.id}: cnncheck did not list the layers built at {site}"
            continue
        others = sorted(built - marked)
        if others:
            return (f"the same call also builds {', '.join(repr(n) for n in others[:3])} in {result.id}, "
                    f"which {'do' if len(others) > 1 else 'does'} not need {change.keyword}={change.value}")
        if marked - built:
            return f"{', '.join(sorted(marked - built))} in {result.id} cannot be traced to this call exactly"
    return None


class _Sources:
    """Each file read and parsed once per plan, with libcst's positions and parents."""

    def __init__(self) -> None:
        self._parsed: dict[str, tuple[str, Any, Any, Any] | str] = {}

    def get(self, filename: str) -> tuple[str, Any, Any, Any] | str:
        """(source, the wrapper, positions, parents), or why the file cannot be edited."""
        if filename not in self._parsed:
            self._parsed[filename] = self._parse(filename)
        return self._parsed[filename]

    @staticmethod
    def _parse(filename: str) -> tuple[str, Any, Any, Any] | str:
        """The positions are those of the text after a byte order mark, which libcst does not count
        (:func:`fixed_text` takes it off and puts it back)."""
        try:
            source = _read(Path(filename)).removeprefix(BOM)
        except (OSError, UnicodeDecodeError) as exc:
            return f"cannot read the file ({exc})"
        import libcst as cst
        from libcst.metadata import MetadataWrapper, ParentNodeProvider, PositionProvider

        try:
            wrapper = MetadataWrapper(cst.parse_module(source))
        except cst.ParserSyntaxError as exc:
            return f"cannot parse the file ({exc.message})"
        return source, wrapper, wrapper.resolve(PositionProvider), wrapper.resolve(ParentNodeProvider)


def located(change: Change, sources: _Sources | None = None) -> tuple[Fix | None, str]:
    """The fix that makes ``change`` in its file, or None and the reason it cannot be located exactly
    (which does not repeat the location)."""
    filename, _, line_text = change.location.rpartition(":")
    if not filename or not line_text.isdigit():
        return None, "not a file:line location"
    parsed = (sources or _Sources()).get(filename)
    if isinstance(parsed, str):
        return None, parsed
    if isinstance(change, RegisterChange):
        return _registered(change, filename, int(line_text), parsed)
    if isinstance(change, NoFix):
        return None, change.reason
    return _argument_set(change, filename, int(line_text), parsed)


def _argument_set(change: ArgumentChange, filename: str, line: int, parsed: tuple[str, Any, Any, Any],
                  ) -> tuple[Fix | None, str]:
    import libcst as cst

    source, wrapper, positions, parents = parsed
    aliases = _imported_as(wrapper.module)
    on_line = [node for node, where in positions.items() if isinstance(node, cst.Call) and where.start.line == line]
    calls = [node for node in on_line if aliases.get(_callee(node), _callee(node)) in (change.callee,
                                                                                      f"Lazy{change.callee}")
             and (change.column is None or positions[node].start.column == change.column)]
    if len(calls) > 1:
        return None, f"{len(calls)} {change.callee} calls start on that line"
    if not calls:
        builder = _callee(on_line[0]) if len(on_line) == 1 else ""
        inside = (f": {change.layer} is built inside {builder}(...), and cnncheck edits only the call that "
                  f"builds the layer itself; make the change where {builder} builds it" if builder and change.layer
                  else "")
        return None, f"no {change.callee} call starts on that line{inside}"
    call = calls[0]
    if "self." in change.value and not _in_method(call, parents):
        return None, f"the call is not in a method of an nn.Module, so there is no {change.value} to pass"
    new_call, problem = _with_argument(call, change.keyword, change.position, change.value)
    if new_call is None:
        return None, problem
    return _replacing(filename, source, wrapper, positions, call, new_call, change), ""


def _registered(change: RegisterChange, filename: str, line: int, parsed: tuple[str, Any, Any, Any],
                ) -> tuple[Fix | None, str]:
    import libcst as cst

    source, wrapper, positions, parents = parsed
    classes = [node for node in positions if isinstance(node, cst.ClassDef) and node.name.value == change.class_name]
    if len(classes) > 1:
        classes = [c for c in classes if positions[c].start.line <= line <= positions[c].end.line]
    if len(classes) != 1:
        return None, f"class {change.class_name} is not found exactly in the file"
    nodes = [n for n in parents if _owned_by(n, classes[0], parents)]
    class_name = "ModuleList" if change.container == "list" else "ModuleDict"
    refused = _why_not_registered(change, class_name, nodes, wrapper.module, positions, parents)
    if refused:
        return None, refused
    torch_nn = _torch_nn_name(wrapper.module, class_name)
    if torch_nn is None:
        return None, (f"the file imports neither nn, torch nor {class_name}: add `from torch import nn` and "
                      f"cnncheck can make it nn.{class_name}(...)")
    value = next(n for n in nodes if _assigns(n, change.attribute)).value
    empty = isinstance(value, (cst.List, cst.Dict)) and not value.elements
    wrapper_class = class_name if torch_nn == class_name else f"{torch_nn}.{class_name}"
    wrapped = cst.Call(func=cst.parse_expression(wrapper_class), args=[] if empty else [cst.Arg(value=value)])
    return _replacing(filename, source, wrapper, positions, value, wrapped, change), ""


def _assigns(node: Any, attribute: str) -> bool:
    import libcst as cst

    return isinstance(node, cst.Assign) and any(_is_self_attribute(t.target, attribute) for t in node.targets)


def _why_not_registered(change: RegisterChange, class_name: str, nodes: list[Any], module: Any,
                        positions: Mapping[Any, Any], parents: Mapping[Any, Any]) -> str:
    """Why wrapping the container in ``class_name`` could change or break the class (its ``nodes``), or ""."""
    import libcst as cst

    where, attribute = f"self.{change.attribute}", change.attribute
    if any(isinstance(n, cst.AnnAssign) and _is_self_attribute(n.target, attribute) for n in nodes):
        return f"{where} is assigned with an annotation (list[...]), which nn.{class_name} would contradict"
    assigned = [n for n in nodes if _assigns(n, attribute)]
    if len(assigned) != 1:
        return f"{change.class_name} assigns {where} {len(assigned)} times"
    if len(assigned[0].targets) != 1:
        return f"{where} is assigned together with other names"
    literal = (cst.List, cst.ListComp) if change.container == "list" else (cst.Dict, cst.DictComp)
    if not isinstance(assigned[0].value, literal):
        return f"{where} is not assigned a {change.container} literal or comprehension"
    called = {n.attr.value for n in nodes if isinstance(n, cst.Attribute) and _is_self_attribute(n.value, attribute)}
    missing = sorted(called & _MISSING_METHODS[change.container])
    if missing:
        return f"{where}.{missing[0]}() is called, which nn.{class_name} does not have"
    operated = [n for n in nodes if isinstance(n, cst.BinaryOperation)
                and (_is_self_attribute(n.left, attribute) or _is_self_attribute(n.right, attribute))]
    if operated:
        code = module.code_for_node(operated[0].with_changes(lpar=[], rpar=[]))
        return f"{where} is used in an operation ({code}) that a plain {change.container} and nn.{class_name} do differently"
    if _before_module_init(assigned[0], positions, parents):
        return f"{where} is assigned before super().__init__(), when nn.Module cannot register a module yet"
    return ""


def _replacing(filename: str, source: str, wrapper: Any, positions: Any, old: Any, new: Any,
               change: ArgumentChange | RegisterChange) -> Fix:
    """The fix that puts ``new`` where ``old`` is; the whole module is rendered again, since a node's own
    code lacks the block's indentation of its lines."""
    where = positions[old]
    rendered = wrapper.module.deep_replace(old, new).code
    starts = _line_starts(source)
    begin, end = starts[where.start.line - 1] + where.start.column, starts[where.end.line - 1] + where.end.column
    replacement = rendered[begin:len(rendered) - (len(source) - end)]
    return Fix(file=filename, start_line=where.start.line, start_col=where.start.column + 1,
               end_line=where.end.line, end_col=where.end.column + 1, replacement=replacement,
               description=change.description, safe=change.safe)


_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")
"""A line as Python and libcst count them: ended by \\n, \\r\\n or \\r only (``str.splitlines`` also splits at
a form feed or U+2028, which a comment may hold)."""
BOM = "\ufeff"


def _lines(source: str) -> list[str]:
    return _LINE.findall(source)


def _line_starts(source: str) -> list[int]:
    """The index in ``source`` where each line starts (line 1 at index 0 of the list)."""
    starts = [0]
    for text in _lines(source):
        starts.append(starts[-1] + len(text))
    return starts


def _not_editable(path: Path, allowed: Sequence[str | os.PathLike[str]] | None) -> str:
    resolved = path.resolve()
    if any(part in _INSTALLED for part in resolved.parts):
        return "inside an installed library; cnncheck fixes only the checked files"
    if allowed is not None:
        roots = [Path(a).resolve() for a in allowed]
        if not any(resolved == root or root in resolved.parents for root in roots):
            return "outside the checked files of this model's submission"
    if not resolved.is_file():
        return "no such file"
    return ""


def _read(path: Path) -> str:
    with open(path, encoding="utf-8", newline="") as handle:  # newline="": \r\n stays as it is
        return handle.read()


def _callee(call: Any) -> str:
    import libcst as cst

    func = call.func
    if isinstance(func, cst.Attribute):
        return str(func.attr.value)
    return str(func.value) if isinstance(func, cst.Name) else ""


def _in_method(node: Any, parents: Mapping[Any, Any]) -> bool:
    """Whether ``node`` is inside a function whose first parameter is ``self``."""
    import libcst as cst

    while node in parents:
        node = parents[node]
        if isinstance(node, cst.FunctionDef):
            params = node.params.params
            owner = parents.get(parents.get(node))  # the function's block, then its class
            # a class without bases is no nn.Module: its self has no training flag
            return bool(params) and params[0].name.value == "self" and isinstance(owner, cst.ClassDef) and bool(
                owner.bases)
    return False


def _before_module_init(assignment: Any, positions: Mapping[Any, Any], parents: Mapping[Any, Any]) -> bool:
    """Whether the method that makes ``assignment`` calls ``__init__`` (``super().__init__()``,
    ``nn.Module.__init__(self)``) only after it."""
    import libcst as cst

    method = assignment
    while method in parents and not isinstance(method, cst.FunctionDef):
        method = parents[method]
    if not isinstance(method, cst.FunctionDef):
        return False
    inits = [positions[n].start for n in positions if isinstance(n, cst.Call) and isinstance(n.func, cst.Attribute)
             and n.func.attr.value == "__init__" and _inside(n, method, parents)]
    here = positions[assignment].start
    return bool(inits) and all((i.line, i.column) > (here.line, here.column) for i in inits)


def _inside(node: Any, ancestor: Any, parents: Mapping[Any, Any]) -> bool:
    while node in parents:
        node = parents[node]
        if node is ancestor:
            return True
    return False


def _owned_by(node: Any, owner: Any, parents: Mapping[Any, Any]) -> bool:
    """Whether ``node`` is inside the class ``owner`` and not inside a class nested in it."""
    import libcst as cst

    while node in parents:
        node = parents[node]
        if node is owner:
            return True
        if isinstance(node, cst.ClassDef):
            return False
    return False


def _is_self_attribute(node: Any, attribute: str) -> bool:
    import libcst as cst

    return (isinstance(node, cst.Attribute) and node.attr.value == attribute
            and isinstance(node.value, cst.Name) and node.value.value == "self")


def _torch_nn_name(module: Any, class_name: str) -> str | None:
    """How the file names the class: through ``nn`` when it imports it so, as ``class_name`` when it imports
    that from torch.nn, else through ``torch.nn`` when it imports torch."""
    import libcst as cst

    names: set[str] = set()
    for statement in module.body:
        for small in statement.body if isinstance(statement, cst.SimpleStatementLine) else ():
            if isinstance(small, cst.ImportFrom) and _dotted(small.module) == "torch.nn" and not isinstance(
                    small.names, cst.ImportStar):
                names |= {class_name for a in small.names if _dotted(a.name) == class_name and a.asname is None}
            if isinstance(small, cst.ImportFrom) and _dotted(small.module) == "torch" and not isinstance(
                    small.names, cst.ImportStar):
                names |= {_alias(a) for a in small.names if _dotted(a.name) == "nn"}
            elif isinstance(small, cst.Import):
                names |= {("nn" if _alias(a) == "nn" else "torch") for a in small.names
                          if _dotted(a.name) in ("torch", "torch.nn") and _alias(a) in ("nn", "torch")}
    if "nn" in names:
        return "nn"
    if class_name in names:
        return class_name
    return "torch.nn" if "torch" in names else None


def _imported_as(module: Any) -> dict[str, str]:
    """The names the file imports under another name: ``drop2d`` -> ``dropout2d`` for
    ``from torch.nn.functional import dropout2d as drop2d``."""
    import libcst as cst

    aliases: dict[str, str] = {}
    for statement in module.body:
        for small in statement.body if isinstance(statement, cst.SimpleStatementLine) else ():
            if isinstance(small, cst.ImportFrom) and not isinstance(small.names, cst.ImportStar):
                aliases.update({_dotted(a.asname.name): _dotted(a.name) for a in small.names if a.asname is not None})
    return aliases


def _dotted(node: Any) -> str:
    import libcst as cst

    if isinstance(node, cst.Attribute):
        return f"{_dotted(node.value)}.{node.attr.value}"
    return str(node.value) if isinstance(node, cst.Name) else ""


def _alias(alias: Any) -> str:
    """The name an import binds: ``nn`` for ``import torch.nn as nn``, ``torch`` for ``import torch.nn``."""
    if alias.asname is not None:
        return _dotted(alias.asname.name)
    return _dotted(alias.name).split(".")[0]


def _constant(node: Any) -> bool:
    """Whether an argument's value is written as a constant (``True``, ``5``, ``(2, 2)``, ``7 * 7 * 64``),
    which a fix may replace; a name or a call may be shared with other calls, and is left alone."""
    import libcst as cst

    if isinstance(node, (cst.Integer, cst.Float, cst.SimpleString)):
        return True
    if isinstance(node, cst.Name):
        return node.value in ("True", "False", "None")
    if isinstance(node, cst.UnaryOperation):
        return _constant(node.expression)
    if isinstance(node, cst.BinaryOperation):
        return _constant(node.left) and _constant(node.right)
    if isinstance(node, (cst.Tuple, cst.List)):
        return all(_constant(e.value) for e in node.elements)
    return False


def _with_argument(call: Any, keyword: str, position: int | None, value: str) -> tuple[Any, str]:
    """The call with ``keyword=value``: the keyword's or the positional argument's constant changed, or the
    keyword appended after the last argument, in the call's own layout (a trailing comma, one argument per
    line, a comment after the last one)."""
    import libcst as cst

    args = list(call.args)
    if any(a.star for a in args):
        return None, f"the call passes *args or **kwargs, which may hold {keyword}"
    new_value = cst.parse_expression(value)
    positional = [i for i, a in enumerate(args) if a.keyword is None]
    named = [i for i, a in enumerate(args) if a.keyword is not None and a.keyword.value == keyword]
    given = named[0] if named else positional[position] if position is not None and position < len(positional) else None
    if given is not None:
        current = args[given].value
        if not _constant(current):
            code = cst.Module(body=[]).code_for_node(current)
            return None, f"{keyword} is given as an expression ({code}), not a constant"
        args[given] = args[given].with_changes(value=new_value)
        return call.with_changes(args=args), ""
    new = cst.Arg(value=new_value, keyword=cst.Name(keyword),
                  equal=cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(""),
                                        whitespace_after=cst.SimpleWhitespace("")))
    if not args:
        return call.with_changes(args=[new]), ""
    last = args[-1]
    if isinstance(last.comma, cst.Comma):  # a trailing comma: the new argument goes after it, laid out alike
        after = last.comma.whitespace_after
        if isinstance(after, cst.ParenthesizedWhitespace):
            before = args[-2].comma.whitespace_after if len(args) > 1 else call.whitespace_before_args
            indent = before.last_line if isinstance(before, cst.ParenthesizedWhitespace) else after.last_line
            args[-1] = last.with_changes(comma=last.comma.with_changes(whitespace_after=after.with_changes(
                last_line=indent)))
            closing = cst.ParenthesizedWhitespace(first_line=cst.TrailingWhitespace(), empty_lines=[],
                                                  indent=after.indent, last_line=after.last_line)
            args.append(new.with_changes(comma=cst.Comma(whitespace_after=closing)))
        else:
            args[-1] = last.with_changes(comma=last.comma.with_changes(whitespace_after=cst.SimpleWhitespace(" ")))
            args.append(new.with_changes(comma=cst.Comma(whitespace_after=after)))
    else:
        args[-1] = last.with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")),
                                     whitespace_after_arg=cst.SimpleWhitespace(""))
        args.append(new.with_changes(whitespace_after_arg=last.whitespace_after_arg))
    return call.with_changes(args=args), ""


def with_fixes(results: Sequence[ModelResult], plan: FixPlan) -> list[ModelResult]:
    """The results with each finding's ``fix_edit`` set from ``plan``, and any other dropped: an edit
    that a worker sent is never taken. The changes and the layer sites, used up, leave the results (the
    fix says it for the reader, and the sites would show the machine's paths)."""
    return [replace(r, findings=[replace(f, change=None, fix_edit=plan.fix_for(f)) for f in r.findings],
                    layer_sites=None) for r in results]


def fixed_text(source: str, fixes: Iterable[Fix]) -> str:
    """``source`` with ``fixes`` applied, the last first so that earlier positions stay valid; a fix that
    overlaps one already applied is skipped."""
    mark = BOM if source.startswith(BOM) else ""
    text = source.removeprefix(BOM)
    starts = _line_starts(text)
    floor = len(text) + 1
    for fix in sorted(fixes, key=lambda f: (f.start_line, f.start_col), reverse=True):
        begin, end = starts[fix.start_line - 1] + fix.start_col - 1, starts[fix.end_line - 1] + fix.end_col - 1
        if end > floor:
            continue
        text, floor = text[:begin] + fix.replacement + text[end:], begin
    return mark + text


def by_file(fixes: Iterable[Fix]) -> dict[str, list[Fix]]:
    grouped: dict[str, list[Fix]] = defaultdict(list)
    for fix in fixes:
        grouped[fix.file].append(fix)
    return dict(grouped)


def unified_diff(fixes: Iterable[Fix], *, label: Mapping[str, str] | None = None) -> str:
    """One unified diff of every file the fixes change; ``label`` names a file as the diff shows it."""
    parts: list[str] = []
    for file, edits in sorted(by_file(fixes).items()):
        before = _read(Path(file))
        after = fixed_text(before, edits)
        name = (label or {}).get(file, file)
        parts.extend(difflib.unified_diff(_lines(before), _lines(after), f"a/{name}", f"b/{name}"))
    return "".join(p if p.endswith("\n") else p + "\n\\ No newline at end of file\n" for p in parts)


def apply_fixes(fixes: Iterable[Fix]) -> list[str]:
    """Write the fixes, each file once and atomically (a temporary file in the same folder, then
    ``os.replace``, with the file's mode kept; a symbolic link stays one, and its target is written);
    the files that changed, as the fixes name them."""
    changed: list[str] = []
    targets: dict[Path, list[Fix]] = defaultdict(list)  # a link and its target are one file, written once
    for fix in fixes:
        targets[Path(fix.file).resolve()].append(fix)
    for path, edits in sorted(targets.items()):
        before = _read(path)
        after = fixed_text(before, edits)
        if after == before:
            continue
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".cnncheck")
        try:
            with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
                out.write(after)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temporary, path.stat().st_mode & 0o7777)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        changed.extend(sorted({fix.file for fix in edits}))  # as the fixes name it
    return changed
