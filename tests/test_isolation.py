"""Grading many submissions: each file in its own worker, every way of failing reported, none lost."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import pytest

from cnncheck.cli import main
from cnncheck.isolate import parse_size
from cnncheck.results import ModelResult

ROOT = Path(__file__).resolve().parent.parent
HEADER = "import os, sys, ctypes\nimport torch\nfrom torch import nn\nimport torch.nn.functional as F\n"
NET = """
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 28 * 28, 10)
{extra_init}
    def forward(self, x):
{body}
        return self.fc(F.relu(self.bn(self.conv(x))).flatten(1))
"""

SUBMISSIONS = {
    # name: (source, expected error kind or None, expected rules)
    "clean": (NET.format(extra_init="", body="        print('debug output the report must not show')"), None, set()),
    "biased": (NET.format(extra_init="        self.conv = nn.Conv2d(1, 4, 3, padding=1)", body=""), None,
               {"redundant-bias-before-bn"}),
    "endless": (NET.format(extra_init="", body="        while True:\n            pass"), "timeout", set()),
    "exits": (NET.format(extra_init="", body="        sys.exit(3)"), "exit", set()),
    "hard_exit": (NET.format(extra_init="", body="        os._exit(7)"), "exit", set()),
    "segfault": (NET.format(extra_init="", body="        ctypes.string_at(0)"), "crash", set()),
    "hungry": (NET.format(extra_init="        self.big = nn.Parameter(torch.zeros(int(40e9) // 4))", body=""),
               "memory", set()),
    "broken_forward": (NET.format(extra_init="", body="        x = torch.cat([x, x], dim=1)  # 2 channels into a 1-channel conv"),
                       "forward", set()),
}


@pytest.fixture(scope="module")
def submissions(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("submissions")
    for name, (source, _, _) in SUBMISSIONS.items():
        (root / name).mkdir()
        (root / name / "model.py").write_text(HEADER + textwrap.dedent(source))
    (root / "syntax").mkdir()
    (root / "syntax" / "model.py").write_text("class Net(nn.Module:\n    pass\n")
    (root / "missing_import").mkdir()
    (root / "missing_import" / "model.py").write_text("import torchvisionn\n")
    (root / "exit_on_import").mkdir()
    (root / "exit_on_import" / "model.py").write_text("import sys\nsys.exit('bye')\n")
    return root


def test_every_submission_gets_its_verdict_and_none_is_lost(submissions: Path, tmp_path: Path) -> None:
    files = sorted(submissions.rglob("model.py"))
    report = tmp_path / "report.json"
    started = time.monotonic()
    code = main(["check", str(submissions), "-j", "2", "--timeout", "8", "--max-memory", "3G",
                 "--format", "json", "--output", str(report), "--per-model-dir", str(tmp_path / "students")])
    elapsed = time.monotonic() - started
    assert code == 1
    data = json.loads(report.read_text())
    results = [ModelResult.from_dict(m) for m in data["models"]]
    assert data["summary"]["models"] == len(files) and data["summary"]["clean"] == 1
    assert len(list((tmp_path / "students").glob("*.md"))) == len(files)
    by_folder = {Path(r.file).parent.name: r for r in results}
    assert sorted(by_folder) == sorted(f.parent.name for f in files)  # one result per submission
    assert len(results) == len(files)
    for name, (_, kind, rules) in SUBMISSIONS.items():
        result = by_folder[name]
        assert result.error_kind == kind, (name, result.error)
        assert {f.rule for f in result.findings} == rules, name
    assert by_folder["syntax"].error_kind == "import" and "SyntaxError" in by_folder["syntax"].error
    assert "ModuleNotFoundError" in by_folder["missing_import"].error
    assert by_folder["exit_on_import"].error_kind == "exit" and "sys.exit('bye')" in by_folder["exit_on_import"].error
    assert by_folder["hard_exit"].error == "Net calls os._exit(7)"
    assert "SIGSEGV" in by_folder["segfault"].error
    source = (submissions / "broken_forward" / "model.py").read_text().splitlines()
    failing_line = next(i for i, line in enumerate(source, 1) if "return self.fc" in line)
    assert by_folder["broken_forward"].location.endswith(f"model.py:{failing_line}")
    assert "expected input" in by_folder["broken_forward"].error
    # the endless loop costs its timeout once; everything else is quick, two at a time
    assert elapsed < 8 + 30


def test_parse_size() -> None:
    assert parse_size("512M") == 512 * 1024**2
    assert parse_size("4G") == parse_size("4GiB") == 4 * 1024**3
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")


def test_each_model_of_a_file_gets_its_own_worker(tmp_path: Path) -> None:
    (tmp_path / "two.py").write_text(HEADER + textwrap.dedent(
        NET.format(extra_init="", body="        while True:\n            pass")
        + NET.replace("class Net(", "class Second(").format(extra_init="", body="")
    ))
    report = tmp_path / "report.json"
    assert main(["check", str(tmp_path / "two.py"), "--timeout", "4", "--format", "json", "-o", str(report)]) == 1
    models = {m["name"]: m for m in json.loads(report.read_text())["models"]}
    assert models["Net"]["error_kind"] == "timeout"
    assert models["Second"]["error"] is None and models["Second"]["findings"] == []


def test_targets_by_file_and_name_and_by_module_and_name(tmp_path: Path, monkeypatch) -> None:
    package = tmp_path / "course"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(HEADER + textwrap.dedent(
        NET.format(extra_init="", body="") + NET.replace("class Net(", "class Biased(").format(
            extra_init="        self.conv = nn.Conv2d(1, 4, 3, padding=1)", body="")))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the forked worker resolves the module
    monkeypatch.syspath_prepend(str(tmp_path))
    for target in (f"{package / 'nets.py'}::Biased", "course.nets:Biased"):
        report = tmp_path / "report.json"
        assert main(["check", target, "--format", "json", "-o", str(report)]) == 1
        models = json.loads(report.read_text())["models"]
        assert [(m["name"], [f["rule"] for f in m["findings"]]) for m in models] == [
            ("Biased", ["redundant-bias-before-bn"])], target
