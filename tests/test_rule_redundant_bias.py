"""redundant-bias-before-bn: a conv/linear bias that a following BatchNorm/InstanceNorm cancels."""

from __future__ import annotations

import models_conv as M
import pytest
import torch
from models_conv import build, check_unmodified, line_of, rule_pairs

import cnncheck

SHAPE = (4, 3, 16, 16)
RULE = "redundant-bias-before-bn"




FLAGGED = [
    pytest.param(M.ConvBNSeq, {"features.0"}, id="conv-bn-sequential"),
    pytest.param(M.ConvPoolBN, {"conv"}, id="conv-maxpool-bn"),
    pytest.param(M.LinearBN1d, {"fc1"}, id="linear-bn1d"),
    pytest.param(M.ResidualBlockBiased, {"conv1", "conv2", "shortcut.0"}, id="resnet-block-biased-convs"),
    pytest.param(M.PreAddBN, {"conv_a", "conv_b"}, id="residual-add-then-bn"),
    pytest.param(M.InceptionCatBN, {"branch1", "branch3", "conv_in"}, id="channel-cat-bn-and-instancenorm"),
    pytest.param(M.HandConvBN, {"conv"}, id="hand-written-conv-then-bn"),
    pytest.param(M.FunctionalConvBNStats, {""}, id="functional-conv2d-batch_norm-custom-forward"),
    pytest.param(M.FunctionalConvBN, {""}, id="functional-conv2d-batch_norm-running_mean-buffers"),
    pytest.param(M.FunctionalBlockNet, {"block"}, id="functional-conv2d-batch_norm-in-leaf-block"),
]


@pytest.mark.parametrize("factory, expected", FLAGGED)
def test_redundant_bias_flags(factory, expected):
    model = build(factory)
    full = check_unmodified(model, SHAPE)
    assert full.crashes == []
    want = {(RULE, m) for m in expected}
    assert rule_pairs(full, RULE) == want, str(full)
    assert rule_pairs(full) == want, str(full)  # nothing else is wrong with these models
    only = check_unmodified(model, SHAPE, checks=[RULE])
    assert rule_pairs(only) == want
    assert all(f.severity is cnncheck.Severity.WARNING for f in only.findings)


CLEAN = [
    pytest.param(M.ConvReluBN, id="conv-relu-bn"),
    pytest.param(M.ConvDropoutBN, id="conv-dropout-bn"),
    pytest.param(M.ConvGroupNormLayerNorm, id="conv-groupnorm-layernorm-linear-layernorm"),
    pytest.param(M.NoBiasConvBN, id="bias-false-then-bn-then-biased-conv"),
    pytest.param(M.BiasEscapesBN, id="bias-also-bypasses-bn"),
    pytest.param(M.FunctionalFrozenBN, id="functional-conv2d-then-frozen-batch_norm"),
]


@pytest.mark.parametrize("factory", CLEAN)
def test_redundant_bias_lookalikes_clean(factory):
    model = build(factory)
    only = check_unmodified(model, SHAPE, checks=[RULE])
    assert rule_pairs(only, RULE) == set(), str(only)
    full = check_unmodified(model, SHAPE)
    assert full.ok, str(full)


def test_redundant_bias_message_module_conv():
    report = check_unmodified(build(M.ConvBNSeq), SHAPE, checks=[RULE])
    [f] = report.findings
    assert f.message == "the bias of Conv2d 'features.0' (8 parameters) is cancelled by BatchNorm2d 'features.1'"
    assert "BatchNorm2d 'features.1'" in f.expected
    assert f.found.startswith("8 bias parameters")
    assert "gradient 0" in f.found
    assert "Conv2d(..., bias=False)" in f.fix
    assert f.location.endswith(line_of(M.ConvBNSeq, "nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)"))


def test_redundant_bias_counts_linear_bias():
    [f] = check_unmodified(build(M.LinearBN1d), SHAPE, checks=[RULE]).findings
    assert "Linear 'fc1' (32 parameters)" in f.message
    assert "BatchNorm1d 'bn1'" in f.message
    assert f.found.startswith("32 bias parameters")
    assert "Linear(..., bias=False)" in f.fix


def test_redundant_bias_names_each_norm_in_residual_block():
    report = check_unmodified(build(M.ResidualBlockBiased), SHAPE, checks=[RULE])
    by_module = {f.module: f for f in report.findings}
    assert "cancelled by BatchNorm2d 'bn1'" in by_module["conv1"].message
    assert "cancelled by BatchNorm2d 'bn2'" in by_module["conv2"].message
    assert "cancelled by BatchNorm2d 'shortcut.1'" in by_module["shortcut.0"].message


def test_redundant_bias_instance_norm_named():
    report = check_unmodified(build(M.InceptionCatBN), SHAPE, checks=[RULE])
    by_module = {f.module: f for f in report.findings}
    assert "InstanceNorm2d 'inorm'" in by_module["conv_in"].message
    assert "(4 parameters)" in by_module["branch1"].message


def test_redundant_bias_functional_message_and_location():
    [f] = check_unmodified(build(M.FunctionalConvBNStats), SHAPE, checks=[RULE]).findings
    assert f.module == ""
    assert "F.conv2d" in f.message and "(8 parameters)" in f.message
    assert "F.batch_norm" in f.message
    assert "drop the bias argument" in f.fix
    assert f.location.endswith(line_of(M.FunctionalConvBNStats, "x = F.conv2d("))


class ZeroInitResidual(torch.nn.Module):
    """timm's residual block with ``zero_init_last``: the last BN of the branch starts with gamma = 0, so
    every gradient inside the branch is exactly 0 at init. conv1's bias is still cancelled by bn1."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(c, c, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(c)
        self.conv2 = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(c)
        torch.nn.init.zeros_(self.bn2.weight)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class ZeroInitNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.block = ZeroInitResidual()
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.block(self.stem(x)).mean(dim=(2, 3)))


def test_zero_initialised_last_bn_does_not_hide_a_redundant_bias():
    report = check_unmodified(build(ZeroInitNet), SHAPE)
    assert rule_pairs(report) == {(RULE, "block.conv1")}, str(report)


def test_zero_initialised_last_bn_alone_is_not_a_finding():
    model = build(ZeroInitNet)
    model.block.conv1 = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False)
    assert rule_pairs(check_unmodified(model, SHAPE)) == set()


class ThroughConv(torch.nn.Module):
    """conv1 (bias) -> conv2 -> BN: conv2 maps conv1's per-channel constant to a per-channel constant when
    it has no zero padding (every output sums the same filter over the same constant)."""

    def __init__(self, k: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, k, padding=padding, bias=False)
        self.bn = torch.nn.BatchNorm2d(8)

    def forward(self, x):
        return torch.relu(self.bn(self.conv2(self.conv1(x))))


@pytest.mark.parametrize("k, padding, flagged", [
    pytest.param(1, 0, True, id="1x1-conv-carries-the-constant"),
    pytest.param(3, 0, True, id="3x3-valid-conv-carries-the-constant"),
    pytest.param(3, 1, False, id="zero-padded-conv-changes-it-at-the-borders"),
])
def test_a_conv_without_zero_padding_carries_the_bias_to_the_bn(k, padding, flagged):
    report = check_unmodified(build(lambda: ThroughConv(k, padding)), SHAPE)
    assert rule_pairs(report) == ({(RULE, "conv1")} if flagged else set()), str(report)


class PoolThenBN(torch.nn.Module):
    def __init__(self, pool: torch.nn.Module) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.pool = pool
        self.bn = torch.nn.BatchNorm2d(8)

    def forward(self, x):
        return torch.relu(self.bn(self.pool(self.conv(x))))


@pytest.mark.parametrize("pool, flagged", [
    pytest.param(M.ScaledMaxPool, True, id="learnable-scale-keeps-one-constant-per-channel"),
    pytest.param(M.RolledAvgPool, True, id="rolled-channels-keep-one-constant-per-channel"),
    pytest.param(M.ChannelMaxPool, False, id="channel-max-keeps-none"),
])
def test_a_hand_written_pool_carries_the_bias_when_its_ops_do(pool, flagged):
    report = check_unmodified(build(lambda: PoolThenBN(pool())), SHAPE)
    assert rule_pairs(report, RULE) == ({(RULE, "conv")} if flagged else set()), str(report)
