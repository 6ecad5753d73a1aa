"""Output formats for ``cnncheck check --format NAME``: text, json, markdown, junit, sarif and html
(:mod:`cnncheck.html_report`).

Every renderer turns a list of :class:`~cnncheck.results.ModelResult` into one string that ends with
a newline. :data:`FORMATS` maps each ``--format`` name to a callable with the common signature
``(results, *, rules, root, sandbox) -> str``: ``rules`` are the rules that were run (``cnncheck.all_rules()``
after ``--select``/``--ignore``), ``root`` the folder that file paths are made relative to (SARIF), and
``sandbox`` the sandbox the submissions ran in (``"bwrap"`` or ``"none"``; None when no worker ran them,
as for the API), which every format states.
This module imports the standard library only: no torch, no third-party renderer.

JSON report schema (``render_json``), ``"schema": "cnncheck-report/1"``
-------------------------------------------------------------------------
The schema id changes only when a field is removed or changes meaning; new fields may be added
within the same id. Top-level object:

``schema``
    The string ``"cnncheck-report/1"``.
``cnncheck_version``
    The version of cnncheck that wrote the report, e.g. ``"0.1.0"``.
``rules``
    The rules that were run, in registration order; each ``{"id", "severity", "summary"}``:
    the stable rule id, its default severity (``"error"`` or ``"warning"``), and one line on what it
    flags. The documentation of rule ``ID`` is ``cnncheck rules ID``, or its page under ``CNNCHECK_DOCS_URL``.
``models``
    One object per model, exactly :meth:`ModelResult.to_dict` (read back with
    :meth:`ModelResult.from_dict`):

    ``id`` (``"path/to/model.py::ConvNet"``, variants ``"...::make[wide]"``), ``file``, ``name``,
    ``input_shape`` (list of ints with the batch first, or null when unknown), ``device``,
    ``rules_run`` (ids), ``findings`` (see below), ``error`` (null, or why the model could not be
    checked), ``error_kind`` (null or one of ``import``, ``build``, ``input-shape``, ``device``,
    ``unsupported``, ``forward``, ``timeout``, ``memory``, ``crash``, ``exit``, ``usage``,
    ``no-model``, ``protocol``, ``tampered``), ``location`` (null or the student's ``file:line`` for an
    error), ``notes`` (list of strings), ``seconds`` (float, time spent on this model), ``outcomes``
    (one per rule run: ``rule``, ``status`` (``passed``, ``findings``, ``not-checked`` or ``crashed``)
    and ``reason`` (why it was not checked, the crash's error, or ``""``)), ``plugin_problems`` (list of
    strings: a plugin hook that raised while the model was checked, which makes its verdict ``crashed``),
    ``verdict`` (``clean``, ``findings``, ``incomplete``, ``crashed`` or ``error``: the one decision every
    front end shows),
    ``shape_note`` (why this input shape, when it was inferred rather than declared, else ``""``).

    Each finding: ``rule`` (id), ``module`` (qualified layer name from ``named_modules()``; ``""``
    for the model itself), ``severity`` (``"error"`` or ``"warning"``), ``message`` (what is wrong),
    ``expected``, ``found``, ``fix`` (strings, possibly empty), ``location`` (``"file:line"`` where
    the layer was built, or null), ``details`` (list of extra lines), ``fix_edit`` (null, or the
    edit of the student's file that ``cnncheck check --fix`` applies: ``file``, ``start_line``,
    ``start_col``, ``end_line``, ``end_col`` (1-based; the end is just after the replaced text),
    ``replacement``, ``description`` and ``safe``: false for a fix that changes what the model computes, which
    ``--fix`` applies only with ``--unsafe-fixes``), and, only in results that did not pass through
    ``cnncheck check`` or pytest, ``change`` (what the rule asks to change in the source, from which those
    compute ``fix_edit``; see :mod:`cnncheck.changes`).
``summary``
    ``models`` (how many), ``clean`` (every rule checked it and found nothing), ``with_findings`` (at
    least one finding), ``incomplete`` (no finding, but some rule could not check it), ``crashed`` (a
    rule crashed: cnncheck's error), ``errors`` (could not be checked at all); the five add up to
    ``models``.
    ``findings_per_rule`` maps every rule id in ``rules`` (and any other id that has findings) to its
    number of findings over all models.
"""

from __future__ import annotations

import json
import linecache
import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, urlsplit

from cnncheck import __version__
from cnncheck.discover import inferred_shapes_note
from cnncheck.findings import Finding, RuleOutcome, RuleStatus, Severity, docs_reference, docs_url, render_findings
from cnncheck.results import ModelResult
from cnncheck.verdict import CRASH_ADVICE

if TYPE_CHECKING:
    from cnncheck.rules import Rule

JSON_SCHEMA_ID = "cnncheck-report/1"
SARIF_SCHEMA_URI = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
SARIF_VERSION = "2.1.0"
ERROR_ID = "cnncheck-error"  # JUnit test name and SARIF notification id for a model that could not be checked
NOT_CHECKED_ID = "cnncheck-not-checked"  # SARIF notification id for a rule that could not check a model
CRASH_ID = "cnncheck-internal-error"  # SARIF notification id for a rule that crashed
PLUGIN_ERROR_ID = "cnncheck-plugin-error"  # JUnit test name: a plugin hook failed while a model was checked
SRCROOT = "SRCROOT"  # SARIF uriBaseId of the `root` folder

class Formatter(Protocol):
    def __call__(self, results: Sequence[ModelResult], *, rules: Sequence[Rule],
                 root: str | os.PathLike[str] | None, sandbox: str | None = None) -> str: ...


def _sandbox_line(sandbox: str | None) -> list[str]:
    from cnncheck.sandbox import describe

    return [] if sandbox is None else [f"sandbox: {describe(sandbox)}"]


# --------------------------------------------------------------------------------------------------
# shared helpers


def _shape(shape: Iterable[int] | None) -> str:
    return "x".join(str(s) for s in shape) if shape else "unknown"


def _layer(finding: Finding) -> str:
    return finding.module or "<model>"


def _counts(findings: Sequence[Finding]) -> tuple[int, int]:
    errors = sum(f.severity is Severity.ERROR for f in findings)
    return errors, len(findings) - errors


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _status(result: ModelResult) -> str:
    """The model's verdict: ``"error"``, ``"crashed"``, ``"findings"``, ``"incomplete"`` or ``"clean"``."""
    return str(result.verdict)


def _unfinished(result: ModelResult) -> list[RuleOutcome]:
    """The rules that were not checked or crashed, with their reasons."""
    states = [result.state(rule_id) for rule_id in result.rules_run]
    return [o for o in states if o.status in (RuleStatus.NOT_CHECKED, RuleStatus.CRASHED)]


def _unfinished_reason(outcome: RuleOutcome) -> str:
    if outcome.status is RuleStatus.CRASHED:
        return f"crashed: {outcome.reason} ({CRASH_ADVICE})"
    return outcome.reason


def _unfinished_line(outcome: RuleOutcome) -> str:
    if outcome.status is RuleStatus.CRASHED:
        return f"internal error in rule {outcome.rule}: {outcome.reason} ({CRASH_ADVICE})"
    return f"not checked: {outcome.rule}: {outcome.reason}"


def _rule_ids(results: Sequence[ModelResult], rules: Sequence[Rule] | None) -> list[str]:
    """Rule ids in a stable order: the given rules first, then any other id that ran or was found."""
    ids = [r.id for r in rules or ()]
    for result in results:
        for rule_id in [*result.rules_run, *(f.rule for f in result.findings)]:
            if rule_id not in ids:
                ids.append(rule_id)
    return ids


def _rules_for(result: ModelResult, rules: Sequence[Rule]) -> list[str]:
    """The rule ids that were (or, when unrecorded, are taken to have been) run on one model."""
    ids = list(result.rules_run) or [r.id for r in rules]
    ids += [f.rule for f in result.findings if f.rule not in ids]
    return list(dict.fromkeys(ids))


def split_location(location: str | None) -> tuple[str, int | None] | None:
    """``"path/file.py:12"`` as ``("path/file.py", 12)``; a location without a line number as
    ``(location, None)``; None as None. Windows drive letters (``C:\\x.py:3``) are kept."""
    if not location:
        return None
    path, sep, line = location.rpartition(":")
    if sep and path and line.isdigit() and int(line) >= 1:
        return path, int(line)
    return location, None


def _summary(results: Sequence[ModelResult], rule_ids: Sequence[str]) -> dict[str, Any]:
    per_rule = Counter(f.rule for r in results for f in r.findings)
    statuses = Counter(_status(r) for r in results)
    return {
        "models": len(results),
        "clean": statuses["clean"],
        "with_findings": statuses["findings"],
        "incomplete": statuses["incomplete"],
        "crashed": statuses["crashed"],
        "errors": statuses["error"],
        "findings_per_rule": {rule_id: per_rule[rule_id] for rule_id in rule_ids},
    }


def _totals_sentence(results: Sequence[ModelResult]) -> str:
    s = _summary(results, [])
    errors, warnings = _counts([f for r in results for f in r.findings])
    unfinished = "".join(f", {s[key]} {words}" for key, words in (("incomplete", "not fully checked"),
                                                                  ("crashed", "where a rule or a plugin crashed"))
                        if s[key])
    return (f"{_plural(s['models'], 'model')}: {s['clean']} clean, {s['with_findings']} with findings"
            f"{unfinished}, {s['errors']} could not be checked; {_plural(errors + warnings, 'finding')} "
            f"({_plural(errors, 'error')}, {_plural(warnings, 'warning')})")


# --------------------------------------------------------------------------------------------------
# text


def render_text_result(result: ModelResult) -> str:
    """One model as the ``cnncheck check`` command prints it (the same layout as ``Report``)."""
    if result.error is not None:
        lines = [f"{result.id}: {result.error}"]
        if result.location:
            lines.append(f"  at:       {result.location}")
        return "\n".join([*lines, *result.notes])
    head = f"cnncheck: {result.name} on input {_shape(result.input_shape)} ({result.device})"
    unfinished = [_unfinished_line(o) for o in _unfinished(result)]
    if not result.findings and not unfinished and not result.plugin_problems:
        body = [f"{head}: no findings ({_plural(len(result.rules_run), 'rule')})", *result.notes]
    else:
        errors, warnings = _counts(result.findings)
        found = [render_findings(result.findings)] if result.findings else []
        counts = f"{errors} error(s), {warnings} warning(s)"
        if unfinished:
            counts += f", {_plural(len(unfinished), 'rule')} not checked or crashed"
        if result.plugin_problems:
            counts += f", {_plural(len(result.plugin_problems), 'plugin failure')}: the verdicts cannot be trusted"
        body = [head + ":", *found, *unfinished, *result.notes, counts]
    return "\n".join([result.id, *body]).rstrip()


def render_text_summary(results: Sequence[ModelResult]) -> str:
    """A plain aligned table (model, result, errors, warnings, rules with findings), then the totals."""
    header = ("model", "result", "errors", "warnings", "rules with findings")
    rows = [header]
    for r in results:
        errors, warnings = _counts(r.findings)
        result = f"error ({r.error_kind})" if r.error is not None and r.error_kind else _status(r)
        per_rule = Counter(f.rule for f in r.findings)
        marks = [f"{o.rule} ({o.status})" for o in _unfinished(r) if o.rule not in per_rule]
        found = ", ".join([*(f"{rule_id} ({n})" for rule_id, n in per_rule.items()), *marks]) or "-"
        rows.append((r.id, result, str(errors), str(warnings), found))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join([*(row[i].ljust(widths[i]) for i in range(4)), row[4]]).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in [*widths, len(header[4])]))
    return "\n".join([*lines, "", f"cnncheck: {_totals_sentence(results)}"])


def render_text(results: Sequence[ModelResult], *, rules: Sequence[Rule] = (),
                root: str | os.PathLike[str] | None = None, sandbox: str | None = None) -> str:
    """Every model as the CLI prints it, then the summary table. No colours: it must read in CI logs."""
    parts = [f"cnncheck: {line}\n" for line in _sandbox_line(sandbox)]
    parts += [render_text_result(r) + "\n" for r in results]
    inferred = sum(1 for r in results if r.shape_note)
    once = [f"note: {inferred_shapes_note(inferred)}"] if inferred else []
    return "\n".join([*parts, render_text_summary(results), *once]) + "\n"


# --------------------------------------------------------------------------------------------------
# json


def render_json(results: Sequence[ModelResult], *, rules: Sequence[Rule], sandbox: str | None = None) -> str:
    """The ``cnncheck-report/1`` document described in this module's docstring."""
    from cnncheck.sandbox import describe

    document: dict[str, Any] = {
        "schema": JSON_SCHEMA_ID,
        "cnncheck_version": __version__,
        "rules": [{"id": r.id, "severity": str(r.severity), "summary": r.summary} for r in rules],
        "models": [r.to_dict() for r in results],
        "summary": _summary(results, _rule_ids([], rules) + _found_ids(results, rules)),
    }
    if sandbox is not None:
        document["sandbox"] = {"name": sandbox, "description": describe(sandbox)}
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _found_ids(results: Sequence[ModelResult], rules: Sequence[Rule]) -> list[str]:
    known = {r.id for r in rules}
    return list(dict.fromkeys(f.rule for r in results for f in r.findings if f.rule not in known))


# --------------------------------------------------------------------------------------------------
# markdown

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|#])")


def _md(text: str) -> str:
    """Prose made safe for Markdown: ``__init__`` must not turn bold, ``|`` must not split a cell."""
    return _MD_SPECIAL.sub(r"\\\1", text).replace("\n", " ")


def _code(text: str) -> str:
    """An inline code span that survives backticks inside it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _fenced(text: str) -> str:
    longest = max((len(run) for run in re.findall(r"`{3,}", text)), default=2)
    fence = "`" * (longest + 1)
    return f"{fence}text\n{text.rstrip()}\n{fence}"


def _verdict(result: ModelResult) -> str:
    if result.error is not None:
        kind = f" ({result.error_kind})" if result.error_kind else ""
        return f"**Verdict: could not be checked{kind}.** Nothing was checked; fix this first."
    unfinished = _unfinished(result)
    crashed = sum(o.status is RuleStatus.CRASHED for o in unfinished)
    rest = (f" {_plural(len(unfinished) - crashed, 'rule')} could not be checked"
            f"{f' and {crashed} crashed' if crashed else ''}: see below." if unfinished else "")
    if result.plugin_problems:
        rest += (f" A plugin failed while it was checked ({result.plugin_problems[0]}), so no rule's verdict "
                 f"can be trusted.")
    if not result.findings:
        if unfinished or result.plugin_problems:
            return f"**Verdict: not fully checked.**{rest}"
        return f"**Verdict: no problems found** ({_plural(len(result.rules_run), 'rule')} checked)."
    errors, warnings = _counts(result.findings)
    return (f"**Verdict: {_plural(len(result.findings), 'problem')} found:** "
            f"{_plural(errors, 'error')}, {_plural(warnings, 'warning')}.{rest}")


def _source_line(location: str | None) -> str | None:
    """The text of the student's line, when the file is readable here."""
    parts = split_location(location)
    if parts is None or parts[1] is None:
        return None
    line = linecache.getline(parts[0], parts[1]).strip()
    return line or None


def _markdown_finding(number: int, finding: Finding) -> list[str]:
    lines = [f"### {number}. {_code(finding.rule)} ({finding.severity}) in layer {_code(_layer(finding))}", "",
             f"- **What is wrong:** {_md(finding.message)}"]
    if finding.expected:
        lines.append(f"- **Expected:** {_md(finding.expected)}")
    if finding.found:
        lines.append(f"- **Found:** {_md(finding.found)}")
    if finding.details:  # a shape trace, say: aligned lines, kept as they are
        fence = "````" if any("```" in d for d in finding.details) else "```"
        lines.extend(["", f"{fence}text", *finding.details, fence, ""])
    where = _code(finding.location) if finding.location else "not known (the layer was built outside a file)"
    lines.append(f"- **Where:** {where}")
    source = _source_line(finding.location)
    if source:
        lines.append(f"  - {_code(source)}")
    if finding.fix:
        lines.append(f"- **How to fix:** {_md(finding.fix)}")
    if finding.fix_edit is not None:
        edit = finding.fix_edit
        lines.append(f"- **Edit:** {_code(f'{edit.file}:{edit.start_line}')}: {_code(edit.shown())} "
                     f"({_md(edit.how_applied())})")
    url = docs_url(finding.rule)
    lines.append(f"- **Docs:** [{_md(finding.rule)}]({url})" if url else f"- **Docs:** `cnncheck rules {finding.rule}`")
    return [*lines, ""]


def _markdown_error(result: ModelResult) -> list[str]:
    stage = f" (stage: {_code(result.error_kind)})" if result.error_kind else ""
    lines = ["## What went wrong", "", f"cnncheck could not check this model{stage}:", "",
             _fenced(result.error or ""), ""]
    if result.location:
        lines.append(f"**Your line:** {_code(result.location)}")
        source = _source_line(result.location)
        if source:
            lines += ["", _fenced(source)]
        lines.append("")
    return lines


def render_markdown(result: ModelResult) -> str:
    """One model's report, written for a student: verdict first, then each problem and its fix."""
    inferred = " (inferred from the first conv)" if result.shape_note else ""
    context = f"Input shape {_code(_shape(result.input_shape))}{inferred} on {_code(result.device)}"
    if result.error is None:
        context += f", {_plural(len(result.rules_run), 'rule')} checked in {result.seconds:.2f} s"
    lines = [f"# cnncheck report: {_code(result.id)}", "", context + ".", "", _verdict(result), ""]
    if result.error is not None:
        lines += _markdown_error(result)
    elif result.findings:
        lines += ["## Problems", ""]
        for number, finding in enumerate(result.findings, 1):
            lines += _markdown_finding(number, finding)
    unfinished = _unfinished(result) if result.error is None else []
    if unfinished:
        lines += ["## Not checked", "", *(f"- {_code(o.rule)}: {_md(_unfinished_reason(o))}" for o in unfinished), ""]
    if result.notes:
        lines += ["## Notes", "", *(f"- {_md(note)}" for note in result.notes), ""]
    return "\n".join(lines).rstrip() + "\n"


def rule_cell(result: ModelResult, rule_id: str) -> tuple[str, str]:
    """One rule's state on one model, as a summary cell shows it: ``(state, text)``, the state one of
    ``passed``, ``findings``, ``not-checked``, ``crashed``, ``error`` (the model could not be checked)
    or ``not-run`` (not selected)."""
    if result.error is not None:
        return "error", "error"
    n = sum(f.rule == rule_id for f in result.findings)
    if n:
        return "findings", f"✗ {n}"
    if rule_id not in result.rules_run:
        return "not-run", "–"
    status = result.state(rule_id).status
    if status is RuleStatus.NOT_CHECKED:
        return "not-checked", "not checked"
    if status is RuleStatus.CRASHED:
        return "crashed", "crashed"
    if result.plugin_problems:  # no pass can be trusted when a plugin broke the check
        return "crashed", "plugin failed"
    return "passed", "✓"


def render_markdown_summary(results: Sequence[ModelResult], *, rules: Sequence[Rule] | None = None,
                            sandbox: str | None = None) -> str:
    """A table, submissions down and rules across (``✗ 2``: two findings, ``✓``: passed, ``–``: not
    selected, ``not checked`` / ``crashed``: see the model's report, ``error``: could not be checked),
    then a totals line."""
    ids = _rule_ids(results, rules)
    lines = ["# cnncheck summary", ""]
    lines += [item for line in _sandbox_line(sandbox) for item in (f"**Sandbox:** {_md(line.split(': ', 1)[1])}", "")]
    lines += ["| submission | " + " | ".join(_code(i) for i in ids) + " |", "|---|" + "---|" * len(ids)]
    for r in results:
        lines.append(f"| {_code(r.id).replace('|', '&#124;')} | "
                     + " | ".join(rule_cell(r, i)[1] for i in ids) + " |")
    lines += ["", f"**Totals:** {_totals_sentence(results)}."]
    inferred = sum(1 for r in results if r.shape_note)
    if inferred:
        lines += ["", f"**Note:** {_md(inferred_shapes_note(inferred))}."]
    return "\n".join(lines) + "\n"


def _render_markdown_all(results: Sequence[ModelResult], *, rules: Sequence[Rule],
                         root: str | os.PathLike[str] | None = None, sandbox: str | None = None) -> str:
    reports = [render_markdown(r) for r in results]
    return "\n---\n\n".join([render_markdown_summary(results, rules=rules, sandbox=sandbox), *reports])


# --------------------------------------------------------------------------------------------------
# junit

_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml(text: str) -> str:
    """Text without the control characters that XML 1.0 cannot hold (ElementTree would write them)."""
    return _XML_INVALID.sub("\ufffd", text)


def _junit_case(suite: ET.Element, result: ModelResult, rule_id: str) -> str:
    """One ``<testcase>`` for one rule on one model; returns ``"failure"``, ``"skipped"``, ``"error"``
    (the rule crashed) or ``"pass"``."""
    case = ET.SubElement(suite, "testcase", classname=_xml(result.id), name=_xml(rule_id), file=_xml(result.file))
    findings = [f for f in result.findings if f.rule == rule_id]
    props = ET.SubElement(case, "properties")
    ET.SubElement(props, "property", name="rule", value=_xml(rule_id))
    for module in dict.fromkeys(_layer(f) for f in findings):
        ET.SubElement(props, "property", name="module", value=_xml(module))
    state = result.state(rule_id)
    if state.status is RuleStatus.CRASHED:
        crash = ET.SubElement(case, "error", message=_xml(f"internal error in rule {rule_id}: {state.reason}"),
                              type="cnncheck-internal-error")
        crash.text = _xml(f"{state.reason}\n\n{CRASH_ADVICE}")
        return "error"
    if not findings and state.status is RuleStatus.NOT_CHECKED:
        ET.SubElement(case, "skipped", message=_xml(f"not checked: {state.reason}"))
        return "skipped"
    if not findings:
        return "pass"
    severity = "error" if any(f.severity is Severity.ERROR for f in findings) else "warning"
    message = findings[0].message if len(findings) == 1 else f"{len(findings)} findings: {findings[0].message}; ..."
    failure = ET.SubElement(case, "failure", message=_xml(message), type=severity)
    failure.text = _xml("\n\n".join(f.render() for f in findings))
    return "failure"


def _junit_error_case(suite: ET.Element, result: ModelResult) -> None:
    case = ET.SubElement(suite, "testcase", classname=_xml(result.id), name=ERROR_ID, file=_xml(result.file),
                         time=f"{result.seconds:.3f}")
    props = ET.SubElement(case, "properties")
    ET.SubElement(props, "property", name="rule", value=ERROR_ID)
    ET.SubElement(props, "property", name="module", value="<model>")
    error = ET.SubElement(case, "error", message=_xml(result.error or ""), type=result.error_kind or "error")
    error.text = _xml("\n".join([result.error or "", *([f"at: {result.location}"] if result.location else [])]))


def _junit_suite(parent: ET.Element, result: ModelResult, rules: Sequence[Rule],
                 sandbox: str | None = None) -> Counter[str]:
    suite = ET.SubElement(parent, "testsuite", name=_xml(result.id), time=f"{result.seconds:.3f}")
    if sandbox is not None:
        properties = ET.SubElement(suite, "properties")
        ET.SubElement(properties, "property", name="cnncheck.sandbox", value=sandbox)
    counts: Counter[str] = Counter()
    if result.error is not None:
        _junit_error_case(suite, result)
        counts["error"] += 1
    else:
        for rule_id in _rules_for(result, rules):
            counts[_junit_case(suite, result, rule_id)] += 1
    if result.notes:  # what the check did beyond the rules (a repair, an inferred shape): CI shows it
        ET.SubElement(suite, "system-out").text = _xml("\n".join(result.notes))
    if result.plugin_problems:  # the plugin's error, not the model's: its verdicts cannot be trusted
        case = ET.SubElement(suite, "testcase", classname=_xml(result.id), name=PLUGIN_ERROR_ID, file=_xml(result.file))
        error = ET.SubElement(case, "error", message=_xml(result.plugin_problems[0]), type="cnncheck-plugin-error")
        error.text = _xml("\n".join(result.plugin_problems))
        counts["error"] += 1
    tests = sum(counts.values())
    suite.attrib.update(tests=str(tests), failures=str(counts["failure"]), errors=str(counts["error"]),
                        skipped=str(counts["skipped"]))
    return counts


def render_junit(results: Sequence[ModelResult], *, rules: Sequence[Rule], sandbox: str | None = None) -> str:
    """JUnit XML: a ``<testsuite>`` per model, a ``<testcase classname=MODEL_ID name=RULE_ID>`` per rule
    run on it (with a ``<failure>`` holding the rendered findings when the rule found something, a
    ``<skipped>`` with the reason when it could not be checked, an ``<error>`` when it crashed), and one
    ``<testcase name="cnncheck-error">`` with an ``<error>`` for a model that could not be checked."""
    root = ET.Element("testsuites", name="cnncheck")
    total: Counter[str] = Counter()
    for result in results:
        total += _junit_suite(root, result, rules, sandbox)
    root.attrib.update(tests=str(sum(total.values())), failures=str(total["failure"]), errors=str(total["error"]),
                       skipped=str(total["skipped"]), time=f"{sum(r.seconds for r in results):.3f}")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


# --------------------------------------------------------------------------------------------------
# sarif


def _absolute(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.abspath(os.fspath(path)))


def artifact_location(path: str, root: str | os.PathLike[str] | None) -> dict[str, str]:
    """A SARIF ``artifactLocation``: relative to ``root`` (with ``uriBaseId`` SRCROOT) when the file is
    under it, else a ``file:`` URI for an absolute path, else the relative path as given; POSIX
    separators and percent-encoding either way."""
    if root is not None:
        try:
            where = Path(path) if os.path.isabs(path) else Path(root) / path  # the CLI writes paths relative to root
            relative = _absolute(where).relative_to(_absolute(root))
        except ValueError:
            pass
        else:
            if os.path.isabs(path) or where.exists():  # not an installed package's own path (torchvision/...)
                return {"uri": quote(relative.as_posix(), errors="surrogateescape"), "uriBaseId": SRCROOT}
    if os.path.isabs(path):
        return {"uri": Path(path).as_uri()}
    return {"uri": quote(Path(path).as_posix(), errors="surrogateescape")}


def _physical_location(location: str | None, root: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    parts = split_location(location)
    if parts is None:
        return None
    physical: dict[str, Any] = {"artifactLocation": artifact_location(parts[0], root)}
    if parts[1] is not None:
        physical["region"] = {"startLine": parts[1]}
    return physical


def _help_uri(rule_id: str) -> str | None:
    """SARIF's ``helpUri`` must be an absolute URI: given only when the docs link is one."""
    url = docs_url(rule_id)
    return url if url is not None and urlsplit(url).scheme else None


def _level(severity: Severity | str) -> str:
    return "error" if str(severity) == "error" else "warning"


def _sarif_rule(rule: Rule) -> dict[str, Any]:
    descriptor: dict[str, Any] = {
        "id": rule.id,
        "shortDescription": {"text": rule.summary},
        "fullDescription": {"text": rule.why},
        "help": {"text": f"{rule.fix}\n\nDocumentation: {docs_reference(rule.id)}",
                 "markdown": f"{rule.fix}\n\nDocumentation: `{docs_reference(rule.id)}`"},
        "defaultConfiguration": {"level": _level(rule.severity)},
        "properties": {"docs": docs_reference(rule.id)},
    }
    uri = _help_uri(rule.id)
    if uri:
        descriptor["helpUri"] = uri
    return descriptor


def _sarif_message(result: ModelResult, finding: Finding) -> str:
    lines = [f"{finding.message} (model {result.id}, layer {_layer(finding)})"]
    if finding.expected:
        lines.append(f"expected: {finding.expected}")
    if finding.found:
        lines.append(f"found: {finding.found}")
    lines.extend(finding.details)
    if finding.fix:
        lines.append(f"fix: {finding.fix}")
    return "\n".join(lines)


def _sarif_result(result: ModelResult, finding: Finding, index: dict[str, int],
                  root: str | os.PathLike[str] | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"ruleId": finding.rule}
    if finding.rule in index:
        entry["ruleIndex"] = index[finding.rule]
    entry["level"] = _level(finding.severity)
    entry["message"] = {"text": _sarif_message(result, finding)}
    physical = _physical_location(finding.location, root)
    if physical is not None:
        entry["locations"] = [{"physicalLocation": physical}]
    if finding.fix_edit is not None:
        entry["fixes"] = [_sarif_fix(finding.fix_edit, root)]
    entry["properties"] = {"model": result.id, "module": finding.module}
    return entry


def _sarif_fix(fix: Any, root: str | os.PathLike[str] | None) -> dict[str, Any]:
    """A SARIF ``fix``: the edit ``cnncheck check --fix`` would make, for code scanning to suggest (an
    unsafe one says so: it changes what the model computes)."""
    region = {"startLine": fix.start_line, "startColumn": fix.start_col, "endLine": fix.end_line,
              "endColumn": fix.end_col}
    text = fix.description if fix.safe else f"{fix.description} (unsafe: it changes what the model computes)"
    return {"description": {"text": text},
            "artifactChanges": [{"artifactLocation": artifact_location(fix.file, root),
                                 "replacements": [{"deletedRegion": region,
                                                   "insertedContent": {"text": fix.replacement}}]}]}


def _sarif_notification(result: ModelResult, root: str | os.PathLike[str] | None) -> dict[str, Any]:
    kind = f" ({result.error_kind})" if result.error_kind else ""
    note: dict[str, Any] = {
        "level": "error",
        "message": {"text": f"{result.id}: could not be checked{kind}: {result.error}"},
        "descriptor": {"id": ERROR_ID, "index": 0},
    }
    physical = _physical_location(result.location or result.file, root)
    if physical is not None:
        note["locations"] = [{"physicalLocation": physical}]
    note["properties"] = {"model": result.id, "error_kind": result.error_kind}
    return note


def _sarif_rule_notification(result: ModelResult, outcome: RuleOutcome, index: dict[str, int]) -> dict[str, Any]:
    """A rule that was not checked (a warning) or crashed (an error: the execution did not succeed)."""
    crashed = outcome.status is RuleStatus.CRASHED
    note: dict[str, Any] = {
        "level": "error" if crashed else "warning",
        "message": {"text": f"{result.id}: {_unfinished_line(outcome)}"},
        "descriptor": {"id": CRASH_ID if crashed else NOT_CHECKED_ID, "index": 2 if crashed else 1},
        "properties": {"model": result.id, "rule": outcome.rule, "status": str(outcome.status)},
    }
    if outcome.rule in index:
        note["associatedRule"] = {"id": outcome.rule, "index": index[outcome.rule]}
    return note


def render_sarif(results: Sequence[ModelResult], *, rules: Sequence[Rule],
                 root: str | os.PathLike[str] | None = None, sandbox: str | None = None) -> str:
    """SARIF 2.1.0: one run whose driver lists the rules, one result per finding, and one tool
    execution notification per model that could not be checked (``executionSuccessful`` is false when
    there is any). File URIs are relative to ``root`` (uriBaseId ``SRCROOT``) when possible."""
    index = {rule.id: i for i, rule in enumerate(rules)}
    notifications = [_sarif_notification(r, root) for r in results if r.error is not None]
    notifications += [_sarif_rule_notification(r, o, index) for r in results if r.error is None
                      for o in _unfinished(r)]
    notifications += [{"level": "error", "message": {"text": f"{r.id}: {problem}"},
                       "descriptor": {"id": CRASH_ID, "index": 2}, "properties": {"model": r.id}}
                      for r in results for problem in r.plugin_problems]
    notifications += [{"level": "note", "message": {"text": f"{r.id}: {note}"}, "properties": {"model": r.id}}
                      for r in results for note in r.notes if note not in r.plugin_problems]
    invocation: dict[str, Any] = {"executionSuccessful": not any(n["level"] == "error" for n in notifications)}
    if notifications:
        invocation["toolExecutionNotifications"] = notifications
    if sandbox is not None:
        from cnncheck.sandbox import describe

        invocation["properties"] = {"sandbox": sandbox, "sandboxDescription": describe(sandbox)}
    driver = {
        "name": "cnncheck",
        "version": __version__,
        "semanticVersion": __version__,
        "rules": [_sarif_rule(rule) for rule in rules],
        "notifications": [{"id": ERROR_ID,
                           "shortDescription": {"text": "A model could not be checked: it did not import, "
                                                        "build or run on its example input."},
                           "defaultConfiguration": {"level": "error"}},
                          {"id": NOT_CHECKED_ID,
                           "shortDescription": {"text": "A rule could not check a model: a pass it needs failed, "
                                                        "or it saw only part of forward."},
                           "defaultConfiguration": {"level": "warning"}},
                          {"id": CRASH_ID,
                           "shortDescription": {"text": "A rule crashed: an error in cnncheck or a plugin."},
                           "defaultConfiguration": {"level": "error"}}],
    }
    run: dict[str, Any] = {
        "tool": {"driver": driver},
        "invocations": [invocation],
        "results": [_sarif_result(r, f, index, root) for r in results for f in r.findings],
    }
    if root is not None:
        run["originalUriBaseIds"] = {SRCROOT: {"uri": _absolute(root).as_uri().rstrip("/") + "/"}}
    log = {"$schema": SARIF_SCHEMA_URI, "version": SARIF_VERSION, "runs": [run]}
    return json.dumps(log, indent=2, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------------------------------
# the --format table


def _format_json(results: Sequence[ModelResult], *, rules: Sequence[Rule],
                 root: str | os.PathLike[str] | None = None, sandbox: str | None = None) -> str:
    return render_json(results, rules=rules, sandbox=sandbox)


def _format_junit(results: Sequence[ModelResult], *, rules: Sequence[Rule],
                  root: str | os.PathLike[str] | None = None, sandbox: str | None = None) -> str:
    return render_junit(results, rules=rules, sandbox=sandbox)


def _format_html(results: Sequence[ModelResult], *, rules: Sequence[Rule],
                 root: str | os.PathLike[str] | None = None, sandbox: str | None = None) -> str:
    from cnncheck.html_report import render_html

    return render_html(results, rules=rules, root=root, sandbox=sandbox)


FORMATS: dict[str, Formatter] = {
    "text": render_text,
    "json": _format_json,
    "markdown": _render_markdown_all,
    "junit": _format_junit,
    "sarif": render_sarif,
    "html": _format_html,
}
"""``--format`` name -> ``fn(results, *, rules, root, sandbox) -> str`` (text ending with a newline)."""
