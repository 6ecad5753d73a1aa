"""redundant-bias-before-bn through torch's layer forms of the pass-through ops.

``nn.Upsample``, the reflection/replication/circular pads, ``nn.PixelUnshuffle`` and ``nn.ChannelShuffle``
run one functional op each (``F.interpolate``, ``F.pad(mode=...)``, ...), and a conv bias reaches a
following BatchNorm through the layer exactly as through its functional form. ``nn.PixelShuffle`` is the
exception, in both forms: it packs r*r conv channels, with r*r different biases, into one output channel,
and the norm over that channel removes only their mean.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from checking import check_unmodified
from torch import nn

RULE = "redundant-bias-before-bn"

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_SHAPE = {1: (4, 3, 16), 2: (4, 3, 16, 16), 3: (2, 3, 6, 6, 6)}


class ConvMidBN(nn.Module):
    """conv (8 channels, zero-padded so its own output is not the question) -> ``mid`` -> BatchNorm."""

    def __init__(self, mid: nn.Module, dims: int = 2, norm_channels: int = 8, bias: bool = True) -> None:
        super().__init__()
        self.conv = _CONV[dims](3, 8, 3, padding=1, bias=bias)
        self.mid = mid
        self.bn = _NORM[dims](norm_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.mid(self.conv(x)))


class ConvFunctionalBN(ConvMidBN):
    """The same model with the middle op written as a function call in forward."""

    def __init__(self, op, dims: int = 2, norm_channels: int = 8, bias: bool = True) -> None:
        super().__init__(nn.Identity(), dims, norm_channels, bias)
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.op(self.conv(x)))


def flagged_modules(model: nn.Module, dims: int = 2) -> set[str]:
    torch.manual_seed(0)
    report = check_unmodified(model, _SHAPE[dims], checks=[RULE])
    assert report.crashes == [], report.crashes
    return {f.module for f in report.by_rule(RULE)}


# (layer, its functional form, dims, channels the BatchNorm sees)
PASSING = [
    pytest.param(lambda: nn.Upsample(scale_factor=2), lambda x: F.interpolate(x, scale_factor=2), 2, 8,
                 id="upsample-nearest"),
    pytest.param(lambda: nn.Upsample(scale_factor=2, mode="bilinear"),
                 lambda x: F.interpolate(x, scale_factor=2, mode="bilinear"), 2, 8, id="upsample-bilinear"),
    pytest.param(lambda: nn.UpsamplingNearest2d(scale_factor=2), lambda x: F.interpolate(x, scale_factor=2),
                 2, 8, id="upsampling-nearest2d"),
    pytest.param(lambda: nn.UpsamplingBilinear2d(scale_factor=2),
                 lambda x: F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True), 2, 8,
                 id="upsampling-bilinear2d"),
    pytest.param(lambda: nn.ReflectionPad1d(2), lambda x: F.pad(x, (2, 2), mode="reflect"), 1, 8,
                 id="reflection-pad1d"),
    pytest.param(lambda: nn.ReflectionPad2d(2), lambda x: F.pad(x, (2, 2, 2, 2), mode="reflect"), 2, 8,
                 id="reflection-pad2d"),
    pytest.param(lambda: nn.ReflectionPad3d(1), lambda x: F.pad(x, (1,) * 6, mode="reflect"), 3, 8,
                 id="reflection-pad3d"),
    pytest.param(lambda: nn.ReplicationPad1d(2), lambda x: F.pad(x, (2, 2), mode="replicate"), 1, 8,
                 id="replication-pad1d"),
    pytest.param(lambda: nn.ReplicationPad2d(2), lambda x: F.pad(x, (2, 2, 2, 2), mode="replicate"), 2, 8,
                 id="replication-pad2d"),
    pytest.param(lambda: nn.ReplicationPad3d(1), lambda x: F.pad(x, (1,) * 6, mode="replicate"), 3, 8,
                 id="replication-pad3d"),
    pytest.param(lambda: nn.CircularPad2d(2), lambda x: F.pad(x, (2, 2, 2, 2), mode="circular"), 2, 8,
                 id="circular-pad2d"),
    # each conv channel spreads over 4 output channels, each of them constant: 8 -> 32 channels
    pytest.param(lambda: nn.PixelUnshuffle(2), lambda x: F.pixel_unshuffle(x, 2), 2, 32, id="pixel-unshuffle"),
    pytest.param(lambda: nn.ChannelShuffle(2), lambda x: F.channel_shuffle(x, 2), 2, 8, id="channel-shuffle"),
]


@pytest.mark.parametrize("layer, op, dims, channels", PASSING)
def test_bias_through_layer_is_flagged(layer, op, dims, channels):
    assert flagged_modules(ConvMidBN(layer(), dims, channels), dims) == {"conv"}


@pytest.mark.parametrize("layer, op, dims, channels", PASSING)
def test_no_bias_through_layer_is_clean(layer, op, dims, channels):
    assert flagged_modules(ConvMidBN(layer(), dims, channels, bias=False), dims) == set()


@pytest.mark.parametrize("layer, op, dims, channels", PASSING)
def test_functional_form_gives_the_layers_verdict(layer, op, dims, channels):
    expected = {"conv"}
    assert flagged_modules(ConvMidBN(layer(), dims, channels), dims) == expected
    assert flagged_modules(ConvFunctionalBN(op, dims, channels), dims) == expected
    assert flagged_modules(ConvFunctionalBN(op, dims, channels, bias=False), dims) == set()


def test_finding_names_the_norm_behind_the_layer():
    torch.manual_seed(0)
    report = check_unmodified(ConvMidBN(nn.ReflectionPad2d(1)), _SHAPE[2], checks=[RULE])
    [finding] = report.by_rule(RULE)
    assert finding.message == "the bias of Conv2d 'conv' (8 parameters) is cancelled by BatchNorm2d 'bn'"
    assert "Conv2d(..., bias=False)" in finding.fix


# Layers whose op does not keep a per-channel constant: the bias matters, in both forms.
# (layer, its functional form, channels the BatchNorm sees)
STOPPING = [
    pytest.param(lambda: nn.PixelShuffle(2), lambda x: F.pixel_shuffle(x, 2), 2, id="pixel-shuffle"),
    pytest.param(lambda: nn.ZeroPad2d(1), lambda x: F.pad(x, (1, 1, 1, 1)), 8, id="zero-pad2d"),
    pytest.param(lambda: nn.ConstantPad2d(1, 0.5), lambda x: F.pad(x, (1, 1, 1, 1), value=0.5), 8,
                 id="constant-pad2d"),
]


@pytest.mark.parametrize("layer, op, channels", STOPPING)
def test_bias_through_non_constant_layer_is_kept(layer, op, channels):
    assert flagged_modules(ConvMidBN(layer(), norm_channels=channels)) == set()
    assert flagged_modules(ConvFunctionalBN(op, norm_channels=channels)) == set()


class ZeroGammaAfter(nn.Module):
    """conv -> ``mid`` -> a BatchNorm whose gamma starts at 0 (timm's zero_init_last): no gradient
    reaches the conv, so the dataflow verdict stands alone, without a gradient to overrule it."""

    def __init__(self, mid, norm_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.mid = mid
        self.bn = nn.BatchNorm2d(norm_channels)
        nn.init.zeros_(self.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.mid(self.conv(x)))


class PixelShuffleFn(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(x, 2)


class PixelUnshuffleFn(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(x, 2)


@pytest.mark.parametrize("mid", [nn.PixelShuffle(2), PixelShuffleFn()], ids=["layer", "functional"])
def test_pixel_shuffle_keeps_the_bias_by_dataflow_alone(mid):
    """The 4 biases packed into one output channel differ; the norm removes their mean only. (The
    functional form used to pass the search, and only the gradient check hid it; with no gradient to
    check, it was flagged.)"""
    assert flagged_modules(ZeroGammaAfter(mid, norm_channels=2)) == set()


@pytest.mark.parametrize("mid", [nn.PixelUnshuffle(2), PixelUnshuffleFn()], ids=["layer", "functional"])
def test_pixel_unshuffle_cancels_the_bias_by_dataflow_alone(mid):
    assert flagged_modules(ZeroGammaAfter(mid, norm_channels=32)) == {"conv"}


class PlainUpsample(nn.Upsample):
    """A subclass that only fixes the arguments: it still runs torch's forward."""

    def __init__(self) -> None:
        super().__init__(scale_factor=2, mode="nearest")


class UpsampleThenRelu(nn.Upsample):
    """Named like an upsample, but its own forward adds a ReLU, which does not keep a constant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(super().forward(x))


def test_upsample_subclass_is_judged_by_the_forward_it_runs():
    assert flagged_modules(ConvMidBN(PlainUpsample())) == {"conv"}
    assert flagged_modules(ConvMidBN(UpsampleThenRelu(scale_factor=2))) == set()
