"""Hand-written BatchNorms written in the many ways students write them (found by a review that tried to
break the BN rules): each flagged model has a look-alike that must stay clean."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnncheck


class BN(nn.Module):
    """A textbook per-channel BatchNorm with PyTorch's conventions; subclasses wrap or vary it."""

    def __init__(self, c: int = 8, momentum: float | None = 0.1) -> None:
        super().__init__()
        self.eps, self.momentum = 1e-5, momentum
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, c))
        self.bias = nn.Parameter(torch.linspace(-0.3, 0.3, c))
        self.register_buffer("running_mean", torch.zeros(c))
        self.register_buffer("running_var", torch.ones(c))

    def norm(self, x: torch.Tensor, m: float | None = None, training: bool | None = None,
             biased_update: bool = False) -> torch.Tensor:
        m = self.momentum if m is None else m
        training = self.training if training is None else training
        if training:
            mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
            with torch.no_grad():
                self.running_mean.lerp_(mean, m)
                self.running_var.lerp_(var if biased_update else x.var((0, 2, 3)), m)
        else:
            mean, var = self.running_mean, self.running_var
        v = lambda t: t.view(1, -1, 1, 1)  # noqa: E731
        return (x - v(mean)) / torch.sqrt(v(var) + self.eps) * v(self.weight) + v(self.bias)

    def call(self, x: torch.Tensor, *, mean=None, var=None, weight=None, bias=None, momentum=None,
             training=None) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean if mean is None else mean,
                            self.running_var if var is None else var,
                            self.weight if weight is None else weight, self.bias if bias is None else bias,
                            self.training if training is None else training,
                            self.momentum if momentum is None else momentum, self.eps)


class Net(nn.Module):
    def __init__(self, bn: nn.Module, rank: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = bn
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(self.conv(x)))


def findings(layer: nn.Module) -> set[tuple[str, str]]:
    torch.manual_seed(0)
    model = Net(layer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = cnncheck.check_model(model, (4, 3, 8, 8))
    assert report.crashes == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    return {(f.rule, f.module) for f in report.findings}


# -- an activation or another op in the same forward -------------------------------------------------
class LeakyAfter(BN):
    """Correct: BN then LeakyReLU(0.2), the DCGAN block, in one module."""

    def forward(self, x):
        return F.leaky_relu(self.norm(x), 0.2)


class TanhGeluAfter(BN):
    """Correct: BN then GELU's tanh approximation."""

    def forward(self, x):
        return F.gelu(self.norm(x), approximate="tanh")


class PoolAfter(BN):
    """Correct: BN then a max-pool, written out; a block, not a BatchNorm layer (its output is pooled)."""

    def forward(self, x):
        return F.max_pool2d(self.norm(x), 2)


class DropoutBefore(BN):
    """Correct: a mode-aware dropout, then BN written out."""

    def forward(self, x):
        return self.norm(F.dropout(x, 0.2, training=self.training))


class LeakyAfterIgnoringMode(BN):
    """Wrong (bn-eval-behaviour): the same fused block, always with batch statistics."""

    def forward(self, x):
        return F.leaky_relu(self.norm(x, training=True), 0.2)


@pytest.mark.parametrize("layer", [LeakyAfter, TanhGeluAfter, PoolAfter, DropoutBefore])
def test_hand_written_bn_with_another_op_in_its_forward_is_correct(layer) -> None:
    """Were bn-train-behaviour and bn-eval-behaviour: LeakyReLU was accepted only at its default slope,
    exact GELU only; a pooled output was compared with F.batch_norm ("worst at []: expected nan")."""
    assert findings(layer()) == set()


def test_fused_activation_does_not_hide_a_mode_bug() -> None:
    assert findings(LeakyAfterIgnoringMode()) == {("bn-eval-behaviour", "bn")}


# -- channels last ------------------------------------------------------------------------------------
class ChannelsLastFunctional(BN):
    """Correct: F.batch_norm on (N*H*W, C) rows; the output is a non-contiguous permuted view."""

    def forward(self, x):
        n, c, h, w = x.shape
        y = self.call(x.permute(0, 2, 3, 1).reshape(-1, c))
        return y.reshape(n, h, w, c).permute(0, 3, 1, 2)


class ChannelsLastIgnoringMode(BN):
    """Wrong (bn-eval-behaviour): per-channel statistics over (N*H*W, C) rows, in eval mode too."""

    def forward(self, x):
        n, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(-1, c)
        if self.training:
            with torch.no_grad():
                self.running_mean.lerp_(rows.mean(0), self.momentum)
                self.running_var.lerp_(rows.var(0), self.momentum)
        y = (rows - rows.mean(0)) / torch.sqrt(rows.var(0, unbiased=False) + self.eps) * self.weight + self.bias
        return y.reshape(n, h, w, c).permute(0, 3, 1, 2)


def test_channels_last_bn() -> None:
    """Were three rule crashes: the statistics-dims probe wrote into a view of a non-contiguous output."""
    assert findings(ChannelsLastFunctional()) == set()
    assert findings(ChannelsLastIgnoringMode()) == {("bn-eval-behaviour", "bn")}


# -- names of its own for eps and the batch counter ---------------------------------------------------
class EpsilonNamedLikeHF(BN):
    """Correct: eps=1e-3 kept as ``variance_epsilon`` (Hugging Face's name)."""

    def __init__(self) -> None:
        super().__init__()
        del self.eps
        self.variance_epsilon = 1e-3

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                            self.momentum, self.variance_epsilon)


class CumulativeWithOwnCounter(BN):
    """Correct: momentum=None, a cumulative average, with its batch counter named ``steps``."""

    def __init__(self, biased_update: bool = False) -> None:
        super().__init__(momentum=None)
        self.biased_update = biased_update
        self.register_buffer("steps", torch.tensor(0))

    def forward(self, x):
        if self.training:
            self.steps += 1
            return self.norm(x, 1.0 / float(self.steps), biased_update=self.biased_update)
        return self.norm(x)


def test_eps_and_batch_counter_under_names_of_their_own() -> None:
    """Were bn-train-behaviour and bn-eval-behaviour (eps taken as 1e-5), and bn-train-behaviour (the
    cumulative weight was taken as 1/6, from a num_batches_tracked the layer does not have)."""
    assert findings(EpsilonNamedLikeHF()) == set()
    assert findings(CumulativeWithOwnCounter()) == set()
    assert findings(CumulativeWithOwnCounter(biased_update=True)) == {("bn-train-behaviour", "bn")}


# -- what a block hands to F.batch_norm ---------------------------------------------------------------
class ReluThenFunctional(BN):
    """Correct: ReLU, then F.batch_norm with its own statistics (a block around the stock op)."""

    def forward(self, x):
        return self.call(F.relu(x))


class SwappedBuffers(BN):
    def forward(self, x):
        return self.call(F.relu(x), mean=self.running_var, var=self.running_mean)


class SwappedAffine(BN):
    def forward(self, x):
        return self.call(F.relu(x), weight=self.bias, bias=self.weight)


class OneMinusMomentum(BN):
    def forward(self, x):
        return self.call(F.relu(x), momentum=1 - self.momentum)


class NormalisedTwice(BN):
    def forward(self, x):
        return self.call(self.call(x))


class TorchBatchNormSwapped(BN):
    """torch.batch_norm, whose arguments come in another order (weight, bias, running_mean, ...)."""

    def forward(self, x):
        return torch.batch_norm(F.relu(x), self.weight, self.bias, self.running_var, self.running_mean,
                                self.training, self.momentum, self.eps, False)


@pytest.mark.parametrize("layer", [SwappedBuffers, SwappedAffine, OneMinusMomentum, NormalisedTwice,
                                   TorchBatchNormSwapped])
def test_what_a_block_hands_to_f_batch_norm(layer) -> None:
    """Were missed: once a module is a block around F.batch_norm, only the call's ``training`` was
    checked. The same mistakes in a module that is nothing but the call were always caught."""
    assert findings(ReluThenFunctional()) == set()
    assert findings(layer()) == {("bn-train-behaviour", "bn")}


class ReluThenFunctionalNoNumFeatures(nn.Module):
    """ReLU then F.batch_norm, sized by its buffers only (no ``num_features`` attribute)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(c))
        self.beta = nn.Parameter(torch.zeros(c))
        self.register_buffer("running_mean", torch.zeros(c))
        self.register_buffer("running_var", torch.ones(c))

    def forward(self, x):
        return F.batch_norm(F.relu(x), self.running_mean, self.running_var, self.gamma, self.beta, self.training)


def test_a_block_built_for_the_wrong_channel_count_is_explained() -> None:
    """Was a CheckError with torch's "running_mean should contain 16 elements not 8": a layer without
    num_features is sized by its running statistics when its forward raises."""
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), ReluThenFunctionalNoNumFeatures(8),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2))
    report = cnncheck.check_model(model, (4, 3, 8, 8))
    assert [(f.rule, f.module, f.message) for f in report.findings] == [
        ("bn-not-per-channel", "1", "ReluThenFunctionalNoNumFeatures(8) receives 16 channels")]
    fitting = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), ReluThenFunctionalNoNumFeatures(16))
    assert cnncheck.check_model(fitting, (4, 3, 8, 8)).findings == []
