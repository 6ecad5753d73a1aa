"""Safe fixes in the student's own file, computed with libcst so that comments and layout are kept.

A :class:`Fix` is plain data: the span of one file that is replaced and its replacement. Fixes are
computed by the process that runs ``cnncheck check`` (never by the sandboxed worker, whose messages are
untrusted) from the results' findings, the sites where each checked model built its conv and linear
layers (:attr:`~cnncheck.results.ModelResult.bias_sites`) and the files on disk.

The one fix so far: ``bias=False`` at the call that builds a conv or linear whose bias a BatchNorm
cancels (``redundant-bias-before-bn``). A site gets it only when the call is found exactly (one call to
a ``...Conv1d/2d/3d``, ``...ConvTranspose1d/2d/3d`` or ``...Linear`` on the finding's line) and every
layer that this call built, in every model checked, has its bias cancelled: a call in a loop, or in a
block class used with and without a BatchNorm, that also builds a layer whose bias matters is left
alone. libcst is imported only when a fix is computed: the worker imports every cnncheck module.
"""

from __future__ import annotations

import difflib
import os
import re
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cnncheck.findings import Finding
    from cnncheck.results import ModelResult

REDUNDANT_BIAS = "redundant-bias-before-bn"
_BIAS_LAYER = re.compile(r"(Conv[123]d|ConvTranspose[123]d|Linear)$")
_INSTALLED = ("site-packages", "dist-packages")


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


@dataclass
class FixPlan:
    """The fixes of one run, one per call site (``file:line``), and why each other flagged site has none."""

    fixes: dict[str, Fix] = field(default_factory=dict)
    unfixable: dict[str, str] = field(default_factory=dict)

    def fix_for(self, finding: Finding) -> Fix | None:
        if finding.rule != REDUNDANT_BIAS or finding.location is None:
            return None
        return self.fixes.get(finding.location)


def plan_fixes(results: Sequence[ModelResult], *, allowed: Sequence[str | os.PathLike[str]] | None = None) -> FixPlan:
    """The safe fixes for the findings of ``results``. ``allowed``: the files and folders that may be
    edited (the checked paths); None allows any file outside an installed library."""
    flagged: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))  # site -> model -> layers
    for result in results:
        for finding in result.findings:
            if finding.rule == REDUNDANT_BIAS and finding.location:
                flagged[finding.location][result.id].add(finding.module)
    plan = FixPlan()
    for site, per_model in flagged.items():
        reason = _shared_site(site, per_model, results)
        if reason is None:
            fix, reason = bias_false_fix(site, allowed=allowed)
            if fix is not None:
                plan.fixes[site] = fix
                continue
        plan.unfixable[site] = reason or "no fix"
    return plan


def _shared_site(site: str, per_model: Mapping[str, set[str]], results: Sequence[ModelResult]) -> str | None:
    """Why the layers built at ``site`` are not all flagged (None when they are): in every model, the
    layers with a bias that were built there must be exactly those with a finding."""
    for result in results:
        built = set(result.bias_sites.get(site, ())) if result.bias_sites is not None else None
        marked = per_model.get(result.id, set())
        if built is None:
            if marked:
                return f"{result.id}: cnncheck did not list the layers built at {site}"
            continue
        unflagged = sorted(built - marked)
        if unflagged:
            return (f"the same call also builds {', '.join(repr(n) for n in unflagged[:3])} in {result.id}, "
                    f"whose bias is not cancelled")
        if marked - built:
            return f"{', '.join(sorted(marked - built))} in {result.id} cannot be traced to this call exactly"
    return None


def bias_false_fix(location: str, *, allowed: Sequence[str | os.PathLike[str]] | None = None) -> tuple[Fix | None, str]:
    """``bias=False`` at the one conv/linear call on the line ``location`` (``file:line``) names, or None
    and the reason it cannot be located exactly (which does not repeat the location)."""
    filename, _, line_text = location.rpartition(":")
    if not filename or not line_text.isdigit():
        return None, "not a file:line location"
    line = int(line_text)
    path = Path(filename)
    problem = _not_editable(path, allowed)
    if problem:
        return None, problem
    try:
        source = _read(path)
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"cannot read the file ({exc})"
    import libcst as cst
    from libcst.metadata import MetadataWrapper, PositionProvider

    try:
        wrapper = MetadataWrapper(cst.parse_module(source))
    except cst.ParserSyntaxError as exc:
        return None, f"cannot parse the file ({exc.message})"
    positions = wrapper.resolve(PositionProvider)
    calls = [(node, where) for node, where in positions.items()
             if isinstance(node, cst.Call) and where.start.line == line and _BIAS_LAYER.search(_callee(node))]
    if len(calls) != 1:
        found = "no conv or linear call starts" if not calls else f"{len(calls)} conv or linear calls start"
        return None, f"{found} on that line"
    call, where = calls[0]
    new_call, problem = _with_bias_false(call)
    if new_call is None:
        return None, problem
    # the whole module is rendered again: a call's own code lacks the block's indentation of its lines
    rendered = wrapper.module.deep_replace(call, new_call).code
    begin, end = _offset(source, where.start.line, where.start.column), _offset(source, where.end.line, where.end.column)
    replacement = rendered[begin:len(rendered) - (len(source) - end)]
    return Fix(file=filename, start_line=where.start.line, start_col=where.start.column + 1,
               end_line=where.end.line, end_col=where.end.column + 1, replacement=replacement,
               description=f"{_callee(call)}(..., bias=False): the BatchNorm after it cancels the bias"), ""


def _line_starts(source: str) -> list[int]:
    """The index in ``source`` where each line starts (line 1 at index 0 of the list)."""
    starts = [0]
    for text in source.splitlines(keepends=True):
        starts.append(starts[-1] + len(text))
    return starts


def _offset(source: str, line: int, column: int) -> int:
    """The index in ``source`` of a 1-based line and 0-based column."""
    return _line_starts(source)[line - 1] + column


def _not_editable(path: Path, allowed: Sequence[str | os.PathLike[str]] | None) -> str:
    resolved = path.resolve()
    if any(part in _INSTALLED for part in resolved.parts):
        return "inside an installed library; cnncheck fixes only the checked files"
    if allowed is not None:
        roots = [Path(a).resolve() for a in allowed]
        if not any(resolved == root or root in resolved.parents for root in roots):
            return "outside the checked paths"
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


def _with_bias_false(call: Any) -> tuple[Any, str]:
    """The call with ``bias=False``: ``bias=True`` changed, or the keyword appended after the last argument,
    in the call's own layout (a trailing comma, one argument per line, a comment after the last one)."""
    import libcst as cst

    args = list(call.args)
    if any(a.star for a in args):
        return None, "the call passes *args or **kwargs, which may hold bias"
    keywords = [a for a in args if a.keyword is not None]
    for index, arg in enumerate(args):
        if arg.keyword is not None and arg.keyword.value == "bias":
            if isinstance(arg.value, cst.Name) and arg.value.value == "True":
                args[index] = arg.with_changes(value=cst.Name("False"))
                return call.with_changes(args=args), ""
            return None, "bias is given as an expression, not True"
    positional = len(args) - len(keywords)
    if positional >= (3 if _callee(call).endswith("Linear") else 8):
        return None, "bias may be passed positionally"
    new = cst.Arg(value=cst.Name("False"), keyword=cst.Name("bias"),
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
    that a worker sent is never taken. The bias sites, used up, leave the results (the report would
    show the machine's paths in them)."""
    return [replace(r, findings=[replace(f, fix_edit=plan.fix_for(f)) for f in r.findings], bias_sites=None)
            for r in results]


def fixed_text(source: str, fixes: Iterable[Fix]) -> str:
    """``source`` with ``fixes`` applied, the last first so that earlier positions stay valid; a fix that
    overlaps one already applied is skipped."""
    starts = _line_starts(source)
    text, floor = source, len(source) + 1
    for fix in sorted(fixes, key=lambda f: (f.start_line, f.start_col), reverse=True):
        begin, end = starts[fix.start_line - 1] + fix.start_col - 1, starts[fix.end_line - 1] + fix.end_col - 1
        if end > floor:
            continue
        text, floor = text[:begin] + fix.replacement + text[end:], begin
    return text


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
        parts.extend(difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                          f"a/{name}", f"b/{name}"))
    return "".join(p if p.endswith("\n") else p + "\n\\ No newline at end of file\n" for p in parts)


def apply_fixes(fixes: Iterable[Fix]) -> list[str]:
    """Write the fixes, each file once and atomically (a temporary file in the same folder, then
    ``os.replace``, with the file's mode kept); the files that changed."""
    changed = []
    for file, edits in sorted(by_file(fixes).items()):
        path = Path(file)
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
        changed.append(file)
    return changed
