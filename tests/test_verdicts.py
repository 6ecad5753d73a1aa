"""A pass means checked: every rule's state (passed, findings, not checked, crashed) is the same in the
report, the pytest items, every CLI format and the exit code."""

from __future__ import annotations

import importlib.util
import json
import textwrap
import xml.etree.ElementTree as ET

import pytest
import torch
import torch.nn.functional as F
from test_pytest_plugin import CLEAN
from torch import nn

import cnncheck
from cnncheck import cli
from cnncheck.findings import RuleStatus
from cnncheck.formats import FORMATS
from cnncheck.verdict import Verdict

pytest_plugins = ["pytester"]

CRASHING_PLUGIN = """
import cnncheck
from cnncheck.findings import Severity
from cnncheck.rules import Rule


def explode(ctx, rule):
    raise RuntimeError("boom in the rule")


@cnncheck.hookimpl
def cnncheck_register_rules():
    return [Rule(id="explodes", summary="always crashes", why="a test", fix="none", severity=Severity.ERROR,
                 check=explode)]
"""

CLEAN_MODEL = CLEAN  # one clean declared model for the plugin tests and these

EVAL_CRASH_MODEL = """
import torch
from torch import nn
import cnncheck


@cnncheck.model(input_shape=(2, 3, 8, 8))
class CrashesAtInference(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        if not self.training:
            raise ValueError("inference is not implemented")
        return self.bn(self.conv(x)).mean(dim=(2, 3))
"""


class MismatchThenDefects(nn.Module):
    """fc1 is built for the wrong size; after it, a Linear -> BatchNorm1d bias and an F.dropout that
    ignores eval mode. Both were missed while the other rules saw only forward up to fc1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc1 = nn.Linear(100, 32)  # the map is 4x6x6 = 144
        self.bn1 = nn.BatchNorm1d(32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x))).flatten(1)
        x = torch.relu(self.bn1(self.fc1(x)))
        return self.fc2(F.dropout(x, 0.3))


def test_rules_check_past_a_repaired_linear_mismatch() -> None:
    report = cnncheck.check_model(MismatchThenDefects(), (4, 1, 8, 8))
    found = {(f.rule, f.module) for f in report.findings}
    assert found == {("feature-size-mismatch", "fc1"), ("redundant-bias-before-bn", "fc1"),
                     ("mode-not-propagated", "")}, report
    assert any("as if fc1 received 100 features" in note for note in report.notes), report.notes
    assert report.status("conv-param-formula").status is RuleStatus.PASSED


class FunctionalMismatchThenDefects(MismatchThenDefects):
    """The same defects, with fc1 applied as F.linear on the model's own weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x))).flatten(1)
        x = torch.relu(self.bn1(F.linear(x, self.fc1.weight, self.fc1.bias)))
        return self.fc2(F.dropout(x, 0.3))


class ViewMismatchThenDefects(MismatchThenDefects):
    """The same defects, with a hard-coded x.view(-1, 100) in front of fc1 (144 features do not fit:
    4 samples x 144 is no multiple of 100, so the view raises)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.bn1(self.fc1(x.view(-1, 100))))
        return self.fc2(F.dropout(x, 0.3))


@pytest.mark.parametrize(("factory", "repaired"), [
    (FunctionalMismatchThenDefects, "as if F.linear with fc1.weight received 100 features"),
    (ViewMismatchThenDefects, "as if view(-1, 100) at "),
], ids=["functional-linear", "view"])
def test_rules_check_past_a_repaired_functional_mismatch(factory, repaired) -> None:
    model = factory()
    report = cnncheck.check_model(model, (4, 1, 8, 8))
    with pytest.raises(RuntimeError):  # the repair is gone with the check
        F.linear(torch.zeros(4, 144), model.fc1.weight)
    with pytest.raises(RuntimeError):
        model(torch.zeros(4, 1, 8, 8))
    found = {(f.rule, f.module) for f in report.findings}
    assert {"feature-size-mismatch", "redundant-bias-before-bn", "mode-not-propagated"} == {r for r, _ in found}, report
    assert "32 bias parameters" in next(f.found for f in report.findings if f.rule == "redundant-bias-before-bn")
    assert any(repaired in note for note in report.notes), report.notes
    assert all(o.status in (RuleStatus.PASSED, RuleStatus.FINDINGS) for o in report.outcomes), report.outcomes
    assert report.verdict is Verdict.FINDINGS


class ComputedWeightMismatch(MismatchThenDefects):
    """F.linear on a weight computed in forward: explained, but not repairable (no tensor to recognise
    on the next pass), so the rules after it are not checked."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x))).flatten(1)
        return F.linear(x, self.fc1.weight * 2.0)


def test_a_mismatch_on_a_computed_weight_is_explained_and_the_rest_not_checked() -> None:
    report = cnncheck.check_model(ComputedWeightMismatch(), (4, 1, 8, 8))
    assert [f.rule for f in report.findings] == ["feature-size-mismatch"], report
    assert "expects 100 = 4*5*5 input features but gets 144" in report.findings[0].message
    assert report.status("redundant-bias-before-bn").status is RuleStatus.NOT_CHECKED
    assert not any("as if" in note for note in report.notes)


class FlattensTheBatch(nn.Module):
    """A Linear fed the whole batch as one vector: explained, but not repairable."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(144, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flatten())


def test_rules_that_saw_part_of_forward_are_not_checked_with_the_reason() -> None:
    report = cnncheck.check_model(FlattensTheBatch(), (4, 1, 8, 8))
    assert [f.rule for f in report.findings] == ["feature-size-mismatch"]
    assert report.status("feature-size-mismatch").status is RuleStatus.FINDINGS
    partial = report.status("conv-param-formula")
    assert partial.status is RuleStatus.NOT_CHECKED
    assert "forward stops at fc" in partial.reason and "feature-size-mismatch explains why" in partial.reason
    assert report.status("redundant-bias-before-bn").status is RuleStatus.NOT_CHECKED
    assert report.verdict is Verdict.FINDINGS and not report.ok
    assert "not checked: conv-param-formula: forward stops at fc" in str(report)


def _defined_in(source: str, name: str) -> type[nn.Module]:
    """A model class from one of the sources above, for the tests that check it in this process."""
    namespace: dict[str, object] = {}
    exec(compile(source, f"{name}.py", "exec"), namespace)
    return namespace[name]  # type: ignore[return-value]


CrashesAtInference = _defined_in(EVAL_CRASH_MODEL, "CrashesAtInference")


def test_an_eval_only_crash_is_not_a_pass() -> None:
    report = cnncheck.check_model(CrashesAtInference(), (2, 3, 8, 8))
    outcome = report.status("bn-eval-behaviour")
    assert outcome.status is RuleStatus.NOT_CHECKED
    assert "forward raises in eval mode: ValueError: inference is not implemented" in outcome.reason
    assert report.status("conv-param-formula").status is RuleStatus.PASSED  # the train pass is whole
    assert report.verdict is Verdict.INCOMPLETE and not report.ok
    with pytest.raises(cnncheck.CheckFailed, match="not checked: bn-eval-behaviour"):
        cnncheck.assert_cnn_correct(CrashesAtInference(), (2, 3, 8, 8))


def _one_rule(rule_id: str, check, **extra):
    """A plugin object that registers one error rule."""

    class OneRule:
        @cnncheck.hookimpl
        def cnncheck_register_rules(self):
            return [cnncheck.Rule(id=rule_id, summary="", why="", fix="", severity=cnncheck.Severity.ERROR, check=check,
                                  **extra)]

    return OneRule()


def test_a_crashing_plugin_rule_fails_the_report_and_the_assertion() -> None:
    def explode(ctx, rule):
        raise RuntimeError("boom in the rule")

    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
    report = cnncheck.check_model(model, (2, 3, 8, 8), plugins=[_one_rule("explodes", explode)])
    assert report.status("explodes").status is RuleStatus.CRASHED
    assert "RuntimeError: boom in the rule" in report.status("explodes").reason
    assert report.verdict is Verdict.CRASHED and not report.ok
    assert "please report it" in str(report)
    with pytest.raises(cnncheck.CheckFailed, match="internal error in rule explodes"):
        cnncheck.assert_cnn_correct(model, (2, 3, 8, 8), plugins=[_one_rule("explodes", explode)])


def test_a_plugin_rule_that_reads_a_pass_it_did_not_declare_is_judged_by_it() -> None:
    """A rule declares the passes it reads; one that reads the eval pass anyway is not checked when that
    pass raises, as if it had declared it (never a pass on half of it)."""
    spec = importlib.util.spec_from_loader("eval_crash_model", loader=None)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    exec(EVAL_CRASH_MODEL, module.__dict__)

    def counts_eval_ops(ctx, rule):
        return [] if ctx.eval_trace.nodes is not None else []

    report = cnncheck.check_model(module.CrashesAtInference(), (2, 3, 8, 8), checks=["course-undeclared"],
                                  plugins=[_one_rule("course-undeclared", counts_eval_ops)])
    outcome = report.status("course-undeclared")
    assert outcome.status is RuleStatus.NOT_CHECKED and "forward raises in eval mode" in outcome.reason


def test_a_crashing_diagnosis_is_reported_with_the_forward_that_raised() -> None:
    class Unrelated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            raise ValueError("the student's own bug")

    def broken_diagnosis(ctx, rule):
        raise RuntimeError("the diagnosis broke")

    with pytest.raises(cnncheck.CheckError) as info:
        cnncheck.check_model(Unrelated(), (2, 3, 8, 8),
                             plugins=[_one_rule("course-diagnoses", lambda ctx, rule: [], diagnose=broken_diagnosis)])
    message = str(info.value)
    assert "ValueError" in message and "the student's own bug" in message
    assert "rule course-diagnoses crashed: RuntimeError: the diagnosis broke" in message and "please report" in message


# -- the command: every format and the exit code -------------------------------------------------------
def _run_cli(tmp_path, monkeypatch, source: str, fmt: str, *extra: str) -> tuple[int, str]:
    (tmp_path / "crashing_rule.py").write_text(CRASHING_PLUGIN)
    (tmp_path / "model.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / f"report.{fmt}"
    code = cli.main(["check", str(tmp_path / "model.py"), "--format", fmt, "--output", str(out), *extra])
    return code, out.read_text(encoding="utf-8")


def test_a_crashed_rule_in_every_format_and_the_exit_code(tmp_path, monkeypatch) -> None:
    results = {}
    for fmt in FORMATS:
        results[fmt] = _run_cli(tmp_path, monkeypatch, CLEAN_MODEL, fmt, "--plugin", "crashing_rule")
    assert {code for code, _ in results.values()} == {3}
    assert "internal error in rule explodes: RuntimeError: boom in the rule" in results["text"][1]
    assert "please report it" in results["text"][1]
    model = json.loads(results["json"][1])["models"][0]
    assert {"rule": "explodes", "status": "crashed", "reason": "RuntimeError: boom in the rule"} in model["outcomes"]
    assert json.loads(results["json"][1])["summary"]["crashed"] == 1
    assert "crashed" in results["markdown"][1] and "## Not checked" in results["markdown"][1]
    assert "`explodes`: crashed: RuntimeError: boom in the rule" in results["markdown"][1]
    case = next(c for c in ET.fromstring(results["junit"][1]).iter("testcase") if c.get("name") == "explodes")
    assert case.find("error") is not None and case.find("error").get("type") == "cnncheck-internal-error"
    invocation = json.loads(results["sarif"][1])["runs"][0]["invocations"][0]
    assert invocation["executionSuccessful"] is False
    assert any(n["descriptor"]["id"] == "cnncheck-internal-error" and n["associatedRule"]["id"] == "explodes"
               for n in invocation["toolExecutionNotifications"])


def test_a_rule_not_checked_in_every_format_and_the_exit_code(tmp_path, monkeypatch) -> None:
    results = {fmt: _run_cli(tmp_path, monkeypatch, EVAL_CRASH_MODEL, fmt) for fmt in FORMATS}
    assert {code for code, _ in results.values()} == {1}
    assert "not checked: bn-eval-behaviour: forward raises in eval mode" in results["text"][1]
    assert "incomplete" in results["text"][1]
    model = json.loads(results["json"][1])["models"][0]
    states = {o["rule"]: o["status"] for o in model["outcomes"]}
    assert states["bn-eval-behaviour"] == "not-checked" and states["conv-param-formula"] == "passed"
    assert json.loads(results["json"][1])["summary"]["incomplete"] == 1
    assert "**Verdict: not fully checked.**" in results["markdown"][1]
    cases = {c.get("name"): c for c in ET.fromstring(results["junit"][1]).iter("testcase")}
    assert cases["bn-eval-behaviour"].find("skipped") is not None
    assert cases["conv-param-formula"].find("skipped") is None
    invocation = json.loads(results["sarif"][1])["runs"][0]["invocations"][0]
    assert invocation["executionSuccessful"] is True  # the tool ran; a rule could not check the model
    assert any(n["descriptor"]["id"] == "cnncheck-not-checked" and n["level"] == "warning"
               for n in invocation["toolExecutionNotifications"])


def test_writing_a_baseline_exits_zero_on_findings_but_not_on_a_crash(tmp_path, monkeypatch) -> None:
    baseline = str(tmp_path / "baseline.json")
    biased = CLEAN_MODEL.replace("bias=False", "bias=True")
    assert _run_cli(tmp_path, monkeypatch, biased, "text", "--baseline-write", baseline)[0] == 0
    crashed = _run_cli(tmp_path, monkeypatch, biased, "text", "--baseline-write", baseline, "--plugin", "crashing_rule")
    assert crashed[0] == 3


def test_a_clean_model_exits_zero(tmp_path, monkeypatch) -> None:
    code, text = _run_cli(tmp_path, monkeypatch, CLEAN_MODEL, "text")
    assert code == 0 and "no findings" in text


# -- a plugin hook that fails: no front end may call the check clean ------------------------------------
FAILING_HOOKS = {
    "report": "@cnncheck.hookimpl\ndef cnncheck_report(report, model):\n    raise RuntimeError('report hook broke')\n",
    "classify": "@cnncheck.hookimpl\ndef cnncheck_classify_module(module):\n"
                "    raise RuntimeError('classify hook broke')\n",
}


@pytest.mark.parametrize("hook", sorted(FAILING_HOOKS))
def test_a_failing_plugin_hook_makes_every_front_end_say_crashed(hook, tmp_path, monkeypatch, pytester) -> None:
    source = "import cnncheck\n\n" + FAILING_HOOKS[hook]
    (tmp_path / "failing_hook.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    plugin = importlib.import_module("failing_hook")
    importlib.reload(plugin)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
    report = cnncheck.check_model(model, (2, 3, 8, 8), plugins=[plugin])
    assert report.verdict is Verdict.CRASHED and not report.ok
    assert f"{hook} hook broke" in str(report)
    with pytest.raises(cnncheck.CheckFailed):
        cnncheck.assert_cnn_correct(model, (2, 3, 8, 8), plugins=[plugin])

    results = {fmt: _run_cli(tmp_path, monkeypatch, CLEAN_MODEL, fmt, "--plugin", "failing_hook") for fmt in FORMATS}
    assert {code for code, _ in results.values()} == {3}
    data = json.loads(results["json"][1])
    assert data["summary"]["crashed"] == 1 and "hook broke" in data["models"][0]["plugin_problems"][0]
    assert data["models"][0]["verdict"] == "crashed"
    assert json.loads(results["sarif"][1])["runs"][0]["invocations"][0]["executionSuccessful"] is False
    cases = {c.get("name"): c for c in ET.fromstring(results["junit"][1]).iter("testcase")}
    assert cases["cnncheck-plugin-error"].find("error") is not None
    assert "no findings" not in results["text"][1] and "the verdicts cannot be trusted" in results["text"][1]
    assert "no problems found" not in results["markdown"][1] and "A plugin failed" in results["markdown"][1]
    assert "✓" not in results["markdown"][1] and "plugin failed" in results["markdown"][1]

    pytester.makepyfile(failing_hook=source, clean=CLEAN_MODEL)
    pytester.syspathinsert()
    result = pytester.runpytest("--cnncheck", "--cnncheck-plugin", "failing_hook", "-p", "no:randomly")
    assert result.parseoutcomes() == {"failed": len(cnncheck.all_rules())}, result.stdout.str()
    assert "a plugin failed while clean.py::Clean was checked, so the verdict of" in result.stdout.str()


# -- pytest ----------------------------------------------------------------------------------------------
def test_pytest_items_show_not_checked_as_skipped_and_a_crash_as_cnncheck_s_failure(pytester) -> None:
    pytester.makepyfile(crashing_rule=CRASHING_PLUGIN, eval_crash=EVAL_CRASH_MODEL)
    pytester.syspathinsert()
    result = pytester.runpytest("--cnncheck", "--cnncheck-plugin", "crashing_rule", "-rs", "-p", "no:randomly")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed") == 1 and outcomes.get("skipped") >= 2, outcomes
    text = result.stdout.str()
    assert "cnncheck internal error in rule explodes" in text and "please report it" in text
    assert "not checked: forward raises in eval mode: ValueError: inference is not implemented" in text
    assert "pytest_items.py" not in text  # skips are reported at the model's line, not at cnncheck's
    assert "eval_crash.py:6: not checked: forward raises in eval mode" in text
    assert "cnncheck: rule items that did not pass for lack of a verdict: 1 crashed" in text
    assert "Traceback" not in text


def test_the_fixture_assertion_follows_the_verdict(pytester) -> None:
    pytester.makepyfile(test_fixture=EVAL_CRASH_MODEL + textwrap.dedent("""

        def test_assert_ok(cnncheck):
            cnncheck.assert_ok(CrashesAtInference(), (2, 3, 8, 8))
    """))
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(failed=1)
    assert "not checked: mode-not-propagated" in result.stdout.str()


class HardCodedBatch(nn.Module):
    """x.view(4, -1): right for the batch of 4 it is checked with, wrong for any other batch size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(144, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).view(4, -1))


def test_a_hard_coded_batch_size_is_not_blamed_on_batchnorm() -> None:
    """Was a bn-eval-behaviour error on a model without any BatchNorm; now feature-size-mismatch names
    the reshape, and the rule that needs a batch of one says why it could not run one."""
    report = cnncheck.check_model(HardCodedBatch(), (4, 1, 8, 8))
    assert [(f.rule, f.message.split(":")[0]) for f in report.findings] == [
        ("feature-size-mismatch", "view(4, -1) writes the batch size 4 into forward")]
    outcome = report.status("bn-eval-behaviour")
    assert outcome.status is RuleStatus.NOT_CHECKED
    assert "view(4, -1) at " in outcome.reason and "test_verdicts.py:" in outcome.reason
    assert report.verdict is Verdict.FINDINGS


class ReluInPlaceOnTheInput(nn.Module):
    """x.relu_() on the batch itself: legal PyTorch, was 'could not be checked' (a leaf that requires grad)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.relu_()
        return self.bn(self.conv(x)).mean(dim=(2, 3))


def test_in_place_ops_on_the_input_are_checked_and_change_nothing() -> None:
    model = ReluInPlaceOnTheInput()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    example = torch.randn(2, 3, 8, 8)
    given = example.clone()
    report = cnncheck.check_model(model, example)
    assert [(f.rule, f.module) for f in report.findings] == [("redundant-bias-before-bn", "conv")]
    assert all(o.status in (RuleStatus.PASSED, RuleStatus.FINDINGS) for o in report.outcomes), report.outcomes
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and model.training
    assert torch.equal(example, given)  # the caller's tensor is not the one forward changed in place


class DoublesItsInput(nn.Module):
    """x.mul_(2) on the batch: each pass must see the input the others saw."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.mul_(2)
        return self.bn(self.conv(x)).mean(dim=(2, 3))


def test_an_input_changed_in_place_by_one_pass_is_not_seen_by_the_next() -> None:
    """Was a false bn-eval-behaviour error: the one-sample pass ran on the input the eval pass had doubled,
    so the first sample's output 'depended on the batch'."""
    report = cnncheck.check_model(DoublesItsInput(), (4, 3, 8, 8))
    assert report.findings == [] and report.ok, report
