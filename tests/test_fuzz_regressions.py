"""cnncheck bugs found by the architecture fuzz (tests/test_fuzz.py), each as the minimal architecture
that shows it, with the findings that are right. While a bug is open, the fuzz generator steers clear
of it (see the comments in tests/fuzz_models.py that point here) so that it can keep finding new ones."""

from __future__ import annotations

import models_bn as MB
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnncheck


def pairs(model: nn.Module, example_input) -> set[tuple[str, str]]:
    report = cnncheck.check_model(model, example_input)
    assert report.crashes == []
    return {(f.rule, f.module) for f in report.findings}


class FunctionalConvBNBlock(nn.Module):
    """A leaf block (no child modules) whose forward is F.conv2d -> F.batch_norm -> relu, with the
    statistics in buffers under their usual names."""

    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.2)
        self.conv_bias = nn.Parameter(torch.randn(8) * 0.1) if bias else None
        self.gamma = nn.Parameter(torch.ones(8))
        self.beta = nn.Parameter(torch.zeros(8))
        self.register_buffer("running_mean", torch.zeros(8))
        self.register_buffer("running_var", torch.ones(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, self.conv_bias, padding=1)
        x = F.batch_norm(x, self.running_mean, self.running_var, self.gamma, self.beta, training=self.training)
        return F.relu(x)


@pytest.mark.parametrize(("bias", "expected"), [
    pytest.param(False, set(), id="no-bias"),
    pytest.param(True, {("redundant-bias-before-bn", "0")}, id="bias"),
])
def test_functional_block_with_bn_buffers_is_not_a_batchnorm(bias: bool, expected: set) -> None:
    """Bug: ``layers._duck_type`` places any childless module with float buffers named *mean* and
    *var* as a BatchNorm layer, so this block becomes one atomic "BatchNorm" node. cnncheck then reports
    bn-not-per-channel on '0' (it lists the conv weight (8, 3, 3, 3) as a BN parameter that is "not one
    value per channel") and, with a bias, misses the redundant bias of its F.conv2d, because the ops
    inside an atomic node are not traced. The same block with the buffers named stat_mu/stat_sigma2
    (as tests/models_conv.py::ConvBNFunctionalBlock does) is checked correctly. (Fixed in layers.py: a
    module with more parameters than gamma and beta is no norm; see the next test for what remains.)"""
    torch.manual_seed(0)
    model = nn.Sequential(FunctionalConvBNBlock(bias), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    assert pairs(model, (4, 3, 8, 8)) == expected


class FusedBNReLU(nn.Module):
    """A fused BatchNorm + ReLU with F.batch_norm(training=self.training): correct."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.register_buffer("running_mean", torch.zeros(c))
        self.register_buffer("running_var", torch.ones(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                   training=self.training))


class BatchNormAct2d(nn.BatchNorm2d):
    """timm-style: nn.BatchNorm2d and its activation in one module: correct."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(super().forward(x))


@pytest.mark.parametrize("layer", [FusedBNReLU, BatchNormAct2d])
def test_fused_bn_and_activation_is_a_correct_bn(layer) -> None:
    """Bug (what remains of the one above): a module with BN state and no other parameters is placed as a
    BatchNorm and its whole output is compared with plain F.batch_norm, so a correct BN that applies its
    activation in the same forward (FusedBNReLU; timm's BatchNormAct2d, a subclass of nn.BatchNorm2d)
    gets bn-train-behaviour "its train-mode output differs from F.batch_norm(x, training=True ...)" and
    bn-eval-behaviour "its eval-mode output differs from F.batch_norm(x, running_mean, running_var, ...)".
    (Fixed in probes: the reference followed by a common activation is accepted.)"""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), layer(8), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 2))
    assert pairs(model, (4, 3, 8, 8)) == set()


def test_correct_hand_bn_on_small_activations() -> None:
    """Bug: ``probes.train_problems`` probes a hand-written BN with ``x * scale + offset`` (offset in
    [1, 3], whatever the scale of x) and compares it with F.batch_norm at a fixed atol of 1e-5. When
    the channels' std is small (here about 0.005, from a conv initialised with std 0.001), float32
    rounding of the offset is amplified by 1/std, and models_bn.HandBN2d, cnncheck's own correct
    reference layer, gets bn-train-behaviour "its train-mode output differs from F.batch_norm". (Fixed in
    probes.train_problems: the offset is scaled to the data's spread.)"""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    nn.init.normal_(conv.weight, std=0.001)
    model = nn.Sequential(conv, MB.HandBN2d(8))
    assert pairs(model, (4, 3, 8, 8)) == set()


def test_correct_hand_bn_after_dead_relu_channels() -> None:
    """Bug (what remains of the one above): a channel that is constant, here a dead ReLU channel (its
    conv bias is -100, so it is 0 everywhere), becomes ``0 * scale + offset`` in the train-mode probe:
    a constant whose float32 mean over 4*12*12 values is not exact. With a variance of 0 the rounding is
    amplified by 1/sqrt(eps) (about 316) in both the layer and F.batch_norm, beyond the fixed atol 1e-5,
    and models_bn.HandBN2d gets bn-train-behaviour "its train-mode output differs from F.batch_norm"
    (about 2e-5 off, on a dead channel). On the real input the layer is exact: the mean of zeros is 0."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 16, 3, padding=1)
    with torch.no_grad():
        conv.bias[:8] = -100.0
    model = nn.Sequential(conv, nn.ReLU(), MB.HandBN2d(16))
    assert pairs(model, (4, 3, 12, 12)) == set()


@pytest.mark.parametrize("size", [1, (1, 4)], ids=["1x1", "1x4"])
def test_correct_hand_bn_on_a_1x1_map(size) -> None:
    """Bug: ``probes._update_problems`` takes the batch mean over ``per_channel_dims(xp)``, which leaves
    out dims of size 1, so on a (N, C, 1, 1) map the mean has shape (C, 1, 1) and broadcasts against
    the (C,) running estimates. A correct hand-written BN after global average pooling (models_bn.HandBN2d
    here; any non-stock BN-like layer, e.g. one calling F.batch_norm) gets bn-train-behaviour
    "running_mean after one batch does not follow (1-w)*old + w*batch_mean ...: expected nan, found nan".
    (Fixed in probes._update_problems: the mean is taken over every dim but the channels.)"""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.AdaptiveAvgPool2d(size), MB.HandBN2d(8))
    assert pairs(model, (4, 3, 8, 8)) == set()


class ActThenFunctionalBN(nn.Module):
    """A BatchNorm-like layer (gamma, beta, running buffers, no children) whose forward applies an
    activation, then F.batch_norm with its own running statistics and training=self.training: correct."""

    def __init__(self, c: int, act=F.relu, training: bool | None = None) -> None:
        super().__init__()
        self.act, self.forced = act, training
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, c))
        self.bias = nn.Parameter(torch.linspace(-0.3, 0.3, c))
        self.register_buffer("running_mean", torch.zeros(c))
        self.register_buffer("running_var", torch.ones(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        training = self.training if self.forced is None else self.forced
        return F.batch_norm(self.act(x), self.running_mean, self.running_var, self.weight, self.bias,
                            training=training)


class ActThenHandBN(MB._HandBNBase):
    """As ActThenFunctionalBN, with the statistics and running estimates written out by hand; correct
    with momentum as PyTorch's weight of the new batch, wrong (bn-train-behaviour) with Keras' one."""

    def __init__(self, c: int, keras: bool = False, act=F.silu) -> None:
        super().__init__(c)
        self.keras, self.act = keras, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(x)
        if not self.training:
            return self._normalise(x, self.running_mean, self.running_var)
        mean, var, unbiased = self._batch_stats(x)
        m = 1 - self.momentum if self.keras else self.momentum
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.mul_(1 - m).add_(m * mean)
            self.running_var.mul_(1 - m).add_(m * unbiased)
        return self._normalise(x, mean, var)


class FunctionalBNThenPool(nn.Module):
    """A childless block: F.batch_norm with its own running_mean/running_var, then F.max_pool2d. Not a
    BatchNorm layer (its output is pooled), but a block around one; ``forced`` hard-codes training=True."""

    def __init__(self, c: int, forced: bool = False) -> None:
        super().__init__()
        self.forced = forced
        self.gamma = nn.Parameter(torch.ones(c))
        self.beta = nn.Parameter(torch.zeros(c))
        self.register_buffer("running_mean", torch.zeros(c))
        self.register_buffer("running_var", torch.ones(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.batch_norm(x, self.running_mean, self.running_var, self.gamma, self.beta,
                         training=True if self.forced else self.training)
        return F.max_pool2d(x, 2)


def _net(layer: nn.Module, bias: bool = False) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=bias), layer, nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 2))


def relu_(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x, inplace=True)


def eval_dropout(x: torch.Tensor) -> torch.Tensor:
    """Dropout that a student switched off for the test: in eval mode F.dropout returns its input."""
    return F.dropout(x, 0.2, training=False)


@pytest.mark.parametrize("act", [F.relu, F.silu, F.gelu, relu_], ids=["relu", "silu", "gelu", "relu_"])
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
def test_activation_then_bn_in_one_module_is_a_correct_bn(act, bias: bool) -> None:
    """Bug: a childless module with a BN's state whose forward is ReLU then F.batch_norm was probed as one
    BatchNorm layer; its output matched normalise(relu(x)), but the running-stat update check compared
    the update with the statistics of the raw input and reported bn-train-behaviour "running_mean after
    one batch does not follow (1-w)*old + w*batch_mean". A conv bias before it feeds the activation, so
    it is not redundant either. (Fixed in trace: a student's BN-like module that hands its own running
    statistics to F.batch_norm is traced inside, and the functional call is the BatchNorm.) With an
    in-place ReLU the input of F.batch_norm is the module's own input tensor, so the first fix (compare
    the tensors) kept it one layer, and the old invariance probe of the statistics dims, which adds
    constants to the input, reported bn-not-per-channel "statistics over (N, C, H, W)" (found by the seeded fuzz)."""
    torch.manual_seed(0)
    assert pairs(_net(ActThenFunctionalBN(8, act), bias), (4, 3, 8, 8)) == set()


@pytest.mark.parametrize("act", [F.silu, relu_], ids=["silu", "relu_"])
def test_activation_then_hand_written_bn(act) -> None:
    """The same with the normalisation written out: the running estimates are judged against the
    statistics of the tensor that was normalised, act(x), found numerically (probes.normalised_input);
    Keras' momentum is still caught through the activation. The dims of its statistics are measured
    through the activation too (the old invariance probe took relu_ then a per-channel BN for a
    whole-tensor one)."""
    torch.manual_seed(0)
    assert pairs(_net(ActThenHandBN(8, act=act)), (4, 3, 8, 8)) == set()
    assert pairs(_net(ActThenHandBN(8, keras=True, act=act)), (4, 3, 8, 8)) == {("bn-train-behaviour", "1")}


@pytest.mark.parametrize("act", [F.relu, eval_dropout], ids=["relu", "dropout-off"])
def test_hard_coded_training_inside_an_activation_then_bn_module(act) -> None:
    """The block's F.batch_norm(training=True) is the functional call that ignores the mode. Bug (found by
    the seeded fuzz): with a dropout before it, the eval pass found F.batch_norm's input to be the
    module's own input tensor (dropout in eval returns it as is), so the block was one BatchNorm layer
    there and a block in the train pass: bn-eval-behaviour instead of mode-not-propagated."""
    torch.manual_seed(0)
    found = pairs(_net(ActThenFunctionalBN(8, act, training=True)), (4, 3, 8, 8))
    assert found == {("mode-not-propagated", "1")}


class ActThenPerPixelBN(nn.Module):
    """Wrong (bn-not-per-channel): an in-place ReLU, then statistics over the batch only."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.num_features, self.eps = c, 1e-5
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x, inplace=True)
        x = (x - x.mean(0, keepdim=True)) / torch.sqrt(x.var(0, unbiased=False, keepdim=True) + self.eps)
        return x * self.weight.reshape(1, -1, 1, 1) + self.bias.reshape(1, -1, 1, 1)


def test_statistics_dims_are_measured_through_an_activation() -> None:
    """The dims a hand-written BN reduces over are found through an activation in its forward: the
    dataflow probe moves one input element and sees which outputs move with it."""
    torch.manual_seed(0)
    assert pairs(_net(ActThenPerPixelBN(8)), (4, 3, 8, 8)) == {("bn-not-per-channel", "1")}


@pytest.mark.parametrize(("forced", "bias", "expected"), [
    pytest.param(False, False, set(), id="clean"),
    pytest.param(False, True, {("redundant-bias-before-bn", "0")}, id="bias-into-its-bn"),
    pytest.param(True, False, {("mode-not-propagated", "1")}, id="hard-coded-training"),
])
def test_childless_block_around_functional_bn(forced: bool, bias: bool, expected: set) -> None:
    """Bug: a childless block whose forward is F.batch_norm (own running_mean/running_var) then a pool was
    taken for a BatchNorm layer, and its pooled output compared with F.batch_norm: a false
    bn-train-behaviour and bn-eval-behaviour. It is a block: the conv bias that reaches its F.batch_norm
    is redundant, and its hard-coded training=True is mode-not-propagated."""
    torch.manual_seed(0)
    assert pairs(_net(FunctionalBNThenPool(8, forced), bias), (4, 3, 8, 8)) == expected


def test_per_pixel_bn_after_a_mostly_dead_relu() -> None:
    """Found while replacing the invariance probe (seeded fuzz): a dataflow probe that pushes one
    element of the *real* input sees nothing move when the other samples at that pixel are all 0 (a
    dead ReLU): normalising {0, 0, 0, a} gives the same output for every a > 0. statistics_dims probes
    with distinct synthetic values of the same shape instead."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    with torch.no_grad():
        conv.bias.fill_(-0.6)  # most outputs negative: the ReLU leaves a sparse map
    model = nn.Sequential(conv, nn.ReLU(), MB.PerPixelBN2d(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 2))
    x = torch.randn(4, 3, 8, 8)
    sparsity = float((torch.relu(conv(x)) == 0).float().mean())
    assert sparsity > 0.6
    assert pairs(model, x) == {("bn-not-per-channel", "2")}


def test_bias_before_a_bn_with_relu_inside_on_single_signed_channels() -> None:
    """Bug (seeded fuzz, once hand-written BNs could apply an activation in their own forward): a bias
    before ReLU-then-BN written as one module was reported as redundant when every channel of the
    example input had one sign (a Linear head dominated by its bias): ReLU passes or zeroes each
    channel whole, so on that input the bias gradient is 0 everywhere. The dataflow saw one BN node;
    the activation inside it was invisible. (Fixed: a student's norm layer is asked, on a synthetic
    input with both signs in every channel, whether it cancels a per-channel constant at all.)"""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    with torch.no_grad():
        conv.weight.mul_(0.01)
        conv.bias.copy_(torch.tensor([1.0, -1.0] * 4))
    model = nn.Sequential(conv, ActThenHandBN(8, act=F.relu), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    x = torch.randn(4, 3, 8, 8)
    signs = torch.sign(conv(x)).amax((0, 2, 3)) == torch.sign(conv(x)).amin((0, 2, 3))
    assert bool(signs.all())  # the input that hid the ReLU
    assert pairs(model, x) == set()
    assert pairs(_net(MB.HandBN2d(8), bias=True), x) == {("redundant-bias-before-bn", "0")}  # the look-alike


class PostReluBN(MB._HandBNBase):
    """A hand-written BN (PyTorch's conventions) with a ReLU after it in the same forward; ``per_pixel``
    takes the statistics over the batch only (wrong: bn-not-per-channel)."""

    def __init__(self, c: int, per_pixel: bool = False) -> None:
        super().__init__(c)
        self.per_pixel = per_pixel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.relu(self._normalise(x, self.running_mean, self.running_var))
        if self.per_pixel:
            x = (x - x.mean(0, keepdim=True)) / torch.sqrt(x.var(0, unbiased=False, keepdim=True) + self.eps)
            return F.relu(x * self.weight.reshape(1, -1, 1, 1) + self.bias.reshape(1, -1, 1, 1))
        mean, var, unbiased = self._batch_stats(x)
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(unbiased, self.momentum)
        return F.relu(self._normalise(x, mean, var))


@pytest.mark.parametrize(("per_pixel", "expected"), [
    pytest.param(False, set(), id="per-channel"),
    pytest.param(True, {("bn-not-per-channel", "1")}, id="per-pixel"),
])
def test_statistics_dims_through_a_relu_after_the_normalisation(per_pixel: bool, expected: set) -> None:
    """Bug (seeded fuzz): pushing one element up makes the other elements of its statistics fall below
    their mean, and a ReLU after the normalisation (with a negative beta) zeroes them before and after:
    nothing moved, and a per-pixel BN passed for one without batch statistics (then "output differs"),
    or a correct BN on a (4, C, 1, 2) map was reported as "statistics over (N)". The element is now
    pushed down as well, with gamma 1 and beta 0 in the probed copy."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), PostReluBN(8, per_pixel),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    assert pairs(model, (4, 3, 1, 2)) == expected
    assert pairs(model, (4, 3, 8, 8)) == expected


# -- found once the generator wrote plain-attribute BNs, grad-mode switches, weight standardisation,
# -- TF-style padding and conv blocks that store kernel_size (engine bugs of the op-based recognition)
class Ops(nn.Module):
    """A childless block whose forward is a list of functional ops, as the fuzz's FuncNet writes them."""

    def __init__(self, *ops, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.ops = ops
        self.weight = nn.Parameter(weight) if weight is not None else None
        self.bias = nn.Parameter(bias) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            x = op(self, x)
        return x


def test_dropout_and_an_activation_in_one_block_is_no_dropout_layer() -> None:
    """Seed 165: the block was recognised as a dropout layer (its only layer op is F.dropout), and its
    eval-mode output (gelu(x), not x) read as "still drops activations in eval mode"."""
    torch.manual_seed(0)
    block = Ops(lambda m, x: F.dropout(x, 0.25, m.training), lambda m, x: F.gelu(x))
    assert pairs(_net(block), (4, 3, 8, 8)) == set()


def test_pool_then_flatten_in_one_block_is_no_pooling_layer() -> None:
    """Seed 537: avg pool then view(N, -1) in one block read as a pool that "changes the number of channels"."""
    torch.manual_seed(0)
    block = Ops(lambda m, x: F.avg_pool2d(x, 2), lambda m, x: x.view(x.size(0), -1))
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), block, nn.Linear(8 * 4 * 4, 2))
    assert pairs(model, (4, 3, 8, 8)) == set()


def test_conv_then_activation_in_one_block_keeps_its_bias() -> None:
    """Seed 608: conv (own weights, bias) then SiLU in one block was one conv layer; its bias gradient,
    watched on the block's output after the SiLU, read as cancelled by the BN that follows."""
    torch.manual_seed(0)
    block = Ops(lambda m, x: F.silu(F.conv2d(x, m.weight, m.bias, padding=1)),
                weight=torch.randn(8, 3, 3, 3) * 0.2, bias=torch.randn(8) * 0.1)
    model = nn.Sequential(block, nn.BatchNorm2d(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    assert pairs(model, (4, 3, 8, 8)) == set()


def test_own_max_pool_carries_the_bias_to_the_bn() -> None:
    """Seed 524: a block that is only F.max_pool2d became a pooling layer, which ended the bias search."""
    torch.manual_seed(0)
    block = Ops(lambda m, x: F.max_pool2d(x, 3, 1, 1))
    model = nn.Sequential(nn.Conv2d(3, 8, 1), block, nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 2))
    assert pairs(model, (4, 3, 8, 8)) == {("redundant-bias-before-bn", "0")}


def test_probing_a_block_with_an_in_place_relu_leaves_the_graph_intact() -> None:
    """Seed 1485: relu_ then a pool in one block; the pool probe ran it on the traced input tensor itself,
    its relu_ bumped the tensor's version, and the backward pass the redundant-bias rule needs failed."""
    torch.manual_seed(0)
    block = Ops(lambda m, x: F.relu(x, inplace=True), lambda m, x: F.adaptive_avg_pool2d(x, 1))
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), block, nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4),
                          nn.Flatten(), nn.Linear(4, 2))
    report = cnncheck.check_model(model, (4, 3, 8, 8))
    assert report.notes == [] and {(f.rule, f.module) for f in report.findings} == {("redundant-bias-before-bn", "2")}


class GradModeStandardise(nn.Module):
    """The d2l.ai switch in miniature: batch statistics whenever gradients are on."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.moving_mean, self.moving_var = torch.zeros(1, c, 1, 1), torch.ones(1, c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return (x - self.moving_mean) / torch.sqrt(self.moving_var + 1e-5)
        mean, var = x.mean(dim=(0, 2, 3), keepdim=True), x.var(dim=(0, 2, 3), keepdim=True)
        self.moving_mean = (0.9 * self.moving_mean + 0.1 * mean).detach()
        self.moving_var = (0.9 * self.moving_var + 0.1 * var).detach()
        return (x - mean) / torch.sqrt(x.var(dim=(0, 2, 3), unbiased=False, keepdim=True) + 1e-5)


def test_grad_mode_switch_after_a_batchnorm_is_found() -> None:
    """Seed 1973: after a BatchNorm its input already has mean 0 and variance 1 per channel, the running
    statistics' initial values, so its outputs with and without gradients agreed by chance."""
    torch.manual_seed(0)
    assert pairs(_net(nn.Sequential(nn.BatchNorm2d(8), GradModeStandardise(8))), (4, 3, 8, 8)) == {
        ("mode-not-propagated", "1.1")}


def test_an_output_of_rounding_noise_does_not_depend_on_the_batch() -> None:
    """Seed 1211 (of the generator as it was then): a channel max copied to every channel, then
    standardised filters (they sum to zero over identical channels) give an output of pure float32
    rounding (1e-8), which differs between a batch and a batch of one; run in float64 it does not depend
    on the batch. The architecture is written out, so that a change of the generator keeps this model."""
    import fuzz_models as fm

    def conv(impl: str, c_in: int, c_out: int, k: int, s: int = 1, p: int = 0, d: int = 1, g: int = 1,
             bias: bool = False, bias_kw: bool = False) -> fm.Step:
        return fm.Step("conv", impl, dict(c_in=c_in, c_out=c_out, k=k, s=s, p=p, d=d, g=g, bias=bias, defect=None,
                                          tuple_k=False, bias_kw=bias_kw))

    def norm(training_kw: bool) -> fm.Step:
        return fm.Step("norm", "nn", dict(c=3, defect=None, head=False, training_kw=training_kw))

    steps = [
        conv("tfsame", 4, 4, 3, p=1, g=4),
        conv("nn", 4, 7, 2, d=2, bias=True, bias_kw=True),
        fm.Step("act", "nn", dict(fn="relu")),
        fm.Step("res", "nn", dict(merge="add", order=True, op="+", identity_module=True),
                body=[conv("nn", 7, 3, 5, s=2, p=2, bias_kw=True), norm(False), norm(True)],
                proj=conv("nn", 7, 3, 1, s=2)),
        fm.Step("pool", "hand", dict(kind="max", defect="chmax", k=2, s=1, p=0, ceil=False, cip=False),
                expect={"pool-mixes-channels"}),
        conv("ws", 3, 4, 1),
        fm.Step("pool", "nn", dict(kind="amax", defect=None, out=3)),
        fm.Step("flatten", "func", dict(how="flatten")),
        fm.Step("linear", "func", dict(f_in=12, f_out=3, bias=False)),
    ]
    arch = fm.Arch(rank=1, style="func", in_channels=4, size=9, steps=steps, eval_first=False)
    torch.manual_seed(0)
    built = arch.build()
    assert built.expected == {("pool-mixes-channels", "m5")}
    assert pairs(built.model, arch.input_shape) == built.expected


def test_a_dropout_that_ignores_the_mode_after_a_dead_relu_is_found() -> None:
    """Seed 5424: F.dropout(x, p) without training, after a ReLU whose outputs were all 0: the eval-mode
    probe compared zeros with zeros. A dropout layer that calls torch's dropout is judged by that call."""

    class PDropout(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = 0.25

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.dropout(x, self.p)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), PDropout(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # every ReLU output is 0
    assert pairs(model, (4, 6)) == {("mode-not-propagated", "2")}
