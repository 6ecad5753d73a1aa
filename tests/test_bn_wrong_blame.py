"""bn-eval-behaviour blames the right thing: torch's BatchNorm built with track_running_stats=False is told
about its configuration (keep the default, or a layer ignore), a hand-written BN about its forward."""

from __future__ import annotations

from collections import OrderedDict

import pytest
from models_bn import SHAPE, C, IgnoresTrainingBN2d, NoBuffersBN2d, Plain, Residual
from torch import nn

import cnncheck
from cnncheck.checks.batchnorm import EVAL_BEHAVIOUR

RULE = "bn-eval-behaviour"


def features(conv: nn.Module, norm: nn.Module) -> nn.Module:
    """conv -> norm, nested so that the norm's qualified name is ``features.norm``."""
    return nn.Sequential(OrderedDict(features=nn.Sequential(OrderedDict(conv=conv, norm=norm))))


class Keyed(nn.Module):
    """The norm under a ModuleDict key that is a glob pattern, ``norms.bn[0]``."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, C, 3, padding=1, bias=False)
        self.norms = nn.ModuleDict({"bn[0]": norm})

    def forward(self, x):
        return self.norms["bn[0]"](self.conv(x))


UNTRACKED = [
    pytest.param(lambda: Plain(nn.BatchNorm2d(C, track_running_stats=False)), SHAPE, "bn",
                 "BatchNorm2d(8)", id="bn2d"),
    pytest.param(lambda: Residual(nn.BatchNorm2d(C, eps=1e-3, track_running_stats=False)), SHAPE, "block.bn",
                 "BatchNorm2d(8, eps=0.001)", id="residual-bn2d-keeps-its-other-arguments"),
    pytest.param(lambda: features(nn.Conv1d(3, C, 3, bias=False), nn.BatchNorm1d(C, track_running_stats=False)),
                 (4, 3, 16), "features.norm", "BatchNorm1d(8)", id="bn1d"),
    pytest.param(lambda: features(nn.Conv3d(3, C, 3, bias=False), nn.BatchNorm3d(C, track_running_stats=False)),
                 (4, 3, 6, 6, 6), "features.norm", "BatchNorm3d(8)", id="bn3d"),
    pytest.param(lambda: features(nn.Conv2d(3, C, 3, bias=False), nn.SyncBatchNorm(C, track_running_stats=False)),
                 SHAPE, "features.norm", "SyncBatchNorm(8)", id="sync-bn"),
]


@pytest.mark.parametrize(("factory", "shape", "name", "kept"), UNTRACKED)
def test_untracked_torch_bn_is_told_about_its_configuration(factory, shape, name, kept):
    report = cnncheck.check_model(factory(), shape)
    findings = report.by_rule(RULE)
    assert [f.module for f in findings] == [name], report.findings
    finding = findings[0]
    assert "track_running_stats=False" in finding.message
    assert "depends on the rest of its batch" in finding.message
    assert finding.found == "batch statistics in eval mode because track_running_stats=False"
    assert "running_mean and running_var" in finding.expected
    assert "keep the default track_running_stats=True" in finding.fix
    assert f"{kept} instead of " in finding.fix
    assert f'ignore=["{RULE}:{name}"]' in finding.fix
    assert "cnncheck.check_model" in finding.fix
    assert "self.training" not in finding.fix  # the hand-written layer's advice


@pytest.mark.parametrize(("factory", "shape", "name", "kept"), UNTRACKED[:2])
def test_the_suggested_layer_ignore_suppresses_exactly_that_finding(factory, shape, name, kept):
    ignore = f"{RULE}:{name}"
    report = cnncheck.check_model(factory(), shape, ignore=[ignore])
    assert report.by_rule(RULE) == []
    assert [(f.rule, f.module) for f in report.suppressed] == [(RULE, name)]
    assert report.unused_ignores == []


def test_a_name_with_glob_characters_is_quoted_so_the_ignore_matches_only_that_layer():
    report = cnncheck.check_model(Keyed(nn.BatchNorm2d(C, track_running_stats=False)), SHAPE)
    (finding,) = report.by_rule(RULE)
    assert finding.module == "norms.bn[0]"
    ignore = f"{RULE}:norms.bn[[]0]"
    assert f'ignore=["{ignore}"]' in finding.fix
    assert cnncheck.check_model(Keyed(nn.BatchNorm2d(C, track_running_stats=False)), SHAPE,
                                ignore=[ignore]).by_rule(RULE) == []


def test_the_model_itself_is_ignored_by_the_rule_id():
    report = cnncheck.check_model(nn.BatchNorm2d(C, track_running_stats=False), (4, C, 8, 8))
    (finding,) = report.by_rule(RULE)
    assert finding.module == ""
    assert f'ignore=["{RULE}"]' in finding.fix


def test_torch_bn_whose_running_buffers_were_removed():
    bn = nn.BatchNorm2d(C)
    bn.running_mean = bn.running_var = None
    (finding,) = cnncheck.check_model(Plain(bn), SHAPE).by_rule(RULE)
    assert finding.found == "batch statistics in eval mode because its running_mean and running_var are None"
    assert "track_running_stats=True" in finding.fix
    assert f'ignore=["{RULE}:bn"]' in finding.fix


@pytest.mark.parametrize(("factory", "name", "fragment"), [
    pytest.param(lambda: Plain(NoBuffersBN2d(C)), "bn", "no running statistics", id="hand-bn-without-buffers"),
    pytest.param(lambda: Residual(IgnoresTrainingBN2d(C)), "block.bn", "still normalises with the batch's",
                 id="residual-hand-bn-ignores-self.training"),
])
def test_hand_written_bn_keeps_the_hand_written_fix(factory, name, fragment):
    findings = cnncheck.check_model(factory(), SHAPE).by_rule(RULE)
    assert {f.module for f in findings} == {name}, findings
    assert any(fragment in f.message for f in findings), findings
    assert all(f.fix == EVAL_BEHAVIOUR.fix for f in findings)
    assert all("track_running_stats" not in f.fix and f"{RULE}:" not in f.fix for f in findings)


@pytest.mark.parametrize(("factory", "shape"), [
    pytest.param(lambda: Plain(nn.BatchNorm2d(C)), SHAPE, id="bn2d-default"),
    pytest.param(lambda: Plain(nn.BatchNorm2d(C, track_running_stats=True)), SHAPE, id="bn2d-explicit-default"),
    pytest.param(lambda: features(nn.Conv1d(3, C, 3, bias=False), nn.BatchNorm1d(C)), (4, 3, 16),
                 id="bn1d-default"),
])
def test_default_torch_bn_is_not_flagged(factory, shape):
    assert cnncheck.check_model(factory(), shape).by_rule(RULE) == []
