"""One small network per cnncheck rule, each with the mistake that rule explains.

``cnncheck check examples/`` shows one explained finding for each (the seed's ConvNet has
``feature-size-mismatch``'s); ``seed_convnet_fixed.py`` and the look-alikes of ``lookalikes.py`` pass.
"""

import torch
import torch.nn.functional as F
from torch import nn

import cnncheck

SHAPE = (4, 3, 16, 16)


class SwappedConv(nn.Module):
    """A hand-written conv that stores its filters as (C_in, C_out, k, k)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.weight = nn.Parameter(torch.randn(in_channels, out_channels, kernel_size, kernel_size) * 0.1)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight.transpose(0, 1), self.bias)


@cnncheck.model(input_shape=SHAPE)
class ConvFormula(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = SwappedConv(3, 8, 3)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.conv(x)).mean(dim=(2, 3)))


class ScaledMaxPool(nn.Module):
    """Pooling with a learnable scale: pooling has nothing to learn."""

    def __init__(self) -> None:
        super().__init__()
        self.kernel_size = 2
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, self.kernel_size) * self.scale


class ChannelMaxPool(nn.Module):
    """Takes the max across channels too: every output channel sees every input channel."""

    kernel_size = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.max_pool2d(x, self.kernel_size)
        return pooled.amax(dim=1, keepdim=True).expand_as(pooled)


@cnncheck.model(input_shape=SHAPE)
class PoolingMistakes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool1 = ScaledMaxPool()
        self.pool2 = ChannelMaxPool()
        self.head = nn.Linear(8 * 4 * 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool2(self.pool1(F.relu(self.conv(x)))).flatten(1))


@cnncheck.model(input_shape=SHAPE)
class BiasBeforeBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)  # bias=True, then BN cancels it
        self.bn = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


class PixelBatchNorm(nn.Module):
    """Statistics per pixel (dim 0 only) instead of per channel over (N, H, W)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=0, keepdim=True)
        var = x.var(dim=0, unbiased=False, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return x * self.weight[None, :, None, None] + self.bias[None, :, None, None]


@cnncheck.model(input_shape=SHAPE)
class PerPixelNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = PixelBatchNorm(8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


class KerasMomentumBatchNorm(nn.Module):
    """PyTorch's momentum (0.1) used in Keras' formula: the running mean follows the last batch."""

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features, self.momentum, self.eps = num_features, momentum, eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            mean = x.mean(dim=(0, 2, 3))
            var = x.var(dim=(0, 2, 3), unbiased=False)
            n = x.numel() / x.shape[1]
            with torch.no_grad():
                self.running_mean.mul_(self.momentum).add_((1 - self.momentum) * mean)
                self.running_var.mul_(self.momentum).add_((1 - self.momentum) * var * n / (n - 1))
        else:
            mean, var = self.running_mean, self.running_var
        x = (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + self.eps)
        return x * self.weight[None, :, None, None] + self.bias[None, :, None, None]


@cnncheck.model(input_shape=SHAPE)
class WrongMomentum(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = KerasMomentumBatchNorm(8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


class AlwaysBatchStatsNorm(KerasMomentumBatchNorm):
    """Correct updates, but it ignores ``self.training`` and always uses the batch's statistics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, True,
                            self.momentum, self.eps)


@cnncheck.model(input_shape=SHAPE)
class BatchStatsInEval(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = AlwaysBatchStatsNorm(8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


@cnncheck.model(input_shape=SHAPE)
class PlainListOfLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Conv2d(8, 8, 3, padding=1, bias=False)])
        self.bns = [nn.BatchNorm2d(8), nn.BatchNorm2d(8)]  # a plain list: model.eval() never reaches these
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, bn in zip(self.convs, self.bns):
            x = F.relu(bn(conv(x)))
        x = F.dropout(x, 0.2)  # training=True by default, even after model.eval()
        return self.head(x.mean(dim=(2, 3)))


@cnncheck.model(input_shape=SHAPE)
class ForgottenLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)  # built, but forward never calls it
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.head(x.mean(dim=(2, 3)))


@cnncheck.model(input_shape=SHAPE)
class SharedBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)  # one BatchNorm for two places: its running statistics mix both
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv1(x)))
        x = F.relu(self.bn(self.conv2(x)))
        return self.head(x.mean(dim=(2, 3)))


@cnncheck.model(input_shape=SHAPE)
class DetachedScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.scale = nn.Parameter(torch.ones(8, 1, 1))
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x))) * self.scale.detach()  # .detach(): scale never trains
        return self.head(x.mean(dim=(2, 3)))
