"""Rule metadata, rule selection, and the one renderer shared by ``cnncheck rules`` and the docs."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from cnncheck.findings import Finding, Severity

if TYPE_CHECKING:
    import torch
    from torch import nn

    from cnncheck.changes import Change
    from cnncheck.context import CheckContext


class Pass(str, enum.Enum):
    """A run of the model that rules look at. The engine computes each once, on first need; a rule that
    needs one that failed is reported as not checked, with the reason."""

    TRAIN = "train"  # the traced forward in train mode, to its end
    GRADIENTS = "gradients"  # gradients from the train forward's output back to its layers
    EVAL = "eval"  # the forward after model.eval()
    ONE_SAMPLE = "one-sample"  # the eval forward of the first sample alone

    def __str__(self) -> str:
        return self.value


class CheckFunction(Protocol):
    def __call__(self, ctx: CheckContext, rule: Rule) -> Iterable[Finding]: ...


@dataclass(frozen=True, slots=True)
class Repair:
    """How to run the rest of forward as if a diagnosed defect were fixed: one call's input is cut or
    zero-padded along ``dim`` to ``size`` (a Linear's ``in_features``). The call is ``module`` (its first
    input); or, with ``module=None``, every ``F.linear`` whose weight is ``weight``, or the
    ``x.view(-1, size)``/``reshape`` at the ``file:line`` ``reshape_at``, whose input is then fitted to
    ``size`` features per sample."""

    module: nn.Module | None
    dim: int
    size: int
    what: str  # "as if fc1 received 36 features"
    weight: torch.Tensor | None = None
    reshape_at: str | None = None


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """Why the train forward raised, as a finding, and the repair that lets the other rules go on."""

    finding: Finding
    repair: Repair | None = None


class DiagnoseFunction(Protocol):
    def __call__(self, ctx: CheckContext, rule: Rule) -> Diagnosis | None: ...


@dataclass(frozen=True, slots=True)
class Rule:
    """A rule: a stable id, its documentation, and the check that applies it.

    Ids are a public contract: they never change and are never reused.
    """

    id: str
    summary: str
    why: str
    fix: str
    severity: Severity
    check: CheckFunction
    flagged_example: str = ""
    clean_example: str = ""
    limits: str = ""
    autofix: str = ""
    """What ``cnncheck check --fix`` changes in the source for this rule's findings, and when (safe fixes,
    and the unsafe ones that ``--unsafe-fixes`` adds); empty when it has no fix."""
    needs: frozenset[Pass] = frozenset({Pass.TRAIN})
    """The passes the check reads; when one fails the rule is not checked, and the report says why."""
    compares_values: bool = True
    """Whether the verdict rests on values a probe compares (outputs, gradients): such a rule is not
    checked when a weight, the input or a layer's input holds NaN or Inf. A rule that reads only shapes,
    counts and the dataflow sets False (a plugin's rule is taken to compare values)."""
    needs_whole_passes: bool = False
    """Whether the rule's findings say that something never happened (a layer forward never ran, a
    gradient that never arrived): such findings are true only of a whole pass, so when the rules saw only
    part of forward (it stopped at an explained failure) the rule is not checked instead of run."""
    diagnose: DiagnoseFunction | None = None
    """For a rule that explains a forward that raises (a Linear of the wrong size): asked whenever the
    train forward fails, whether or not the rule is selected, so the selection never decides whether a
    model can be checked."""

    def finding(
        self,
        module: str,
        message: str,
        *,
        expected: str = "",
        found: str = "",
        fix: str | None = None,
        location: str | None = None,
        details: Sequence[str] = (),
        severity: Severity | None = None,
        change: Change | None = None,
    ) -> Finding:
        return Finding(
            rule=self.id,
            module=module,
            severity=severity or self.severity,
            message=message,
            expected=expected,
            found=found,
            fix=self.fix if fix is None else fix,
            location=location,
            details=tuple(details),
            change=change,
        )


def matches(rule_id: str, patterns: Iterable[str]) -> bool:
    """ruff-style matching: a pattern selects the id itself or any id it is a dash-prefix of."""
    for pattern in patterns:
        if pattern == "ALL" or rule_id == pattern or rule_id.startswith(pattern.rstrip("-") + "-"):
            return True
    return False


def select_rules(
    rules: Sequence[Rule],
    select: Iterable[str] | None = None,
    ignore: Iterable[str] = (),
) -> list[Rule]:
    """The rules to run: those matched by ``select`` (all when None) minus those matched by ``ignore``.
    A per-layer ignore (``rule:module-glob``) removes no rule: it suppresses the findings at those layers,
    later; only its rule part is checked here.

    A pattern that matches no known rule is a usage error: a typo must not silently check nothing.
    """
    select = list(select) if select is not None else None
    rule_ignores = [p for p in ignore if ":" not in p]
    known = [r.id for r in rules]
    for pattern in [*(select or []), *(p.partition(":")[0] for p in ignore)]:
        if not any(matches(rule_id, [pattern]) for rule_id in known):
            raise ValueError(
                f"unknown cnncheck rule {pattern!r}; known rules: {', '.join(sorted(known))}"
            )
    chosen = [r for r in rules if select is None or matches(r.id, select)]
    return [r for r in chosen if not matches(r.id, rule_ignores)]


def render_markdown(rule: Rule) -> str:
    """The documentation page of a rule: the single source for docs/rules/ID.md and the CLI."""
    parts = [
        f"# `{rule.id}`",
        "",
        f"**Default severity:** {rule.severity}",
        "",
        f"**What it flags.** {rule.summary}",
        "",
        "## Why it matters",
        "",
        rule.why,
        "",
        "## How to fix",
        "",
        rule.fix,
    ]
    if rule.flagged_example:
        parts += ["", "## Flagged", "", "```python", rule.flagged_example.strip(), "```"]
    if rule.clean_example:
        parts += ["", "## Not flagged", "", "```python", rule.clean_example.strip(), "```"]
    if rule.autofix:
        parts += ["", "## Automatic fix", "", rule.autofix]
    if rule.limits:
        parts += ["", "## Known limits", "", rule.limits]
    return "\n".join(parts) + "\n"


def render_index(rules: Sequence[Rule]) -> str:
    """docs/rules/index.md: every rule with its severity and summary."""
    lines = ["# cnncheck rules", "", "| id | severity | what it flags |", "|---|---|---|"]
    lines += [f"| [`{r.id}`]({r.id}.md) | {r.severity} | {r.summary} |" for r in rules]
    return "\n".join(lines) + "\n"


def render_text(rule: Rule) -> str:
    """A terminal rendering of the same content as :func:`render_markdown`."""
    return render_markdown(rule).replace("```python\n", "").replace("```\n", "")
