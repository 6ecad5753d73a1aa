"""No submission vanishes from a class's report: an empty folder, an empty file, a file with only
functions, a class that needs arguments each get a row that says why; a helper file next to a model
adds none; a symlinked submission folder is followed, and a link that loops is not."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cnncheck.cli import main

ROOT = Path(__file__).resolve().parent.parent
CLEAN = (ROOT / "examples" / "seed_convnet_fixed.py").read_text()


def test_every_submission_gets_a_row(tmp_path: Path, monkeypatch) -> None:
    subs = tmp_path / "subs"
    for name in ("ann", "bob", "cat", "dan", "empty"):
        (subs / name).mkdir(parents=True)
    (subs / "ann" / "model.py").write_text(CLEAN)
    (subs / "ann" / "utils.py").write_text("def helper():\n    return 1\n")
    (subs / "bob" / "model.py").write_text("")
    (subs / "cat" / "model.py").write_text("from torch import nn\n\n\nclass Net(nn.Module):\n"
                                           "    def __init__(self, width):\n        super().__init__()\n"
                                           "        self.fc = nn.Linear(width, 2)\n")
    (subs / "dan" / "model.py").write_text("def forward(x):\n    return x\n")
    outside = tmp_path / "elsewhere" / "eve"
    outside.mkdir(parents=True)
    (outside / "model.py").write_text(CLEAN)
    os.symlink(outside, subs / "eve")  # a submission that is a link
    os.symlink(subs, subs / "ann" / "loop")  # a link back up: walked once
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "report.json"
    code = main(["check", "subs", "--format", "json", "--output", str(out)])
    rows = {m["id"]: m for m in json.loads(out.read_text())["models"]}
    assert code == 1  # was 0, "all clean", with three submissions silently missing
    assert set(rows) == {"subs/ann/model.py::ConvNet", "subs/eve/model.py::ConvNet", "subs/bob::<no model>",
                         "subs/cat::<no model>", "subs/dan::<no model>", "subs/empty::<no model>"}
    assert rows["subs/ann/model.py::ConvNet"]["error"] is None and rows["subs/eve/model.py::ConvNet"]["error"] is None
    assert rows["subs/bob::<no model>"]["error"] == "no model found in subs/bob: model.py is empty"
    assert rows["subs/cat::<no model>"]["error"] == (
        "no model found in subs/cat: Net() needs arguments (width): declare a factory that builds it, with "
        "@cnncheck.model(input_shape=...)")
    assert rows["subs/dan::<no model>"]["error"] == "no model found in subs/dan: model.py defines no nn.Module subclass"
    assert rows["subs/empty::<no model>"]["error"] == "no model found in subs/empty: no Python file in subs/empty"
    assert {m["error_kind"] for i, m in rows.items() if i.endswith("<no model>")} == {"no-model"}


def test_a_project_of_its_own_inside_the_folder_is_not_a_submission(tmp_path: Path, monkeypatch) -> None:
    """examples/plugin/ (its own pyproject.toml) is skipped, as before: it gets no 'no model' row."""
    (tmp_path / "subs" / "ann").mkdir(parents=True)
    (tmp_path / "subs" / "ann" / "model.py").write_text(CLEAN)
    (tmp_path / "subs" / "tooling").mkdir()
    (tmp_path / "subs" / "tooling" / "pyproject.toml").write_text("[project]\nname = 'tooling'\n")
    (tmp_path / "subs" / "tooling" / "helpers.py").write_text("def helper():\n    return 1\n")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "report.json"
    assert main(["check", "subs", "--format", "json", "--output", str(out)]) == 0
    assert [m["id"] for m in json.loads(out.read_text())["models"]] == ["subs/ann/model.py::ConvNet"]


def test_a_folder_of_test_files_is_not_a_submission(tmp_path: Path, monkeypatch) -> None:
    """``cnncheck check .`` on a project: its tests/ folder gets no 'no model' row (test files count only
    their declared models), while an empty folder among submissions still does."""
    (tmp_path / "model.py").write_text(CLEAN)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_model.py").write_text("def test_it():\n    assert True\n")
    (tmp_path / "nothing_handed_in").mkdir()
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "report.json"
    assert main(["check", ".", "--format", "json", "--output", str(out)]) == 1
    assert [m["id"] for m in json.loads(out.read_text())["models"]] == ["model.py::ConvNet",
                                                                         "nothing_handed_in::<no model>"]
