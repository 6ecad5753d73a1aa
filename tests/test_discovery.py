"""Which classes are models: one rule, in discover.py, for ``cnncheck check`` and ``pytest --cnncheck``.
A helper (no parameters), a part of another model, and the classes of a test file are not models; a
model declared in a test file is, and its file is imported once."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from cnncheck import cli
from cnncheck.discover import candidates, load_file
from cnncheck.plugins import all_rules

pytest_plugins = ["pytester"]
RULES = all_rules(problems=[])

PARTS = textwrap.dedent("""
    import torch
    from torch import nn


    class Flatten(nn.Module):
        def forward(self, x):
            return x.flatten(1)


    class Block(nn.Module):
        def __init__(self, channels=4):
            super().__init__()
            self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(channels)

        def forward(self, x):
            return x + torch.relu(self.bn(self.conv(x)))


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3, padding=1)
            self.blocks = nn.Sequential(Block(), Block())
            self.flatten = Flatten()
            self.fc = nn.Linear(4 * 8 * 8, 10)

        def forward(self, x):
            return self.fc(self.flatten(self.blocks(self.stem(x))))


    class Other(nn.Module):
        \"\"\"A second, independent model of the same file.\"\"\"

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x):
            return self.conv(x)
""")

COUNTS_IMPORTS = "\nimport pathlib\nwith open(pathlib.Path(__file__).with_suffix('.imports'), 'a') as log:\n    log.write('x')\n"

DECLARED_IN_A_TEST_FILE = textwrap.dedent("""
    import torch
    from torch import nn
    import cnncheck


    class Helper(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x):
            return self.conv(x)


    @cnncheck.model(input_shape=(2, 3, 8, 8))
    class Declared(Helper):
        pass


    def test_something():
        assert Helper()(torch.zeros(1, 3, 8, 8)).shape == (1, 2, 6, 6)
""") + COUNTS_IMPORTS

UNDECLARED_TEST_FILE = textwrap.dedent("""
    from torch import nn
    import cnncheck  # mentions cnncheck, declares nothing


    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x):
            return self.conv(x)


    def test_tiny():
        assert isinstance(Tiny(), nn.Module)
""")


def _names(path: Path) -> list[str]:
    return [c.name for c in candidates(load_file(path), path)]


def test_helpers_and_parts_are_not_models(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text(PARTS)
    assert _names(tmp_path / "model.py") == ["Net", "Other"]


def test_a_part_asked_for_by_name_is_checked(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text(PARTS)
    out = tmp_path / "report.json"
    code = cli.main(["check", f"{tmp_path / 'model.py'}::Block", "--input-shape", "2,4,8,8", "--format", "json",
                     "--output", str(out)])
    assert code == 0 and [m["name"] for m in json.loads(out.read_text())["models"]] == ["Block"]


def test_discovery_keeps_the_random_state_and_checks_the_instance_it_built(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text(PARTS)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    found = candidates(load_file(tmp_path / "model.py"), tmp_path / "model.py")
    assert torch.equal(torch.get_rng_state(), before)
    first, second = found[0].build(), found[0].build()
    assert first is not second and type(first) is type(second)


def test_a_class_that_cannot_be_built_stays_so_that_its_check_says_why(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text(PARTS + textwrap.dedent("""

        class Broken(nn.Module):
            def __init__(self):
                super().__init__()
                raise RuntimeError("student bug in __init__")
    """))
    assert _names(tmp_path / "model.py") == ["Net", "Other", "Broken"]


def _cli_models(tmp_path: Path, target: Path) -> list[str]:
    out = tmp_path / "report.json"
    # --sandbox none: these files log their imports next to themselves, which the sandbox refuses
    cli.main(["check", str(target), "--format", "json", "--output", str(out), "--sandbox", "none"])
    return sorted(m["name"] for m in json.loads(out.read_text())["models"])


def test_the_command_and_pytest_find_the_same_models(tmp_path: Path, pytester: pytest.Pytester) -> None:
    project = pytester.path
    (project / "model.py").write_text(PARTS)
    (project / "test_models.py").write_text(DECLARED_IN_A_TEST_FILE)
    (project / "tiny_test.py").write_text(UNDECLARED_TEST_FILE)
    (project / "conftest.py").write_text("import cnncheck\n")
    assert _cli_models(tmp_path, project) == ["Declared", "Net", "Other"]
    (project / "test_models.imports").unlink()

    result = pytester.runpytest("--cnncheck", "-p", "no:randomly", "-p", "no:cacheprovider", "--co", "-q")
    models = sorted({line.split("::")[1] for line in result.outlines if line.count("::") == 2})
    assert models == ["Declared", "Net", "Other"], result.outlines
    assert (project / "test_models.imports").read_text() == "x"  # pytest's own import; cnncheck made none


def test_a_file_given_on_the_command_line_is_imported_once(pytester: pytest.Pytester) -> None:
    (pytester.path / "model.py").write_text(PARTS + COUNTS_IMPORTS)
    result = pytester.runpytest("--cnncheck", "model.py", "-p", "no:randomly", "-p", "no:cacheprovider")
    assert sum(result.parseoutcomes().get(k, 0) for k in ("passed", "failed")) == 2 * len(RULES)  # Net, Other
    assert (pytester.path / "model.imports").read_text() == "x"


def test_explain_shows_the_models_not_their_parts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "model.py").write_text(PARTS)
    assert cli.main(["explain", str(tmp_path / "model.py"), "--input-shape", "2,3,8,8"]) == 0
    heads = [line.split(" on input")[0] for line in capsys.readouterr().out.splitlines() if " on input " in line]
    assert heads == ["Net", "Other"]


def test_a_file_of_a_package_keeps_its_relative_imports(tmp_path: Path, pytester: pytest.Pytester) -> None:
    """``mypkg/models.py`` with ``from .layers import Block``, found by its folder: the command and
    pytest import it inside its package, as the student's own code does."""
    package = pytester.path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "layers.py").write_text(textwrap.dedent("""
        from torch import nn


        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(1, 4, 3)
                self.bn = nn.BatchNorm2d(4)

            def forward(self, x):
                return self.bn(self.conv(x)).relu()
    """))
    (package / "models.py").write_text(textwrap.dedent("""
        import cnncheck
        from torch import nn

        from .layers import Block


        @cnncheck.model(input_shape=(2, 1, 8, 8))
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.block = Block()
                self.fc = nn.Linear(4, 2)

            def forward(self, x):
                return self.fc(self.block(x).mean((2, 3)))
    """))
    out = tmp_path / "report.json"
    cli.main(["check", str(package), "--format", "json", "--output", str(out)])
    rows = {m["id"].split("/")[-1]: m for m in json.loads(out.read_text())["models"]}
    assert rows["models.py::Net"]["error"] is None, rows["models.py::Net"]
    assert [f["module"] for f in rows["models.py::Net"]["findings"]] == ["block.conv"]  # its bias, before bn
    result = pytester.runpytest("--cnncheck", "mypkg/models.py", "-p", "no:randomly")
    result.assert_outcomes(passed=len(all_rules()) - 1, failed=1)
    result.stdout.fnmatch_lines(["FAILED mypkg/models.py::Net::redundant-bias-before-bn*"])
