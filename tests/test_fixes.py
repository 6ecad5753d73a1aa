"""``cnncheck check --fix`` / ``--diff`` / ``--unsafe-fixes``: fixes made with libcst in the student's own file."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from cnncheck.changes import ArgumentChange
from cnncheck.cli import main
from cnncheck.findings import Finding, Severity
from cnncheck.fixes import REDUNDANT_BIAS, Fix, fixed_text, located, plan_fixes
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
    assert "fixed 1 place(s) in 1 file(s)" in err
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
    assert "fixed 1 place(s)" in err


def _bias_false(location: str, callee: str = "Conv2d") -> ArgumentChange:
    return ArgumentChange(location, callee, "bias", 7 if callee == "Conv2d" else 2, "False", "d", layer="conv")


def _result_asking(change: ArgumentChange) -> ModelResult:
    finding = Finding(REDUNDANT_BIAS, "conv", Severity.WARNING, "cancelled", location=change.location, change=change)
    return ModelResult("m.py::Net", "m.py", "Net", findings=[finding], layer_sites={change.location: ["conv"]})


def test_a_location_that_cannot_be_matched_gives_no_fix(tmp_path) -> None:
    path = tmp_path / "student.py"
    path.write_text("from torch import nn\n\nx = nn.Conv2d(3, 8, 3); y = nn.Conv2d(8, 2, 1)\nz = 1\n")
    assert located(_bias_false(f"{path}:4")) == (None, "no Conv2d call starts on that line")
    assert located(_bias_false(f"{path}:3")) == (None, "2 Conv2d calls start on that line")
    assert located(_bias_false(f"{path}:3", "Linear")) == (None, "no Linear call starts on that line")
    path.write_text("from torch import nn\n\nx = make(3, 8)\n")
    assert located(_bias_false(f"{path}:3", "Linear")) == (
        None, "no Linear call starts on that line: conv is built inside make(...), and cnncheck edits only the "
        "call that builds the layer itself; make the change where make builds it")
    gone = plan_fixes([_result_asking(_bias_false(f"{tmp_path / 'gone.py'}:1"))])
    assert gone.unfixable == {f"{tmp_path / 'gone.py'}:1": "no such file"}
    outside = plan_fixes([_result_asking(_bias_false(f"{path}:3"))], allowed=lambda _: [tmp_path / "other"])
    assert outside.unfixable == {f"{path}:3": "outside the checked files of this model's submission"}
    installed = tmp_path / "site-packages" / "lib.py"
    installed.parent.mkdir()
    installed.write_text("from torch import nn\nc = nn.Conv2d(3, 8, 3)\n")
    (reason,) = plan_fixes([_result_asking(_bias_false(f"{installed}:2"))]).unfixable.values()
    assert "installed library" in reason


def test_unsupported_call_shapes_give_a_reason(tmp_path) -> None:
    cases = {"nn.Conv2d(3, 8, 3, **kw)": "*args or **kwargs", "nn.Linear(8, 2, use_bias)": "expression (use_bias)",
             "nn.Conv2d(3, 8, 3, bias=b)": "bias is given as an expression (b), not a constant"}
    for index, (call, reason) in enumerate(cases.items()):
        path = tmp_path / f"m{index}.py"
        path.write_text(f"c = {call}\n")
        fix, why = located(_bias_false(f"{path}:1", call.split("(")[0].split(".")[1]))
        assert fix is None and reason in why, (call, why)


def test_a_positional_constant_is_replaced(tmp_path) -> None:
    path = tmp_path / "m.py"
    path.write_text("from torch import nn\nfc = nn.Linear(8, 2, True)  # head\n")
    fix, _ = located(_bias_false(f"{path}:2", "Linear"))
    assert fix is not None
    assert fixed_text(path.read_text(), [fix]) == "from torch import nn\nfc = nn.Linear(8, 2, False)  # head\n"


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
    assert code == 0 and "fixed 2 place(s) in 2 file(s)" in err, (out, err)
    for name in ("ann", "bob"):
        assert "nn.Conv2d(3, 8, 3, bias=False)  # first conv" in (tmp_path / name / "student.py").read_text()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["student.py", "student.py"]  # no temp files


def _write(tmp_path: Path, source: str, name: str = "student.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


def _findings(path: Path, capsys: pytest.CaptureFixture[str]) -> list[dict]:
    _check(path, "--format", "json")
    return [f for m in json.loads(capsys.readouterr().out)["models"] for f in m["findings"]]

DROPOUTS = '''
import torch
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, bias=False)
        self.register_buffer("mean", torch.zeros(8))
        self.register_buffer("var", torch.ones(8))
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        x = F.batch_norm(x, self.mean, self.var, training=True)  # hand-written norm
        x = F.dropout(x, 0.3)
        x = F.dropout2d(x, 0.1, True)
        return self.fc(F.alpha_dropout(x.mean(dim=(2, 3)), 0.2, training=True))
'''


def test_functional_calls_get_training_self_training(tmp_path, capsys) -> None:
    path = _write(tmp_path, DROPOUTS)
    code, out, err = _fix(path, capsys)
    text = path.read_text()
    assert "F.batch_norm(x, self.mean, self.var, training=self.training)  # hand-written norm" in text
    assert "x = F.dropout(x, 0.3, training=self.training)\n" in text
    assert "x = F.dropout2d(x, 0.1, self.training)\n" in text
    assert "F.alpha_dropout(x.mean(dim=(2, 3)), 0.2, training=self.training))" in text
    assert "fixed 4 place(s) in 1 file(s)" in err
    assert code == 0 and "no findings" in out, out + err


def test_training_false_is_an_unsafe_fix_and_a_helper_without_self_is_not_fixed(tmp_path, capsys) -> None:
    source = DROPOUTS.replace("x = F.dropout(x, 0.3)", "x = F.dropout(x, 0.3, training=False)").replace(
        "x = F.dropout2d(x, 0.1, True)", "x = drop(x)").replace(
        "class Net", "def drop(x: torch.Tensor) -> torch.Tensor:\n    return F.dropout(x, 0.1)\n\n\nclass Net")
    path = _write(tmp_path, source)
    code, _, err = _fix(path, capsys)
    text = path.read_text()
    assert "F.dropout(x, 0.3, training=False)" in text  # unsafe: not without --unsafe-fixes
    assert "return F.dropout(x, 0.1)\n" in text
    assert "the call is not in a method of an nn.Module, so there is no self.training to pass" in err
    assert "(1 unsafe fix(es) more with --unsafe-fixes)" in err
    assert code == 1
    assert _check(path, "--fix", "--unsafe-fixes") == 1  # the helper's dropout remains
    assert "F.dropout(x, 0.3, training=self.training)" in path.read_text()


def test_calls_a_fix_would_break_get_none(tmp_path, capsys) -> None:
    """torch.dropout takes ``train``, not ``training``; F.batch_norm without running statistics cannot
    run in eval mode: the findings stay, with no edit."""
    source = DROPOUTS.replace("x = F.dropout(x, 0.3)", "x = torch.dropout(x, 0.3, True)").replace(
        "F.batch_norm(x, self.mean, self.var, training=True)", "F.batch_norm(x, None, None, training=True)")
    path = _write(tmp_path, source)
    findings = _findings(path, capsys)
    by_line = {f["location"].rpartition(":")[2]: f for f in findings if f["rule"] == "mode-not-propagated"}
    lines = source.splitlines()
    for needle in ("torch.dropout(", "F.batch_norm("):
        line = str(next(i for i, text in enumerate(lines, 1) if needle in text))
        if line in by_line:
            assert by_line[line]["fix_edit"] is None, needle


REGISTER = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(3, 8, 3, bias=False), nn.Conv2d(8, 8, 3, bias=False)])
        self.bns = {bns}  # the norms
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = torch.relu({use}(conv(x)))
        return self.fc(x.mean(dim=(2, 3)))
'''


@pytest.mark.parametrize(("bns", "use", "fixed"), [
    pytest.param("[nn.BatchNorm2d(8), nn.BatchNorm2d(8)]", "self.bns[i]",
                 "nn.ModuleList([nn.BatchNorm2d(8), nn.BatchNorm2d(8)])", id="list"),
    pytest.param("[nn.BatchNorm2d(8) for _ in range(2)]", "self.bns[i]",
                 "nn.ModuleList([nn.BatchNorm2d(8) for _ in range(2)])", id="comprehension"),
    pytest.param('{"a": nn.BatchNorm2d(8), "b": nn.BatchNorm2d(8)}', 'self.bns["ab"[i]]',
                 'nn.ModuleDict({"a": nn.BatchNorm2d(8), "b": nn.BatchNorm2d(8)})', id="dict"),
    pytest.param("{f'n{i}': nn.BatchNorm2d(8) for i in range(2)}", "self.bns[f'n{i}']",
                 "nn.ModuleDict({f'n{i}': nn.BatchNorm2d(8) for i in range(2)})", id="dict-comprehension"),
])
def test_a_plain_list_or_dict_of_layers_is_registered(tmp_path, capsys, bns: str, use: str, fixed: str) -> None:
    path = _write(tmp_path, REGISTER.replace("{bns}", bns).replace("{use}", use))
    code, out, err = _fix(path, capsys)
    assert f"self.bns = {fixed}  # the norms" in path.read_text()
    assert "fixed 1 place(s) in 1 file(s)" in err
    assert code == 0 and "no findings" in out, out + err


def test_a_list_filled_in_a_loop_and_torch_imported_alone(tmp_path, capsys) -> None:
    source = REGISTER.replace("from torch import nn\n", "").replace("nn.", "torch.nn.").replace(
        "self.bns = {bns}  # the norms", "self.bns = []  # the norms\n        for _ in range(2):\n"
        "            self.bns.append(torch.nn.BatchNorm2d(8))").replace("{use}", "self.bns[i]")
    path = _write(tmp_path, source)
    code, out, err = _fix(path, capsys)
    assert "self.bns = torch.nn.ModuleList()  # the norms" in path.read_text()
    assert code == 0 and "no findings" in out, out + err


@pytest.mark.parametrize(("bns", "use", "reason"), [
    pytest.param("(nn.BatchNorm2d(8), nn.BatchNorm2d(8))", "self.bns[i]",
                 "self.bns is a tuple; cnncheck registers plain lists and dicts: make it nn.ModuleList(...)", id="tuple"),
    pytest.param("[nn.BatchNorm2d(8), nn.BatchNorm2d(8), torch.relu]", "self.bns[i]",
                 "self.bns also holds relu, which is not a layer", id="a-function-inside"),
    pytest.param("{0: nn.BatchNorm2d(8), 1: nn.BatchNorm2d(8)}", "self.bns[i]",
                 "self.bns has the key 0, which nn.ModuleDict does not take", id="integer-keys"),
    pytest.param('{"train": nn.BatchNorm2d(8), "b": nn.BatchNorm2d(8)}', 'self.bns[["train", "b"][i]]',
                 "self.bns has the key 'train', which nn.ModuleDict does not take", id="a-key-that-is-a-method"),
    pytest.param("[nn.BatchNorm2d(8), nn.BatchNorm2d(8)]", "self.bns[self.bns.index(self.bns[i])]",
                 "self.bns.index() is called, which nn.ModuleList does not have", id="a-list-method"),
    pytest.param("[nn.BatchNorm2d(8), nn.BatchNorm2d(8)]\n        self.bns = self.bns[:2]", "self.bns[i]",
                 "Net assigns self.bns 2 times", id="assigned-twice"),
    pytest.param("[nn.BatchNorm2d(8), nn.BatchNorm2d(8)]", "([nn.Identity()] + self.bns)[i + 1]",
                 "self.bns is used in an operation ([nn.Identity()] + self.bns) that a plain list and nn.ModuleList", id="list-concatenation"),
])
def test_a_container_that_registering_would_break_is_left_alone(tmp_path, capsys, bns: str, use: str,
                                                                reason: str) -> None:
    path = _write(tmp_path, REGISTER.replace("{bns}", bns).replace("{use}", use))
    before = path.read_text()
    code, out, err = _fix(path, capsys)
    assert path.read_text() == before
    assert code == 1 and "mode-not-propagated" in out
    assert reason in err
    if "times" not in reason:  # (assigned twice, the norms have no one line they were built at)
        line = next(i for i, text in enumerate(before.splitlines(), 1) if "self.bns =" in text)
        assert f"student.py:{line}: " in err  # the line the finding points at, where the student looks


def test_a_list_assigned_before_module_init_is_left_alone(tmp_path, capsys) -> None:
    source = REGISTER.replace("{bns}", "[nn.BatchNorm2d(8), nn.BatchNorm2d(8)]").replace("{use}", "self.bns[i]")
    source = source.replace("        super().__init__()\n", "").replace(
        "        self.bns = [nn.BatchNorm2d(8), nn.BatchNorm2d(8)]  # the norms\n",
        "        self.bns = [nn.BatchNorm2d(8), nn.BatchNorm2d(8)]  # the norms\n        super().__init__()\n")
    source = source.replace("        self.convs = nn.ModuleList(", "        convs = nn.ModuleList(").replace(
        "        self.fc = nn.Linear(8, 2)", "        self.convs = convs\n        self.fc = nn.Linear(8, 2)")
    path = _write(tmp_path, source)
    before = path.read_text()
    code, _, err = _fix(path, capsys)
    assert (code, path.read_text()) == (1, before)
    assert "self.bns is assigned before super().__init__(), when nn.Module cannot register a module yet" in err


def test_the_seed_convnet_gets_its_stride_only_with_unsafe_fixes(tmp_path, capsys) -> None:
    seed = Path(__file__).parent.parent / "examples" / "seed_convnet.py"
    path = tmp_path / "seed_convnet.py"
    path.write_text(seed.read_text(encoding="utf-8"), encoding="utf-8")
    before = path.read_text()
    shape = ["--input-shape", "4,1,28,28"]
    assert main(["check", str(path), *shape, "--sandbox", "none", "--fix"]) == 1
    out, err = capsys.readouterr()
    assert path.read_text() == before and "feature-size-mismatch" in out
    assert "nothing to fix (1 unsafe fix(es) more with --unsafe-fixes)" in err
    assert "an unsafe fix, it changes what the model computes" in out  # the edit: line
    assert main(["check", str(path), *shape, "--sandbox", "none", "--diff", "--unsafe-fixes"]) == 1
    out, _ = capsys.readouterr()
    assert "-            nn.MaxPool2d(kernel_size=2, stride=5),\n+            nn.MaxPool2d(kernel_size=2, stride=2),\n" in out
    assert path.read_text() == before
    assert main(["check", str(path), *shape, "--sandbox", "none", "--fix", "--unsafe-fixes"]) == 0
    out, err = capsys.readouterr()
    call = "            nn.MaxPool2d(kernel_size=2, stride={}),\n"
    assert before.count(call.format(5)) == 1
    assert path.read_text() == before.replace(call.format(5), call.format(2))
    assert "no findings" in out and "fixed 1 place(s) in 1 file(s)" in err


FLAT = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(3)
        self.fc1 = nn.Linear({in_features}, 16)  # head
        self.fc2 = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv(x))).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))
'''


@pytest.mark.parametrize(("source", "before", "after"), [
    pytest.param(FLAT.replace("{in_features}", "8 * 4 * 4"), "nn.Linear(8 * 4 * 4, 16)", "nn.Linear(72, 16)",
                 id="no-stride-fits"),
    pytest.param(FLAT.replace("{in_features}", "72").replace("nn.Linear(16, 2)", "nn.Linear(12, 2)"),
                 "nn.Linear(12, 2)", "nn.Linear(16, 2)", id="after-a-linear"),
])
def test_in_features_is_an_unsafe_fix(tmp_path, capsys, source: str, before: str, after: str) -> None:
    path = _write(tmp_path, source)
    assert _check(path, "--fix") == 1
    assert before in path.read_text()
    capsys.readouterr()
    assert _check(path, "--fix", "--unsafe-fixes") == 0, capsys.readouterr()
    assert after in path.read_text()


def test_unsafe_fixes_alone_is_a_usage_error(tmp_path, capsys) -> None:
    path = _student(tmp_path, "nn.Conv2d(3, 8, 3)")
    assert _check(path, "--unsafe-fixes") == 2
    out, err = capsys.readouterr()
    assert "--unsafe-fixes goes with --fix or --diff" in err and not out  # said before any model is checked


def _comments(source: str) -> list[str]:
    return [line[line.index("#"):] for line in source.splitlines() if "#" in line]


@pytest.mark.parametrize("seed", range(16))
def test_generated_student_files_are_fixed_then_check_clean(tmp_path, capsys, seed: int) -> None:
    from tests.student_files import INPUT_SHAPE, student_file

    student = student_file(seed)
    path = _write(tmp_path, student.source, f"hw{seed}.py")
    shape = ["--input-shape", ",".join(map(str, INPUT_SHAPE)), "--sandbox", "none"]
    code = main(["check", str(path), *shape, "--fix"])
    out, err = capsys.readouterr()
    safe = path.read_text()
    assert (safe != student.source) == bool(student.safe), err
    assert code == (1 if student.unsafe else 0), out + err
    if "bias" in student.safe:
        assert student.source.count("bias=False") < safe.count("bias=False")
    if "register" in student.safe:
        assert "self.bns = nn.ModuleList([" in safe
    if "training" in student.safe:
        assert "F.dropout(x, 0.25, training=self.training)" in safe or "F.dropout(x, 0.25, self.training)" in safe
    assert main(["check", str(path), *shape, "--fix", "--unsafe-fixes"]) == 0, capsys.readouterr()
    fixed = path.read_text()
    assert (fixed != safe) == student.unsafe
    assert _comments(fixed) == _comments(student.source)  # every comment kept, in its place
    assert [line for line in fixed.splitlines() if line.startswith("    def ")] == [
        line for line in student.source.splitlines() if line.startswith("    def ")]
    capsys.readouterr()
    assert main(["check", str(path), *shape, "--fix", "--unsafe-fixes"]) == 0
    assert path.read_text() == fixed and "nothing to fix" in capsys.readouterr().err


def test_the_examples_get_what_can_be_fixed_and_keep_the_rest(tmp_path, capsys) -> None:
    """The bundled examples, copied: the findings with a fix disappear, every other finding stays, and
    the files without a fix are left byte for byte."""
    examples = Path(__file__).parent.parent / "examples"
    for name in ("mistakes.py", "lookalikes.py", "seed_convnet.py", "seed_convnet_fixed.py"):
        (tmp_path / name).write_bytes((examples / name).read_bytes())
    before = {p.name: p.read_bytes() for p in tmp_path.glob("*.py")}

    def findings() -> tuple[set[tuple[str, str, str]], set[tuple[str, str, str]]]:
        main(["check", str(tmp_path), "--sandbox", "none", "--format", "json"])
        models = json.loads(capsys.readouterr().out)["models"]
        every = {(m["name"], f["rule"], f["module"]) for m in models for f in m["findings"]}
        return every, {(m["name"], f["rule"], f["module"]) for m in models for f in m["findings"] if f["fix_edit"]}

    every, fixable = findings()
    assert {rule for _, rule, _ in fixable} == {REDUNDANT_BIAS, "mode-not-propagated", "feature-size-mismatch",
                                                "bn-eval-behaviour"}
    assert main(["check", str(tmp_path), "--sandbox", "none", "--fix", "--unsafe-fixes"]) == 1  # others remain
    capsys.readouterr()
    after, still_fixable = findings()
    assert after == every - fixable and not still_fixable
    for name in ("lookalikes.py", "seed_convnet_fixed.py"):
        assert (tmp_path / name).read_bytes() == before[name]
    for name in ("mistakes.py", "seed_convnet.py"):
        old, new = before[name].decode().splitlines(), (tmp_path / name).read_text().splitlines()
        assert len(old) == len(new) and _comments("\n".join(old)) == _comments("\n".join(new))


def test_a_model_s_fixes_edit_only_its_own_submission(tmp_path, capsys) -> None:
    """In a folder of submissions, a layer that ann's model builds from a file of another folder (here a
    course library beside the submissions) is not ann's to fix: ann's report says why, the file stays."""
    (tmp_path / "common").mkdir()
    library = tmp_path / "common" / "blocks.py"
    library.write_text("from torch import nn\n\n\nclass Block(nn.Module):\n    def __init__(self, width):\n"
                       "        super().__init__()\n        self.conv = nn.Conv2d(3, width, 3)\n"
                       "        self.bn = nn.BatchNorm2d(8)\n\n    def forward(self, x):\n"
                       "        return self.bn(self.conv(x))\n", encoding="utf-8")
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "model.py").write_text(textwrap.dedent('''
        import sys
        from pathlib import Path

        import torch
        from torch import nn

        sys.path.insert(0, str(Path(__file__).parents[1] / "common"))
        from blocks import Block  # noqa: E402


        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.features = Block(8)
                self.fc = nn.Linear(8, 2)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.fc(torch.relu(self.features(x)).mean(dim=(2, 3)))
    '''), encoding="utf-8")
    before = library.read_text()
    code = main(["check", str(tmp_path), "--input-shape", SHAPE, "--sandbox", "none", "--fix"])
    out, err = capsys.readouterr()
    assert code == 1 and REDUNDANT_BIAS in out
    assert library.read_text() == before
    assert "blocks.py:7: outside the checked files of this model's submission" in err


def test_a_layer_built_inside_an_installed_library_s_call_is_not_fixed(tmp_path, capsys) -> None:
    pytest.importorskip("torchvision")
    path = _write(tmp_path, '''
        import torch
        from torch import nn
        from torchvision.ops import Conv2dNormActivation


        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.stem = Conv2dNormActivation(3, 8, bias=True)
                self.fc = nn.Linear(8, 2)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.fc(self.stem(x).mean(dim=(2, 3)))
    ''')
    before = path.read_text()
    code, out, err = _fix(path, capsys)
    assert code == 1 and REDUNDANT_BIAS in out and path.read_text() == before
    assert ("student.py:10: no Conv2d call starts on that line: stem.0 is built inside Conv2dNormActivation(...), "
            "and cnncheck edits only the call that builds the layer itself") in err
    assert "edit:" not in out


def test_sarif_says_a_fix_is_unsafe_and_validates(tmp_path, capsys, monkeypatch) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((Path(__file__).parent / "data" / "sarif-schema-2.1.0.json").read_text(encoding="utf-8"))
    path = _write(tmp_path, DROPOUTS.replace("x = F.dropout(x, 0.3)", "x = F.dropout(x, 0.3, training=False)"))
    monkeypatch.chdir(tmp_path)
    _check(path, "--format", "sarif")
    log = json.loads(capsys.readouterr().out)
    assert not list(jsonschema.Draft4Validator(schema).iter_errors(log))
    texts = sorted(fix["description"]["text"] for r in log["runs"][0]["results"] for fix in r.get("fixes", []))
    assert len(texts) == 4
    assert [t for t in texts if "unsafe" in t] == [
        "F.dropout(..., training=self.training): model.eval() switches it (unsafe: it changes what the model computes)"]


def test_a_change_read_back_is_checked_before_it_can_become_code() -> None:
    """A worker's message is untrusted: a change whose value is not one cnncheck's rules ask for, or
    whose names are not identifiers, is no change at all."""
    from cnncheck.changes import RegisterChange, change_from_dict

    good = ArgumentChange("m.py:3", "Conv2d", "bias", 7, "False", "d", layer="conv")
    register = RegisterChange("m.py:1", "Net", "bns", "list", "d")
    for change in (good, register, ArgumentChange("m.py:3", "dropout", "training", 2, "self.training", "d"),
                   ArgumentChange("m.py:3", "Linear", "in_features", 0, "576", "d", safe=False)):
        result = ModelResult("i", "f", "n", findings=[Finding("r", "", Severity.ERROR, "m", change=change)])
        assert ModelResult.from_dict(json.loads(json.dumps(result.to_dict()))).findings[0].change == change
    forged = [{"value": "__import__('os').system('id')"}, {"value": "False; import os"}, {"keyword": "bias=0, x"},
              {"callee": "Conv2d(); os"}, {"position": "7"}, {"location": 3}, {"kind": "exec"}]
    base = {"kind": "argument", "location": "m.py:3", "callee": "Conv2d", "keyword": "bias", "position": 7,
            "value": "False", "description": "d", "safe": True, "layer": "conv"}
    assert change_from_dict(base) == good
    for tampering in forged:
        read = change_from_dict({**base, **tampering})
        assert read is None or (tampering == {"position": "7"} and read.position is None), tampering
    assert change_from_dict({"kind": "register", "location": "m.py:1", "class_name": "Net", "attribute": "bns",
                             "container": "tuple", "description": "d"}) is None


def test_pytest_shows_an_unsafe_edit_as_unsafe(pytester: pytest.Pytester) -> None:
    seed = (Path(__file__).parent.parent / "examples" / "seed_convnet.py").read_text(encoding="utf-8")
    path = pytester.makepyfile(student=seed)
    written = path.read_text()
    result = pytester.runpytest("--cnncheck", "-p", "no:randomly", "-k", "feature")
    result.assert_outcomes(failed=1)
    line = next(i for i, text in enumerate(written.splitlines(), 1) if "stride=5" in text and "MaxPool2d(" in text
                and not text.lstrip().startswith(("#", "``")))
    result.stdout.fnmatch_lines([f"  edit:     student.py:{line}: nn.MaxPool2d(kernel_size=2, stride=2)  (an unsafe "
                                 f"fix, it changes what the model computes: `cnncheck check --fix --unsafe-fixes` "
                                 f"makes it)"])
    assert path.read_text() == written


FUNCTIONAL_POOL = '''
import torch
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 1, 3, 3))
        self.fc = nn.Linear(8 * 7 * 7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.conv2d(x, self.w, padding=1))
        x = {pool}  # pool
        x = F.max_pool2d(x, 2)
        return self.fc(x.flatten(1))
'''


@pytest.mark.parametrize(("pool", "fixed"), [
    pytest.param("F.max_pool2d(x, 2, 3)", "F.max_pool2d(x, 2, 2)", id="max-positional"),
    pytest.param("F.avg_pool2d(x, kernel_size=2, stride=3)", "F.avg_pool2d(x, kernel_size=2, stride=2)",
                 id="avg-keyword"),
])
def test_a_functional_pool_gets_its_stride_with_unsafe_fixes(tmp_path, capsys, pool: str, fixed: str) -> None:
    path = _write(tmp_path, FUNCTIONAL_POOL.replace("{pool}", pool))
    shape = ["--input-shape", "2,1,28,28", "--sandbox", "none"]
    assert main(["check", str(path), *shape, "--fix", "--unsafe-fixes"]) == 0, capsys.readouterr()
    assert f"x = {fixed}  # pool\n" in path.read_text()


# -- what a review as a new user found: files as editors save them, and fixes that must not be made ----------

@pytest.mark.parametrize(("head", "newline"), [
    pytest.param("\ufeff# Modell für Übung 3\n", "\n", id="byte-order-mark"),
    pytest.param("# from the slides \u2028 see lecture 4 \x0c page 2\n", "\n", id="form-feed-and-line-separator"),
    pytest.param("# saved on Windows\r\n", "\r\n", id="crlf"),
])
def test_files_as_editors_save_them_are_fixed_exactly(tmp_path, capsys, head: str, newline: str) -> None:
    body = textwrap.dedent(SEED_LIKE).replace("{conv}", "nn.Conv2d(3, 8, 3)  # first conv")
    path = tmp_path / "student.py"
    path.write_bytes((head + body).replace("\n", newline).replace("\r\r\n", "\r\n").encode("utf-8"))
    before = path.read_bytes().decode("utf-8")
    code, out, err = _fix(path, capsys)
    assert code == 0 and "no findings" in out, out + err
    assert path.read_bytes().decode("utf-8") == before.replace("nn.Conv2d(3, 8, 3)  # first",
                                                               "nn.Conv2d(3, 8, 3, bias=False)  # first")


def test_the_branch_of_an_if_that_built_the_layer_is_the_one_fixed(tmp_path, capsys) -> None:
    path = _write(tmp_path, '''
        import torch
        from torch import nn


        class Classifier(nn.Module):
            def __init__(self, use_dropout: bool = False) -> None:
                super().__init__()
                self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                                              nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten())
                if use_dropout:
                    self.head = nn.Sequential(
                        nn.Linear(256, 64),  # its bias matters: a ReLU follows
                        nn.Dropout(0.5), nn.ReLU(), nn.Linear(64, 10))
                else:
                    self.head = nn.Sequential(
                        nn.Linear(256, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 10))

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.head(self.features(x))
    ''')
    before = path.read_text()
    code, out, err = _fix(path, capsys)
    assert code == 0 and "no findings" in out, out + err
    assert path.read_text() == before.replace("nn.Linear(256, 64), nn.BatchNorm1d(64)",
                                              "nn.Linear(256, 64, bias=False), nn.BatchNorm1d(64)")


def test_a_block_another_model_uses_without_batchnorm_is_not_fixed(tmp_path, capsys) -> None:
    """ModelB has no finding, but bias=False in Block would change what it computes."""
    path = _write(tmp_path, BLOCK.replace("class Net(nn.Module)", "class ModelA(nn.Module)").replace(
        "        self.b = Block(norm=False)\n", "        self.b = Block(norm=True)\n") + textwrap.dedent('''

        class ModelB(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.only = Block(norm=False)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.only(x)
    '''))
    before = path.read_text()
    code, _, err = _fix(path, capsys)
    assert (code, path.read_text()) == (1, before)
    assert "the same call also builds 'only.conv' in" in err and "ModelB" in err


def test_two_layers_built_on_one_line_are_fixed_each_at_its_call(tmp_path, capsys) -> None:
    path = _write(tmp_path, '''
        import torch
        from torch import nn


        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.f = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
                self.g = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8))
                self.fc = nn.Linear(8, 2)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.fc(torch.relu(self.g(self.f(x))).mean(dim=(2, 3)))
    ''')
    code, out, err = _fix(path, capsys)
    text = path.read_text()
    assert code == 0 and "no findings" in out, out + err
    assert text.count("padding=1, bias=False)") == 2
    assert "nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8))" in text


def test_an_ordered_dict_sequential_is_located_and_fixed(tmp_path, capsys) -> None:
    path = _write(tmp_path, '''
        from collections import OrderedDict

        import torch
        from torch import nn


        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.features = nn.Sequential(OrderedDict([
                    ("conv1", nn.Conv2d(3, 8, 3, padding=1)),  # first
                    ("bn1", nn.BatchNorm2d(8)),
                ]))
                self.fc = nn.Linear(8, 2)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.fc(torch.relu(self.features(x)).mean(dim=(2, 3)))
    ''')
    _check(path)
    assert "at:       " in capsys.readouterr().out  # the finding has its line now
    code, out, err = _fix(path, capsys)
    assert code == 0 and '("conv1", nn.Conv2d(3, 8, 3, padding=1, bias=False)),  # first' in path.read_text()


def test_a_linked_file_stays_a_link_and_its_target_is_fixed(tmp_path, capsys) -> None:
    real = _student(tmp_path, "nn.Conv2d(3, 8, 3)")
    (tmp_path / "alice").mkdir()
    link = tmp_path / "alice" / "model.py"
    link.symlink_to(real)
    assert _check(link, "--fix") == 0, capsys.readouterr()
    assert link.is_symlink() and "nn.Conv2d(3, 8, 3, bias=False)" in real.read_text()


def test_from_imports_get_the_imported_name_or_a_hint(tmp_path, capsys) -> None:
    source = REGISTER.replace("{bns}", "[BatchNorm2d(8), BatchNorm2d(8)]").replace("{use}", "self.bns[i]").replace(
        "from torch import nn\n", "from torch.nn import BatchNorm2d, Conv2d, Linear, Module, ModuleList\n").replace(
        "nn.ModuleList", "ModuleList").replace("nn.Conv2d", "Conv2d").replace("nn.Linear", "Linear").replace(
        "(nn.Module)", "(Module)")
    path = _write(tmp_path, source)
    code, out, err = _fix(path, capsys)
    assert "self.bns = ModuleList([BatchNorm2d(8), BatchNorm2d(8)])  # the norms" in path.read_text()
    assert code == 0, out + err
    path = _write(tmp_path, """
        from torch.nn import BatchNorm2d, Conv2d, Module


        class Net(Module):
            def __init__(self):
                super().__init__()
                self.conv = Conv2d(3, 8, 3, bias=False)
                self.bns = [BatchNorm2d(8)]

            def forward(self, x):
                return self.bns[0](self.conv(x)).mean()
    """, "other.py")
    code, _, err = _fix(path, capsys)
    assert code == 1
    assert "the file imports neither nn, torch nor ModuleList: add `from torch import nn`" in err


def test_what_cannot_be_fixed_is_said_not_left_silent(tmp_path, capsys) -> None:
    source = DROPOUTS.replace("x = F.dropout(x, 0.3)", "x = torch.dropout(x, 0.3, True)").replace(
        "F.batch_norm(x, self.mean, self.var, training=True)", "F.batch_norm(x, None, None, training=True)")
    path = _write(tmp_path, source)
    before = path.read_text()
    code, out, err = _fix(path, capsys)
    assert "dropout is not torch.nn.functional's (torch.dropout takes train, not training)" in err
    assert "F.batch_norm has no running statistics to use in eval mode" in err
    assert "give it running statistics" in out  # the finding's own advice would crash in eval mode otherwise
    assert path.read_text() != before and code == 1  # the two other dropouts are fixed


def test_a_multi_line_edit_is_shown_as_what_it_does_and_markdown_shows_it(tmp_path, capsys) -> None:
    path = _student(tmp_path, "nn.Conv2d(\n            3,\n            8,\n            3,\n        )")
    _check(path)
    (edit,) = [line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("edit:")]
    assert edit.endswith("Conv2d(..., bias=False): the BatchNorm after it cancels the bias  "
                         "(`cnncheck check --fix` makes it)")
    _check(path, "--format", "markdown")
    assert "- **Edit:** `" in capsys.readouterr().out


def test_an_edit_that_would_not_compile_is_never_written(tmp_path) -> None:
    from cnncheck.fixes import FixPlan, _drop_what_would_not_compile

    path = tmp_path / "m.py"
    path.write_text("x = f(1)\ny = g(2)\n")
    plan = FixPlan(fixes={"a": Fix(str(path), 1, 5, 1, 9, "f(1, bias=)", "broken"),
                          "b": Fix(str(path), 2, 5, 2, 9, "g(2, x=0)", "fine")})
    _drop_what_would_not_compile(plan)
    assert plan.fixes == {}
    assert all("would not compile" in reason for reason in plan.unfixable.values())


HELPERS = '''
import torch
from torch import nn


def conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def make_conv(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1)  # a 1x1 projection


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer1 = conv_bn(3, 8)
        self.layer2 = conv_bn(8, 16, 2)
        self.proj = make_conv(16, 16)
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.proj(self.layer2(self.layer1(x)))))
        return self.fc({head}x.mean(dim=(2, 3)))
'''


def test_a_layer_a_helper_of_the_file_builds_is_fixed_in_the_helper(tmp_path, capsys) -> None:
    path = _write(tmp_path, HELPERS.replace("{head}", ""))
    before = path.read_text()
    code, out, err = _fix(path, capsys)
    assert code == 0 and "no findings" in out, out + err
    assert path.read_text() == before.replace("nn.Conv2d(c_in, c_out, 3, stride, 1)",
                                              "nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)").replace(
        "nn.Conv2d(c_in, c_out, 1)  # a 1x1", "nn.Conv2d(c_in, c_out, 1, bias=False)  # a 1x1")


def test_a_helper_that_also_builds_a_layer_whose_bias_matters_is_not_fixed(tmp_path, capsys) -> None:
    source = HELPERS.replace("{head}", "self.head(").replace("x.mean(dim=(2, 3)))", "x).mean(dim=(2, 3)))").replace(
        "        self.fc = nn.Linear(16, 2)", "        self.head = make_conv(16, 16)\n        self.fc = nn.Linear(16, 2)")
    path = _write(tmp_path, source)
    code, _, err = _fix(path, capsys)
    text = path.read_text()
    assert code == 1  # proj's finding remains
    assert "nn.Conv2d(c_in, c_out, 1)  # a 1x1" in text  # head's bias matters: a ReLU, not a norm, follows
    assert "the same call also builds 'head'" in err
    assert "nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)" in text


def test_a_function_imported_under_another_name_is_fixed(tmp_path, capsys) -> None:
    source = DROPOUTS.replace("import torch.nn.functional as F\n",
                              "import torch.nn.functional as F\nfrom torch.nn.functional import dropout2d as drop2d\n")
    path = _write(tmp_path, source.replace("x = F.dropout2d(x, 0.1, True)", "x = drop2d(x, 0.1, True)"))
    code, out, err = _fix(path, capsys)
    assert "x = drop2d(x, 0.1, self.training)\n" in path.read_text()
    assert code == 0, out + err


# -- a second review as a new user ---------------------------------------------------------------------------

def test_a_class_redefined_in_the_file_is_fixed_where_it_runs(tmp_path, capsys) -> None:
    first = textwrap.dedent(SEED_LIKE).replace("{conv}", "nn.Conv2d(3, 8, 3)").replace(
        "self.bn = nn.BatchNorm2d(8)", "self.bn = nn.Identity()")
    path = _write(tmp_path, first + textwrap.dedent(SEED_LIKE).replace("{conv}", "nn.Conv2d(3, 8, 3)").split(
        "from torch import nn\n", 1)[1])
    code, out, err = _fix(path, capsys)
    text = path.read_text()
    assert code == 0, out + err
    assert text.index("nn.Conv2d(3, 8, 3)") < text.index("nn.Conv2d(3, 8, 3, bias=False)")  # the live copy


def test_training_is_not_passed_in_a_class_that_is_no_module(tmp_path, capsys) -> None:
    source = DROPOUTS.replace("class Net", "class Noise:\n    def __call__(self, x):\n        return F.dropout(x, 0.1)"
                              "\n\n\nclass Net").replace("x = F.dropout(x, 0.3)", "x = Noise()(x)")
    path = _write(tmp_path, source)
    _, _, err = _fix(path, capsys)
    assert "return F.dropout(x, 0.1)\n" in path.read_text()
    assert "the call is not in a method of an nn.Module, so there is no self.training to pass" in err


def test_an_unsafe_fix_needs_the_input_shape_the_model_is_built_for(tmp_path, capsys) -> None:
    seed = (Path(__file__).parent.parent / "examples" / "seed_convnet.py").read_text(encoding="utf-8")
    stripped = "\n".join(line for line in seed.splitlines() if "cnncheck.model" not in line)
    path = _write(tmp_path, stripped)
    code = main(["check", str(path), "--sandbox", "none", "--fix", "--unsafe-fixes"])
    _, err = capsys.readouterr()
    assert code == 1 and path.read_text() == stripped
    assert "an unsafe fix measured on an inferred input shape" in err


def test_a_class_indented_under_an_if_is_fixed(tmp_path, capsys) -> None:
    path = _write(tmp_path, '''
        import torch
        from torch import nn

        USE_BN = True
        if USE_BN:
            class Net(nn.Module):
                def __init__(self) -> None:
                    super().__init__()
                    self.conv = nn.Conv2d(3, 8, kernel_size=3)  # indented twice
                    self.bn = nn.BatchNorm2d(8)
                    self.fc = nn.Linear(8, 2)

                def forward(self, x: torch.Tensor) -> torch.Tensor:
                    return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))
    ''')
    code, out, err = _fix(path, capsys)
    assert "self.conv = nn.Conv2d(3, 8, kernel_size=3, bias=False)  # indented twice" in path.read_text()
    assert code == 0, out + err
