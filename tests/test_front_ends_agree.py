"""Each case of the "a pass means checked" issue, through every front end: the report, the pytest item,
the command in every format, and its exit code. Each case is one student file; the same source is
checked in this process, by ``cnncheck check`` and by ``pytest --cnncheck``, and each front end must
show the states written here.

States not listed for a case are "passed"."""

from __future__ import annotations

import importlib.util
import json
import textwrap
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import pytest
from test_verdicts import EVAL_CRASH_MODEL

import cnncheck
from cnncheck import cli
from cnncheck.formats import FORMATS
from cnncheck.plugins import all_rules

pytest_plugins = ["pytester"]
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.:FutureWarning"),  # the scripted and traced cases
              pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]

RULES = [rule.id for rule in all_rules(problems=[])]
COMPARE_VALUES = [rule.id for rule in all_rules(problems=[]) if rule.compares_values]
EXIT = {"clean": 0, "findings": 1, "incomplete": 1, "error": 1, "crashed": 3}

HEADER = """
import torch
import torch.nn.functional as F
from torch import nn
import cnncheck
"""

CONV_POOL_BN = """
class ConvPoolBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.pool = nn.MaxPool2d(2)
        self.bn1 = nn.BatchNorm2d(4)

    def body(self, x):
        return self.bn1(self.pool(self.conv1(x)))
"""

MISMATCH = """
class Mismatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc1 = nn.Linear(100, 32)  # the map is 4x6x6 = 144
        self.bn1 = nn.BatchNorm1d(32)
        self.fc2 = nn.Linear(32, 10)
"""

CLEAN_NET = """
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))
"""


@dataclass(frozen=True)
class Case:
    source: str
    model: str
    shape: tuple[int, ...]
    verdict: str
    states: dict[str, str] = field(default_factory=dict)  # rule -> "findings" | "not-checked"
    says: tuple[str, ...] = ()  # in the text report
    error: str = ""  # the reason a model with verdict "error" could not be checked

    def state(self, rule: str) -> str:
        return self.states.get(rule, "passed")


def _case(verdict: str, model: str, body: str, shape=(4, 3, 8, 8), states=None, says=(), error="",
          prelude: str = "") -> Case:
    source = HEADER + prelude + textwrap.dedent(body)
    return Case(source, model, shape, verdict, states or {}, tuple(says), error)


NOT_CHECKED_AFTER_FC = dict.fromkeys(set(RULES) - {"feature-size-mismatch"}, "not-checked")
# the rules that read gradients, when forward returns no tensor to take them of
WITHOUT_GRADIENTS = {"redundant-bias-before-bn": "not-checked", "parameter-without-gradient": "not-checked"}
# when forward's output carries none: no parameter trains, which is parameter-without-gradient's finding
NO_GRADIENT_AT_ALL = {"redundant-bias-before-bn": "not-checked", "parameter-without-gradient": "findings"}

CASES = {
    "eval_only_crash": Case(EVAL_CRASH_MODEL, "CrashesAtInference", (2, 3, 8, 8), "incomplete",
                            {"bn-eval-behaviour": "not-checked", "mode-not-propagated": "not-checked",
                             "layer-not-used": "not-checked"},
                            ("forward raises in eval mode: ValueError: inference is not implemented",)),
    "checked_past_the_linear": _case("findings", "MismatchThenDefects", """
        @cnncheck.model(input_shape=(4, 1, 8, 8))
        class MismatchThenDefects(Mismatch):
            def forward(self, x):
                x = torch.relu(self.bn(self.conv(x))).flatten(1)
                x = torch.relu(self.bn1(self.fc1(x)))
                return self.fc2(F.dropout(x, 0.3))
        """, prelude=MISMATCH, shape=(4, 1, 8, 8),
        states={"feature-size-mismatch": "findings", "redundant-bias-before-bn": "findings",
                "mode-not-propagated": "findings"},
        says=["the other rules checked the rest of forward as if fc1 received 100 features"]),
    "checked_past_a_view": _case("findings", "ViewMismatchThenDefects", """
        @cnncheck.model(input_shape=(4, 1, 8, 8))
        class ViewMismatchThenDefects(Mismatch):
            def forward(self, x):
                x = torch.relu(self.bn(self.conv(x)))
                x = torch.relu(self.bn1(self.fc1(x.view(-1, 100))))
                return self.fc2(F.dropout(x, 0.3))
        """, prelude=MISMATCH, shape=(4, 1, 8, 8),
        states={"feature-size-mismatch": "findings", "redundant-bias-before-bn": "findings",
                "mode-not-propagated": "findings"},
        says=["as if view(-1, 100) at "]),
    "half_a_forward": _case("findings", "FlattensTheBatch", """
        @cnncheck.model(input_shape=(4, 1, 8, 8))
        class FlattensTheBatch(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(1, 4, 3)
                self.fc = nn.Linear(144, 10)

            def forward(self, x):
                return self.fc(self.conv(x).flatten())
        """, shape=(4, 1, 8, 8), states={"feature-size-mismatch": "findings", **NOT_CHECKED_AFTER_FC},
        says=["forward stops at fc, where feature-size-mismatch explains why"]),
    "integer_input_frozen": _case("incomplete", "FromIntegers", """
        @cnncheck.model(input_shape=(4, 3, 8, 8))
        def frozen():
            return FromIntegers().requires_grad_(False)


        class FromIntegers(ConvPoolBN):
            def forward(self, x):
                return self.body(x.long().float() / 4)  # the pixels as integers, and nothing trains
        """, prelude=CONV_POOL_BN, states={"redundant-bias-before-bn": "not-checked"},
        says=["no parameter of FromIntegers requires grad"]),
    "no_grad": _case("findings", "UnderNoGrad", """
        @cnncheck.model(input_shape=(4, 3, 8, 8))
        class UnderNoGrad(ConvPoolBN):
            def forward(self, x):
                with torch.no_grad():
                    return self.body(x)
        """, prelude=CONV_POOL_BN, states=NO_GRADIENT_AT_ALL,
        says=["forward runs under torch.no_grad(), or detaches its result"]),
    "inference_mode": _case("findings", "UnderInferenceMode", """
        @cnncheck.model(input_shape=(4, 3, 8, 8))
        class UnderInferenceMode(ConvPoolBN):
            def forward(self, x):
                with torch.inference_mode():
                    return self.body(x)
        """, prelude=CONV_POOL_BN, states=NO_GRADIENT_AT_ALL,
        says=["forward runs under torch.inference_mode()"]),
    "returns_none": _case("incomplete", "ReturnsNone", """
        @cnncheck.model(input_shape=(4, 3, 8, 8))
        class ReturnsNone(ConvPoolBN):
            def forward(self, x):
                self.body(x)
        """, prelude=CONV_POOL_BN, states={**WITHOUT_GRADIENTS, "bn-eval-behaviour": "not-checked"},
        says=["ReturnsNone.forward returns None, not a tensor"]),
    "returns_a_string": _case("incomplete", "ReturnsText", """
        @cnncheck.model(input_shape=(4, 3, 8, 8))
        class ReturnsText(ConvPoolBN):
            def forward(self, x):
                self.body(x)
                return "done"
        """, prelude=CONV_POOL_BN, states={**WITHOUT_GRADIENTS, "bn-eval-behaviour": "not-checked"},
        says=["returns a str ('done')"]),
    "nan_weights": _case("incomplete", "NaNWeights", """
        @cnncheck.model(input_shape=(4, 3, 8, 8))
        def nan_weights():
            model = NaNWeights()
            with torch.no_grad():
                model.conv1.weight.view(-1)[:3] = float("nan")
            return model


        class NaNWeights(ConvPoolBN):
            def forward(self, x):
                return self.body(x)
        """, prelude=CONV_POOL_BN,
        states=dict.fromkeys(COMPARE_VALUES, "not-checked"),
        says=["conv1.weight holds 3 NaN"]),
    "nan_made_in_forward": _case("incomplete", "NaNInForward", """
        @cnncheck.model(input_shape=(4, 3, 8, 8))
        class NaNInForward(ConvPoolBN):
            def forward(self, x):
                return self.body(x / 0 * 0)  # 0/0: every pixel NaN
        """, prelude=CONV_POOL_BN,
        states=dict.fromkeys(["pool-mixes-channels", "redundant-bias-before-bn", "bn-not-per-channel",
                              "bn-train-behaviour", "bn-eval-behaviour", "mode-not-propagated"], "not-checked"),
        says=["the input of conv1 (Conv2d) holds 768 NaN, first made by div at "]),
    "upsample_module": _case("findings", "UpsampledBias", """
        @cnncheck.model(input_shape=(4, 3, 8, 8))
        class UpsampledBias(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 8, 3, padding=1)
                self.up = nn.Upsample(scale_factor=2)
                self.pad = nn.ReflectionPad2d(1)
                self.bn = nn.BatchNorm2d(8)

            def forward(self, x):
                return self.bn(self.pad(self.up(self.conv(x))))
        """, states={"redundant-bias-before-bn": "findings"}, says=["the bias of Conv2d 'conv'"]),
    "pixel_shuffle_is_not_a_pass_through": _case("clean", "Shuffled", """
        @cnncheck.model(input_shape=(4, 3, 8, 8))
        class Shuffled(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 16, 3, padding=1)
                self.shuffle = nn.PixelShuffle(2)
                self.bn = nn.BatchNorm2d(4)

            def forward(self, x):
                return self.bn(self.shuffle(self.conv(x)))
        """),
    "hard_coded_batch": _case("findings", "HardCodedBatch", """
        @cnncheck.model(input_shape=(4, 1, 8, 8))
        class HardCodedBatch(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(1, 4, 3)
                self.fc = nn.Linear(144, 10)

            def forward(self, x):
                return self.fc(self.conv(x).view(4, -1))
        """, shape=(4, 1, 8, 8), states={"feature-size-mismatch": "findings", "bn-eval-behaviour": "not-checked"},
        says=["view(4, -1) writes the batch size 4 into forward"]),
    "untracked_batch_norm": _case("findings", "Untracked", """
        @cnncheck.model(input_shape=(4, 3, 8, 8))
        class Untracked(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
                self.bn = nn.BatchNorm2d(8, track_running_stats=False)

            def forward(self, x):
                return self.bn(self.conv(x))
        """, states={"bn-eval-behaviour": "findings"},
        says=["track_running_stats=True", "bn-eval-behaviour:bn"]),
    "in_place_on_the_input": _case("clean", "ReluInPlace", """
        @cnncheck.model(input_shape=(4, 3, 8, 8))
        class ReluInPlace(Net):
            def forward(self, x):
                x.relu_()
                return super().forward(x)
        """, prelude=CLEAN_NET),
    "compiled": _case("clean", "Net", """
        @cnncheck.model(input_shape=(4, 3, 8, 8))
        def compiled():
            return torch.compile(Net())
        """, prelude=CLEAN_NET, says=["torch.compile"]),
    "scripted": _case("error", "Net", """
        @cnncheck.model(input_shape=(4, 3, 8, 8))
        def scripted():
            return torch.jit.script(Net())
        """, prelude=CLEAN_NET, error="TorchScript"),
    "traced": _case("error", "Net", """
        @cnncheck.model(input_shape=(4, 3, 8, 8))
        def traced():
            return torch.jit.trace(Net(), torch.zeros(4, 3, 8, 8))
        """, prelude=CLEAN_NET, error="TorchScript"),
}


def _build(case: Case, folder):
    """The case's declared model, imported from a file as the command would (TorchScript reads source)."""
    path = folder / f"{case.model.lower()}_case.py"
    path.write_text(case.source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    declared = [v for v in vars(module).values() if cnncheck.declare.spec_of(v) is not None]
    [target] = declared
    return target()


# -- the report ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CASES)
def test_the_report(name: str, tmp_path) -> None:
    case = CASES[name]
    model = _build(case, tmp_path)
    if case.verdict == "error":
        with pytest.raises(cnncheck.CheckError, match=case.error):
            cnncheck.check_model(model, case.shape)
        return
    report = cnncheck.check_model(model, case.shape)
    assert {o.rule: str(o.status) for o in report.outcomes} == {r: case.state(r) for r in RULES}, report
    assert str(report.verdict) == case.verdict
    for fragment in case.says:
        assert fragment in str(report), (fragment, str(report))


# -- the command: every format, and its exit code ------------------------------------------------------
@pytest.fixture(scope="module")
def cli_results(tmp_path_factory) -> dict[str, dict[str, tuple[int, str]]]:
    results: dict[str, dict[str, tuple[int, str]]] = {}
    for name, case in CASES.items():
        folder = tmp_path_factory.mktemp(name)
        (folder / f"{name}.py").write_text(case.source)
        results[name] = {}
        for fmt in FORMATS:
            out = folder / f"report.{fmt}"
            code = cli.main(["check", str(folder / f"{name}.py"), "--format", fmt, "--output", str(out)])
            results[name][fmt] = (code, out.read_text(encoding="utf-8"))
    return results


@pytest.mark.parametrize("name", CASES)
def test_the_command_in_every_format(name: str, cli_results) -> None:
    case, results = CASES[name], cli_results[name]
    assert {fmt: code for fmt, (code, _) in results.items()} == dict.fromkeys(FORMATS, EXIT[case.verdict])

    text = results["text"][1]
    for fragment in case.says if case.verdict != "error" else (case.error,):
        assert fragment in text, (fragment, text)
    for rule in RULES:
        assert (f"not checked: {rule}:" in text) == (case.state(rule) == "not-checked"), (rule, text)

    [model] = json.loads(results["json"][1])["models"]
    if case.verdict == "error":
        assert case.error in model["error"] and model["outcomes"] == []
    else:
        assert {o["rule"]: o["status"] for o in model["outcomes"]} == {r: case.state(r) for r in RULES}
        assert {f["rule"] for f in model["findings"]} == {r for r in RULES if case.state(r) == "findings"}

    markdown = results["markdown"][1]
    section = markdown.split("## Not checked", 1)[1].split("\n## ", 1)[0] if "## Not checked" in markdown else ""
    listed = {rule for rule in RULES if f"- `{rule}`: " in section}
    assert listed == {r for r in RULES if case.state(r) == "not-checked"}, markdown

    cases = {c.get("name"): c for c in ET.fromstring(results["junit"][1]).iter("testcase")}
    if case.verdict == "error":
        assert all(c.find("error") is not None or c.find("failure") is not None for c in cases.values()), cases
    else:
        junit = {"failure": "findings", "skipped": "not-checked", "error": "crashed"}
        found = {rule: next((junit[child.tag] for child in c if child.tag in junit), "passed")
                 for rule, c in cases.items()}
        assert found == {r: case.state(r) for r in RULES}

    run = json.loads(results["sarif"][1])["runs"][0]
    assert {r["ruleId"] for r in run["results"]} == {r for r in RULES if case.state(r) == "findings"}
    notified = {n["associatedRule"]["id"] for n in run["invocations"][0].get("toolExecutionNotifications", [])
                if n.get("descriptor", {}).get("id") == "cnncheck-not-checked" and "associatedRule" in n}
    assert notified == {r for r in RULES if case.state(r) == "not-checked"}


# -- pytest --cnncheck ---------------------------------------------------------------------------------
def test_pytest_items(pytester) -> None:
    for name, case in CASES.items():
        pytester.makepyfile(**{name: case.source})
    # a subprocess: the compiled case imports parts of torch._inductor, which cannot be imported twice, and
    # an in-process run would drop them from sys.modules afterwards
    result = pytester.runpytest_subprocess("--cnncheck", "-p", "no:randomly", "--junitxml=items.xml")
    assert "INTERNALERROR" not in result.stdout.str() and "Traceback" not in result.stdout.str()
    items: dict[str, dict[str, str]] = {}
    for testcase in ET.parse(pytester.path / "items.xml").iter("testcase"):
        outcome = next((child.tag for child in testcase if child.tag in ("failure", "skipped", "error")), "passed")
        properties = {p.get("name"): p.get("value") for p in testcase.iter("property")}
        file = testcase.get("classname", "").split(".")[0]
        items.setdefault(file, {})[properties.get("cnncheck_rule", testcase.get("name"))] = outcome
    expected_outcome = {"passed": "passed", "findings": "failure", "not-checked": "skipped", "crashed": "failure"}
    for name, case in CASES.items():
        if case.verdict == "error":
            outcomes = set(items[name].values())
            assert "failure" in outcomes and outcomes <= {"failure", "skipped"}, (name, items[name])
            continue
        assert items[name] == {r: expected_outcome[case.state(r)] for r in RULES}, name
