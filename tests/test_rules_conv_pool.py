"""conv-param-formula, pool-has-parameters and pool-mixes-channels on built-in and hand-written layers."""

from __future__ import annotations

import re

import models_conv as M
import pytest
import torch
from models_conv import build, check_unmodified, line_of, rule_pairs
from torch import nn

import cnncheck

SHAPE = (4, 3, 16, 16)
CONV = "conv-param-formula"
POOL_PARAMS = "pool-has-parameters"
POOL_MIX = "pool-mixes-channels"
NO_GRADIENT = "parameter-without-gradient"




def flagged_case(rule, factory, expected, shape=SHAPE, also=(), id=None):
    return pytest.param(rule, factory, set(expected), shape, set(also), id=id)


def _assert_flagged(rule, factory, expected, shape, also):
    model = build(factory)
    full = check_unmodified(model, shape)
    assert full.crashes == []
    assert rule_pairs(full, rule) == {(rule, m) for m in expected}
    # the model has this defect only: nothing else is reported on it
    assert rule_pairs(full) == {(rule, m) for m in expected} | also
    only = check_unmodified(model, shape, checks=[rule])
    assert only.rules_run == (rule,)
    assert rule_pairs(only) == {(rule, m) for m in expected}
    assert all(f.severity is cnncheck.Severity.ERROR for f in only.findings)
    return only


# =====================================================================================================
# conv-param-formula
# =====================================================================================================
CONV_FLAGGED = [
    flagged_case(CONV, M.SwappedConvNet, {"conv1"}, id="hand-conv-weight-cin-cout-swapped"),
    # the extra parameter, which torch's conv never reads, also never trains
    flagged_case(CONV, M.ExtraParamBuiltinConvNet, {"conv1"}, shape=(4, 1, 16, 16), id="builtin-conv2d-extra-param",
                 also={(NO_GRADIENT, "conv1")}),
    flagged_case(CONV, M.ScaledConvResidualNet, {"body"}, id="hand-conv-extra-scale-in-residual-forward"),
    flagged_case(CONV, M.FlippedConvNet, {"features.0"}, id="hand-conv-flipped-kernel-numeric"),
    flagged_case(CONV, M.FullDepthwiseNet, {"dw"}, id="hand-depthwise-conv-ignores-groups"),
    flagged_case(CONV, M.ExtraParamTransposeNet, {"up"}, id="builtin-convtranspose2d-extra-param",
                 also={(NO_GRADIENT, "up")}),
]


@pytest.mark.parametrize("rule, factory, expected, shape, also", CONV_FLAGGED)
def test_conv_param_formula_flags(rule, factory, expected, shape, also):
    _assert_flagged(rule, factory, expected, shape, also)


CLEAN = [
    pytest.param(M.StockConvNet, id="stock-convs-bias-groups-1x1-transposed-1d"),
    pytest.param(M.HandConvNet, id="hand-convs-rect-kernel-stride-groups-no-bias-residual"),
    pytest.param(M.Im2ColNet, id="hand-conv-unfold-matmul"),
    pytest.param(M.ConvBlockNet, id="block-with-conv-attrs-delegating-to-nn-conv2d"),
    pytest.param(M.StockPoolNet, id="stock-max-avg-adaptive-pools"),
    pytest.param(M.HandPoolNet, id="hand-pools-blur-buffer-mixed-lp-global"),
    pytest.param(M.LearnedDownsampleNet, id="hand-strided-conv-downsampler-residual"),
    pytest.param(M.ConvPoolNet, id="conv-block-storing-kernel-size-is-its-conv-not-a-pool"),
]


@pytest.mark.parametrize("factory", CLEAN)
def test_lookalikes_are_clean_for_every_rule(factory):
    model = build(factory)
    report = check_unmodified(model, SHAPE)
    assert report.crashes == []
    assert rule_pairs(report) == set(), str(report)
    assert report.ok


@pytest.mark.parametrize("factory", CLEAN)
@pytest.mark.parametrize("rule", [CONV, POOL_PARAMS, POOL_MIX])
def test_lookalikes_not_flagged_by_conv_pool_rules(rule, factory):
    report = check_unmodified(build(factory), SHAPE, checks=[rule])
    assert rule_pairs(report, rule) == set(), str(report)


def _only(report, rule):
    [finding] = report.by_rule(rule)
    return finding


def test_conv_builtin_extra_param_message_shows_formula():
    report = check_unmodified(build(M.ExtraParamBuiltinConvNet), (4, 1, 16, 16), checks=[CONV])
    f = _only(report, CONV)
    assert f.expected == "(5*5*1 + 1) * 32 = 832"
    assert "832" in f.message and "864" in f.message
    assert f.found.startswith("864 parameters")
    assert "gain: (32,)" in f.found
    assert f.location is not None and f.location.endswith(line_of(M.ExtraParamBuiltinConvNet, "self.conv1 = nn.Conv2d"))


def test_conv_hand_written_swapped_channels_message():
    report = check_unmodified(build(M.SwappedConvNet), SHAPE, checks=[CONV])
    f = _only(report, CONV)
    assert "swapped" in f.message
    assert "(8, 3, 3, 3)" in f.expected
    assert "(3, 8, 3, 3)" in f.found
    assert f.location.endswith(line_of(M.SwappedConvNet, "self.conv1 = SwappedConv"))


def test_conv_hand_written_extra_parameter_counts():
    report = check_unmodified(build(M.ScaledConvResidualNet), SHAPE, checks=[CONV])
    f = _only(report, CONV)
    assert f.expected == "(3*3*8 + 1) * 8 = 584"
    assert "should have 584 parameters, it has 592" in f.message
    assert "scale: (8,)" in f.found


def test_conv_transposed_formula():
    report = check_unmodified(build(M.ExtraParamTransposeNet), SHAPE, checks=[CONV])
    f = _only(report, CONV)
    assert f.expected == "2*2*4*8 + 8 = 136"
    assert "136" in f.message and "144" in f.message


def test_conv_depthwise_expected_shape():
    report = check_unmodified(build(M.FullDepthwiseNet), SHAPE, checks=[CONV])
    f = _only(report, CONV)
    assert "groups=4" in f.message
    assert "(4, 1, 3, 3)" in f.expected and "(4, 4, 3, 3)" in f.found


def test_conv_numeric_mismatch_message():
    report = check_unmodified(build(M.FlippedConvNet), SHAPE, checks=[CONV])
    f = _only(report, CONV)
    assert "does not compute a convolution" in f.message
    assert "F.conv2d" in f.expected
    assert "differ" in f.found
    assert f.location.endswith(line_of(M.FlippedConvNet, "FlippedConv(3, 8, 3"))


@pytest.mark.parametrize(
    "module, args",
    [
        pytest.param(nn.Conv2d(1, 32, 5), dict(in_channels=1, out_channels=32, kernel_size=5), id="seed-conv-832"),
        pytest.param(nn.Conv2d(8, 16, (3, 5), groups=4, bias=False),
                     dict(in_channels=8, out_channels=16, kernel_size=(3, 5), groups=4, bias=False), id="grouped-rect"),
        pytest.param(nn.ConvTranspose2d(4, 8, 2, groups=2),
                     dict(in_channels=4, out_channels=8, kernel_size=2, groups=2, transposed=True), id="transposed"),
    ],
)
def test_conv_param_count_matches_torch(module, args):
    assert cnncheck.conv_param_count(**args) == sum(p.numel() for p in module.parameters())


# =====================================================================================================
# pool-has-parameters
# =====================================================================================================
POOL_PARAMS_FLAGGED = [
    flagged_case(POOL_PARAMS, M.ScaledPoolNet, {"pool"}, id="hand-maxpool-learnable-scale"),
    flagged_case(POOL_PARAMS, M.BuiltinPoolWithWeightNet, {"features.2"}, id="builtin-maxpool2d-given-weight",
                 also={(NO_GRADIENT, "features.2")}),
    flagged_case(POOL_PARAMS, M.FunctionalAttentionPoolNet, {"gap"}, id="hand-attention-pool-functional-residual-forward"),
]


@pytest.mark.parametrize("rule, factory, expected, shape, also", POOL_PARAMS_FLAGGED)
def test_pool_has_parameters_flags(rule, factory, expected, shape, also):
    _assert_flagged(rule, factory, expected, shape, also)


@pytest.mark.parametrize(
    "factory, count, listing",
    [
        pytest.param(M.ScaledPoolNet, 1, "scale (1,)", id="scale"),
        pytest.param(M.BuiltinPoolWithWeightNet, 8, "weight (8,)", id="builtin-weight"),
        pytest.param(M.FunctionalAttentionPoolNet, 8, "logits (8, 1, 1)", id="attention-logits"),
    ],
)
def test_pool_has_parameters_counts_wasted_parameters(factory, count, listing):
    model = build(factory)
    f = _only(check_unmodified(model, SHAPE, checks=[POOL_PARAMS]), POOL_PARAMS)
    assert f"owns {count} learnable parameter(s)" in f.message
    assert f.found == f"{count} parameter(s): {listing}"
    assert f.expected.startswith("0 parameters")


# =====================================================================================================
# pool-mixes-channels
# =====================================================================================================
POOL_MIX_FLAGGED = [
    flagged_case(POOL_MIX, M.ChannelMaxPoolNet, {"pool"}, id="hand-pool-max-over-channels"),
    flagged_case(POOL_MIX, M.RolledPoolResidualNet, {"pool"}, id="hand-pool-rolls-channels-residual-forward"),
    flagged_case(POOL_MIX, M.MaxPool3dOn4dNet, {"pool"}, id="builtin-maxpool3d-on-4d-map"),
    flagged_case(POOL_MIX, M.CollapsePoolNet, {"pool"}, id="hand-pool-collapses-channels"),
]


@pytest.mark.parametrize("rule, factory, expected, shape, also", POOL_MIX_FLAGGED)
def test_pool_mixes_channels_flags(rule, factory, expected, shape, also):
    _assert_flagged(rule, factory, expected, shape, also)


@pytest.mark.parametrize(
    "factory, found",
    [
        pytest.param(M.MaxPool3dOn4dNet, "4 output channels (input (4, 8, 16, 16), output (4, 4, 8, 8))", id="maxpool3d"),
        pytest.param(M.CollapsePoolNet, "1 output channels (input (4, 8, 16, 16), output (4, 1, 8, 8))", id="collapse"),
    ],
)
def test_pool_changes_channel_count_message(factory, found):
    f = _only(check_unmodified(build(factory), SHAPE, checks=[POOL_MIX]), POOL_MIX)
    assert "changes the number of channels" in f.message
    assert f.expected == "8 output channels, one per input channel"
    assert f.found == found


@pytest.mark.parametrize(
    "factory, pool_attr",
    [
        pytest.param(M.ChannelMaxPoolNet, "pool", id="channel-max"),
        pytest.param(M.RolledPoolResidualNet, "pool", id="rolled-channels"),
    ],
)
def test_pool_mixing_message_names_a_true_channel_pair(factory, pool_attr):
    """The reported "changing input channel S changes output channel T" must be true of the layer."""
    model = build(factory)
    f = _only(check_unmodified(model, SHAPE, checks=[POOL_MIX]), POOL_MIX)
    assert "mixes channels" in f.message
    match = re.fullmatch(r"changing input channel (\d+) changes output channel (\d+)", f.found)
    assert match, f.found
    source, target = int(match[1]), int(match[2])
    assert source != target
    pool = getattr(model, pool_attr)
    x = torch.rand(2, 8, 16, 16, generator=torch.Generator().manual_seed(3))
    moved = x.clone()
    moved[:, source] += 10.0
    with torch.no_grad():
        delta = (pool(moved) - pool(x))[:, target].abs().max()
    assert delta > 1e-4, f"input channel {source} does not affect output channel {target} of {type(pool).__name__}"
