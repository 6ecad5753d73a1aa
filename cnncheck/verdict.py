"""The one decision every front end shows: each rule's state on a model, and the model's verdict.

``check_model``'s report, the ``cnncheck check`` formats and exit code, the pytest items and the
``cnncheck`` fixture all ask these functions; none decides for itself. A rule ``passed`` only when it
checked the whole model and nothing at or above ``fail_on`` is left (findings a baseline or a layer
ignore took away do not count); a rule that was not checked or crashed never passes.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence

from cnncheck.findings import Finding, RuleOutcome, RuleStatus, Severity


class Verdict(str, enum.Enum):
    """A model's verdict, worst first: the state of its worst rule, or ``error`` when nothing ran."""

    ERROR = "error"  # could not be checked at all: import, build, forward, timeout, memory
    CRASHED = "crashed"  # a rule crashed: cnncheck's (or a plugin's) error, not the student's
    FINDINGS = "findings"
    INCOMPLETE = "incomplete"  # some rule was not checked; the reasons say why
    CLEAN = "clean"

    def __str__(self) -> str:
        return self.value


EXIT_CODES = {Verdict.CLEAN: 0, Verdict.FINDINGS: 1, Verdict.INCOMPLETE: 1, Verdict.ERROR: 1, Verdict.CRASHED: 3}
"""``cnncheck check``'s exit code: the worst over the models (3, like pytest's internal error, is cnncheck's
own failure; 2 is a usage error)."""

REPORT_BUGS = "https://github.com/cnncheck/cnncheck/issues"
CRASH_ADVICE = (f"this is an error in cnncheck (or in the plugin that provides the rule), not in your model; "
                f"please report it at {REPORT_BUGS} with the model's code")


def failing(findings: Iterable[Finding], fail_on: str = "warning") -> list[Finding]:
    """The findings that fail a check: every one, or only errors with ``fail_on="error"``."""
    return [f for f in findings if fail_on == "warning" or f.severity is Severity.ERROR]


def rule_state(outcome: RuleOutcome, findings: Sequence[Finding], fail_on: str = "warning") -> RuleStatus:
    """One rule's state given the findings of it that are still reported."""
    if outcome.status is RuleStatus.CRASHED:
        return RuleStatus.CRASHED
    if failing((f for f in findings if f.rule == outcome.rule), fail_on):
        return RuleStatus.FINDINGS
    if outcome.status is RuleStatus.NOT_CHECKED or outcome.reason:  # saw only part, findings since removed
        return RuleStatus.NOT_CHECKED
    return RuleStatus.PASSED


def verdict(outcomes: Sequence[RuleOutcome], findings: Sequence[Finding], *, error: bool = False,
            fail_on: str = "warning", plugin_failed: bool = False) -> Verdict:
    """``plugin_failed``: a plugin's hook raised during the check (its rules are missing, or a layer kind or
    the example input it should have given was not), so no verdict of this check can be trusted as a pass."""
    if error:
        return Verdict.ERROR
    states = {rule_state(o, findings, fail_on) for o in outcomes}
    if RuleStatus.CRASHED in states or plugin_failed:
        return Verdict.CRASHED
    if RuleStatus.FINDINGS in states or failing((f for f in findings if f.rule not in {o.rule for o in outcomes}),
                                                fail_on):
        return Verdict.FINDINGS
    if RuleStatus.NOT_CHECKED in states:
        return Verdict.INCOMPLETE
    return Verdict.CLEAN


def exit_code(verdicts: Iterable[Verdict]) -> int:
    """The worst verdict's exit code; no model at all is a failure too (1)."""
    codes = [EXIT_CODES[v] for v in verdicts]
    return max(codes) if codes else 1
