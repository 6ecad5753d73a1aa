"""The output formats: JSON, Markdown, JUnit XML, SARIF 2.1.0 and text, rendered from real check results.

The SARIF log is validated against the official OASIS SARIF 2.1.0 JSON schema (errata 01), vendored
in tests/data/sarif-schema-2.1.0.json from the oasis-tcs/sarif-spec repository
(Schemata/sarif-schema-2.1.0.json).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest
from torch import nn

from cnncheck import check_model, formats
from cnncheck.findings import Finding, Severity, docs_reference
from cnncheck.plugins import all_rules
from cnncheck.results import ModelResult
from cnncheck.verdict import Verdict

HERE = Path(__file__).resolve().parent
SARIF_SCHEMA = HERE / "data" / "sarif-schema-2.1.0.json"
SHAPE = (2, 3, 8, 8)


class BiasBeforeBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)  # the redundant bias: its line is the finding's location
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x))


CONV_LINE = next(i for i, line in enumerate(Path(__file__).read_text().splitlines(), 1)
                 if "# the redundant bias" in line)


def _result(model: nn.Module, model_id: str, seconds: float) -> ModelResult:
    report = check_model(model, SHAPE)
    file, _, name = model_id.partition("::")
    return ModelResult(id=model_id, file=file, name=name, input_shape=report.input_shape, device=report.device,
                       rules_run=report.rules_run, findings=list(report.findings), notes=list(report.notes),
                       seconds=seconds)


@pytest.fixture(scope="module")
def results() -> list[ModelResult]:
    located = _result(BiasBeforeBN(), f"{__file__}::BiasBeforeBN", 0.25)
    sequential = _result(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), "students/ann.py::make", 0.5)
    clean = _result(nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU()),
                    "students/cleo.py::Net", 0.125)
    broken = ModelResult(id="students/bob.py::Net", file="students/bob.py", name="Net", input_shape=SHAPE,
                         error="cannot build the model: RuntimeError: mat1 and mat2 shapes cannot be multiplied",
                         error_kind="forward", location="students/bob.py:17", seconds=0.0625)
    return [located, sequential, clean, broken]


@pytest.fixture(scope="module")
def rules():
    return all_rules()


def test_the_fixture_models_give_the_expected_findings(results) -> None:
    located, sequential, clean, broken = results
    assert [f.rule for f in located.findings] == ["redundant-bias-before-bn"]
    assert located.findings[0].severity is Severity.WARNING
    assert located.findings[0].location == f"{__file__}:{CONV_LINE}"
    assert [f.rule for f in sequential.findings] == ["redundant-bias-before-bn"]
    assert clean.ok and clean.rules_run
    assert broken.error and not broken.findings


# ---------------------------------------------------------------------------------------------- json


def test_json_has_the_documented_schema(results, rules) -> None:
    doc = json.loads(formats.render_json(results, rules=rules))
    assert list(doc) == ["schema", "cnncheck_version", "rules", "models", "summary"]
    assert doc["schema"] == "cnncheck-report/1"
    import cnncheck

    assert doc["cnncheck_version"] == cnncheck.__version__
    assert doc["rules"] == [{"id": r.id, "severity": str(r.severity), "summary": r.summary} for r in rules]
    assert doc["summary"] == {
        "models": 4, "clean": 1, "with_findings": 2, "incomplete": 0, "crashed": 0, "errors": 1,
        "findings_per_rule": {r.id: 2 if r.id == "redundant-bias-before-bn" else 0 for r in rules},
    }
    model_keys = list(results[0].to_dict())
    finding_keys = list(results[0].to_dict()["findings"][0])
    assert all(list(m) == model_keys for m in doc["models"])
    documented = [*doc, *doc["summary"], *doc["rules"][0], *model_keys, *finding_keys]
    missing = [key for key in documented if f"``{key}``" not in formats.__doc__]
    assert not missing, f"fields not documented in the cnncheck.formats docstring: {missing}"


def test_json_models_round_trip(results, rules) -> None:
    doc = json.loads(formats.render_json(results, rules=rules))
    assert [ModelResult.from_dict(m) for m in doc["models"]] == results


def test_json_counts_findings_of_rules_not_in_the_list(results) -> None:
    doc = json.loads(formats.render_json(results, rules=[]))
    assert doc["rules"] == []
    assert doc["summary"]["findings_per_rule"] == {"redundant-bias-before-bn": 2}


# ------------------------------------------------------------------------------------------ markdown


def test_markdown_report_has_every_part_of_a_finding(results) -> None:
    result = results[0]
    finding = result.findings[0]
    text = formats.render_markdown(result)
    assert text.startswith(f"# cnncheck report: `{result.id}`\n")
    assert "`2x3x8x8`" in text
    assert "**Verdict: 1 problem found:** 0 errors, 1 warning." in text
    assert f"### 1. `{finding.rule}` (warning) in layer `conv`" in text
    for label, value in [("What is wrong", finding.message), ("Expected", finding.expected),
                         ("Found", finding.found), ("How to fix", finding.fix)]:
        assert f"- **{label}:** {formats._md(value)}" in text
    assert f"- **Where:** `{finding.location}`" in text
    assert "`self.conv = nn.Conv2d(3, 4, 3)  # the redundant bias" in text  # the student's source line
    assert f"- **Docs:** `cnncheck rules {finding.rule}`" in text


def test_markdown_clean_and_error_reports(results) -> None:
    clean = formats.render_markdown(results[2])
    assert f"**Verdict: no problems found** ({len(results[2].rules_run)} rules checked)." in clean
    assert "## Problems" not in clean
    broken = formats.render_markdown(results[3])
    assert "**Verdict: could not be checked (forward).**" in broken
    assert "## What went wrong" in broken
    assert results[3].error in broken
    assert "**Your line:** `students/bob.py:17`" in broken


def test_markdown_escapes_prose_and_keeps_code() -> None:
    finding = Finding("conv-param-formula", "layers.0", Severity.ERROR, "__init__ | *wrong*",
                      expected="a `b`", location="m.py:3")
    result = ModelResult(id="m.py::Net", file="m.py", name="Net", input_shape=(1, 3, 4, 4),
                         rules_run=("conv-param-formula",), findings=[finding])
    text = formats.render_markdown(result)
    assert r"\_\_init\_\_ \| \*wrong\*" in text
    assert r"a \`b\`" in text


def test_markdown_summary_table(results, rules) -> None:
    text = formats.render_markdown_summary(results, rules=rules)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| submission |"))
    assert header == "| submission | " + " | ".join(f"`{r.id}`" for r in rules) + " |"
    column = [r.id for r in rules].index("redundant-bias-before-bn") + 1
    rows = {line.split(" | ")[0][2:].strip("`"): [c.strip() for c in line.strip("| ").split(" | ")[1:]]
            for line in lines if line.startswith("| `")}
    assert rows[results[0].id][column - 1] == "✗ 1"
    assert rows[results[1].id][column - 1] == "✗ 1"
    assert set(rows[results[2].id]) == {"✓"}
    assert set(rows[results[3].id]) == {"error"}
    assert ("**Totals:** 4 models: 1 clean, 2 with findings, 1 could not be checked; "
            "2 findings (0 errors, 2 warnings).") in text


# --------------------------------------------------------------------------------------------- junit


def test_junit_is_valid_xml_with_the_right_counts(results, rules) -> None:
    root = ET.fromstring(formats.render_junit(results, rules=rules))
    assert root.tag == "testsuites"
    cases = root.findall("./testsuite/testcase")
    checked = [r for r in results if r.error is None]
    assert len(cases) == sum(len(r.rules_run) for r in checked) + 1
    failures = root.findall("./testsuite/testcase/failure")
    errors = root.findall("./testsuite/testcase/error")
    assert len(failures) == 2 and len(errors) == 1
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == (str(len(cases)), "2", "1")
    for suite, result in zip(root.findall("testsuite"), results):
        assert suite.get("name") == result.id
        assert int(suite.get("tests")) == len(suite.findall("testcase"))
        assert {c.get("classname") for c in suite.findall("testcase")} == {result.id}


def test_junit_failure_holds_the_rendered_finding(results, rules) -> None:
    root = ET.fromstring(formats.render_junit(results, rules=rules))
    case = root.find(f"./testsuite/testcase[@classname='{results[0].id}'][@name='redundant-bias-before-bn']")
    failure = case.find("failure")
    assert failure.get("type") == "warning"
    assert failure.text == results[0].findings[0].render()
    props = {(p.get("name"), p.get("value")) for p in case.findall("./properties/property")}
    assert props == {("rule", "redundant-bias-before-bn"), ("module", "conv")}
    passing = root.find(f"./testsuite/testcase[@classname='{results[2].id}'][@name='conv-param-formula']")
    assert passing.find("failure") is None and passing.find("error") is None
    error = root.find(f"./testsuite/testcase[@classname='{results[3].id}']/error")
    assert error.get("type") == "forward"
    assert error.get("message") == results[3].error
    assert "at: students/bob.py:17" in error.text


def test_junit_survives_control_characters() -> None:
    finding = Finding("conv-param-formula", "c", Severity.ERROR, "bad \x01 byte \x1b[31m")
    result = ModelResult(id="a.py::N", file="a.py", name="N", rules_run=("conv-param-formula",), findings=[finding])
    ET.fromstring(formats.render_junit([result], rules=[]))


# --------------------------------------------------------------------------------------------- sarif


@pytest.fixture(scope="module")
def sarif_validator():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SARIF_SCHEMA.read_text(encoding="utf-8"))
    assert schema["id"] == "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema, format_checker=jsonschema.FormatChecker())


def _sarif(results, rules, root=HERE) -> dict:
    return json.loads(formats.render_sarif(results, rules=rules, root=root))


def test_sarif_validates_against_the_official_schema(results, rules, sarif_validator) -> None:
    for subset in (results, results[:3], results[3:], []):
        log = _sarif(subset, rules)
        errors = sorted(sarif_validator.iter_errors(log), key=str)
        assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_the_sarif_schema_rejects_what_it_should(results, rules, sarif_validator) -> None:
    log = _sarif(results, rules)
    log["runs"][0]["results"][0]["level"] = "fatal"
    assert not sarif_validator.is_valid(log)
    log = _sarif(results, rules)
    del log["runs"][0]["invocations"][0]["executionSuccessful"]
    assert not sarif_validator.is_valid(log)


def test_sarif_results_rules_and_locations(results, rules) -> None:
    run = _sarif(results, rules)["runs"][0]
    driver = run["tool"]["driver"]
    assert driver["name"] == "cnncheck"
    assert [d["id"] for d in driver["rules"]] == [r.id for r in rules]
    for descriptor, rule in zip(driver["rules"], rules):
        assert descriptor["shortDescription"]["text"] == rule.summary
        assert descriptor["fullDescription"]["text"] == rule.why
        assert descriptor["help"]["text"].startswith(rule.fix)
        assert descriptor["defaultConfiguration"]["level"] == str(rule.severity)
        assert descriptor["properties"]["docs"] == docs_reference(rule.id)
        assert "helpUri" not in descriptor or "://" in descriptor["helpUri"]  # SARIF wants an absolute URI
    assert len(run["results"]) == sum(len(r.findings) for r in results) == 2
    located, unlocated = run["results"]
    index = [r.id for r in rules].index("redundant-bias-before-bn")
    for entry in run["results"]:
        assert (entry["ruleId"], entry["ruleIndex"], entry["level"]) == ("redundant-bias-before-bn", index, "warning")
    finding = results[0].findings[0]
    assert located["message"]["text"].startswith(finding.message)
    assert f"expected: {finding.expected}" in located["message"]["text"]
    assert f"found: {finding.found}" in located["message"]["text"]
    physical = located["locations"][0]["physicalLocation"]
    assert physical["artifactLocation"] == {"uri": "test_formats.py", "uriBaseId": "SRCROOT"}
    assert physical["region"] == {"startLine": CONV_LINE}
    assert run["originalUriBaseIds"]["SRCROOT"]["uri"] == HERE.as_uri() + "/"
    assert results[1].findings[0].location is None and "locations" not in unlocated


def test_sarif_reports_unchecked_models_as_tool_execution_notifications(results, rules) -> None:
    (invocation,) = _sarif(results, rules)["runs"][0]["invocations"]
    assert invocation["executionSuccessful"] is False
    (note,) = invocation["toolExecutionNotifications"]
    assert note["level"] == "error"
    assert results[3].error in note["message"]["text"]
    assert note["descriptor"]["id"] == "cnncheck-error"
    physical = note["locations"][0]["physicalLocation"]
    assert physical["artifactLocation"]["uri"].endswith("students/bob.py")
    assert physical["region"] == {"startLine": 17}
    (invocation,) = _sarif(results[:3], rules)["runs"][0]["invocations"]
    assert invocation == {"executionSuccessful": True}


def test_sarif_uris_without_a_root_and_outside_it(tmp_path) -> None:
    assert formats.artifact_location("models/my net.py", None) == {"uri": "models/my%20net.py"}
    outside = str(tmp_path / "x.py")
    assert formats.artifact_location(outside, HERE) == {"uri": Path(outside).as_uri()}
    assert formats.artifact_location(str(tmp_path / "a" / "b.py"), tmp_path) == {"uri": "a/b.py",
                                                                                  "uriBaseId": "SRCROOT"}


@pytest.mark.parametrize("location, parts", [
    ("models/net.py:12", ("models/net.py", 12)),
    ("C:\\course\\net.py:7", ("C:\\course\\net.py", 7)),
    ("models/net.py", ("models/net.py", None)),
    ("net.py:0", ("net.py:0", None)),
    (None, None),
])
def test_split_location(location, parts) -> None:
    assert formats.split_location(location) == parts


# ------------------------------------------------------------------------------------ FORMATS, text


def test_every_format_has_the_common_signature(results, rules) -> None:
    assert set(formats.FORMATS) == {"text", "json", "markdown", "junit", "sarif", "html"}
    for name, render in formats.FORMATS.items():
        text = render(results, rules=rules, root=HERE)
        assert isinstance(text, str) and text.endswith("\n"), name
        assert "\x1b" not in text, name
        for result in results:
            if name == "sarif" and result.ok:
                continue  # SARIF reports findings and failures; a clean model has neither
            assert result.id in text or json.dumps(result.id)[1:-1] in text, (name, result.id)


def test_text_prints_each_model_then_a_summary_table(results, rules) -> None:
    text = formats.FORMATS["text"](results, rules=rules, root=None)
    assert results[0].findings[0].render() in text
    assert f"cnncheck: Net on input 2x3x8x8 (cpu): no findings ({len(results[2].rules_run)} rules)" in text
    assert f"{results[3].id}: {results[3].error}" in text
    table = text[text.index("model "):].splitlines()
    assert table[0].split() == ["model", "result", "errors", "warnings", "rules", "with", "findings"]
    assert set(table[1]) == {"-", " "}
    assert table[2].split()[:4] == [results[0].id, "findings", "0", "1"]
    assert table[4].split() == [results[2].id, "clean", "0", "0", "-"]
    assert table[5].split()[:3] == [results[3].id, "error", "(forward)"]
    assert text.rstrip().endswith("cnncheck: 4 models: 1 clean, 2 with findings, 1 could not be checked; "
                                  "2 findings (0 errors, 2 warnings)")


def test_error_results_round_trip_with_replace(results) -> None:
    changed = replace(results[3], notes=["timed out after 60 s"])
    assert ModelResult.from_dict(json.loads(json.dumps(changed.to_dict()))) == changed


def test_rule_docs_point_at_the_published_pages_when_told_where(results, rules, monkeypatch) -> None:
    """No repository path (a broken link in a student's report): `cnncheck rules ID`, or the page under
    CNNCHECK_DOCS_URL."""
    finding = results[0].findings[0]
    assert f"docs:     cnncheck rules {finding.rule}" in finding.render()
    monkeypatch.setenv("CNNCHECK_DOCS_URL", "https://course.example/cnncheck/{rule}.html")
    url = f"https://course.example/cnncheck/{finding.rule}.html"
    assert f"docs:     {url}" in finding.render()
    assert f"- **Docs:** [{formats._md(finding.rule)}]({url})" in formats.render_markdown(results[0])
    descriptors = {d["id"]: d for d in _sarif(results, rules)["runs"][0]["tool"]["driver"]["rules"]}
    assert descriptors[finding.rule]["helpUri"] == url
    monkeypatch.setenv("CNNCHECK_DOCS_URL", "https://course.example/rules/")
    assert f"docs:     https://course.example/rules/{finding.rule}" in finding.render()


def test_markdown_keeps_a_shape_trace_as_a_code_block() -> None:
    from examples_loader import load_example

    import cnncheck

    seed = load_example("seed_convnet").ConvNet()
    report = cnncheck.check_model(seed, (4, 1, 28, 28))
    [finding] = report.findings
    result = ModelResult("seed.py::ConvNet", "seed.py", "ConvNet", findings=[finding])
    text = formats.render_markdown(result)
    block = text.split("```text\n", 1)[1].split("\n```", 1)[0]
    assert block.splitlines() == list(finding.details)  # verbatim: no bullets, no escaping
    assert "  - " not in text.split("**Found:**", 1)[1].split("**Where:**", 1)[0]


def test_notes_reach_sarif_and_junit(rules, sarif_validator) -> None:
    """What the check did beyond the rules (here: checked on as if fc1 fitted) is in every format."""
    note = "the other rules checked the rest of forward as if fc1 received 100 features"
    result = ModelResult(id="a.py::Net", file="a.py", name="Net", input_shape=SHAPE, rules_run=("conv-param-formula",),
                         notes=[note])
    log = _sarif([result], rules)
    assert not list(sarif_validator.iter_errors(log))
    notes = log["runs"][0]["invocations"][0]["toolExecutionNotifications"]
    assert [(n["level"], n["message"]["text"]) for n in notes] == [("note", f"a.py::Net: {note}")]
    assert log["runs"][0]["invocations"][0]["executionSuccessful"] is True
    suite = ET.fromstring(formats.render_junit([result], rules=rules)).find("testsuite")
    assert suite is not None and suite.findtext("system-out") == note


def test_the_json_verdict_is_derived_and_never_read_back() -> None:
    broken = ModelResult(id="a.py::N", file="a.py", name="N", error="cannot build N", error_kind="build")
    data = broken.to_dict()
    assert data["verdict"] == "error"
    forged = ModelResult.from_dict({**data, "verdict": "clean"})  # a worker's message may claim anything
    assert forged.verdict is Verdict.ERROR
