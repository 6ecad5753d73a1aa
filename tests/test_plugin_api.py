"""The plug-in API end to end, with the example plugin package in examples/plugin/."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch
from checking import PUBLIC_IDS
from torch import nn

import cnncheck
from cnncheck import plugins
from cnncheck.cli import main
from cnncheck.findings import Severity

pytest_plugins = ["pytester"]

PLUGIN = Path(__file__).resolve().parent.parent / "examples" / "plugin"
SRC = PLUGIN / "src"
COURSE_RULES = {"conv-channels-shrink", "conv-even-kernel"}


@pytest.fixture
def course(monkeypatch):
    """The example plugin importable (as if installed), and its models module."""
    monkeypatch.syspath_prepend(str(SRC))
    monkeypatch.syspath_prepend(str(PLUGIN))
    for name in [m for m in sys.modules if m.startswith(("cnncheck_course", "models"))]:
        monkeypatch.delitem(sys.modules, name)
    return importlib.import_module("cnncheck_course"), importlib.import_module("models")


@pytest.fixture
def installed(course, tmp_path, monkeypatch):
    """The example plugin installed: a dist-info with its entry point, found by importlib.metadata,
    and a fresh plugin manager that loads the `cnncheck` entry-point group."""
    dist = tmp_path / "cnncheck_course-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: cnncheck-course\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[cnncheck]\ncourse = cnncheck_course\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins.plugin_manager.cache_clear()
    yield course
    plugins.plugin_manager.cache_clear()  # the next user rebuilds it without the fake install


def findings(report) -> set[tuple[str, str]]:
    return {(f.rule, f.module) for f in report.findings}


def test_entry_point_plugin_is_listed_documented_and_run(installed) -> None:
    _, models = installed
    ids = [r.id for r in cnncheck.all_rules()]
    from test_docs_and_cli import PUBLIC_IDS

    assert ids == [*PUBLIC_IDS, "conv-channels-shrink", "conv-even-kernel"]  # built-ins first
    assert "course" in plugins.plugin_names()
    report = cnncheck.check_model(models.Shrinking(), (2, 3, 16, 16))
    assert findings(report) == {("conv-channels-shrink", "conv2"), ("conv-even-kernel", "conv2")}
    assert all(f.severity is Severity.WARNING for f in report.findings)
    assert "cnncheck rules conv-even-kernel" in str(report)


def test_third_party_rules_select_and_ignore_like_builtins(installed) -> None:
    _, models = installed
    only = cnncheck.check_model(models.Shrinking(), (2, 3, 16, 16), checks=["conv-even"])
    assert only.rules_run == ("conv-even-kernel",)
    rest = cnncheck.check_model(models.Shrinking(), (2, 3, 16, 16), ignore=["conv-"])
    assert "conv-channels-shrink" not in rest.rules_run and "conv-param-formula" not in rest.rules_run


def test_classify_hook_makes_the_course_conv_checked_numerically(course) -> None:
    module, models = course
    # cnncheck recognises CourseConv by the conv op it runs on its own `filters`; the plugin's answer agrees
    alone = cnncheck.check_model(models.FlippedNet(), (2, 3, 16, 16))
    assert findings(alone) == {("conv-param-formula", "conv")}
    flipped = cnncheck.check_model(models.FlippedNet(), (2, 3, 16, 16), plugins=[module])
    assert findings(flipped) == {("conv-param-formula", "conv")}
    assert "elements differ" in flipped.findings[0].found
    assert cnncheck.check_model(models.CourseNet(), (2, 3, 16, 16), plugins=[module]).ok
    assert not plugins.plugin_manager().is_registered(module)  # plugins= lasts one call


def test_register_in_code_and_disable_by_name(course) -> None:
    _module, models = course
    name = cnncheck.register("cnncheck_course")
    try:
        assert findings(cnncheck.check_model(models.Shrinking(), (2, 3, 16, 16))) >= {("conv-even-kernel", "conv2")}
        removed = plugins.block(name)
        assert not any(f.rule.startswith("conv-even") for f in cnncheck.check_model(models.Shrinking(), (2, 3, 16, 16)).findings)
        plugins.unblock(name, removed)
    finally:
        cnncheck.unregister(name)
    with pytest.raises(ValueError, match="no cnncheck plugin named 'nope'"):
        plugins.block("nope")


class Raising:
    @cnncheck.hookimpl
    def cnncheck_register_rules(self):
        raise RuntimeError("rules exploded")

    @cnncheck.hookimpl
    def cnncheck_classify_module(self, module):
        raise KeyError("classify exploded")


class Garbage:
    @cnncheck.hookimpl
    def cnncheck_register_rules(self):
        return ["not a rule"]

    @cnncheck.hookimpl
    def cnncheck_classify_module(self, module):
        return "convolution-ish"


@pytest.mark.parametrize("broken", [Raising(), Garbage()], ids=["raises", "returns-garbage"])
def test_a_broken_plugin_is_named_and_the_rest_still_runs(broken) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    report = cnncheck.check_model(model, (2, 3, 8, 8), plugins=[broken])
    assert findings(report) == {("redundant-bias-before-bn", "0")}
    hooks = {p.hook for p in report.plugin_problems}
    assert hooks == {"cnncheck_register_rules", "cnncheck_classify_module"}
    names = {p.plugin for p in report.plugin_problems}
    assert len(names) == 1 and names.pop()  # every problem names the one broken plugin
    assert not report.ok
    text = str(report)
    assert "failed in cnncheck_register_rules" in text and "failed in cnncheck_classify_module" in text


def test_example_input_hook_feeds_a_dict_forward() -> None:
    class TwoStreams(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rgb = nn.Conv2d(3, 4, 3, bias=False)
            self.depth = nn.Conv2d(1, 4, 3)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, batch):
            return self.bn(self.rgb(batch["rgb"]) + self.depth(batch["depth"])).mean(dim=(2, 3))

    class Inputs:
        @cnncheck.hookimpl
        def cnncheck_example_input(self, model, input_shape):
            if isinstance(model, TwoStreams):
                n, _, h, w = input_shape
                return {"batch": {"rgb": torch.randn(n, 3, h, w), "depth": torch.randn(n, 1, h, w)}}
            return None

    report = cnncheck.check_model(TwoStreams(), (2, 3, 8, 8), plugins=[Inputs()])
    # the depth conv's bias reaches the BatchNorm through a residual add: cancelled
    assert findings(report) == {("redundant-bias-before-bn", "depth")}


def test_report_hook_sees_the_finished_report() -> None:
    seen = []

    class Exporter:
        @cnncheck.hookimpl
        def cnncheck_report(self, report, model):
            seen.append((type(model).__name__, len(report.findings)))
            report.notes.append("exported to the course dashboard")

    report = cnncheck.check_model(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), (2, 3, 8, 8),
                                  plugins=[Exporter()])
    assert seen == [("Sequential", 1)]
    assert "exported to the course dashboard" in str(report)


def test_layer_ignore_suppresses_one_layer_and_stale_ignores_are_reported() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
    report = cnncheck.check_model(model, (2, 3, 10, 10), ignore=["redundant-bias-before-bn:0", "bn-eval:*"])
    assert findings(report) == {("redundant-bias-before-bn", "3")}
    assert [f.module for f in report.suppressed] == ["0"]
    assert report.unused_ignores == ["bn-eval:*"]
    assert "unused ignore 'bn-eval:*'" in str(report)


def test_cli_loads_and_disables_plugins(course, capsys) -> None:
    assert main(["rules", "conv-even-kernel", "--plugin", "cnncheck_course"]) == 0
    assert "no centre pixel" in capsys.readouterr().out
    try:
        assert main(["check", str(PLUGIN / "models.py"), "--plugin", "cnncheck_course"]) == 1
        out = capsys.readouterr().out
        assert "conv-channels-shrink [warning] conv2" in out and "conv-param-formula [error] conv" in out
    finally:
        plugins.unregister("cnncheck_course")
    assert main(["rules", "--disable-plugin", "nope"]) == 2


def test_pytest_loads_plugins_from_the_option_and_from_conftest(course, pytester: pytest.Pytester) -> None:
    pytester.syspathinsert(SRC)
    pytester.makepyfile(models=(PLUGIN / "models.py").read_text())
    result = pytester.runpytest("--cnncheck", "--cnncheck-plugin", "cnncheck_course", "-k", "Shrinking and conv-")
    result.assert_outcomes(passed=1, failed=2)  # conv-param-formula passes; the two course rules fail
    result.stdout.fnmatch_lines([f"cnncheck: {len(PUBLIC_IDS) + 2} rules, device cpu, fail on warning"])

    pytester.makeconftest(
        """
        import cnncheck
        from cnncheck import Rule, Severity

        def no_linear(ctx, rule):
            for module, info in ctx.modules_of(cnncheck.LayerKind.LINEAR):
                yield rule.finding(info.name, "a linear head", expected="a conv head")

        @cnncheck.hookimpl
        def cnncheck_register_rules():
            return [Rule(id="all-conv", summary="Linear layers.", why="Course style.", fix="Use 1x1 convs.",
                         severity=Severity.ERROR, check=no_linear)]
        """
    )
    result = pytester.runpytest("--cnncheck", "-k", "all-conv")
    result.assert_outcomes(passed=0, failed=3)
    result.stdout.fnmatch_lines(["all-conv [[]error[]] head: a linear head"])
    assert "all-conv" not in [r.id for r in cnncheck.all_rules()]  # gone with the session


def test_pytest_disable_plugin_and_broken_plugin_report(course, pytester: pytest.Pytester) -> None:
    pytester.syspathinsert(SRC)
    pytester.makepyfile(models=(PLUGIN / "models.py").read_text())
    result = pytester.runpytest("--cnncheck", "--cnncheck-plugin", "cnncheck_course",
                                "--cnncheck-disable-plugin", "cnncheck_course", "-k", "Shrinking")
    result.assert_outcomes(passed=len(PUBLIC_IDS))
    result = pytester.runpytest("--cnncheck", "--cnncheck-disable-plugin", "nope")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    pytester.makeconftest(
        """
        import cnncheck

        @cnncheck.hookimpl
        def cnncheck_register_rules():
            raise RuntimeError("typo in my rule file")
        """
    )
    result = pytester.runpytest("--cnncheck", "-k", "CourseNet")
    result.assert_outcomes(failed=len(PUBLIC_IDS))  # its rules are missing: no verdict of the model can be trusted
    result.stdout.fnmatch_lines(["cnncheck: plugin 'conftest:*conftest.py' failed in cnncheck_register_rules: "
                                 "RuntimeError: typo in my rule file"])


def test_baseline_write_then_fail_only_on_new_findings(pytester: pytest.Pytester) -> None:
    model = """
        from torch import nn
        import cnncheck

        @cnncheck.model(input_shape=(2, 3, 8, 8))
        def vgg_like():
            return nn.Sequential(nn.Conv2d(3, 4, 3, bias={first}), nn.BatchNorm2d(4), nn.ReLU(),
                                 nn.Conv2d(4, 4, 3, bias={second}), nn.BatchNorm2d(4))
    """
    pytester.makepyfile(nets=model.format(first=True, second=False))
    result = pytester.runpytest("--cnncheck", "--cnncheck-baseline-write", "baseline.json")
    result.assert_outcomes(passed=len(PUBLIC_IDS))  # recorded, not failed: as the command, which exits 0
    assert result.ret == 0
    result.stdout.fnmatch_lines(["cnncheck baseline: wrote 1 finding(s) to baseline.json"])
    entries = json.loads((pytester.path / "baseline.json").read_text())["findings"]
    assert entries == [{"model": "nets.py::vgg_like", "rule": "redundant-bias-before-bn", "module": "0"}]

    pytester.runpytest("--cnncheck", "--cnncheck-baseline", "baseline.json").assert_outcomes(passed=len(PUBLIC_IDS))
    # the same file serves the cnncheck command: its model ids are pytest's node ids
    from cnncheck.cli import main

    assert main(["check", "nets.py", "--baseline", "baseline.json"]) == 0
    assert main(["check", "nets.py"]) == 1

    pytester.makepyfile(nets=model.format(first=True, second=True))  # a new finding on layer 3
    result = pytester.runpytest("--cnncheck", "--cnncheck-baseline", "baseline.json")
    result.assert_outcomes(passed=len(PUBLIC_IDS) - 1, failed=1)
    result.stdout.fnmatch_lines(["redundant-bias-before-bn [[]warning[]] 3: *"])

    pytester.makepyfile(nets=model.format(first=False, second=False))  # the known one is fixed
    result = pytester.runpytest("--cnncheck", "--cnncheck-baseline", "baseline.json")
    result.assert_outcomes(passed=len(PUBLIC_IDS))
    result.stdout.fnmatch_lines(["*1 entry fixed since it was written*",
                                 "*fixed: nets.py::vgg_like redundant-bias-before-bn 0*"])


def test_per_model_ignore_in_the_decorator_and_its_staleness(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        nets="""
        from torch import nn
        import cnncheck

        @cnncheck.model(input_shape=(2, 3, 8, 8), ignore=["redundant-bias-before-bn:0", "pool-has-parameters"])
        def net():
            return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        """
    )
    result = pytester.runpytest("--cnncheck")
    result.assert_outcomes(passed=len(PUBLIC_IDS) - 1)  # pool-has-parameters is not run for this model
    result.stdout.fnmatch_lines(["cnncheck: nets.py::net: unused ignore 'pool-has-parameters:*': *"])
