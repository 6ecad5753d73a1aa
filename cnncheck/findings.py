"""Findings and reports: structured values that become text only at the edge."""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cnncheck.changes import Change
    from cnncheck.fixes import Fix


class Severity(str, enum.Enum):
    """How bad a finding is. Errors make a model wrong; warnings waste or mislead."""

    ERROR = "error"
    WARNING = "warning"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing wrong with one layer of one model.

    ``module`` is the qualified name from ``model.named_modules()`` (``""`` for the model itself;
    ``parent.attr[0]`` for a layer kept in a plain list or dict). ``location`` is ``file:line`` where
    the layer was built or where the functional call sits in ``forward``, when it can be known.
    ``change`` is what the rule asks to change in the source (:mod:`cnncheck.changes`); ``fix_edit`` is
    the edit of the student's file that makes it, when the process that reports found it exactly
    (:mod:`cnncheck.fixes`).
    """

    rule: str
    module: str
    severity: Severity
    message: str
    expected: str = ""
    found: str = ""
    fix: str = ""
    location: str | None = None
    details: tuple[str, ...] = ()
    change: Change | None = None
    fix_edit: Fix | None = None

    def render(self) -> str:
        """The finding as a few lines a student reads top to bottom."""
        where = self.module or "<model>"
        lines = [f"{self.rule} [{self.severity}] {where}: {self.message}"]
        if self.expected:
            lines.append(f"  expected: {self.expected}")
        if self.found:
            lines.append(f"  found:    {self.found}")
        lines.extend(f"  {line}" for line in self.details)
        if self.location:
            lines.append(f"  at:       {self.location}")
        if self.fix:
            lines.append(f"  fix:      {self.fix}")
        if self.fix_edit is not None:
            edit = self.fix_edit
            lines.append(f"  edit:     {edit.file}:{edit.start_line}: {edit.shown()}  ({edit.how_applied()})")
        lines.append(f"  docs:     {docs_reference(self.rule)}")
        return "\n".join(lines)


DOCS_URL_VARIABLE = "CNNCHECK_DOCS_URL"
"""A template such as ``https://docs.example.org/rules/{rule}.html``: where a course or a company
publishes the rule pages (``cnncheck rules --write-docs DIR`` writes them)."""


def docs_url(rule_id: str) -> str | None:
    """The published page of a rule, when ``CNNCHECK_DOCS_URL`` says where the pages are."""
    template = os.environ.get(DOCS_URL_VARIABLE, "").strip()
    if not template:
        return None
    return template.replace("{rule}", rule_id) if "{rule}" in template else f"{template.rstrip('/')}/{rule_id}"


def docs_reference(rule_id: str) -> str:
    """Where a reader finds a rule's page: its published URL, or the command that prints it (a path in
    this repository would be a broken link in a student's report)."""
    return docs_url(rule_id) or f"cnncheck rules {rule_id}"


class RuleStatus(str, enum.Enum):
    """What one rule did on one model. Only ``passed`` means the rule looked at all of it and found nothing."""

    PASSED = "passed"
    FINDINGS = "findings"
    NOT_CHECKED = "not-checked"  # a pass it needs failed, or it saw only part of forward: see the reason
    CRASHED = "crashed"  # cnncheck's own error (or a plugin rule's): a bug to report, never a pass

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class RuleOutcome:
    """One rule's status on one model, with the reason when it is not a plain pass or findings."""

    rule: str
    status: RuleStatus
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RuleCrash:
    """A rule that raised instead of answering: reported, never allowed to stop the other rules."""

    rule: str
    error: str


@dataclass
class Report:
    """The result of :func:`cnncheck.check_model`: every finding, and what each rule did (``outcomes``)."""

    model_name: str
    input_shape: tuple[int, ...]
    device: str
    rules_run: tuple[str, ...]
    findings: list[Finding] = field(default_factory=list)
    outcomes: list[RuleOutcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plugin_problems: list[Any] = field(default_factory=list)
    suppressed: list[Finding] = field(default_factory=list)
    unused_ignores: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> Any:
        """The model's :class:`~cnncheck.verdict.Verdict`: clean, findings, incomplete or crashed."""
        from cnncheck.verdict import verdict

        return verdict(self.outcomes, self.findings, plugin_failed=bool(self.plugin_problems))

    @property
    def ok(self) -> bool:
        """True when every rule checked the whole model and found nothing, and no plugin misbehaved."""
        from cnncheck.verdict import Verdict

        return self.verdict is Verdict.CLEAN

    @property
    def crashes(self) -> list[RuleCrash]:
        return [RuleCrash(o.rule, o.reason) for o in self.outcomes if o.status is RuleStatus.CRASHED]

    @property
    def not_checked(self) -> list[RuleOutcome]:
        return [o for o in map(self.status, self.rules_run) if o.status is RuleStatus.NOT_CHECKED]

    def status(self, rule_id: str) -> RuleOutcome:
        """The outcome of one rule as it stands after layer ignores (a rule whose findings were all
        suppressed passed, unless it saw only part of forward); ``KeyError`` for a rule not selected."""
        from cnncheck.verdict import rule_state

        for outcome in self.outcomes:
            if outcome.rule == rule_id:
                return RuleOutcome(rule_id, rule_state(outcome, self.findings), outcome.reason)
        raise KeyError(f"rule {rule_id!r} was not run on {self.model_name}; rules run: {', '.join(self.rules_run)}")

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.WARNING]

    def by_rule(self, rule_id: str) -> list[Finding]:
        return [f for f in self.findings if f.rule == rule_id]

    def __str__(self) -> str:
        shape = "x".join(str(s) for s in self.input_shape)
        head = f"cnncheck: {self.model_name} on input {shape} ({self.device})"
        tail = [f"unused ignore {p!r}: it matches no finding; remove it" for p in self.unused_ignores]
        tail += self.notes
        if self.ok:
            return "\n".join([f"{head}: no findings ({len(self.rules_run)} rules)", *tail])
        parts = [head + ":"]
        if self.findings:
            parts += [render_findings(self.findings), ""]
        parts.extend(f"not checked: {o.rule}: {o.reason}" for o in self.not_checked)
        if self.crashes:
            from cnncheck.verdict import CRASH_ADVICE

            parts.extend(f"internal error in rule {c.rule}: {c.error}" for c in self.crashes)
            parts.append(f"({CRASH_ADVICE})")
        parts.extend(str(p) for p in self.plugin_problems)
        parts.extend(tail)
        counts = f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)"
        if self.not_checked:
            counts += f", {len(self.not_checked)} rule(s) not checked"
        if self.crashes:
            counts += f", {len(self.crashes)} rule(s) crashed"
        parts.append(counts)
        return "\n".join(parts).rstrip()


def render_findings(findings: list[Finding]) -> str:
    """A summary table, then every finding in full."""
    return "\n".join([_table(findings), "", *(f.render() + "\n" for f in findings)]).rstrip() + "\n"


def _table(findings: list[Finding]) -> str:
    """A plain aligned table: it must read well in a CI log, so no colours or box characters."""
    header = ("rule", "module", "severity", "what is wrong")
    rows = [(f.rule, f.module or "<model>", str(f.severity), f.message) for f in findings]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    lines = []
    for row in [header, *rows]:
        cells = [row[i].ljust(widths[i]) for i in range(3)]
        lines.append("  ".join([*cells, row[3]]))
    lines.insert(1, "  ".join("-" * w for w in [*widths, len(header[3])]))
    return "\n".join(lines)
