"""Running the rules on one model: one status per rule, and checking on past a diagnosed failure.

A rule's status says what it did: it ``passed`` only when it read every pass it needs, each ran to the
end, and it found nothing. A pass that failed makes the rules that need it ``not checked``, with the
reason; an exception in a rule makes it ``crashed``. When the train forward raises, every rule that can
diagnose a failure is asked, selected or not; a diagnosis with a repair (the Linear of the wrong size)
lets the other rules check the rest of forward as if it were fixed, and the report says so. A NaN or Inf
where the probes compare values (a weight, the input, a layer's input in forward) makes the rules that
compare values ``not checked``; the structural rules check on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cnncheck.context import CheckContext, NotChecked
from cnncheck.findings import Finding, RuleOutcome, RuleStatus
from cnncheck.rules import Diagnosis, Pass, Rule

MAX_REPAIRS = 4
"""A forward with more wrong sizes than this is checked up to the last repaired one."""


@dataclass
class RuleResults:
    findings: list[Finding] = field(default_factory=list)
    outcomes: list[RuleOutcome] = field(default_factory=list)


class UnexplainedFailure(Exception):
    """The train forward raised and no rule can say why: the model cannot be checked at all.
    ``crashed``: the rules whose diagnosis raised while they were asked (a plugin's bug, reported too)."""

    def __init__(self, crashed: dict[str, str]) -> None:
        super().__init__()
        self.crashed = crashed


def run_rules(ctx: CheckContext, selected: list[Rule], registered: list[Rule]) -> RuleResults:
    """Every selected rule's findings and status. ``registered`` are all the rules, asked to diagnose a
    forward that raises. Raises :class:`UnexplainedFailure` when the train forward raises and none can."""
    diagnoses, crashed = diagnose(ctx, registered)
    ctx.non_finite(frozenset())  # a NaN weight or input is a note about the whole model, whichever rules run
    results = RuleResults()
    for rule in selected:
        found = [d.finding for d in diagnoses if d.finding.rule == rule.id]
        if rule.id in crashed:
            results.findings += found
            results.outcomes.append(RuleOutcome(rule.id, RuleStatus.CRASHED, crashed[rule.id]))
            continue
        outcome = _run(ctx, rule, found)
        results.findings += found
        results.outcomes.append(outcome)
    return results


def _run(ctx: CheckContext, rule: Rule, found: list[Finding]) -> RuleOutcome:
    """Run one rule, appending its findings to ``found`` as they come (a crash keeps the earlier ones)."""
    ctx.read.clear()
    try:
        for need in [p for p in Pass if p in rule.needs]:  # the train pass first: the others build on it
            ctx.require(need)
        if rule.compares_values:  # its probes would pass or fail by accident on NaN or Inf
            ctx.require_finite(rule.needs)
        if rule.needs_whole_passes and (partial := ctx.partial_reason(rule.needs)):
            raise NotChecked(partial)  # "never ran" is not true of the part of forward after a failure
        for finding in rule.check(ctx, rule):
            found.append(finding)
        for need in [p for p in Pass if p in ctx.read - rule.needs]:  # read, though the rule did not declare it
            ctx.require(need)
    except NotChecked as exc:
        return RuleOutcome(rule.id, RuleStatus.FINDINGS if found else RuleStatus.NOT_CHECKED, str(exc))
    except Exception as exc:  # one broken rule must not take the others down
        return RuleOutcome(rule.id, RuleStatus.CRASHED, f"{type(exc).__name__}: {exc}")
    partial = ctx.partial_reason(rule.needs | ctx.read) or ""
    if found:
        return RuleOutcome(rule.id, RuleStatus.FINDINGS, partial)
    return RuleOutcome(rule.id, RuleStatus.NOT_CHECKED if partial else RuleStatus.PASSED, partial)


def diagnose(ctx: CheckContext, rules: list[Rule]) -> tuple[list[Diagnosis], dict[str, str]]:
    """While the train forward raises, the diagnosis of the first rule that can explain it, repaired
    where it can be so that the next run goes further. Also the rules whose diagnosis crashed."""
    diagnoses: list[Diagnosis] = []
    crashed: dict[str, str] = {}
    while ctx.train_trace.failed is not None and len(diagnoses) < MAX_REPAIRS:
        diagnosis = None
        for rule in rules:
            if rule.diagnose is None or rule.id in crashed:
                continue
            try:
                diagnosis = rule.diagnose(ctx, rule)
            except Exception as exc:
                crashed[rule.id] = f"{type(exc).__name__}: {exc}"
                continue
            if diagnosis is not None:
                break
        if diagnosis is None:
            break
        diagnoses.append(diagnosis)
        ctx.explained_failure(diagnosis)
        if diagnosis.repair is None:
            break
        ctx.repair(diagnosis.repair)
    if not diagnoses and ctx.train_trace.error is not None:
        raise UnexplainedFailure(crashed)
    return diagnoses, crashed
