"""Verdicts on the ways ML code really writes things (found by a review that wrote 81 models against the
non-BatchNorm rules): each false alarm or miss it found, with its flagged or clean counterpart."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

import cnncheck

SHAPE = (4, 3, 16, 16)


def found(model: nn.Module, shape=SHAPE) -> set[tuple[str, str]]:
    torch.manual_seed(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: m.training for n, m in model.named_modules()}
    report = cnncheck.check_model(model, shape)
    assert report.crashes == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert flags == {n: m.training for n, m in model.named_modules()}
    return {(f.rule, f.module) for f in report.findings}


def head(c: int) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))


# -- crashes ------------------------------------------------------------------------------------------
class Unpool(nn.Module):
    """MaxUnpool2d has a kernel_size but is torch's own, not a student's pool: was a crash of
    pool-mixes-channels (the probe called it without its indices)."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2)
        self.fc = nn.Linear(3, 1)

    def forward(self, x):
        values, indices = self.pool(x)
        return self.fc(self.unpool(values, indices).mean((2, 3)))


class BinaryHead(nn.Module):
    """`.squeeze()` turns one sample's output into a scalar: was a crash of bn-eval-behaviour."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 1)

    def forward(self, x):
        return self.fc(x.mean((2, 3))).squeeze()


@pytest.mark.parametrize("model", [Unpool, BinaryHead])
def test_no_crash_on_common_torch_patterns(model) -> None:
    assert found(model()) == set()


# -- mode-not-propagated --------------------------------------------------------------------------------
class FreezeBN(nn.Module):
    """Correct: train() calls super, then freezes one BatchNorm (fine-tuning, as detectron does)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.Dropout(0.2))
        self.fc = nn.Linear(8, 10)

    def train(self, mode: bool = True):
        super().train(mode)
        self.body[1].eval()
        return self

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3)))


class FreezeWithoutSuper(FreezeBN):
    """Wrong: BN frozen in __init__ and a train() that never passes the mode on."""

    def __init__(self) -> None:
        super().__init__()
        self.body[1].eval()

    def train(self, mode: bool = True):
        self.training = mode
        return self


class Noise(nn.Module):
    """Gaussian noise on the features, with torch.randn; ``gated`` adds it only in training."""

    def __init__(self, gated: bool) -> None:
        super().__init__()
        self.gated = gated
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = self.conv(x).mean((2, 3))
        if self.training or not self.gated:
            y = y + 0.1 * torch.randn(y.shape)
        return self.fc(y)


def test_a_bn_frozen_on_purpose_is_not_a_mode_bug() -> None:
    """Was "FreezeBN.train() is overridden and does not pass the mode on": the override is asked
    whether train(True) switches the other layers on."""
    assert found(FreezeBN()) == set()
    # the override passes nothing on: the BN stays frozen in training, the dropout active in eval
    assert found(FreezeWithoutSuper()) == {("mode-not-propagated", "body.1"), ("mode-not-propagated", "body.2")}


def test_noise_left_on_in_eval_is_a_mode_bug() -> None:
    """Was bn-eval-behaviour "one sample depends on the other samples" (torch.randn was not known as
    random, and the eval passes drew different noise)."""
    assert found(Noise(gated=False)) == {("mode-not-propagated", "")}
    assert found(Noise(gated=True)) == set()


# -- conv-param-formula ---------------------------------------------------------------------------------
class OwnBiasName(nn.Module):
    """A hand-written conv whose bias is called ``b``: correct with 8 values, wrong with 9."""

    def __init__(self, bias_values: int = 8) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = 3, 8, 3
        self.weight = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.1)
        self.b = nn.Parameter(torch.zeros(bias_values))

    def forward(self, x):
        return F.conv2d(x, self.weight, self.b[:8])


@pytest.mark.parametrize("conv", [
    pytest.param(lambda: parametrizations.weight_norm(nn.Conv2d(3, 8, 3)), id="weight_norm"),
    pytest.param(lambda: parametrizations.spectral_norm(nn.Conv2d(3, 8, 3)), id="spectral_norm"),
    pytest.param(OwnBiasName, id="bias-named-b"),
])
def test_reparametrized_and_renamed_convs_follow_the_formula(conv) -> None:
    """Were "has no filter weights" (the weight lives in module.parametrizations) and "should have 216
    parameters, it has 224" (a bias under another name was counted as extra)."""
    assert found(nn.Sequential(conv(), head(8))) == set()
    assert found(nn.Sequential(OwnBiasName(bias_values=9), head(8))) == {("conv-param-formula", "0")}


# -- pooling ------------------------------------------------------------------------------------------
def test_fractional_max_pool_is_per_channel_and_batch_independent() -> None:
    """Was pool-mixes-channels and bn-eval-behaviour: its regions are drawn at random per sample and
    channel, even in eval mode, so batched probes and the one-sample pass drew other regions."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.FractionalMaxPool2d(3, output_ratio=0.5), head(8))
    assert found(model, (4, 3, 32, 32)) == set()
    mixing = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.FractionalMaxPool2d(3, output_ratio=0.5),
                           nn.MaxPool3d(2), head(4))  # a 3d pool on a 4-d map pools over channels
    assert ("pool-mixes-channels", "2") in found(mixing, (4, 3, 32, 32))


# -- feature-size-mismatch ------------------------------------------------------------------------------
class PerPixelLogits(nn.Module):
    """(N*H*W, classes) rows for a per-pixel cross-entropy; ``cut`` instead cuts each sample in two."""

    def __init__(self, cut: bool = False) -> None:
        super().__init__()
        self.cut = cut
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        if self.cut:
            return y.reshape(-1, 8 * 16 * 8)
        return y.permute(0, 2, 3, 1).reshape(-1, 8)


def test_per_pixel_rows_do_not_fold_the_batch() -> None:
    """Was feature-size-mismatch "reshape(-1, 5) folds part of the batch into the features"; a reshape
    that cuts samples is still flagged, once (bn-eval-behaviour no longer adds "cannot run a single
    sample" for the same reshape)."""
    assert found(PerPixelLogits()) == set()
    assert found(PerPixelLogits(cut=True)) == {("feature-size-mismatch", "")}


# -- redundant-bias-before-bn ----------------------------------------------------------------------------
class BiasThen(nn.Module):
    """A biased conv, one op, then a norm."""

    def __init__(self, op, norm: nn.Module | None = None) -> None:
        super().__init__()
        self.op = op
        self.conv = nn.Conv2d(3, 8, 3)
        self.norm = norm if norm is not None else nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(F.relu(self.norm(self.op(self.conv(x)))).mean((2, 3)))


@pytest.mark.parametrize(("op", "norm", "redundant"), [
    pytest.param(lambda y: y.mean((2, 3), keepdim=True), None, True, id="global-average-pool-by-mean"),
    pytest.param(lambda y: y.mean(1, keepdim=True).expand(-1, 8, -1, -1), None, False, id="mean-over-channels"),
    pytest.param(lambda y: F.interpolate(y, scale_factor=2, mode="bilinear"), None, True, id="interpolate"),
    pytest.param(lambda y: F.pad(y, (1, 1, 1, 1), mode="replicate"), None, True, id="replicate-pad"),
    pytest.param(lambda y: F.pad(y, (1, 1, 1, 1)), None, False, id="zero-pad"),
    pytest.param(lambda y: y, nn.GroupNorm(8, 8), True, id="groupnorm-one-group-per-channel"),
    pytest.param(lambda y: y, nn.GroupNorm(2, 8), False, id="groupnorm-2-groups"),
])
def test_ops_that_carry_a_per_channel_constant(op, norm, redundant: bool) -> None:
    """Were missed: a mean over positions, interpolation and non-zero padding carry the bias to the
    norm, and GroupNorm with one group per channel (an InstanceNorm) cancels it."""
    expected = {("redundant-bias-before-bn", "conv")} if redundant else set()
    assert found(BiasThen(op, norm)) == expected


class PointNetLayer(nn.Module):
    """A Linear over points (N, L, C), transposed to (N, C, L) for BatchNorm1d: its bias is cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 8)
        self.bn = nn.BatchNorm1d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        points = x.flatten(2).transpose(1, 2)
        return self.fc(F.relu(self.bn(self.lin(points).transpose(1, 2))).mean(2))


def test_transpose_carries_the_bias_to_the_norm() -> None:
    assert found(PointNetLayer()) == {("redundant-bias-before-bn", "lin")}


class DropoutBuiltInForward(nn.Module):
    """Wrong: ``nn.Dropout(0.5)(x)`` makes a new layer on every call, in training mode even after eval()."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(nn.Dropout(0.5)(self.conv(x).mean((2, 3))))


def test_a_layer_built_in_forward_is_named_as_such() -> None:
    """Was "F.dropout(...) runs in training mode ... no training argument", which is not the code."""
    torch.manual_seed(0)
    report = cnncheck.check_model(DropoutBuiltInForward(), SHAPE)
    [finding] = report.findings
    assert finding.rule == "mode-not-propagated"
    assert "nn.Dropout built inside DropoutBuiltInForward.forward is a new layer on every call" in finding.message
    assert "create it once in __init__" in finding.fix
    assert finding.location.endswith(f"{__file__}:{DropoutBuiltInForward.forward.__code__.co_firstlineno + 1}")


class FlattenZero(nn.Module):
    """Wrong: ``flatten(0)`` flattens the batch too; ``in_features`` sized per sample (the forward
    raises) or "fixed" to the whole batch (it runs, with every sample folded into one row)."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, stride=2)
        self.fc = nn.Linear(in_features, 10)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(0))


def test_flatten_zero_is_explained_as_a_flattened_batch() -> None:
    """Was "fc expects 256 = 4*8*8 input features but gets 1024 = 4*8*8", blaming the conv, with the
    fix "set in_features=1024" (which folds the whole batch into one row)."""
    torch.manual_seed(0)
    [per_sample] = cnncheck.check_model(FlattenZero(256), SHAPE).findings
    assert (per_sample.rule, per_sample.module) == ("feature-size-mismatch", "fc")
    assert per_sample.message == ("flatten(0) flattens the batch into the features: fc gets one vector of "
                                  "1024 = 4 samples x 256 features")
    assert "x.flatten(1)" in per_sample.fix and "in_features=1024" not in per_sample.fix
    assert found(FlattenZero(1024)) == {("feature-size-mismatch", "")}


class ConvWithoutPadding(nn.Module):
    """Wrong: a 5x5 conv without padding shrinks 32 to 28, so the pooled map is 14x14, not 16x16."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 5)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 16 * 16, 10)

    def forward(self, x):
        return self.fc(self.pool(F.relu(self.conv(x))).flatten(1))


def test_a_conv_without_padding_is_blamed_not_the_pool() -> None:
    """Was "pool MaxPool2d(2) turns 28x28 into 14x14": the pool is right, the conv lost 4 pixels."""
    torch.manual_seed(0)
    [finding] = cnncheck.check_model(ConvWithoutPadding(), (4, 3, 32, 32)).findings
    assert finding.message.endswith("conv Conv2d(3, 8, kernel_size=5) turns 32x32 into 28x28, and the map reaches 14x14")
    assert finding.fix.startswith("conv Conv2d(3, 8, kernel_size=5) with padding=2 instead of 0 would keep its input size")


class FunctionalDropout(nn.Module):
    """``drop`` is the dropout call its forward makes."""

    def __init__(self, drop) -> None:
        super().__init__()
        self.drop = drop
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.drop(self, self.conv(x).mean((2, 3))))


@pytest.mark.parametrize(("drop", "never_on"), [
    pytest.param(lambda self, y: F.dropout(y, 0.5, training=False), True, id="training-False"),
    pytest.param(lambda self, y: F.alpha_dropout(y, 0.2), True, id="alpha-dropout-default-off"),
    pytest.param(lambda self, y: F.dropout(y, 0.5, training=self.training), False, id="mode-aware"),
    pytest.param(lambda self, y: F.dropout(y, 0.0, training=False), False, id="rate-0"),
])
def test_a_functional_dropout_that_is_never_on(drop, never_on: bool) -> None:
    """Was missed: model.train() cannot switch on a dropout whose training argument is False."""
    expected = {("mode-not-propagated", "")} if never_on else set()
    assert found(FunctionalDropout(drop)) == expected


def test_a_mismatch_after_an_adaptive_pool_is_explained() -> None:
    """Found by the seeded fuzz after the padding blame above: an adaptive pool's geometry has no
    kernel, and trying its 'same' padding crashed the explanation (the report became a CheckError)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(8 * 3 * 3, 10))
    report = cnncheck.check_model(model, SHAPE)
    assert report.crashes == []
    assert [(f.rule, f.module) for f in report.findings] == [("feature-size-mismatch", "3")]
