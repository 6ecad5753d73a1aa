"""Rules come through pluggy hooks; a third-party rule is a first-class citizen."""

from __future__ import annotations

import pluggy
import pytest
import torch
from checking import PUBLIC_IDS
from torch import nn

import cnncheck
from cnncheck import hookspecs
from cnncheck.findings import Severity
from cnncheck.layers import LayerKind
from cnncheck.plugins import all_rules, plugin_manager
from cnncheck.rules import Rule


def _odd_kernels(ctx, rule):
    for module, info in ctx.modules_of(LayerKind.CONV):
        kernel = module.kernel_size if isinstance(module.kernel_size, tuple) else (module.kernel_size,)
        if any(k % 2 == 0 for k in kernel):
            yield rule.finding(info.name, f"even kernel {kernel}", expected="odd kernel", found=str(kernel))


ODD = Rule(id="odd-kernel", summary="Even kernels.", why="Centering.", fix="Use 3 or 5.",
           severity=Severity.WARNING, check=_odd_kernels)


class OddKernelPlugin:
    @cnncheck.hookimpl
    def cnncheck_register_rules(self):
        return [ODD]


class FusedConv(nn.Module):
    """A layer duck typing cannot place: no in_channels/out_channels attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 3, 3, 3))

    def forward(self, x):
        return torch.relu(torch.nn.functional.conv2d(x, self.w))


class ClassifyPlugin:
    @cnncheck.hookimpl
    def cnncheck_classify_module(self, module):
        return LayerKind.POOL if isinstance(module, FusedConv) else None


@pytest.fixture
def registered():
    pm = plugin_manager()
    added = []

    def register(plugin):
        pm.register(plugin)
        added.append(plugin)

    yield register
    for plugin in added:
        pm.unregister(plugin)


def test_builtin_rules_come_through_the_hook() -> None:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    assert all_rules(pm) == []
    from cnncheck import checks

    pm.register(checks)
    assert [rule.id for rule in all_rules(pm)] == PUBLIC_IDS


def test_a_third_party_rule_runs_selects_and_ignores_like_a_builtin(registered) -> None:
    registered(OddKernelPlugin())
    model = nn.Sequential(nn.Conv2d(3, 4, 2), nn.ReLU())
    report = cnncheck.check_model(model, (2, 3, 8, 8))
    assert [(f.rule, f.module, f.severity) for f in report.findings] == [("odd-kernel", "0", Severity.WARNING)]
    assert cnncheck.check_model(model, (2, 3, 8, 8), ignore=["odd-kernel"]).ok
    assert cnncheck.check_model(model, (2, 3, 8, 8), checks=["odd"]).rules_run == ("odd-kernel",)


def test_duplicate_rule_ids_name_both_plugins(registered) -> None:
    registered(OddKernelPlugin())
    registered(OddKernelPlugin())
    with pytest.raises(ValueError, match="registered by both"):
        all_rules()


def test_a_rule_that_crashes_is_reported_and_the_others_still_run(registered) -> None:
    def explode(ctx, rule):
        raise RuntimeError("boom")

    class Broken:
        @cnncheck.hookimpl
        def cnncheck_register_rules(self):
            return [Rule(id="explodes", summary="", why="", fix="", severity=Severity.ERROR, check=explode)]

    registered(Broken())
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    report = cnncheck.check_model(model, (2, 3, 8, 8))
    assert [c.rule for c in report.crashes] == ["explodes"] and "boom" in report.crashes[0].error
    assert [f.rule for f in report.findings] == ["redundant-bias-before-bn"]
    assert not report.ok


def test_classify_hook_places_a_layer_duck_typing_cannot(registered) -> None:
    model = nn.Sequential(FusedConv(), nn.Flatten())
    assert cnncheck.check_model(model, (2, 3, 8, 8), checks=["pool-has-parameters"]).ok
    registered(ClassifyPlugin())
    report = cnncheck.check_model(model, (2, 3, 8, 8), checks=["pool-has-parameters"])
    assert [(f.rule, f.module) for f in report.findings] == [("pool-has-parameters", "0")]


def test_no_rule_imports_another_rule() -> None:
    """Rules are independent: what two share lives outside cnncheck/checks/ (eval_mode, batch_axis, ...),
    and no rule module imports another (cnncheck/checks/__init__.py only registers them)."""
    import ast
    import importlib
    from pathlib import Path

    import cnncheck.checks

    folder = Path(cnncheck.checks.__file__).parent
    rule_modules = {path.stem for path in folder.glob("*.py") if path.stem != "__init__" and any(
        isinstance(value, Rule) for value in vars(importlib.import_module(f"cnncheck.checks.{path.stem}")).values())}
    assert {"conv_params", "structure", "batchnorm"} <= rule_modules  # the helper batchnorm_semantics is none
    crossings = []
    for path in folder.glob("*.py"):
        if path.stem == "__init__":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            crossings += [(path.stem, n) for n in names if n.startswith("cnncheck.checks.")
                          and n.split(".")[2] in rule_modules and n.split(".")[2] != path.stem]
    assert crossings == []
