"""Hand-written BatchNorm / dropout layers and small CNNs for the BatchNorm and mode rules.

Every model takes (N, 3, 8, 8) inputs. Layers are written the way a student would write them; the
docstring of each says whether it is correct and, if not, what is wrong.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

C = 8  # channels of the layer every norm under test receives
SHAPE = (4, 3, 8, 8)


def _bcast(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(1, -1, 1, 1)


# -- hand-written BatchNorm layers -------------------------------------------------------------------
class _HandBNBase(nn.Module):
    """Parameters and buffers exactly as nn.BatchNorm2d has them (non-trivial gamma/beta)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, num_features))
        self.bias = nn.Parameter(torch.linspace(-0.3, 0.3, num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def _normalise(self, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        x_hat = (x - _bcast(mean)) / torch.sqrt(_bcast(var) + self.eps)
        return x_hat * _bcast(self.weight) + _bcast(self.bias)

    @staticmethod
    def _batch_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        unbiased = x.var(dim=(0, 2, 3), unbiased=True)
        return mean, var, unbiased


class HandBN2d(_HandBNBase):
    """Correct: PyTorch's convention, momentum=None gives the cumulative average."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            mean, var, unbiased = self._batch_stats(x)
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(m * mean)
                self.running_var.mul_(1 - m).add_(m * unbiased)
            return self._normalise(x, mean, var)
        return self._normalise(x, self.running_mean, self.running_var)


class FunctionalBN2d(_HandBNBase):
    """Correct: F.batch_norm with training=self.training."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.num_batches_tracked += 1
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            self.training, self.momentum, self.eps)


class LoggingBatchNorm2d(nn.BatchNorm2d):
    """Correct: a subclass of nn.BatchNorm2d with its own forward that defers to torch's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.last_shape = tuple(x.shape)
        return super().forward(x)


class KerasBN2d(nn.Module):
    """Correct: Keras' convention, momentum=0.9 is the weight of the old value, Keras' names."""

    def __init__(self, num_features: int, momentum: float = 0.9, eps: float = 1e-3) -> None:
        super().__init__()
        self.num_features = num_features
        self.momentum = momentum
        self.eps = eps
        self.gamma = nn.Parameter(torch.linspace(0.5, 1.5, num_features))
        self.beta = nn.Parameter(torch.linspace(-0.3, 0.3, num_features))
        self.register_buffer("moving_mean", torch.zeros(num_features))
        self.register_buffer("moving_variance", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            mean = x.mean(dim=(0, 2, 3))
            var = x.var(dim=(0, 2, 3), unbiased=False)
            with torch.no_grad():
                unbiased = x.var(dim=(0, 2, 3), unbiased=True)
                self.moving_mean.copy_(self.momentum * self.moving_mean + (1 - self.momentum) * mean)
                self.moving_variance.copy_(self.momentum * self.moving_variance + (1 - self.momentum) * unbiased)
        else:
            mean, var = self.moving_mean, self.moving_variance
        x_hat = (x - _bcast(mean)) / torch.sqrt(_bcast(var) + self._epsilon())
        return x_hat * _bcast(self.gamma) + _bcast(self.beta)

    def _epsilon(self) -> float:
        return self.eps


class KerasEpsilonBN2d(KerasBN2d):
    """Correct: the same Keras port, with Keras' attribute name ``epsilon`` (default 1e-3)."""

    def __init__(self, num_features: int, momentum: float = 0.9, epsilon: float = 1e-3) -> None:
        super().__init__(num_features, momentum, epsilon)
        self.epsilon = self.__dict__.pop("eps")

    def _epsilon(self) -> float:
        return self.epsilon


def pretrained_frozen_bn(num_features: int = C) -> FrozenBatchNorm2d:
    """Correct: torchvision's FrozenBatchNorm2d holding non-trivial (as if loaded) statistics."""
    bn = FrozenBatchNorm2d(num_features)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(num_features, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(num_features, generator=g) * 0.2)
        bn.running_mean.copy_(torch.randn(num_features, generator=g) * 0.3)
        bn.running_var.copy_(torch.rand(num_features, generator=g) + 0.5)
    return bn


class PerPixelBN2d(nn.Module):
    """Wrong (per channel): statistics over the batch only, one per (C, H, W) position."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=0, keepdim=True)
        var = x.var(dim=0, unbiased=False, keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps) * _bcast(self.weight) + _bcast(self.bias)


class WholeTensorBN2d(PerPixelBN2d):
    """Wrong (per channel): one mean and variance for the whole tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = x.mean(), x.var(unbiased=False)
        return (x - mean) / torch.sqrt(var + self.eps) * _bcast(self.weight) + _bcast(self.bias)


class PixelAffineBN2d(nn.Module):
    """Wrong (per channel): per-channel statistics, but gamma/beta shaped (C, H, W)."""

    def __init__(self, num_features: int, height: int, width: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, 0.1
        self.weight = nn.Parameter(torch.ones(num_features, height, width))
        self.bias = nn.Parameter(torch.zeros(num_features, height, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


class UnbiasedNormBN2d(_HandBNBase):
    """Wrong (train): normalises with the unbiased variance."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._normalise(x, self.running_mean, self.running_var)
        mean, _, unbiased = self._batch_stats(x)
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.mul_(0.9).add_(0.1 * mean)
            self.running_var.mul_(0.9).add_(0.1 * unbiased)
        return self._normalise(x, mean, unbiased)


class KerasMixupBN2d(_HandBNBase):
    """Wrong (train): PyTorch's momentum 0.1 used in Keras' formula: running = 0.1*old + 0.9*batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._normalise(x, self.running_mean, self.running_var)
        mean, var, unbiased = self._batch_stats(x)
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.copy_(self.momentum * self.running_mean + (1 - self.momentum) * mean)
            self.running_var.copy_(self.momentum * self.running_var + (1 - self.momentum) * unbiased)
        return self._normalise(x, mean, var)


class BiasedRunningVarBN2d(_HandBNBase):
    """Wrong (train): running_var updated with the biased batch variance."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._normalise(x, self.running_mean, self.running_var)
        mean, var, _ = self._batch_stats(x)
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
            self.running_var.mul_(1 - self.momentum).add_(self.momentum * var)
        return self._normalise(x, mean, var)


class RunningStatsInTrainBN2d(_HandBNBase):
    """Wrong (train): normalises with the running statistics in train mode too (and updates them)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._normalise(x, self.running_mean.clone(), self.running_var.clone())
        if self.training:
            mean, _, unbiased = self._batch_stats(x)
            with torch.no_grad():
                self.num_batches_tracked += 1
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * unbiased)
        return y


class StaleStatsBN2d(_HandBNBase):
    """Wrong (train): uses batch statistics in train mode but never updates the running ones."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            mean, var, _ = self._batch_stats(x)
            return self._normalise(x, mean, var)
        return self._normalise(x, self.running_mean, self.running_var)


class CumulativeIgnoredBN2d(_HandBNBase):
    """Wrong (train): momentum=None should be a cumulative average; this falls back to 0.1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._normalise(x, self.running_mean, self.running_var)
        mean, var, unbiased = self._batch_stats(x)
        m = self.momentum if self.momentum is not None else 0.1
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.mul_(1 - m).add_(m * mean)
            self.running_var.mul_(1 - m).add_(m * unbiased)
        return self._normalise(x, mean, var)


class NoCounterBN2d(_HandBNBase):
    """Wrong (train): correct statistics but num_batches_tracked is never incremented."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._normalise(x, self.running_mean, self.running_var)
        mean, var, unbiased = self._batch_stats(x)
        with torch.no_grad():
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
            self.running_var.mul_(1 - self.momentum).add_(self.momentum * unbiased)
        return self._normalise(x, mean, var)


class IgnoresTrainingBN2d(_HandBNBase):
    """Wrong (eval): batch statistics and buffer updates whatever self.training says."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, var, unbiased = self._batch_stats(x)
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
            self.running_var.mul_(1 - self.momentum).add_(self.momentum * unbiased)
        return self._normalise(x, mean, var)


class EvalUpdatesBN2d(_HandBNBase):
    """Wrong (eval): normalises correctly in both modes, but updates the running stats in eval too."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, var, unbiased = self._batch_stats(x)
        y = self._normalise(x, mean, var) if self.training else self._normalise(x, self.running_mean, self.running_var)
        with torch.no_grad():
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
            self.running_var.mul_(1 - self.momentum).add_(self.momentum * unbiased)
            if self.training:
                self.num_batches_tracked += 1
        return y


class NoBuffersBN2d(nn.Module):
    """Wrong (eval): no running statistics at all, batch statistics in both modes."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps) * _bcast(self.weight) + _bcast(self.bias)


class Standardize(nn.Module):
    """Wrong (eval): a BN in disguise (no BN attributes), batch statistics in both modes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        return (x - mean) / (x.std(dim=(0, 2, 3), keepdim=True) + 1e-5)


# -- models around one norm layer -----------------------------------------------------------------
class Plain(nn.Module):
    """conv -> norm -> relu -> global pool -> linear. The norm is ``bn``."""

    def __init__(self, bn: nn.Module, conv_out: int = C) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, conv_out, 3, padding=1, bias=False)
        self.bn = bn
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(conv_out, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class ResBlock(nn.Module):
    def __init__(self, bn: nn.Module, channels: int = C) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn(self.conv(x)))


class Residual(nn.Module):
    """stem conv -> residual block (conv -> norm, added to its input) -> head. The norm is ``block.bn``."""

    def __init__(self, bn: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, C, 3, padding=1)
        self.block = ResBlock(bn)
        self.fc = nn.Linear(C, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(F.relu(self.stem(x)))
        return self.fc(x.mean(dim=(2, 3)))


class FlattenBN1d(nn.Module):
    """Warning (per channel): BatchNorm1d over the flattened 4x8x8 conv feature map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm1d(4 * 8 * 8)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x))
        x = x.view(x.size(0), -1)
        return self.fc(self.bn(x))


def flatten_bn1d_sequential() -> nn.Sequential:
    """Warning (per channel): the same in nn.Sequential, through nn.Flatten."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(),
        nn.BatchNorm1d(4 * 8 * 8), nn.Linear(4 * 8 * 8, 10),
    )


class PooledBN1d(nn.Module):
    """Correct: BatchNorm1d after global pooling (one feature per channel) and after a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, C, 3, padding=1, bias=False)
        self.bn2d = nn.BatchNorm2d(C)
        self.bn = nn.BatchNorm1d(C)
        self.fc1 = nn.Linear(C, 16, bias=False)
        self.bn_fc = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn2d(self.conv(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        x = self.bn(x)
        return self.fc2(F.relu(self.bn_fc(self.fc1(x))))


class BatchCentering(nn.Module):
    """Wrong (eval): forward subtracts the batch mean itself: eval output depends on the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, C, 3, padding=1)
        self.fc = nn.Linear(C, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = x - x.mean(dim=0, keepdim=True)
        return self.fc(F.relu(x).mean(dim=(2, 3)))


class InstanceNormNet(nn.Module):
    """Correct: per-sample normalisations (instance norm, group norm) never mix samples."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, C, 3, padding=1, bias=False)
        self.inorm = nn.InstanceNorm2d(C, affine=True)
        self.conv2 = nn.Conv2d(C, C, 3, padding=1, bias=False)
        self.gnorm = nn.GroupNorm(2, C)
        self.fc = nn.Linear(C, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.inorm(self.conv1(x)))
        x = F.relu(x + self.gnorm(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


class BNList(nn.Module):
    """Correct: two conv/BN stages with the BNs in an nn.ModuleList, residual add between them."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(3, C, 3, padding=1, bias=False),
                                    nn.Conv2d(C, C, 3, padding=1, bias=False)])
        self.bns = nn.ModuleList([nn.BatchNorm2d(C), nn.BatchNorm2d(C)])
        self.fc = nn.Linear(C, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bns[0](self.convs[0](x)))
        x = F.relu(x + self.bns[1](self.convs[1](x)))
        return self.fc(x.mean(dim=(2, 3)))


# -- mode propagation ------------------------------------------------------------------------------
class PlainListBN(nn.Module):
    """Wrong (mode): the BNs live in a plain Python list; model.eval() never reaches them."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(3, C, 3, padding=1, bias=False),
                                    nn.Conv2d(C, C, 3, padding=1, bias=False)])
        self.bns = [nn.BatchNorm2d(C), nn.BatchNorm2d(C)]
        self.fc = nn.Linear(C, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bns[0](self.convs[0](x)))
        x = F.relu(x + self.bns[1](self.convs[1](x)))
        return self.fc(x.mean(dim=(2, 3)))


class PlainDictDropout(nn.Module):
    """Wrong (mode): dropout and BN in a plain dict."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, C, 3, padding=1, bias=False)
        self.layers = {"norm": nn.BatchNorm2d(C), "drop": nn.Dropout(0.5)}
        self.fc = nn.Linear(C, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.layers["norm"](self.conv(x)))
        return self.fc(self.layers["drop"](x.mean(dim=(2, 3))))


class ModuleDictDropout(nn.Module):
    """Correct: the same in an nn.ModuleDict."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, C, 3, padding=1, bias=False)
        self.layers = nn.ModuleDict({"norm": nn.BatchNorm2d(C), "drop": nn.Dropout(0.5)})
        self.fc = nn.Linear(C, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.layers["norm"](self.conv(x)))
        return self.fc(self.layers["drop"](x.mean(dim=(2, 3))))


class _ConvBNDrop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C), nn.ReLU())
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(C, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.fc(self.drop(x.mean(dim=(2, 3))))


class TrainNoSuper(_ConvBNDrop):
    """Wrong (mode): train() overridden without super().train(mode)."""

    def train(self, mode: bool = True) -> "TrainNoSuper":  # TRAIN-NO-SUPER
        self.training = mode
        return self


class TrainWithSuper(_ConvBNDrop):
    """Correct: train() overridden, calls super and returns its result."""

    def train(self, mode: bool = True) -> "TrainWithSuper":
        self.mode_switches = getattr(self, "mode_switches", 0) + 1
        return super().train(mode)


class BlockNoSuper(ResBlock):
    def __init__(self) -> None:
        super().__init__(nn.BatchNorm2d(C))

    def train(self, mode: bool = True) -> "BlockNoSuper":  # BLOCK-NO-SUPER
        self.training = mode
        return self


class ResidualBlockNoSuper(nn.Module):
    """Wrong (mode): a residual block's train() drops the mode; block.bn never leaves train mode."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, C, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(C)
        self.block = BlockNoSuper()
        self.fc = nn.Linear(C, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(F.relu(self.stem_bn(self.stem(x))))
        return self.fc(x.mean(dim=(2, 3)))


class FrozenByEvalNoSuper(_ConvBNDrop):
    """Wrong (mode): BN set to eval in __init__ and train() does not pass the mode on, so model.train()
    never puts it back into train mode."""

    def __init__(self) -> None:
        super().__init__()
        self.features[1].eval()

    def train(self, mode: bool = True) -> "FrozenByEvalNoSuper":  # FROZEN-NO-SUPER
        self.training = mode
        return self


class HardcodedBNBlock(nn.Module):
    """Wrong (mode): F.batch_norm(..., training=True) hard-coded in a block's forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(C, C, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y = F.batch_norm(y, self.bn.running_mean, self.bn.running_var, self.bn.weight, self.bn.bias, training=True)  # HARDCODED-BN
        return F.relu(x + y)


class ModeAwareBNBlock(HardcodedBNBlock):
    """Correct: the same with training=self.training."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y = F.batch_norm(y, self.bn.running_mean, self.bn.running_var, self.bn.weight, self.bn.bias,
                         training=self.training, momentum=self.bn.momentum, eps=self.bn.eps)
        return F.relu(x + y)


class WithBlock(nn.Module):
    """stem -> ``block`` (residual) -> head."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, C, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(C)
        self.block = block
        self.fc = nn.Linear(C, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(F.relu(self.stem_bn(self.stem(x))))
        return self.fc(x.mean(dim=(2, 3)))


class FunctionalDropoutNet(nn.Module):
    """Wrong (mode): F.dropout(x, 0.5) in forward (training defaults to True)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, C, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(C)
        self.fc = nn.Linear(C, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        x = F.dropout(x, 0.5)  # FUNCTIONAL-DROPOUT
        return self.fc(x)


class ModeAwareDropoutNet(FunctionalDropoutNet):
    """Correct: F.dropout(x, 0.5, training=self.training)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        x = F.dropout(x, 0.5, training=self.training)
        return self.fc(x)


class RandomMaskNet(FunctionalDropoutNet):
    """Wrong (mode): a dropout mask drawn with torch.rand_like in forward, whatever the mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        mask = (torch.rand_like(x) > 0.5).float()  # RANDOM-MASK
        return self.fc(x * mask * 2.0)


class HandDropout(nn.Module):
    """Wrong (mode): a hand-written dropout that drops in eval mode too."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = (torch.rand_like(x) > self.p).to(x.dtype)
        return x * mask / (1 - self.p)


class ModeAwareHandDropout(HandDropout):
    """Correct: the same, identity unless self.training."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return super().forward(x)


class WithDropout(nn.Module):
    """conv -> BN -> relu -> pool -> ``drop`` -> linear."""

    def __init__(self, drop: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, C, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(C)
        self.drop = drop
        self.fc = nn.Linear(C, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        return self.fc(self.drop(x))


class ReluInPlainList(nn.Module):
    """Correct: a plain list holds only parameter-free, mode-free layers (ReLU), never BN or dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, C, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(C)
        self.acts = [nn.ReLU(), nn.Identity()]
        self.fc = nn.Linear(C, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.acts[1](self.acts[0](self.bn(self.conv(x))))
        return self.fc(x.mean(dim=(2, 3)))


class SequentialResidual(nn.Module):
    """Correct: nn.Sequential blocks with BN and Dropout2d, residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(C, C, 3, padding=1, bias=False), nn.BatchNorm2d(C), nn.Dropout2d(0.2))
        self.fc = nn.Linear(C, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.body(x))
        return self.fc(x.mean(dim=(2, 3)))


def marker_line(marker: str) -> int:
    """The line number in this file of the line ending in ``# <marker>``."""
    with open(__file__) as f:
        for number, line in enumerate(f, start=1):
            if line.rstrip().endswith(f"# {marker}"):
                return number
    raise LookupError(marker)
