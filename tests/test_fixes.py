"""``cnncheck check --fix`` / ``--diff``: the safe ``bias=False`` fix, made with libcst in the student's file."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from cnncheck.cli import main
from cnncheck.findings import Finding, Severity
from cnncheck.fixes import REDUNDANT_BIAS, Fix, bias_false_fix, fixed_text
from cnncheck.results import ModelResult

pytest_plugins = ["pytester"]

SHAPE = "2,3,16,16"

SEED_LIKE = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = {conv}
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.mean(dim=(2, 3)))
'''


def _student(tmp_path: Path, conv: str) -> Path:
    path = tmp_path / "student.py"
    path.write_text(textwrap.dedent(SEED_LIKE).replace("{conv}", conv), encoding="utf-8")
    return path


def _check(path: Path, *options: str) -> int:
    return main(["check", str(path), "--input-shape", SHAPE, "--sandbox", "none", *options])


def _fix(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = _check(path, "--fix")
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("conv", "fixed"),
    [
        pytest.param("nn.Conv2d(3, 8, 3)  # first conv", "nn.Conv2d(3, 8, 3, bias=False)  # first conv",
                     id="one-line-with-comment"),
        pytest.param("nn.Conv2d(3, 8, 3, bias=True)", "nn.Conv2d(3, 8, 3, bias=False)", id="bias-true-changed"),
        pytest.param("nn.Conv2d(\n            3,  # in\n            8,\n            3,  # kernel\n        )",
                     "nn.Conv2d(\n            3,  # in\n            8,\n            3,  # kernel\n"
                     "            bias=False,\n        )", id="multi-line-trailing-comma"),
        pytest.param("nn.Conv2d(3, 8,\n                              3)  # k",
                     "nn.Conv2d(3, 8,\n                              3, bias=False)  # k", id="multi-line-no-comma"),
    ],
)
def test_fix_adds_bias_false_and_keeps_the_layout(tmp_path, capsys, conv: str, fixed: str) -> None:
    path = _student(tmp_path, conv)
    before = path.read_text()
    code, out, err = _fix(path, capsys)
    assert path.read_text() == before.replace(conv, fixed)
    assert "fixed 1 call site(s) in 1 file(s)" in err
    assert code == 0, out + err  # checked again after the fix: nothing remains
    assert "no findings" in out


def test_a_second_fix_changes_nothing(tmp_path, capsys) -> None:
    path = _student(tmp_path, "nn.Conv2d(3, 8, 3)")
    assert _fix(path, capsys)[0] == 0
    once = path.read_text()
    code, _, err = _fix(path, capsys)
    assert (code, path.read_text()) == (0, once)
    assert "nothing to fix" in err


def test_diff_prints_the_fix_and_writes_nothing(tmp_path, capsys) -> None:
    path = _student(tmp_path, "nn.Conv2d(3, 8, 3)  # first conv")
    before = path.read_text()
    code = _check(path, "--diff")
    out, err = capsys.readouterr()
    assert path.read_text() == before
    assert code == 1  # like ruff: a diff to apply
    assert "-        self.conv = nn.Conv2d(3, 8, 3)  # first conv" in out
    assert "+        self.conv = nn.Conv2d(3, 8, 3, bias=False)  # first conv" in out
    assert "1 fix(es) would be applied" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.py"]


def test_the_json_report_carries_the_fix(tmp_path, capsys) -> None:
    path = _student(tmp_path, "nn.Conv2d(3, 8, 3)")
    _check(path, "--format", "json")
    model = json.loads(capsys.readouterr().out)["models"][0]
    (finding,) = model["findings"]
    assert finding["rule"] == REDUNDANT_BIAS
    assert finding["fix_edit"]["replacement"] == "nn.Conv2d(3, 8, 3, bias=False)"
    assert finding["fix_edit"]["safe"] is True
    result = ModelResult.from_dict(model)
    assert result.findings[0].fix_edit == Fix.from_dict(finding["fix_edit"])
    assert ModelResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


LOOP = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(3, 3, 3, padding=1) for _ in range(2)])
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.convs[0](x))  # this bias is cancelled
        return torch.relu(self.convs[1](x))  # this one is not
'''

BLOCK = '''
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, norm: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.norm = nn.BatchNorm2d(3) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(self.conv(x)))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = Block(norm=True)
        self.b = Block(norm=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))
'''


@pytest.mark.parametrize(("source", "built"), [pytest.param(LOOP, "'convs.1'", id="comprehension"),
                                                pytest.param(BLOCK, "'b.conv'", id="block-used-twice")])
def test_a_call_that_also_builds_a_layer_whose_bias_matters_is_not_fixed(tmp_path, capsys, source: str,
                                                                          built: str) -> None:
    path = tmp_path / "student.py"
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    before = path.read_text()
    code, out, err = _fix(path, capsys)
    assert path.read_text() == before
    assert code == 1  # the finding remains
    assert REDUNDANT_BIAS in out
    assert f"the same call also builds {built}" in err
    assert "nothing to fix" in err


def test_a_comprehension_whose_layers_are_all_flagged_is_fixed_once(tmp_path, capsys) -> None:
    path = tmp_path / "student.py"
    source = textwrap.dedent(LOOP).replace("return torch.relu(self.convs[1](x))  # this one is not",
                                           "return self.bn(self.convs[1](x))")
    path.write_text(source, encoding="utf-8")
    _, out, err = _fix(path, capsys)
    assert "nn.Conv2d(3, 3, 3, padding=1, bias=False) for _ in range(2)" in path.read_text()
    assert REDUNDANT_BIAS not in out  # checked again: the reused BatchNorm is another rule's finding
    assert "fixed 1 call site(s)" in err


def test_a_location_that_cannot_be_matched_gives_no_fix(tmp_path) -> None:
    path = tmp_path / "student.py"
    path.write_text("from torch import nn\n\nx = nn.Conv2d(3, 8, 3); y = nn.Linear(8, 2)\nz = 1\n")
    assert bias_false_fix(f"{path}:4") == (None, "no conv or linear call starts on that line")
    assert bias_false_fix(f"{path}:3") == (None, "2 conv or linear calls start on that line")
    assert bias_false_fix(f"{tmp_path / 'gone.py'}:1") == (None, "no such file")
    assert bias_false_fix(f"{path}:3", allowed=[tmp_path / "other"]) == (None, "outside the checked paths")
    installed = tmp_path / "site-packages" / "lib.py"
    installed.parent.mkdir()
    installed.write_text("from torch import nn\nc = nn.Conv2d(3, 8, 3)\n")
    fix, reason = bias_false_fix(f"{installed}:2")
    assert fix is None and "installed library" in reason


def test_unsupported_call_shapes_give_a_reason() -> None:
    # the reasons are the call's, independent of the file: checked on a parsed snippet through a file
    cases = {"nn.Conv2d(3, 8, 3, **kw)": "*args or **kwargs", "nn.Linear(8, 2, True)": "positionally",
             "nn.Conv2d(3, 8, 3, bias=b)": "expression"}
    for call, reason in cases.items():
        folder = Path(__import__("tempfile").mkdtemp())
        path = folder / "m.py"
        path.write_text(f"c = {call}\n")
        fix, why = bias_false_fix(f"{path}:1")
        assert fix is None and reason in why, (call, why)


def test_fixed_text_applies_fixes_from_the_end() -> None:
    source = "a = f(1)\nb = g(2)\n"
    fixes = [Fix("m.py", 1, 5, 1, 9, "f(1, x=0)", "d"), Fix("m.py", 2, 5, 2, 9, "g(2, x=0)", "d")]
    assert fixed_text(source, fixes) == "a = f(1, x=0)\nb = g(2, x=0)\n"


def test_a_finding_with_a_fix_round_trips_through_json() -> None:
    fix = Fix("s.py", 3, 9, 3, 27, "nn.Conv2d(3, 8, 3, bias=False)", "add bias=False")
    finding = Finding(REDUNDANT_BIAS, "conv", Severity.WARNING, "cancelled", location="s.py:3", fix_edit=fix)
    result = ModelResult("s.py::Net", "s.py", "Net", findings=[finding, Finding("x", "", Severity.ERROR, "m")])
    again = ModelResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again.findings == result.findings


def test_sarif_carries_the_fix_and_validates(tmp_path, capsys, monkeypatch) -> None:
    """Code scanning shows the suggested change: a SARIF ``fixes`` object whose replacement, applied to
    the file, is the fixed line."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((Path(__file__).parent / "data" / "sarif-schema-2.1.0.json").read_text(encoding="utf-8"))
    path = _student(tmp_path, "nn.Conv2d(3, 8, 3)  # first conv")
    monkeypatch.chdir(tmp_path)
    _check(path, "--format", "sarif")
    log = json.loads(capsys.readouterr().out)
    assert not list(jsonschema.Draft4Validator(schema).iter_errors(log))
    (result,) = log["runs"][0]["results"]
    (fix,) = result["fixes"]
    (change,) = fix["artifactChanges"]
    assert change["artifactLocation"]["uri"] == "student.py"
    (replacement,) = change["replacements"]
    region = replacement["deletedRegion"]
    lines = path.read_text(encoding="utf-8").splitlines()
    line = lines[region["startLine"] - 1]
    edited = line[:region["startColumn"] - 1] + replacement["insertedContent"]["text"] + line[region["endColumn"] - 1:]
    assert region["startLine"] == region["endLine"]
    assert edited.strip() == "self.conv = nn.Conv2d(3, 8, 3, bias=False)  # first conv"


def test_pytest_shows_the_suggested_edit_and_changes_nothing(pytester: pytest.Pytester) -> None:
    source = textwrap.dedent(SEED_LIKE).replace("{conv}", "nn.Conv2d(3, 8, 3)").replace(
        "class Net", "import cnncheck\n\n\n@cnncheck.model(input_shape=(2, 3, 16, 16))\nclass Net")
    path = pytester.makepyfile(student=source)
    written = path.read_text()
    result = pytester.runpytest("--cnncheck", "-p", "no:randomly", "-k", "redundant")
    result.assert_outcomes(failed=1)
    line = next(i for i, text in enumerate(written.splitlines(), 1) if "self.conv =" in text)
    result.stdout.fnmatch_lines([f"  edit:     student.py:{line}: nn.Conv2d(3, 8, 3, bias=False)  "
                                 f"(`cnncheck check --fix` makes it)"])
    assert path.read_text() == written


def test_fix_with_workers_writes_each_file_once_and_checks_again(tmp_path, capsys) -> None:
    for name in ("ann", "bob"):
        (tmp_path / name).mkdir()
        _student(tmp_path / name, "nn.Conv2d(3, 8, 3)  # first conv")
    code = main(["check", str(tmp_path), "--input-shape", SHAPE, "--sandbox", "none", "-j", "2", "--fix"])
    out, err = capsys.readouterr()
    assert code == 0 and "fixed 2 call site(s) in 2 file(s)" in err, (out, err)
    for name in ("ann", "bob"):
        assert "nn.Conv2d(3, 8, 3, bias=False)  # first conv" in (tmp_path / name / "student.py").read_text()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["student.py", "student.py"]  # no temp files
