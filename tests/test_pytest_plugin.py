"""``pytest --cnncheck`` end to end, with pytester, on small sample projects."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from checking import PUBLIC_IDS
from examples_loader import declared_models

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
RULES = len(PUBLIC_IDS)

CLEAN = """
import torch
from torch import nn
import cnncheck

@cnncheck.model(input_shape=(2, 3, 8, 8))
class Clean(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))
"""

BIASED = """
import torch
from torch import nn
import cnncheck

@cnncheck.model(input_shape=(2, 3, 8, 8))
class Biased(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x)).mean(dim=(2, 3))
"""


def seed_source(stride: int) -> str:
    text = (ROOT / "examples" / "seed_convnet.py").read_text()
    text = text.replace("import cnncheck\n", "").replace("@cnncheck.model(input_shape=(4, 1, 28, 28))\n", "")
    return text.replace("stride=5", f"stride={stride}")


def test_plugin_module_imports_fast_and_without_torch() -> None:
    code = textwrap.dedent(
        """
        import sys, time, pytest
        start = time.perf_counter()
        import cnncheck.pytest_plugin
        elapsed = time.perf_counter() - start
        print('torch' in sys.modules, elapsed)
        """
    )
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
            for _ in range(4)]  # the first may compile the bytecode; the rest show the import itself
    assert all(imported == "False" for imported, _ in runs)
    assert min(float(elapsed) for _, elapsed in runs[1:]) < 0.02


def test_plain_pytest_run_does_not_import_torch(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="import sys\ndef test_no_torch():\n    assert 'torch' not in sys.modules\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "cnncheck:" not in result.stdout.str()


def test_decorated_models_give_one_item_per_rule(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(clean=CLEAN, biased=BIASED)
    result = pytester.runpytest("--cnncheck", "-v")
    result.assert_outcomes(passed=2 * RULES - 1, failed=1)
    result.stdout.fnmatch_lines([
        "*biased.py::Biased::redundant-bias-before-bn[[]cpu[]] FAILED*",
        "*clean.py::Clean::conv-param-formula[[]cpu[]] PASSED*",
        "redundant-bias-before-bn [[]warning[]] conv: the bias of Conv2d 'conv' (4 parameters) is cancelled by BatchNorm2d 'bn'",
        "*fix:*bias=False*",
        "*cnncheck: 2 model(s) checked; findings per rule: redundant-bias-before-bn: 1",
    ])
    assert "Traceback" not in result.stdout.str()
    # Once, in full, in the failure section; the short summary repeats it in full only on CI
    # (pytest's own choice when $CI is set), so it is left out of the count.
    failures = result.stdout.str().split("short test summary info")[0]
    assert failures.count("is cancelled by BatchNorm2d 'bn'") == 1
    assert "  at:       biased.py:9" in result.stdout.str()  # relative to the rootdir


def test_report_header_says_what_is_on(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(clean=CLEAN)
    result = pytester.runpytest("--cnncheck", "--cnncheck-ignore=bn")
    bn_rules = [rule for rule in PUBLIC_IDS if rule.startswith("bn-")]
    result.stdout.fnmatch_lines([f"cnncheck: {RULES - len(bn_rules)} rules, device cpu, fail on warning"])
    result.assert_outcomes(passed=RULES - len(bn_rules))


def test_seed_convnet_found_by_path_with_an_inferred_shape(pytester: pytest.Pytester) -> None:
    pytester.mkpydir("submissions")
    (pytester.path / "submissions" / "seed.py").write_text(seed_source(5))
    (pytester.path / "submissions" / "fixed.py").write_text(seed_source(2))
    result = pytester.runpytest("--cnncheck", "submissions/")
    # the other rules of the seed pass because they checked all of forward: past fc1, repaired, not before it
    result.assert_outcomes(passed=2 * RULES - 1, failed=1)
    result.stdout.fnmatch_lines([
        "*_ ConvNet::feature-size-mismatch[[]cpu[]] _*",
        "feature-size-mismatch [[]error[]] fc1: fc1 expects 3136 = 64*7*7 input features but gets 576 = 64*3*3*stride=5*",
        "*input shape 4x1x28x28 inferred: the first conv takes 1 channel(s)*",
        "*the other rules checked the rest of forward as if fc1 received 3136 features*",
    ])


def test_models_from_the_ini_key_by_path_and_by_module(pytester: pytest.Pytester) -> None:
    pkg = pytester.mkpydir("zoo")
    (pkg / "nets.py").write_text(BIASED.replace("@cnncheck.model(input_shape=(2, 3, 8, 8))\n", ""))
    (pytester.path / "seed.py").write_text(seed_source(2))
    pytester.makeini(
        """
        [pytest]
        cnncheck_models =
            zoo.nets:Biased 2,3,8,8
            seed.py::ConvNet 4x1x28x28
        """
    )
    pytester.syspathinsert()
    result = pytester.runpytest("--cnncheck", "-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert outcomes["failed"] == 1, result.stdout.str()
    result.stdout.fnmatch_lines(["*zoo/nets.py::Biased::redundant-bias-before-bn*"])


def test_pyproject_config_and_default_shape(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml(
        """
        [tool.pytest.ini_options]
        cnncheck_enable = true
        cnncheck_input_shape = "2,3,8,8"
        cnncheck_select = ["redundant-bias-before-bn"]
        """
    )
    pytester.makepyfile(biased=BIASED.replace("@cnncheck.model(input_shape=(2, 3, 8, 8))\n", ""))
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)


def test_markers_and_keywords_select_items(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(biased=BIASED, test_other="def test_other():\n    pass\n")
    pytester.runpytest("--cnncheck", "-m", "cnncheck", "--strict-markers").assert_outcomes(passed=RULES - 1, failed=1)
    pytester.runpytest("--cnncheck", "-m", "not cnncheck").assert_outcomes(passed=1)
    pytester.runpytest("--cnncheck", "-k", "redundant").assert_outcomes(failed=1)


def test_fail_on_error_lets_warnings_pass_but_shows_them(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(biased=BIASED)
    result = pytester.runpytest("--cnncheck", "--cnncheck-fail-on=error")
    result.assert_outcomes(passed=RULES)
    result.stdout.fnmatch_lines([
        "*cnncheck warnings (passing: --cnncheck-fail-on=error)*",
        "*biased.py::Biased::redundant-bias-before-bn[[]cpu[]]",
        "*findings per rule: redundant-bias-before-bn: 1",
    ])


def test_a_model_that_cannot_be_built_or_run_errors_and_others_go_on(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        clean=CLEAN,
        broken="""
        import torch
        from torch import nn
        import cnncheck

        @cnncheck.model(input_shape=(2, 3, 8, 8))
        class Crashes(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 3)

            def forward(self, x):
                return self.conv(x) @ self.conv.weight  # the student's bug
        """,
        syntax="class Oops(:\n    pass\n",
    )
    result = pytester.runpytest("--cnncheck")
    result.assert_outcomes(passed=RULES, failed=2, skipped=RULES - 1)
    result.stdout.fnmatch_lines([
        "*Crashes.forward raised RuntimeError at *broken.py:12 on an input of shape 2x3x8x8*",
        "*at: *broken.py:12*",
        "*cannot import syntax.py: SyntaxError*",
    ])


def test_bad_option_values_are_usage_errors(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--cnncheck", "--cnncheck-device=tpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*'tpu': choose one of cpu, cuda, all, auto*"])
    result = pytester.runpytest("--cnncheck", "--cnncheck-select=conv-param-formla")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown cnncheck rule 'conv-param-formla'*"])


def test_disabled_with_dash_p_no(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(biased=BIASED)
    result = pytester.runpytest("-p", "no:cnncheck", "--collect-only", "-q")
    assert "Biased" not in result.stdout.str()


def test_junitxml_has_a_testcase_per_item_with_rule_and_module(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(biased=BIASED)
    pytester.runpytest("--cnncheck", "--junitxml=out.xml")
    xml = (pytester.path / "out.xml").read_text()
    assert xml.count("<testcase") == RULES
    assert '<property name="cnncheck_rule" value="redundant-bias-before-bn"' in xml
    assert '<property name="cnncheck_modules" value="conv"' in xml


def test_fixtures_for_peoples_own_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_mine="""
        import pytest
        from torch import nn
        import cnncheck as cc

        def model():
            return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))

        def test_report(cnncheck, cnncheck_device):
            report = cnncheck.check(model(), (2, 3, 8, 8), device=cnncheck_device)
            assert [f.rule for f in report.findings] == ["redundant-bias-before-bn"]

        def test_assert_ok_with_ignore(cnncheck):
            cnncheck.assert_ok(model(), (2, 3, 8, 8), ignore=["redundant-bias-before-bn"])

        def test_assert_ok_fails_with_findings(cnncheck):
            with pytest.raises(cc.CheckFailed, match="redundant-bias-before-bn"):
                cnncheck.assert_ok(model(), (2, 3, 8, 8))

        def test_library_assertion_in_a_test():
            cc.assert_no_redundant_bias(model(), (2, 3, 8, 8))
        """
    )
    result = pytester.runpytest("-rs")
    import torch

    # the [cuda] variant only where CUDA is: no skipped item on every CPU-only CI run
    result.assert_outcomes(passed=4 if torch.cuda.is_available() else 3, failed=1)
    result.stdout.fnmatch_lines(["*test_library_assertion_in_a_test*", "*redundant-bias-before-bn*"])
    if not torch.cuda.is_available():  # asked for, it is there, and skipped with the reason
        asked = pytester.runpytest("-rs", "--cnncheck-device", "all")
        asked.assert_outcomes(passed=3, failed=1, skipped=1)
        asked.stdout.fnmatch_lines(["*test_mine.py:*: CUDA is not available on this machine"])


def test_factory_variants_are_checked_separately(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        nets="""
        from torch import nn
        import cnncheck

        @cnncheck.model(input_shape=(2, 3, 8, 8), variants={"nobias": {"bias": False}, "bias": {"bias": True}})
        def make(bias):
            return nn.Sequential(nn.Conv2d(3, 4, 3, bias=bias), nn.BatchNorm2d(4))
        """
    )
    result = pytester.runpytest("--cnncheck", "-k", "redundant", "-v")
    result.stdout.fnmatch_lines([
        "*nets.py::make::redundant-bias-before-bn[[]nobias-cpu[]] PASSED*",
        "*nets.py::make::redundant-bias-before-bn[[]bias-cpu[]] FAILED*",
    ])


def test_xdist_gives_the_same_items_and_outcomes(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(clean=CLEAN, biased=BIASED)
    serial = pytester.runpytest_subprocess("--cnncheck", "-p", "no:cacheprovider", "-rA")
    parallel = pytester.runpytest_subprocess("--cnncheck", "-p", "no:cacheprovider", "-rA", "-n", "2")
    assert serial.parseoutcomes() == {k: v for k, v in parallel.parseoutcomes().items() if k in serial.parseoutcomes()}

    def ids(result: pytest.RunResult) -> set[str]:
        return {line.split()[1] for line in result.outlines if line.startswith(("PASSED ", "FAILED "))}

    assert ids(serial) == ids(parallel) and len(ids(serial)) == 2 * RULES
    parallel.stdout.fnmatch_lines(["*cnncheck: 2 model(s) checked; findings per rule: redundant-bias-before-bn: 1"])


def test_bundled_examples_show_one_explained_failure_per_rule(pytester: pytest.Pytester) -> None:
    for source in (ROOT / "examples").glob("*.py"):
        (pytester.path / source.name).write_text(source.read_text())
    result = pytester.runpytest("--cnncheck", "-p", "no:cacheprovider")
    models = declared_models()
    result.assert_outcomes(passed=models * RULES - RULES, failed=RULES)
    failed_rules = sorted(line.split("::")[2].split("[")[0] for line in result.outlines if line.startswith("FAILED "))
    assert sorted(set(failed_rules)) == sorted(failed_rules)  # one failure per rule
    assert len(failed_rules) == RULES
    result.stdout.fnmatch_lines([f"*cnncheck: {models} model(s) checked; findings per rule:*feature-size-mismatch: 1*"])


def test_exitfirst_and_last_failed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(biased=BIASED, clean=CLEAN)
    first = pytester.runpytest("--cnncheck", "-x")
    first.assert_outcomes(passed=3, failed=1)  # stops at biased.py's redundant-bias item
    again = pytester.runpytest("--cnncheck", "--lf")
    again.assert_outcomes(failed=1)
    again.stdout.fnmatch_lines(["*run-last-failure: rerun previous 1 failure*"])


def test_models_from_the_ini_key_obey_the_selection_and_are_counted(pytester: pytest.Pytester) -> None:
    """zoo/ is outside testpaths, as an installed package's models are: the ini key brings them in."""
    pkg = pytester.mkpydir("zoo")
    (pkg / "nets.py").write_text(BIASED.replace("@cnncheck.model(input_shape=(2, 3, 8, 8))\n", ""))
    tests = pytester.mkdir("tests")
    (tests / "test_formula.py").write_text("def test_formula():\n    assert 2 + 2 == 4\n")
    pytester.makeini("[pytest]\ntestpaths = tests\ncnncheck_models =\n    zoo.nets:Biased 2,3,8,8\n")
    pytester.syspathinsert()
    args = ("--cnncheck", "-p", "no:cacheprovider", "-p", "no:randomly")

    everything = pytester.runpytest(*args)
    everything.stdout.fnmatch_lines([f"collected {RULES + 1} items"])
    everything.assert_outcomes(passed=RULES, failed=1)

    one_test = pytester.runpytest(*args, "tests/test_formula.py::test_formula")
    one_test.stdout.fnmatch_lines(["collected 1 item"])
    one_test.assert_outcomes(passed=1)

    by_keyword = pytester.runpytest(*args, "-k", "redundant")
    by_keyword.stdout.fnmatch_lines([f"collected {RULES + 1} items / {RULES} deselected / 1 selected"])
    by_keyword.assert_outcomes(failed=1, deselected=RULES)

    by_marker = pytester.runpytest(*args, "-m", "not cnncheck")
    by_marker.assert_outcomes(passed=1, deselected=RULES)


RELATIVE_IMPORTS = {  # a package whose model module imports its parts relatively
    "__init__.py": "",
    "layers.py": textwrap.dedent("""
        from torch import nn


        class Flatten(nn.Module):
            def forward(self, x):
                return x.flatten(1)
        """),
    "models.py": textwrap.dedent("""
        from torch import nn

        from .layers import Flatten


        class Biased(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 3, padding=1)
                self.bn = nn.BatchNorm2d(4)

            def forward(self, x):
                return Flatten()(self.bn(self.conv(x)))
        """),
}


@pytest.mark.parametrize("testpaths", ["tests", ""], ids=["outside-testpaths", "collected-by-path"])
def test_a_module_of_the_ini_key_is_imported_as_a_module(pytester: pytest.Pytester, testpaths: str) -> None:
    """``mypkg.models:Biased`` is imported as ``cnncheck check mypkg.models:Biased`` imports it, relative
    imports and all, not as a lone file ("attempted relative import with no known parent package")."""
    pkg = pytester.mkdir("mypkg")
    for name, source in RELATIVE_IMPORTS.items():
        (pkg / name).write_text(source)
    tests = pytester.mkdir("tests")
    (tests / "test_formula.py").write_text("def test_formula():\n    assert 2 + 2 == 4\n")
    pytester.makeini(f"[pytest]\ntestpaths = {testpaths}\ncnncheck_models =\n    mypkg.models:Biased 2,3,8,8\n")
    pytester.syspathinsert()
    args = ("--cnncheck", "-p", "no:cacheprovider", "-p", "no:randomly", "-rf")
    result = pytester.runpytest(*args)
    items = RULES + 1  # Biased's rule items and the test; layers.py has no model
    result.stdout.fnmatch_lines([f"collected {items} items",
                                 "FAILED mypkg/models.py::Biased::redundant-bias-before-bn[[]cpu[]] - *"])
    result.assert_outcomes(passed=items - 1, failed=1)
    assert "relative import" not in result.stdout.str()
    by_keyword = pytester.runpytest(*args, "-k", "Biased and redundant")
    by_keyword.assert_outcomes(failed=1, deselected=items - 1)


def test_an_installed_packages_model_in_the_ini_key_is_named_as_written(pytester: pytest.Pytester) -> None:
    """torchvision lies outside the rootdir: its items are ``torchvision.models:resnet18::RULE[cpu]``, not
    ``::__init__.py::...``, and a name it lacks is one failure that says so."""
    pytester.makeini("[pytest]\ncnncheck_models =\n    torchvision.models:resnet18 2,3,32,32\n"
                     "    torchvision.models:resnet_nope\n")
    result = pytester.runpytest("--cnncheck", "--cnncheck-select=conv-param-formula", "-v",
                                "-p", "no:cacheprovider", "-p", "no:randomly")
    result.stdout.fnmatch_lines([
        "*collected 2 items",
        "torchvision.models:resnet_nope FAILED*",
        "torchvision.models:resnet18::conv-param-formula[[]cpu[]] PASSED*",
        "torchvision.models has no model named 'resnet_nope' (from cnncheck_models)",
    ])
    result.assert_outcomes(passed=1, failed=1)
    assert "__init__.py" not in result.stdout.str()


def test_a_missing_package_in_the_ini_key_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ncnncheck_models =\n    no_such_package.models:Net\n")
    result = pytester.runpytest("--cnncheck", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*cnncheck_models: cannot find module 'no_such_package.models'*"])


def test_the_summary_counts_what_was_checked(pytester: pytest.Pytester) -> None:
    raises = CLEAN.replace("class Clean", "class Raises").replace(
        "return self.fc(", "raise ValueError('student bug')\n        return self.fc(")
    pytester.makepyfile(raises=raises, broken="import nonexistent_module\n", clean=CLEAN)
    args = ("--cnncheck", "-p", "no:cacheprovider", "-p", "no:randomly")
    result = pytester.runpytest(*args)
    result.stdout.fnmatch_lines(["cnncheck: 1 model(s) checked, 2 could not be checked; findings per rule: none"])
    unusable_only = pytester.runpytest(*args, "raises.py", "broken.py")
    unusable_only.stdout.fnmatch_lines(["cnncheck: 0 model(s) checked, 2 could not be checked; findings per rule: none"])
    for nothing_ran in (pytester.runpytest(*args, "--collect-only"), pytester.runpytest(*args, "-m", "not cnncheck")):
        assert "model(s) checked" not in nothing_ran.stdout.str()


def test_per_layer_ignores_in_every_front_end(pytester: pytest.Pytester, tmp_path: Path) -> None:
    """`rule:module-glob` works in the option, the ini key and the command, not only in Python."""
    two = BIASED.replace("class Biased", "class TwoBiased").replace(
        "self.bn = nn.BatchNorm2d(4)", "self.bn = nn.BatchNorm2d(4)\n        self.conv2 = nn.Conv2d(4, 4, 1)\n"
        "        self.bn2 = nn.BatchNorm2d(4)").replace(
        "return self.bn(self.conv(x)).mean(dim=(2, 3))", "return self.bn2(self.conv2(self.bn(self.conv(x)))).mean(dim=(2, 3))")
    pytester.makepyfile(two=two)
    args = ("--cnncheck", "-p", "no:cacheprovider", "-p", "no:randomly", "-k", "redundant")
    both = pytester.runpytest(*args)
    both.assert_outcomes(failed=1, deselected=RULES - 1)
    assert "redundant-bias-before-bn [warning] conv: the bias" in both.stdout.str()
    assert "redundant-bias-before-bn [warning] conv2: the bias" in both.stdout.str()
    one = pytester.runpytest(*args, "--cnncheck-ignore", "redundant-bias-before-bn:conv")
    one.assert_outcomes(failed=1, deselected=RULES - 1)
    assert "redundant-bias-before-bn [warning] conv2: the bias" in one.stdout.str()
    assert "redundant-bias-before-bn [warning] conv: the bias" not in one.stdout.str()
    pytester.makeini("[pytest]\ncnncheck_ignore = redundant-bias-before-bn:conv*\n")
    pytester.runpytest(*args).assert_outcomes(passed=1, deselected=RULES - 1)
    typo = pytester.runpytest(*args, "--cnncheck-ignore", "redundant-bias-befor:conv")
    assert typo.ret == pytest.ExitCode.USAGE_ERROR and "unknown cnncheck rule 'redundant-bias-befor'" in typo.stderr.str()

    from cnncheck import cli

    out = tmp_path / "report.json"
    code = cli.main(["check", str(pytester.path / "two.py"), "--ignore", "redundant-bias-before-bn:conv",
                     "--format", "json", "--output", str(out)])
    [model] = json.loads(out.read_text())["models"]
    assert code == 1 and [(f["rule"], f["module"]) for f in model["findings"]] == [("redundant-bias-before-bn", "conv2")]


def test_one_model_of_the_ini_key_ignores_rules_or_is_left_out(pytester: pytest.Pytester) -> None:
    pkg = pytester.mkpydir("zoo")
    (pkg / "nets.py").write_text(BIASED.replace("@cnncheck.model(input_shape=(2, 3, 8, 8))\n", "")
                                 + CLEAN.split("import cnncheck\n", 1)[1].replace("@cnncheck.model(input_shape=(2, 3, 8, 8))\n", ""))
    tests = pytester.mkdir("tests")
    (tests / "test_nothing.py").write_text("def test_nothing():\n    pass\n")
    pytester.syspathinsert()
    args = ("--cnncheck", "-p", "no:cacheprovider", "-p", "no:randomly")
    pytester.makeini("[pytest]\ntestpaths = tests\ncnncheck_models =\n    zoo.nets:Biased 2,3,8,8 "
                     "ignore=redundant-bias-before-bn\n    zoo.nets:Clean 2,3,8,8\n")
    pytester.runpytest(*args).assert_outcomes(passed=1 + 2 * RULES - 1)
    pytester.makeini("[pytest]\ntestpaths = tests\ncnncheck_models =\n    zoo.nets:Biased 2,3,8,8 ignore=*\n"
                     "    zoo.nets:Clean 2,3,8,8\n")
    result = pytester.runpytest(*args)
    result.assert_outcomes(passed=1 + RULES)
    assert "Biased" not in result.stdout.str()


def test_the_options_have_one_home_and_the_plugin_modules_do_not_import_each_other() -> None:
    import ast

    def imported(module: str, top_level_only: bool) -> set[str]:
        tree = ast.parse((ROOT / "cnncheck" / f"{module}.py").read_text())
        nodes = tree.body if top_level_only else list(ast.walk(tree))
        return {n.module for n in nodes if isinstance(n, ast.ImportFrom) and n.module}

    assert "cnncheck.pytest_plugin" not in imported("pytest_items", top_level_only=False)
    assert "cnncheck.pytest_items" not in imported("pytest_plugin", top_level_only=True)  # only when used
    assert "cnncheck.pytest_options" in imported("pytest_items", True) & imported("pytest_plugin", True)


def test_an_xdist_worker_checks_with_its_share_of_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import torch

    from cnncheck.pytest_items import _cores_shared_among_xdist_workers

    before = torch.get_num_threads()
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "4")
    with _cores_shared_among_xdist_workers():
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before  # the worker's own tests keep their setting
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "16")
    with _cores_shared_among_xdist_workers():
        assert torch.get_num_threads() == 1
