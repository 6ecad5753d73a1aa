"""bn-not-per-channel, bn-train-behaviour, bn-eval-behaviour on hand-written and built-in BatchNorms."""

from __future__ import annotations

import functools

import checking
import pytest
import torch
from models_bn import (
    SHAPE,
    BatchCentering,
    BiasedRunningVarBN2d,
    BNList,
    C,
    CumulativeIgnoredBN2d,
    EvalUpdatesBN2d,
    FlattenBN1d,
    FunctionalBN2d,
    HandBN2d,
    IgnoresTrainingBN2d,
    InstanceNormNet,
    KerasBN2d,
    KerasEpsilonBN2d,
    KerasMixupBN2d,
    LoggingBatchNorm2d,
    NoBuffersBN2d,
    NoCounterBN2d,
    PerPixelBN2d,
    PixelAffineBN2d,
    Plain,
    PooledBN1d,
    Residual,
    RunningStatsInTrainBN2d,
    StaleStatsBN2d,
    Standardize,
    UnbiasedNormBN2d,
    WholeTensorBN2d,
    flatten_bn1d_sequential,
    pretrained_frozen_bn,
)
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

import cnncheck

BN_RULES = ("bn-not-per-channel", "bn-train-behaviour", "bn-eval-behaviour")




run = functools.partial(checking.run, shape=SHAPE)
pairs = checking.pairs


def text_of(report: cnncheck.Report, rule: str) -> str:
    return "\n".join(f"{f.message} | {f.expected} | {f.found} | {f.fix}" for f in report.findings if f.rule == rule)


def assert_flagged(report, rule, modules, fragments):
    assert pairs(report, rule) == {(rule, m) for m in modules}, report.findings
    text = text_of(report, rule)
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in:\n{text}"


# -- bn-not-per-channel ------------------------------------------------------------------------------
PER_CHANNEL_FLAGGED = [
    pytest.param(lambda: Plain(nn.BatchNorm2d(16)), {"bn"}, "error",
                 ["BatchNorm2d(16) receives 8 channels", "num_features = 8", "num_features = 16"],
                 id="bn2d-num-features-16-on-8-channels"),
    pytest.param(lambda: Residual(nn.BatchNorm2d(4)), {"block.bn"}, "error",
                 ["BatchNorm2d(4) receives 8 channels"], id="residual-bn2d-num-features-4"),
    pytest.param(lambda: Residual(HandBN2d(16)), {"block.bn"}, "error",
                 ["HandBN2d(16) receives 8 channels"], id="residual-hand-bn-num-features-16"),
    pytest.param(lambda: Plain(PerPixelBN2d(C)), {"bn"}, "error",
                 ["statistics over (N), not per channel", "(N, H, W)"], id="hand-bn-per-pixel-dim0"),
    pytest.param(lambda: Residual(PerPixelBN2d(C)), {"block.bn"}, "error",
                 ["statistics over (N), not per channel"], id="residual-hand-bn-per-pixel"),
    pytest.param(lambda: Plain(WholeTensorBN2d(C)), {"bn"}, "error",
                 ["statistics over (N, C, H, W), not per channel"], id="hand-bn-whole-tensor"),
    pytest.param(lambda: Residual(PixelAffineBN2d(C, 8, 8)), {"block.bn"}, "error",
                 ["per channel-and-pixel", "weight (8, 8, 8)", "bias (8, 8, 8)", "(8,)"],
                 id="residual-hand-bn-gamma-beta-CHW"),
    pytest.param(FlattenBN1d, {"bn"}, "warning",
                 ["BatchNorm1d normalises a flattened 4x8x8 feature map", "BatchNorm2d(4)"],
                 id="bn1d-after-view-flatten"),
    pytest.param(flatten_bn1d_sequential, {"3"}, "warning",
                 ["flattened 4x8x8 feature map", "BatchNorm1d(256)"], id="sequential-bn1d-after-nn-flatten"),
]


@pytest.mark.parametrize(("factory", "modules", "severity", "fragments"), PER_CHANNEL_FLAGGED)
def test_per_channel_flagged(factory, modules, severity, fragments):
    report = run(factory())
    assert_flagged(report, "bn-not-per-channel", modules, fragments)
    assert {str(f.severity) for f in report.findings if f.rule == "bn-not-per-channel"} == {severity}


@pytest.mark.parametrize("factory", [
    pytest.param(lambda: Plain(nn.BatchNorm2d(16)), id="builtin"),
    pytest.param(lambda: Residual(HandBN2d(16)), id="hand-written"),
])
def test_num_features_mismatch_is_a_finding_not_an_exception(factory):
    """forward raises on the mismatch; the rule explains it instead of check_model raising, selected or not.
    Another rule saw only forward up to the BN: not checked, with the reason, never a pass."""
    report = run(factory(), checks=["bn-not-per-channel"])
    assert len(report.findings) == 1
    assert report.findings[0].rule == "bn-not-per-channel"
    other = cnncheck.check_model(factory(), SHAPE, checks=["bn-train-behaviour"])
    assert other.findings == [] and not other.ok
    outcome = other.status("bn-train-behaviour")
    assert outcome.status is cnncheck.RuleStatus.NOT_CHECKED
    assert "where bn-not-per-channel explains why" in outcome.reason and "receives 8 channels" in outcome.reason


PER_CHANNEL_CLEAN = [
    pytest.param(lambda: Plain(nn.BatchNorm2d(C)), id="builtin-bn2d"),
    pytest.param(lambda: Residual(HandBN2d(C)), id="residual-correct-hand-bn"),
    pytest.param(lambda: Plain(FunctionalBN2d(C)), id="hand-bn-F.batch_norm-self.training"),
    pytest.param(lambda: Plain(KerasBN2d(C)), id="keras-convention-momentum-0.9"),
    pytest.param(lambda: Plain(FrozenBatchNorm2d(C)), id="torchvision-frozen-bn"),
    pytest.param(PooledBN1d, id="bn1d-after-global-pool-and-linear"),
    pytest.param(BNList, id="modulelist-of-bn2d-residual"),
]


@pytest.mark.parametrize("factory", PER_CHANNEL_CLEAN)
def test_per_channel_lookalikes_clean(factory):
    report = run(factory())
    assert report.findings == [], report.findings


# -- bn-train-behaviour ------------------------------------------------------------------------------
TRAIN_FLAGGED = [
    pytest.param(lambda: Plain(UnbiasedNormBN2d(C)), {"bn"},
                 ["UnbiasedNormBN2d in train mode", "unbiased variance (divides by n-1)"],
                 id="normalises-with-unbiased-var"),
    pytest.param(lambda: Residual(KerasMixupBN2d(C)), {"block.bn"},
                 ["running_mean = 0.1*old + 0.9*batch", "Keras' convention"],
                 id="residual-pytorch-momentum-in-keras-formula"),
    pytest.param(lambda: Plain(BiasedRunningVarBN2d(C)), {"bn"},
                 ["running_var is updated with the biased batch variance"], id="running-var-biased"),
    pytest.param(lambda: Residual(RunningStatsInTrainBN2d(C)), {"block.bn"},
                 ["normalises with its running statistics"], id="residual-running-stats-in-train"),
    pytest.param(lambda: Plain(StaleStatsBN2d(C)), {"bn"},
                 ["(running_mean, running_var) are not updated in train mode"], id="running-stats-never-updated"),
    pytest.param(lambda: Plain(CumulativeIgnoredBN2d(C, momentum=None)), {"bn"},
                 ["running_mean after one batch does not follow", "w=0.166667"],
                 id="momentum-none-not-cumulative"),
    pytest.param(lambda: Plain(NoCounterBN2d(C)), {"bn"},
                 ["num_batches_tracked went from 5 to 5"], id="num-batches-tracked-not-incremented"),
]


@pytest.mark.parametrize(("factory", "modules", "fragments"), TRAIN_FLAGGED)
def test_train_behaviour_flagged(factory, modules, fragments):
    report = run(factory())
    assert_flagged(report, "bn-train-behaviour", modules, fragments)
    # the layer is per channel and fine in eval mode: no other BN rule fires
    assert pairs(report, "bn-not-per-channel") == set()
    assert pairs(report, "bn-eval-behaviour") == set()


TRAIN_CLEAN = [
    pytest.param(lambda: Plain(HandBN2d(C)), id="correct-hand-bn"),
    pytest.param(lambda: Plain(HandBN2d(C, momentum=None)), id="hand-bn-cumulative-momentum-none"),
    pytest.param(lambda: Residual(FunctionalBN2d(C)), id="residual-F.batch_norm-self.training"),
    pytest.param(lambda: Plain(KerasBN2d(C)), id="keras-convention-momentum-0.9"),
    pytest.param(lambda: Residual(KerasEpsilonBN2d(C)), id="keras-port-epsilon-attribute"),
    pytest.param(lambda: Plain(LoggingBatchNorm2d(C)), id="bn2d-subclass-own-forward"),
    pytest.param(lambda: Plain(FrozenBatchNorm2d(C)), id="torchvision-frozen-bn"),
    pytest.param(lambda: Residual(pretrained_frozen_bn()), id="torchvision-frozen-bn-pretrained-values"),
]


@pytest.mark.parametrize("factory", TRAIN_CLEAN)
def test_train_behaviour_lookalikes_clean(factory):
    report = run(factory())
    assert report.findings == [], report.findings


# -- bn-eval-behaviour -------------------------------------------------------------------------------
EVAL_FLAGGED = [
    pytest.param(lambda: Plain(nn.BatchNorm2d(C, track_running_stats=False)), {"bn"},
                 ["track_running_stats=False"], id="bn2d-track-running-stats-false"),
    pytest.param(lambda: Residual(IgnoresTrainingBN2d(C)), {"block.bn"},
                 ["still normalises with the batch's statistics", "changes running_mean"],
                 id="residual-hand-bn-ignores-self.training"),
    pytest.param(lambda: Plain(EvalUpdatesBN2d(C)), {"bn"},
                 ["changes running_mean, running_var in eval mode"], id="hand-bn-updates-buffers-in-eval"),
    pytest.param(lambda: Plain(NoBuffersBN2d(C)), {"bn"},
                 ["no running statistics"], id="hand-bn-without-running-buffers"),
    pytest.param(BatchCentering, {""},
                 ["output of BatchCentering for one sample depends on the other samples"],
                 id="batch-mean-subtracted-in-forward"),
    pytest.param(lambda: Plain(Standardize()), {"bn"}, ["Standardize in eval mode", "no running statistics"],
                 id="undeclared-batch-standardize-layer-recognised-by-its-batch-statistics"),
]


@pytest.mark.parametrize(("factory", "modules", "fragments"), EVAL_FLAGGED)
def test_eval_behaviour_flagged(factory, modules, fragments):
    report = run(factory())
    assert_flagged(report, "bn-eval-behaviour", modules, fragments)
    assert pairs(report, "mode-not-propagated") == set()


EVAL_CLEAN = [
    pytest.param(lambda: Residual(nn.BatchNorm2d(C)), id="residual-builtin-bn2d"),
    pytest.param(lambda: Plain(HandBN2d(C)), id="correct-hand-bn"),
    pytest.param(lambda: Plain(FunctionalBN2d(C)), id="hand-bn-F.batch_norm-self.training"),
    pytest.param(lambda: Residual(KerasBN2d(C)), id="residual-keras-convention-moving-stats"),
    pytest.param(lambda: Plain(pretrained_frozen_bn()), id="torchvision-frozen-bn-pretrained-values"),
    pytest.param(InstanceNormNet, id="instance-and-group-norm-per-sample"),
    pytest.param(PooledBN1d, id="bn1d-after-global-pool"),
]


@pytest.mark.parametrize("factory", EVAL_CLEAN)
def test_eval_behaviour_lookalikes_clean(factory):
    report = run(factory())
    assert report.findings == [], report.findings


# -- the model is left alone ------------------------------------------------------------------------
def test_check_leaves_hand_bn_buffers_and_mode_untouched():
    model = Residual(IgnoresTrainingBN2d(C)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run(model, checks=list(BN_RULES))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(m.training for m in model.modules())


class _Scaled(nn.Module):
    """A clean conv-BN-linear model whose output is multiplied by ``scale``; ``centre`` makes every
    sample's output depend on the batch (it subtracts the batch mean, in eval mode too)."""

    def __init__(self, scale: float, centre: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)
        self.scale, self.centre = scale, centre

    def forward(self, x):
        y = self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))) * self.scale
        return y - y.mean(dim=0, keepdim=True) if self.centre else y


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e10], ids=["tiny", "unit", "huge"])
def test_batch_dependence_is_judged_at_the_outputs_own_scale(scale) -> None:
    torch.manual_seed(0)
    clean = cnncheck.check_model(_Scaled(scale, centre=False), (4, 3, 8, 8))
    assert clean.ok, str(clean)
    dependent = cnncheck.check_model(_Scaled(scale, centre=True), (4, 3, 8, 8))
    assert {(f.rule, f.module) for f in dependent.findings} == {("bn-eval-behaviour", "")}


@pytest.mark.parametrize("model, rule, line", [
    ("PerPixelNorm", "bn-not-per-channel", "mean = x.mean(dim=0, keepdim=True)"),
    ("WrongMomentum", "bn-train-behaviour", "self.running_mean.mul_(self.momentum)"),
    ("BatchStatsInEval", "bn-eval-behaviour", "F.batch_norm("),
])
def test_a_hand_written_batchnorm_is_blamed_at_the_line_of_forward_that_computes_wrongly(model, rule, line):
    """Not at the line that builds the layer: the trace knows which line of its forward does it."""
    from examples_loader import EXAMPLES, load_example

    report = cnncheck.check_model(getattr(load_example("mistakes"), model)(), (4, 3, 16, 16), checks=[rule])
    [finding] = report.findings
    lines = (EXAMPLES / "mistakes.py").read_text().splitlines()
    number = int(finding.location.rsplit(":", 1)[1])
    assert line in lines[number - 1], (finding.location, lines[number - 1])


def test_torch_s_own_batchnorm_is_blamed_where_it_is_built():
    class Untracked(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, bias=False)
            self.bn = nn.BatchNorm2d(4, track_running_stats=False)  # the argument is the mistake

        def forward(self, x):
            return self.bn(self.conv(x))

    [finding] = cnncheck.check_model(Untracked(), (4, 3, 8, 8), checks=["bn-eval-behaviour"]).findings
    number = int(finding.location.rsplit(":", 1)[1])
    assert "track_running_stats=False" in open(__file__).read().splitlines()[number - 1]
