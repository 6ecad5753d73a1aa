"""What checking one discovered model produced, in a form that crosses process boundaries.

The ``cnncheck check`` command checks each model in its own worker process; the worker sends back a
:class:`ModelResult` (plain data, JSON-serialisable) and the output formats render lists of them.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from cnncheck.findings import Finding, RuleOutcome, RuleStatus, Severity
from cnncheck.verdict import Verdict, rule_state, verdict


@dataclass
class ModelResult:
    """One model's outcome: its findings, or why it could not be checked, and how long it took."""

    id: str  # "path/to/model.py::ConvNet" (variants: "...::make[wide]")
    file: str
    name: str
    input_shape: tuple[int, ...] | None = None
    device: str = "cpu"
    rules_run: tuple[str, ...] = ()
    findings: list[Finding] = field(default_factory=list)
    error: str | None = None  # could not import, build, run, timed out, out of memory, crashed ...
    error_kind: str | None = None  # the stage that failed: "import", "build", "input-shape", "device", "forward", ...
    location: str | None = None  # the student's file:line for an error, when known
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    outcomes: list[RuleOutcome] = field(default_factory=list)  # one per rule run: passed, findings, ...
    plugin_problems: list[str] = field(default_factory=list)  # a plugin hook that raised: the verdict is "crashed"
    shape_note: str = ""  # why this input shape, when it was inferred rather than declared
    # for the HTML report (``drawn``): the layer table (Architecture.to_dict) and the data flow
    # (Flow.to_dict); plain data, drawn by the process that writes the report
    architecture: dict[str, Any] | None = None
    flow: dict[str, Any] | None = None
    # for fixes (``sites``): where each conv, linear and pooling layer was built (``file:line:column``) ->
    # the layers built there; a fix at a call is safe only when every layer it built, in every model, asks for it
    layer_sites: dict[str, list[str]] | None = None

    @property
    def verdict(self) -> Verdict:
        return verdict(self.outcomes, self.findings, error=self.error is not None,
                       plugin_failed=bool(self.plugin_problems))

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.CLEAN

    def outcome(self, rule_id: str) -> RuleOutcome:
        """A rule's outcome as the check recorded it. A report from before outcomes were recorded has none:
        its rules are taken to have passed; a rule missing from a report that has them was not run."""
        recorded = next((o for o in self.outcomes if o.rule == rule_id), None)
        if recorded is not None:
            return recorded
        if not self.outcomes:
            return RuleOutcome(rule_id, RuleStatus.PASSED)
        return RuleOutcome(rule_id, RuleStatus.NOT_CHECKED, "cnncheck did not run this rule on the model")

    def state(self, rule_id: str) -> RuleOutcome:
        """A rule's outcome as it stands after baselines (``reason`` says why it is not a plain pass or
        findings)."""
        outcome = self.outcome(rule_id)
        return RuleOutcome(rule_id, rule_state(outcome, self.findings), outcome.reason)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.ERROR]

    def relative_to(self, root: str | os.PathLike[str]) -> ModelResult:
        """This result with every path under ``root`` written relative to it, in every text it holds (ids,
        locations, messages, reasons, notes): a teacher's /home/... does not belong in a student's report.

        Only a path that starts with ``root`` and a separator is rewritten (``/data/home/t/x`` keeps its
        ``home/t`` when ``root`` is ``/home/t``). The filesystem's root is no folder to be relative to:
        under ``/`` every path stays as it is, absolute (``tmp/x/model.py`` would read as a path from the
        current folder)."""
        base = os.path.abspath(os.fspath(root))
        if os.path.dirname(base) == base:  # "/": nothing of the teacher's to hide, and nothing to strip
            return ModelResult.from_dict(self.to_dict())
        return ModelResult.from_dict(_without(self.to_dict(), _leading(base + os.sep)))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        # a finding's change is the worker's request for a fix, used up before a report is written
        data["findings"] = [{k: v for k, v in dict(asdict(f), severity=str(f.severity)).items()
                             if k != "change" or v is not None} for f in self.findings]
        data["input_shape"] = list(self.input_shape) if self.input_shape else None
        data["rules_run"] = list(self.rules_run)
        data["outcomes"] = [{"rule": o.rule, "status": str(o.status), "reason": o.reason} for o in self.outcomes]
        for drawn in ("architecture", "flow", "layer_sites"):
            if data[drawn] is None:
                del data[drawn]
        data["verdict"] = str(self.verdict)  # for readers of the report; from_dict derives it again
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelResult:
        from cnncheck.changes import change_from_dict
        from cnncheck.fixes import Fix

        findings = [
            Finding(**dict(f, severity=Severity(f["severity"]), details=tuple(f.get("details", ())),
                           change=change_from_dict(f.get("change")),
                           fix_edit=Fix.from_dict(f["fix_edit"]) if f.get("fix_edit") else None))
            for f in data.get("findings", [])
        ]
        data = {k: v for k, v in data.items() if k != "verdict"}  # derived, never taken from a worker
        shape = data.get("input_shape")
        outcomes = [RuleOutcome(o["rule"], RuleStatus(o["status"]), o.get("reason", ""))
                    for o in data.get("outcomes", [])]
        return cls(**{**data, "findings": findings, "input_shape": tuple(shape) if shape else None,
                      "rules_run": tuple(data.get("rules_run", ())), "outcomes": outcomes})


def _leading(prefix: str) -> re.Pattern[str]:
    """``prefix`` where a path starts: not inside a longer path (after a name, a dot, a ``~`` or a
    separator), so that only the paths under the root lose it."""
    return re.compile(r"(?<![\w.~/\\-])" + re.escape(prefix))


def _without(value: Any, prefix: re.Pattern[str]) -> Any:
    if isinstance(value, str):
        return prefix.sub("", value)
    if isinstance(value, dict):
        return {k: _without(v, prefix) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_without(v, prefix) for v in value)
    return value
