"""``cnncheck check`` targets (installed factories, re-exports, timm names, packages of the current folder)
and the options it refuses as usage errors: exit 2 and one line that names the fix, never a run."""

from __future__ import annotations

import json
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
@pytest.mark.parametrize("argv, says", [
    (["--timeout", "0"], "argument --timeout: 0: give a time above 0 seconds"),
    (["--timeout", "-5"], "argument --timeout: -5: give a time above 0 seconds"),
    (["--input-shape", "4,x,28"], "'4,x,28' is not an input shape: every part must be a whole number"),
    (["--device", "tpu"], "cnncheck: --device 'tpu' is not a device torch knows: use cpu, cuda, cuda:N or mps"),
    (["--device", "meta"], "cnncheck: --device meta: cannot compute on it here"),
    (["--input-shape", "4,28,28"], "cnncheck: the input shape 4,28,28 has 3 numbers, but the first layer, layer1.0 "
                                   "Conv2d, expects (N, C, H, W): give 4, like 4,1,28,28"),
])
def test_options_that_cannot_work_are_usage_errors(capsys: pytest.CaptureFixture[str], argv: list[str],
                                                    says: str) -> None:
    if argv[0] in ("--timeout",) or argv[1] == "4,x,28":
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["check", str(SEED), *argv])
        assert exit_info.value.code == 2
    else:
        assert cli.main(["check", str(SEED), *argv]) == 2
    err = capsys.readouterr().err
    assert says in err, err
    assert "Traceback" not in err


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
