"""Small models for the conv / pooling / redundant-bias / feature-size rule tests.

Each model is built fresh by calling its class; ``build`` seeds torch first so that every test
sees the same weights. Hand-written layers here are the student-style layers that cnncheck
recognises by the ops their forward runs (a conv op on their own weights, pooling ops or reductions
over space), with attributes deciding only for a conv computed by hand.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def build(factory):
    """Seeded construction, so that the weights (and the numeric probes) are reproducible."""
    torch.manual_seed(0)
    return factory()


# =====================================================================================================
# Hand-written layers
# =====================================================================================================
class MyConv(nn.Module):
    """A correct hand-written conv: weight (C_out, C_in/groups, kh, kw), one bias per output channel."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1, bias=True):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.padding, self.groups = stride, padding, groups
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        bound = 1 / math.sqrt(in_channels // groups * kh * kw)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kh, kw).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_channels).uniform_(-bound, bound)) if bias else None

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, 1, self.groups)


class Im2ColConv(nn.Module):
    """A correct hand-written conv computed by unfold + matmul (no F.conv2d at all)."""

    def __init__(self, in_channels, out_channels, kernel_size, padding=0):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size, self.padding = (
            in_channels, out_channels, kernel_size, padding)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size) * 0.2)
        self.bias = nn.Parameter(torch.randn(out_channels) * 0.1)

    def forward(self, x):
        n, _, h, w = x.shape
        k, p = self.kernel_size, self.padding
        cols = F.unfold(x, k, padding=p)  # (N, C_in*k*k, L)
        out = self.weight.flatten(1) @ cols + self.bias[:, None]
        return out.view(n, self.out_channels, h + 2 * p - k + 1, w + 2 * p - k + 1)


class SwappedConv(nn.Module):
    """Weight stored (C_in, C_out, k, k): the forward transposes it back, so it runs, but the shape is wrong."""

    def __init__(self, in_channels, out_channels, kernel_size, padding=0):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size, self.padding = (
            in_channels, out_channels, kernel_size, padding)
        self.weight = nn.Parameter(torch.randn(in_channels, out_channels, kernel_size, kernel_size) * 0.1)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x):
        return F.conv2d(x, self.weight.transpose(0, 1), self.bias, padding=self.padding)


class ScaledConv(nn.Module):
    """Correct weight and bias plus one extra learnable scale per output channel: too many parameters."""

    def __init__(self, in_channels, out_channels, kernel_size, padding=0):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size, self.padding = (
            in_channels, out_channels, kernel_size, padding)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size) * 0.1)
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.scale = nn.Parameter(torch.ones(out_channels))

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, padding=self.padding) * self.scale[:, None, None]


class FlippedConv(nn.Module):
    """Right shapes and count, but the forward flips the kernel (true convolution, not PyTorch's correlation)."""

    def __init__(self, in_channels, out_channels, kernel_size, padding=0):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size, self.padding = (
            in_channels, out_channels, kernel_size, padding)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size) * 0.2)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x):
        return F.conv2d(x, self.weight.flip(-1, -2), self.bias, padding=self.padding)


class FullDepthwiseConv(nn.Module):
    """Declares groups=C but stores a full (C, C, k, k) filter bank and ignores the groups."""

    def __init__(self, channels, kernel_size, padding=0):
        super().__init__()
        self.in_channels = self.out_channels = self.groups = channels
        self.kernel_size, self.padding = kernel_size, padding
        self.weight = nn.Parameter(torch.randn(channels, channels, kernel_size, kernel_size) * 0.1)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, padding=self.padding)


class ConvBlock(nn.Module):
    """A container that records its hyper-parameters (in_channels/out_channels/kernel_size) and holds a
    real nn.Conv2d + BatchNorm2d + ReLU. It is a block, not a hand-written convolution."""

    def __init__(self, in_channels, out_channels, kernel_size):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class MyMaxPool(nn.Module):
    """A correct parameter-free hand-written pooling layer."""

    def __init__(self, kernel_size=2):
        super().__init__()
        self.kernel_size = kernel_size

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size)


class MixedPool(nn.Module):
    """Half max, half average, per channel: a correct parameter-free hand-written pool."""

    def __init__(self, kernel_size=2):
        super().__init__()
        self.kernel_size = kernel_size

    def forward(self, x):
        return 0.5 * (F.max_pool2d(x, self.kernel_size) + F.avg_pool2d(x, self.kernel_size))


class GlobalAvgPool(nn.Module):
    """Global average pooling written by hand (output_size attribute, mean over H and W)."""

    def __init__(self):
        super().__init__()
        self.output_size = 1

    def forward(self, x):
        return x.mean(dim=(2, 3), keepdim=True)


class BlurPool(nn.Module):
    """Anti-aliased down-sampling: a fixed depthwise blur kept in a buffer (not a parameter), stride 2."""

    def __init__(self, channels):
        super().__init__()
        self.kernel_size = 3
        self.channels = channels
        k = torch.tensor([1.0, 2.0, 1.0])
        k2 = (k[:, None] * k[None, :]) / 16
        self.register_buffer("blur_kernel", k2.expand(channels, 1, 3, 3).clone())

    def forward(self, x):
        return F.conv2d(x, self.blur_kernel, stride=2, padding=1, groups=self.channels)


class LearnedDownsample(nn.Module):
    """A strided conv written by hand: has kernel_size AND in_channels, so it is a conv, not a pool."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size, self.stride = in_channels, out_channels, 2, 2
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 2, 2) * 0.2)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, stride=2)


class ScaledMaxPool(nn.Module):
    """The rule's own example: a max pool with a learnable scale."""

    def __init__(self):
        super().__init__()
        self.kernel_size = 2
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return F.max_pool2d(x, 2) * self.scale


class AttentionPool(nn.Module):
    """Global pooling with learnt per-channel logits: output_size attribute and C learnable parameters."""

    def __init__(self, channels):
        super().__init__()
        self.output_size = 1
        self.logits = nn.Parameter(torch.zeros(channels, 1, 1))

    def forward(self, x):
        w = torch.softmax((x * self.logits).flatten(2), dim=-1).view_as(x)
        return (x * w).sum(dim=(2, 3), keepdim=True)


class ConvPool(nn.Module):
    """A block that stores kernel_size (no in_channels) and runs a strided child Conv2d: what it runs is a
    conv, so it is checked as that conv, not taken for a pooling layer (xception's SeparableConv2d and
    fastvit's MobileOneBlock store kernel_size the same way)."""

    def __init__(self, channels):
        super().__init__()
        self.kernel_size = 2
        self.down = nn.Conv2d(channels, channels, 2, stride=2)

    def forward(self, x):
        return self.down(x)


class ChannelMaxPool(nn.Module):
    """The rule's own example: a spatial max pool followed by a max over the channels."""

    kernel_size = 2

    def forward(self, x):
        pooled = F.max_pool2d(x, 2)
        return pooled.max(dim=1, keepdim=True).values.expand_as(pooled)


class RolledAvgPool(nn.Module):
    """Average pool whose channels come out shifted by one: output channel c is input channel c-1."""

    def __init__(self):
        super().__init__()
        self.kernel_size = 2

    def forward(self, x):
        return torch.roll(F.avg_pool2d(x, 2), shifts=1, dims=1)


class ChannelCollapsePool(nn.Module):
    """Pools over space and then over channels, returning one channel."""

    def __init__(self):
        super().__init__()
        self.kernel_size = 2

    def forward(self, x):
        return F.max_pool2d(x, 2).amax(dim=1, keepdim=True)


class LPPoolByHand(nn.Module):
    """Power-2 pooling by hand: nonlinear, but per channel."""

    def __init__(self):
        super().__init__()
        self.kernel_size = 2

    def forward(self, x):
        return (F.avg_pool2d(x * x, 2) * 4 + 1e-6).sqrt()


# =====================================================================================================
# conv-param-formula: flagged
# =====================================================================================================
class SwappedConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = SwappedConv(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(self.pool(F.relu(self.conv1(x))).flatten(1))


class ExtraParamBuiltinConvNet(nn.Module):
    """A stock nn.Conv2d(1, 32, 5, padding=2) that was given one more parameter tensor."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5, padding=2)
        self.conv1.gain = nn.Parameter(torch.ones(32))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.conv1(x)), 1).flatten(1))


class ScaledConvResidualNet(nn.Module):
    """Custom forward with functional calls and a residual add around a hand-written conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = ScaledConv(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = x + F.relu(self.body(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class FlippedConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(FlippedConv(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


class FullDepthwiseNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.pw = nn.Conv2d(3, 4, 1)
        self.dw = FullDepthwiseConv(4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        x = self.dw(F.relu(self.pw(x)))
        return self.fc(x.mean(dim=(2, 3)))


class ExtraParamTransposeNet(nn.Module):
    """A stock ConvTranspose2d(4, 8, 2, stride=2) with an extra parameter."""

    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(3, 4, 2, stride=2)
        self.up = nn.ConvTranspose2d(4, 8, 2, stride=2)
        self.up.extra = nn.Parameter(torch.zeros(8))

    def forward(self, x):
        return self.up(F.relu(self.down(x)))


# =====================================================================================================
# conv-param-formula: look-alikes (clean)
# =====================================================================================================
class StockConvNet(nn.Module):
    """Stock convs of every flavour: bias/no bias, depthwise groups, 1x1, transposed, 1-d."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.pw = nn.Conv2d(8, 16, 1)
        self.up = nn.ConvTranspose2d(16, 4, 2, stride=2, groups=4)
        self.conv1d = nn.Conv1d(4, 4, 3, padding=1)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.pw(self.dw(x)))
        x = self.up(F.max_pool2d(x, 2))
        return self.conv1d(x.flatten(2))


class HandConvNet(nn.Module):
    """Correct hand-written convs: rectangular kernel, stride, groups, no bias; residual add in forward."""

    def __init__(self):
        super().__init__()
        self.conv1 = MyConv(3, 8, 3, padding=1)
        self.conv2 = MyConv(8, 8, (3, 5), padding=(1, 2), groups=2)
        self.conv3 = MyConv(8, 16, 3, stride=2, padding=1, bias=False)
        self.fc = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = x + F.relu(self.conv2(x))
        return self.fc(self.conv3(x).flatten(1))


class Im2ColNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = Im2ColConv(3, 8, 3, padding=1)
        self.pool = MyMaxPool(2)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(self.pool(F.relu(self.conv(x))).flatten(1))


class ConvBlockNet(nn.Module):
    """Blocks that record in_channels/out_channels/kernel_size but delegate to a real nn.Conv2d."""

    def __init__(self):
        super().__init__()
        self.block1 = ConvBlock(3, 8, 3)
        self.block2 = ConvBlock(8, 16, 3)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.block2(F.max_pool2d(self.block1(x), 2))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


# =====================================================================================================
# pool-has-parameters: flagged
# =====================================================================================================
class ScaledPoolNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = ScaledMaxPool()
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(self.pool(F.relu(self.conv(x))).flatten(1))


class BuiltinPoolWithWeightNet(nn.Module):
    """A stock nn.MaxPool2d that someone gave a per-channel weight."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.features[2].weight = nn.Parameter(torch.ones(8))
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


class FunctionalAttentionPoolNet(nn.Module):
    """Custom forward: functional conv with its own parameters, a residual add, a learnt global pool."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.2)
        self.b = nn.Parameter(torch.zeros(8))
        self.gap = AttentionPool(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(F.conv2d(x, self.w, self.b, padding=1))
        pooled = self.gap(x) + F.adaptive_avg_pool2d(x, 1)
        return self.fc(pooled.flatten(1))


class ConvPoolNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = ConvPool(8)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(self.pool(F.relu(self.conv(x))).flatten(1))


# =====================================================================================================
# pool-* look-alikes (clean)
# =====================================================================================================
class StockPoolNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool2 = nn.AvgPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.pool1(F.relu(self.conv1(x)))
        x = self.pool2(F.relu(self.conv2(x)))
        return self.fc(self.gap(x).flatten(1))


class HandPoolNet(nn.Module):
    """Parameter-free, per-channel hand-written pools; one keeps a fixed filter in a buffer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.blur = BlurPool(8)
        self.mix = MixedPool(2)
        self.lp = LPPoolByHand()
        self.gap = GlobalAvgPool()
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.conv(x))
        x = self.lp(self.mix(self.blur(x)))
        return self.fc(self.gap(x).flatten(1))


class LearnedDownsampleNet(nn.Module):
    """A learnable strided-conv down-sampler (kernel_size + in_channels): a conv, so its weights are fine."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.down = LearnedDownsample(8, 8)
        self.pool = MyMaxPool(2)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = F.relu(self.conv(x))
        x = x[:, :, ::2, ::2] + self.down(x)  # residual around the down-sampler
        return self.fc(self.pool(x).flatten(1))


# =====================================================================================================
# pool-mixes-channels: flagged
# =====================================================================================================
class ChannelMaxPoolNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = ChannelMaxPool()
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(self.pool(F.relu(self.conv(x))).flatten(1))


class RolledPoolResidualNet(nn.Module):
    """Custom forward: functional pool residual plus a hand-written pool that shifts the channels."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = RolledAvgPool()
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        x = F.relu(self.conv(x))
        x = self.pool(x) + F.max_pool2d(x, 2)
        return self.fc(x.flatten(1))


class MaxPool3dOn4dNet(nn.Module):
    """nn.MaxPool3d on a 4-d (N, C, H, W) map treats it as one unbatched (C, D, H, W) volume: it pools
    over the batch-as-channels and the channels-as-depth."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool3d(2)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(self.pool(F.relu(self.conv(x))).flatten(1))


class CollapsePoolNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = ChannelCollapsePool()
        self.conv2 = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        x = self.conv2(self.pool(F.relu(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


# =====================================================================================================
# redundant-bias-before-bn: flagged
# =====================================================================================================
class ConvBNSeq(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        )
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


class ConvPoolBN(nn.Module):
    """conv -> max pool -> BN: the pool keeps the per-channel constant."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.pool(self.conv(x)))).flatten(1))


class LinearBN1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(8, 32)
        self.bn1 = nn.BatchNorm1d(32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 1).flatten(1)
        return self.fc2(F.relu(self.bn1(self.fc1(x))))


class ResidualBlockBiased(nn.Module):
    """A ResNet basic block whose three convs all keep their bias before a BN."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.shortcut = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))
        return self.fc(out.mean(dim=(2, 3)))


class PreAddBN(nn.Module):
    """Residual add *before* the BN: both conv biases reach bn only through the add."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.conv_a = nn.Conv2d(8, 8, 3, padding=1)
        self.conv_b = nn.Conv2d(8, 8, 1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        return self.fc(F.relu(self.bn(self.conv_a(x) + self.conv_b(x))).mean(dim=(2, 3)))


class InceptionCatBN(nn.Module):
    """Two biased branches concatenated along the channels, then a BN (and an InstanceNorm branch)."""

    def __init__(self):
        super().__init__()
        self.branch1 = nn.Conv2d(3, 4, 1)
        self.branch3 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv_in = nn.Conv2d(8, 8, 3, padding=1)
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.bn(torch.cat([self.branch1(x), self.branch3(x)], dim=1)))
        x = F.relu(self.inorm(self.conv_in(x)))
        return self.fc(x.mean(dim=(2, 3)))


class FunctionalConvBN(nn.Module):
    """Everything functional in a custom forward: F.conv2d with a bias, then F.batch_norm(training=self.training)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.2)
        self.conv_bias = nn.Parameter(torch.randn(8) * 0.1)
        self.gamma = nn.Parameter(torch.ones(8))
        self.beta = nn.Parameter(torch.zeros(8))
        self.register_buffer("running_mean", torch.zeros(8))
        self.register_buffer("running_var", torch.ones(8))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.conv2d(x, self.weight, self.conv_bias, padding=1)
        x = F.batch_norm(x, self.running_mean, self.running_var, self.gamma, self.beta,
                         training=self.training, momentum=0.1, eps=1e-5)
        return self.fc(F.relu(x).mean(dim=(2, 3)))


class FunctionalConvBNStats(nn.Module):
    """Same as FunctionalConvBN, with the statistics buffers named without 'mean'/'var'."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.2)
        self.conv_bias = nn.Parameter(torch.randn(8) * 0.1)
        self.gamma = nn.Parameter(torch.ones(8))
        self.beta = nn.Parameter(torch.zeros(8))
        self.register_buffer("stat_mu", torch.zeros(8))
        self.register_buffer("stat_sigma2", torch.ones(8))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.conv2d(x, self.weight, self.conv_bias, padding=1)
        x = F.batch_norm(x, self.stat_mu, self.stat_sigma2, self.gamma, self.beta,
                         training=self.training, momentum=0.1, eps=1e-5)
        return self.fc(F.relu(x).mean(dim=(2, 3)))


class ConvBNFunctionalBlock(nn.Module):
    """A leaf block (parameters only, no child modules) whose forward is F.conv2d(+bias) -> F.batch_norm."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, 3, 3) * 0.2)
        self.conv_bias = nn.Parameter(torch.randn(c_out) * 0.1)
        self.gamma = nn.Parameter(torch.ones(c_out))
        self.beta = nn.Parameter(torch.zeros(c_out))
        self.register_buffer("stat_mu", torch.zeros(c_out))
        self.register_buffer("stat_sigma2", torch.ones(c_out))

    def forward(self, x):
        x = F.conv2d(x, self.weight, self.conv_bias, padding=1)
        x = F.batch_norm(x, self.stat_mu, self.stat_sigma2, self.gamma, self.beta, training=self.training)
        return F.relu(x)


class FunctionalBlockNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = ConvBNFunctionalBlock(3, 8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.block(x).mean(dim=(2, 3)))


class HandConvBN(nn.Module):
    """A hand-written biased conv followed by a stock BN."""

    def __init__(self):
        super().__init__()
        self.conv = MyConv(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


# =====================================================================================================
# redundant-bias-before-bn: look-alikes (clean)
# =====================================================================================================
class ConvReluBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.bn(F.relu(self.conv(x))).mean(dim=(2, 3)))


class ConvDropoutBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Dropout(0.5), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


class ConvGroupNormLayerNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = nn.GroupNorm(2, 8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.ln = nn.LayerNorm([8, 16, 16])
        self.fc1 = nn.Linear(8, 16)
        self.ln1 = nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.gn(self.conv1(x)))
        x = F.relu(self.ln(self.conv2(x)))
        return self.fc2(F.relu(self.ln1(self.fc1(x.mean(dim=(2, 3))))))


class NoBiasConvBN(nn.Module):
    """bias=False before every BN, and a BN -> conv (with bias) ordering after it."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.conv2(self.bn1(self.conv1(x)))
        return self.fc(F.relu(x).mean(dim=(2, 3)))


class BiasEscapesBN(nn.Module):
    """The biased conv output goes to the BN *and* around it (out = bn(y) + y): the bias matters."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = self.conv(x)
        return self.fc(F.relu(self.bn(y) + y).mean(dim=(2, 3)))


class FunctionalFrozenBN(nn.Module):
    """F.conv2d with a bias followed by a *frozen* F.batch_norm (training=False, running stats):
    the normalisation uses fixed statistics, so the bias is not cancelled."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.2)
        self.conv_bias = nn.Parameter(torch.randn(8) * 0.1)
        self.register_buffer("frozen_mu", torch.zeros(8))
        self.register_buffer("frozen_sigma2", torch.ones(8))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.conv2d(x, self.weight, self.conv_bias, padding=1)
        x = F.batch_norm(x, self.frozen_mu, self.frozen_sigma2, training=False)
        return self.fc(F.relu(x).mean(dim=(2, 3)))


# =====================================================================================================
# feature-size-mismatch: flagged
# =====================================================================================================
class SeedConvNet(nn.Module):
    """The seed post's ConvNet: the first pool has stride 5, so 28 -> 6 -> 3, not 28 -> 14 -> 7."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.layer1 = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=5, stride=1, padding=2), nn.ReLU(), nn.MaxPool2d(kernel_size=2, stride=5))
        self.layer2 = nn.Sequential(
            nn.Conv2d(32, 64, kernel_size=5, stride=1, padding=2), nn.ReLU(), nn.MaxPool2d(kernel_size=2, stride=2))
        self.drop_out = nn.Dropout()
        self.fc1 = nn.Linear(7 * 7 * 64, 1000)
        self.fc2 = nn.Linear(1000, num_classes)

    def forward(self, x):
        out = self.layer1(x)
        out = self.layer2(out)
        out = out.reshape(out.size(0), -1)
        out = self.drop_out(out)
        out = self.fc1(out)
        return self.fc2(out)


class FixedSeedConvNet(SeedConvNet):
    """The seed ConvNet with the first pool's stride fixed to 2: 28 -> 14 -> 7, 7*7*64 = 3136 features."""

    def __init__(self, num_classes=10):
        super().__init__(num_classes)
        self.layer1[2] = nn.MaxPool2d(kernel_size=2, stride=2)


class FunctionalPoolMismatch(nn.Module):
    """Custom forward with a functional pool of stride 4 where 2 was meant: 16 -> 4, Linear wants 8x8."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv(x)), kernel_size=2, stride=4)
        return self.fc(x.flatten(1))


class HandConvResidualMismatch(nn.Module):
    """Hand-written stride-2 conv, a residual add, and a pool: 16 -> 8 -> 4, but fc assumes 16 -> 8."""

    def __init__(self):
        super().__init__()
        self.conv1 = MyConv(3, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(8 * 8 * 8, 10))

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = x + F.relu(self.conv2(x))
        return self.classifier(self.pool(x).flatten(1))


class FunctionalLinearMismatch(nn.Module):
    """A classifier written with F.linear on the model's own weight: no Linear module to name."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.w = nn.Parameter(torch.randn(10, 8 * 4 * 4) * 0.01)
        self.b = nn.Parameter(torch.zeros(10))

    def forward(self, x):
        x = self.pool(F.relu(self.conv(x)))
        return F.linear(x.flatten(1), self.w, self.b)


class ViewFoldsBatch(nn.Module):
    """x.view(-1, 256) on 8*8*8 = 512 features per sample: 4 samples become 8 rows, silently."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(256, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv(x)))
        x = x.view(-1, 256)
        return self.fc(x)


class ViewDoesNotDivide(nn.Module):
    """x.view(-1, 512) where the map is 8x6x6 = 288 per sample: 4*288 is not a multiple of 512."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)  # 14x14
        self.pool = nn.MaxPool2d(2, ceil_mode=False)  # 7x7
        self.pool2 = nn.MaxPool2d(2, stride=1)  # 6x6
        self.fc = nn.Linear(512, 10)

    def forward(self, x):
        x = self.pool2(self.pool(F.relu(self.conv(x))))
        return self.fc(x.view(-1, 512))


# =====================================================================================================
# feature-size-mismatch: look-alikes (clean)
# =====================================================================================================
class AdaptiveHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, stride=3)
        self.gap = nn.AdaptiveAvgPool2d((2, 2))
        self.fc = nn.Linear(8 * 2 * 2, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.gap(F.relu(self.conv(x))), 1))


class ViewKeepsBatch(nn.Module):
    """x.view(-1, n) with n exactly the per-sample feature count, and x.view(x.size(0), -1): both keep the batch."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(8 * 8 * 8, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv(x)))
        x = x.view(-1, 8 * 8 * 8)
        x = F.relu(self.fc1(x)).view(x.size(0), -1)
        return self.fc2(x)


class PatchModel(nn.Module):
    """Splits each image into 4 patches folded into the batch (N*4 rows), encodes each patch, and
    restores the batch before the classifier: the model's output keeps batch size N."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(4 * 8, 10)

    def forward(self, x):
        n, c, h, w = x.shape
        patches = x.reshape(n, c, 2, h // 2, 2, w // 2).permute(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(n * 4, c, h // 2, w // 2)
        feats = F.relu(self.encoder(patches)).mean(dim=(2, 3))  # (N*4, 8)
        return self.fc(feats.reshape(n, 4 * 8))


# =====================================================================================================
# Test helpers
# =====================================================================================================
from checking import check_unmodified, rule_pairs  # noqa: E402,F401  (re-exported for the tests)


def line_of(cls, snippet):
    """``models_conv.py:N`` for the first line of ``cls``'s source that contains ``snippet``."""
    import inspect

    lines, start = inspect.getsourcelines(cls)
    for offset, text in enumerate(lines):
        if snippet in text:
            return f"models_conv.py:{start + offset}"
    raise AssertionError(f"{snippet!r} not in {cls.__name__}")


class HardCodedBatchView(nn.Module):
    """x.view(4, -1): right for the batch of 4 it is checked with, a (4, 72) matrix for one sample."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)  # 7x7 for 16x16
        self.fc = nn.Linear(8 * 7 * 7, 10)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).view(4, -1))


class HardCodedBatchReshapeRaises(HardCodedBatchView):
    """x.reshape(4, 392): one sample has 392 elements, not 4*392, so the reshape itself raises."""

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).reshape(4, 392))


class _HardCodedHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8 * 7 * 7, 10)

    def forward(self, x):
        return self.fc(x.view((4, -1)))


class HardCodedBatchInHead(nn.Module):
    """The batch size written as a tuple, in a head module of the student's own."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.head = _HardCodedHead()

    def forward(self, x):
        return self.head(F.relu(self.conv(x)))


class RefusesOneSample(HardCodedBatchView):
    """Refuses a batch of one for its own reasons, and keeps the batch with x.size(0): nothing is
    hard-coded."""

    def forward(self, x):
        if x.size(0) == 1:
            raise ValueError("this model needs a batch of at least two samples")
        return self.fc(F.relu(self.conv(x)).view(x.size(0), -1))
