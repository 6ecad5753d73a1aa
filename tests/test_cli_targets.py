"""``cnncheck check`` targets (installed factories, re-exports, timm names, packages of the current folder)
and the options it refuses as usage errors: exit 2 and one line that names the fix, never a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cnncheck import cli

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "examples" / "seed_convnet.py"


def _json(tmp_path: Path, *argv: str) -> tuple[int, list[dict]]:
    out = tmp_path / "report.json"
    code = cli.main(["check", *argv, "--format", "json", "--output", str(out)])
    return code, json.loads(out.read_text())["models"]


@pytest.mark.parametrize("target", [
    "torchvision.models:resnet18",  # a factory function
    "torchvision.models:AlexNet",  # a class defined in torchvision.models.alexnet, re-exported
])
def test_installed_models_by_module_and_name(tmp_path: Path, target: str) -> None:
    pytest.importorskip("torchvision")
    code, [model] = _json(tmp_path, target, "--input-shape", "2,3,64,64")
    assert model["error"] is None and code == 0, model
    assert model["id"] == target  # the target as given: no site-packages path
    assert {o["status"] for o in model["outcomes"]} == {"passed"}


def test_timm_models_by_name(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    code, [model] = _json(tmp_path, "timm:resnet18", "--input-shape", "2,3,32,32")
    assert (code, model["error"], model["id"]) == (0, None, "timm:resnet18"), model


def test_an_unknown_name_says_so(tmp_path: Path) -> None:
    pytest.importorskip("torchvision")
    code, [model] = _json(tmp_path, "torchvision.models:resnet_nope", "--input-shape", "2,3,32,32")
    assert code == 1 and model["error"] == "torchvision.models has no model named 'resnet_nope'"


def test_a_package_of_the_current_folder_resolves_as_python_dash_m_would(tmp_path: Path) -> None:
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(SEED.read_text())
    done = subprocess.run([sys.executable, "-m", "cnncheck", "check", "mypkg.models:ConvNet", "--format", "json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    [model] = json.loads(done.stdout)["models"]
    assert model["id"] == "mypkg.models:ConvNet" and model["error"] is None, done.stderr
    assert [f["rule"] for f in model["findings"]] == ["feature-size-mismatch"]


# -- usage errors -----------------------------------------------------------------------------------------
def _usage(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int | str | None, list[str]]:
    """The exit status and the stderr lines of a command: an option argparse refuses exits as argparse does
    (SystemExit 2), one found wrong later returns 2."""
    try:
        code: int | str | None = cli.main(list(argv))
    except SystemExit as exit_info:
        code = exit_info.code
    return code, capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("argv, says", [
    (["--timeout", "0"], "cnncheck: --timeout must be a positive number of seconds (e.g. --timeout 60), got '0'"),
    (["--timeout", "-5"], "cnncheck: --timeout must be a positive number of seconds (e.g. --timeout 60), got '-5'"),
    (["--timeout", "nan"], "cnncheck: --timeout must be a positive number of seconds (e.g. --timeout 60), got 'nan'"),
    (["--timeout", "inf"], "cnncheck: --timeout must be a finite number of seconds, got 'inf'; for a slow model give "
                           "a long one, e.g. --timeout 3600"),
    (["-j", "0"], "cnncheck: --jobs must be a whole number of workers, at least 1 (e.g. -j 2), got '0'"),
    (["--max-memory", "4Q"], "cnncheck: --max-memory '4Q' is not a size; write it like 512M or 4G"),
    (["--input-shape", "4,x,28"], "cnncheck: --input-shape '4,x,28' is not an input shape: every part must be a "
                                  "whole number; write it like 4,1,28,28"),
    (["--input-shape", "4"], "cnncheck: --input-shape '4': give the batch first and positive sizes, like 4,1,28,28"),
    (["--input-shape", "0,1,28,28"], "cnncheck: --input-shape '0,1,28,28': give the batch first and positive "
                                     "sizes, like 4,1,28,28"),
    (["--format", "xml"], "cnncheck: argument --format: invalid choice: 'xml' (choose from 'text', 'json', "
                          "'markdown', 'junit', 'sarif', 'html'); see `cnncheck check --help`"),
    (["--device", "tpu"], "cnncheck: --device 'tpu' is not a device torch knows: use cpu, cuda, cuda:N or mps"),
    (["--device", "meta"], "cnncheck: --device meta: cannot compute on it here"),
    (["--input-shape", "4,28,28"], "cnncheck: the input shape 4,28,28 has 3 numbers, but the first layer, layer1.0 "
                                   "Conv2d, expects (N, C, H, W): give 4, like 4,1,28,28"),
])
def test_options_that_cannot_work_are_usage_errors(capsys: pytest.CaptureFixture[str], argv: list[str],
                                                    says: str) -> None:
    code, err = _usage(capsys, "check", str(SEED), *argv)
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith(says), err  # one line, not argparse's usage block


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the machine without CUDA")
def test_cuda_without_cuda_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", str(SEED), "--device", "cuda"]) == 2
    assert capsys.readouterr().err.strip() == ("cnncheck: --device cuda: CUDA is not available on this machine; "
                                               "leave --device out to check on the CPU")


def test_a_file_without_a_model_given_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "helpers.py").write_text(textwrap.dedent("""
        from torch import nn


        class Flatten(nn.Module):
            def forward(self, x):
                return x.flatten(1)
    """))
    for command in ("check", "explain"):
        assert cli.main([command, str(tmp_path / "helpers.py")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"cnncheck: no model found in {tmp_path / 'helpers.py'}: "), err
        assert "a model is an nn.Module subclass" in err
        assert "  " not in err


def test_explain_says_where_forward_raised(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["explain", str(SEED)]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert any(row.startswith("fc1 ") and "(forward raised here)" in row for row in rows), rows
    assert any(row.startswith("fc2 ") and "(not run by forward)" in row for row in rows), rows
    assert any(row.startswith("forward stopped: RuntimeError") for row in rows), rows
    assert any("576" in row and "3136" in row for row in rows)  # feature-size-mismatch's diagnosis


def test_reports_hold_no_absolute_paths_of_the_teacher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Checked from elsewhere, by an absolute path: every path in every report is relative to the folder
    that was checked."""
    submissions = tmp_path / "home" / "teacher" / "submissions"
    (submissions / "erin").mkdir(parents=True)
    (submissions / "erin" / "model.py").write_text(SEED.read_text())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    per_model = tmp_path / "per-model"
    for fmt in ("json", "markdown", "text", "junit"):
        out = tmp_path / f"report.{fmt}"
        cli.main(["check", str(submissions), "--format", fmt, "--output", str(out), "--per-model-dir", str(per_model)])
        text = out.read_text()
        assert str(tmp_path) not in text, (fmt, text)
        assert "erin/model.py" in text
    [model] = json.loads((tmp_path / "report.json").read_text())["models"]
    assert model["id"] == "erin/model.py::ConvNet"
    assert model["findings"][0]["location"].startswith("erin/model.py:")
    [page] = per_model.iterdir()
    assert str(tmp_path) not in page.read_text() and "erin/model.py:" in page.read_text()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_error_stages_name_the_step_that_could_not_be_taken(tmp_path: Path) -> None:
    from cnncheck.candidate import check_candidate
    from cnncheck.discover import candidates, load_file

    (tmp_path / "models.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn


        class MLP(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(8, 2)

            def forward(self, x):
                return self.fc(x)


        class Scripted(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = torch.jit.script(nn.Conv2d(3, 4, 3))

            def forward(self, x):
                return self.conv(x)
    """))
    found = {c.name: c for c in candidates(load_file(tmp_path / "models.py"), tmp_path / "models.py")}

    def stage(name: str, **options: object) -> str | None:
        options = {"shape": None, "device": None, "select": None, "ignore": (), **options}
        return check_candidate(found[name], **options).error_kind  # type: ignore[arg-type]

    assert stage("MLP") == "input-shape"
    assert stage("MLP", shape=(2, 8)) is None
    assert stage("Scripted", shape=(2, 3, 8, 8)) == "unsupported"
    if not torch.cuda.is_available():
        assert stage("MLP", shape=(2, 8), device="cuda") == "device"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import cnncheck

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"cnncheck {cnncheck.__version__}"


def test_rules_takes_a_prefix_and_renders_for_a_terminal(capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from cnncheck.plugins import all_rules

    bn_rules = [r.id for r in all_rules(problems=[]) if r.id.startswith("bn")]
    assert cli.main(["rules", "bn"]) == 0
    text = capsys.readouterr().out
    assert [line for line in text.splitlines() if line.startswith("# `")] == [f"# `{r}`" for r in bn_rules]
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert cli.main(["rules", "bn-eval-behaviour"]) == 0
    shown = capsys.readouterr().out
    assert "bn-eval-behaviour" in shown and "**" not in shown and "# `" not in shown  # rendered, not raw Markdown
    assert cli.main(["rules", "nope"]) == 2


def test_the_inferred_shape_advice_is_said_once_to_the_teacher(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                pytester: pytest.Pytester) -> None:
    for student in ("ann", "bob"):
        (tmp_path / student).mkdir()
        (tmp_path / student / "model.py").write_text(SEED.read_text().replace("@cnncheck.model(input_shape=(4, 1, 28, 28))\n", ""))
    per_model = tmp_path / "pages"
    cli.main(["check", str(tmp_path / "ann"), str(tmp_path / "bob"), "--per-model-dir", str(per_model)])
    text = capsys.readouterr().out
    assert text.count("declare the real one with @cnncheck.model") == 1
    assert "note: 2 model(s) declare no input shape" in text
    for page in per_model.iterdir():
        content = page.read_text()
        assert "Input shape `4x1x28x28` (inferred from the first conv)" in content
        assert "@cnncheck.model" not in content and "ini key" not in content

    for student in ("ann", "bob"):
        (pytester.path / f"{student}.py").write_text((tmp_path / student / "model.py").read_text())
    result = pytester.runpytest("--cnncheck", "-p", "no:randomly", "-p", "no:cacheprovider")
    assert result.stdout.str().count("declare the real one with @cnncheck.model") == 1
    result.stdout.fnmatch_lines(["cnncheck: 2 model(s) declare no input shape*"])


# -- paths in reports, from anywhere ------------------------------------------------------------------------
def test_checked_from_the_filesystem_root_every_path_keeps_its_folders(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from ``/``, the report's paths stay absolute: ``tmp/...`` would read as a path from anywhere."""
    model = tmp_path / "x" / "model.py"
    model.parent.mkdir()
    model.write_text(SEED.read_text())
    monkeypatch.chdir("/")
    _, [result] = _json(tmp_path, str(model))
    assert (result["id"], result["file"]) == (f"{model}::ConvNet", str(model))
    assert result["findings"][0]["location"].startswith(f"{model}:")


def test_targets_that_share_only_the_filesystem_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two targets with no folder in common but ``/``: a path under the current folder is written from it,
    any other stays absolute; no path loses its slashes."""
    model = tmp_path / "x" / "model.py"
    model.parent.mkdir()
    model.write_text(SEED.read_text())
    fixed = ROOT / "examples" / "seed_convnet_fixed.py"
    if os.path.commonpath([model, fixed]) != os.sep:
        pytest.skip("the repository and the temporary folder share a folder")
    monkeypatch.chdir(tmp_path)
    _, results = _json(tmp_path, str(model), str(fixed))
    ids = sorted(r["id"] for r in results)
    assert ids == sorted(["x/model.py::ConvNet", f"{fixed}::ConvNet"])
    [seed] = [r for r in results if r["id"] == "x/model.py::ConvNet"]
    assert seed["findings"][0]["location"].startswith("x/model.py:")


def test_relative_to_strips_the_root_only_where_a_path_starts() -> None:
    from cnncheck.results import ModelResult

    result = ModelResult("/home/t/a/model.py::Net", "/home/t/a/model.py", "Net",
                         error="cannot import model.py: /home/t/a/data.csv, not /data/home/t/a/data.csv",
                         location="/home/t/a/model.py:3")
    relative = result.relative_to("/home/t")
    assert (relative.id, relative.file, relative.location) == ("a/model.py::Net", "a/model.py", "a/model.py:3")
    assert relative.error == "cannot import model.py: a/data.csv, not /data/home/t/a/data.csv"
    assert result.relative_to("/").to_dict() == result.to_dict()  # "/" is no folder to be relative to


def test_installed_models_name_their_files_from_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``torchvision.models:vgg11_bn``: every path of the report is written from site-packages
    (``torchvision/models/vgg.py:41``), in the JSON report and in the Markdown one."""
    torchvision = pytest.importorskip("torchvision")
    installed = str(Path(torchvision.__file__).parent.parent)
    monkeypatch.chdir(tmp_path)
    pages = tmp_path / "pages"
    out = tmp_path / "report.json"
    cli.main(["check", "torchvision.models:vgg11_bn", "--input-shape", "1,3,32,32", "--format", "json",
              "--output", str(out), "--per-model-dir", str(pages)])
    [model] = json.loads(out.read_text())["models"]
    [page] = pages.iterdir()
    assert model["error"] is None and model["file"] == "torchvision/models/__init__.py", model
    locations = [f["location"] for f in model["findings"]]
    assert locations and all(where.startswith("torchvision/models/vgg.py:") for where in locations), locations
    assert "- **Where:** `torchvision/models/vgg.py:" in page.read_text()
    sarif = tmp_path / "report.sarif"
    cli.main(["check", "torchvision.models:vgg11_bn", "--input-shape", "1,3,32,32", "--format", "sarif",
              "--output", str(sarif)])
    artifact = json.loads(sarif.read_text())["runs"][0]["results"][0]["locations"][0]["physicalLocation"]
    assert artifact["artifactLocation"] == {"uri": "torchvision/models/vgg.py"}  # not under the checked folder
    for text in (out.read_text(), page.read_text(), sarif.read_text()):
        assert "/site-packages/" not in text and installed not in text and sys.prefix not in text


# -- explain: one line when there is nothing to explain ----------------------------------------------------
@pytest.mark.parametrize("fmt", ["text", "svg"])
def test_explain_says_an_input_shape_of_the_wrong_rank_as_check_does(capsys: pytest.CaptureFixture[str],
                                                                     fmt: str) -> None:
    code, err = _usage(capsys, "explain", str(SEED), "--input-shape", "4,1,28", "--format", fmt)
    assert (code, err) == (2, ["cnncheck: the input shape 4,1,28 has 3 numbers, but the first layer, layer1.0 "
                               "Conv2d, expects (N, C, H, W): give 4, like 4,1,28,28"])


def test_explain_refuses_a_bad_value_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _usage(capsys, "explain", str(SEED), "--input-shape", "4,x")
    assert (code, len(err)) == (2, 1) and err[0].startswith("cnncheck: --input-shape '4,x' is not an input shape"), err


BUILD_FAILS = """
from torch import nn


class Net(nn.Module):
    def __init__(self, width=0):
        super().__init__()
        if width == 0:
            raise ValueError("width must be positive")
        self.conv = nn.Conv2d(1, width, 3)
"""

EXITS_IN_FORWARD = """
import sys

from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        sys.exit(4)
"""

EXITS_IN_FACTORY = """
import sys

import cnncheck


@cnncheck.model(input_shape=(2, 1, 8, 8))
def net():
    sys.exit("bye")
"""


@pytest.mark.parametrize("source, says", [
    ("import torch\nclass Net(torch.nn.Module)\n    pass\n",
     "cannot import student.py: SyntaxError: expected ':' (student.py, line 2)"),
    ("import torch\n\nraise ValueError('no data folder')\n",
     "cannot import student.py: ValueError: no data folder (at student.py:3)"),
    ("import sys\nsys.exit(3)\n", "cannot import student.py: student.py, while it is imported, calls sys.exit(3)"),
    (BUILD_FAILS, "cannot build Net: ValueError: width must be positive (at student.py:9)"),
    (EXITS_IN_FACTORY, "net calls sys.exit('bye')"),
    (EXITS_IN_FORWARD, "Net calls sys.exit(4)"),
], ids=["syntax-error", "raises-at-import", "exits-at-import", "constructor-raises", "factory-exits",
        "forward-exits"])
def test_explain_says_why_a_students_file_fails_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str], source: str,
                                                            says: str) -> None:
    (tmp_path / "student.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    code, err = _usage(capsys, "explain", "student.py", "--input-shape", "2,1,8,8")
    assert (code, err) == (1, [f"cnncheck: {says}"])


def test_explain_of_a_folder_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "model.py").write_text(SEED.read_text())
    monkeypatch.chdir(tmp_path)
    code, err = _usage(capsys, "explain", ".")
    assert (code, err) == (2, ["cnncheck: . is a folder: explain reads one file, as `cnncheck explain model.py`; "
                               "`cnncheck check .` checks every file in it"])
