"""Models on which a rule once passed without really checking: an integer input, a forward without
gradients, a forward that returns no tensor, and NaN or Inf in the weights, the input or forward.
Each rule must either check for real or say, as ``not-checked``, why it could not."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from test_front_ends_agree import CONV_POOL_BN, HEADER
from torch import nn

import cnncheck
from cnncheck import RuleStatus

pytest_plugins = ["pytester"]

SHAPE = (4, 3, 8, 8)
BIAS = "redundant-bias-before-bn"
EVAL = "bn-eval-behaviour"
STRUCTURAL = ["conv-param-formula", "pool-has-parameters", "feature-size-mismatch"]
NUMERIC = ["pool-mixes-channels", BIAS, "bn-not-per-channel", "bn-train-behaviour", EVAL, "mode-not-propagated"]


def check(model, example_input, **options):
    """check_model, asserting that no rule crashed and that the model came back as it was (NaN included:
    a weight that was NaN must still be NaN, so ``torch.equal`` cannot say it)."""
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    report = cnncheck.check_model(model, example_input, **options)
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, rtol=0, atol=0, equal_nan=True, msg=f"check_model changed {key}")
    assert [m.training for m in model.modules()] == modes
    assert report.crashes == [], report.crashes
    return report


def statuses(report, rules):
    return {rule: report.status(rule).status for rule in rules}


class HandBatchNorm(nn.Module):
    """A correct BatchNorm written out: its rules probe it numerically, none is decided by construction."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.momentum, self.eps = 0.1, 1e-5

    def forward(self, x):
        if self.training:
            mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)
            with torch.no_grad():
                n = x.numel() / x.shape[1]
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * var * n / (n - 1))
        else:
            mean, var = self.running_mean, self.running_var
        x = (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + self.eps)
        return x * self.weight[None, :, None, None] + self.bias[None, :, None, None]


class HandMaxPool(nn.Module):
    """A max pool of the student's own: pool-mixes-channels probes it with perturbed inputs."""

    kernel_size = 2

    def forward(self, x):
        return F.max_pool2d(x, 2)


class ConvPoolBN(nn.Module):
    """conv (with a bias) -> max pool -> BatchNorm: the bias is redundant, and confirming it takes a
    gradient from the BatchNorm back to the conv."""

    def __init__(self, norm: type[nn.Module] = nn.BatchNorm2d, pool: Callable[[], nn.Module] = lambda: nn.MaxPool2d(2)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.pool = pool()
        self.bn1 = norm(4)

    def forward(self, x):
        return self.bn1(self.pool(self.conv1(x)))


# -- 1. an integer input ------------------------------------------------------------------------------
class FromIntegers(ConvPoolBN):
    def forward(self, x):
        return super().forward(x.float() / 4)  # pixel values given as integers


INTEGERS = torch.randint(0, 5, SHAPE)


@pytest.mark.parametrize("norm", [nn.BatchNorm2d, HandBatchNorm], ids=["torch-bn", "hand-written-bn"])
def test_integer_input_still_checks_the_bias(norm):
    # the input cannot require grad, but the parameters do: the gradient reaches the conv's bias anyway
    report = check(FromIntegers(norm, HandMaxPool), INTEGERS)
    assert report.status(BIAS).status is RuleStatus.FINDINGS, report.status(BIAS)
    assert {f.module for f in report.findings if f.rule == BIAS} == {"conv1"}
    others = set(STRUCTURAL + NUMERIC) - {BIAS}
    assert statuses(report, others) == dict.fromkeys(others, RuleStatus.PASSED)


def test_integer_input_and_frozen_parameters_are_not_checked_for_the_bias():
    model = FromIntegers().requires_grad_(False)
    report = check(model, INTEGERS)
    outcome = report.status(BIAS)
    assert outcome.status is RuleStatus.NOT_CHECKED
    assert "carries no gradient" in outcome.reason
    assert "no parameter of FromIntegers requires grad" in outcome.reason
    assert "torch.int64" in outcome.reason
    assert all(not p.requires_grad for p in model.parameters())


# -- 2. forward without gradients -----------------------------------------------------------------------
class UnderNoGrad(ConvPoolBN):
    def forward(self, x):
        with torch.no_grad():
            return super().forward(x)


class UnderInferenceMode(ConvPoolBN):
    def forward(self, x):
        with torch.inference_mode():
            return super().forward(x)


@pytest.mark.parametrize("factory, cause", [
    pytest.param(UnderNoGrad, "forward runs under torch.no_grad(), or detaches its result", id="no_grad"),
    pytest.param(UnderInferenceMode, "forward runs under torch.inference_mode()", id="inference_mode"),
])
def test_forward_without_gradients_leaves_the_bias_unchecked(factory, cause):
    report = check(factory(), SHAPE)
    outcome = report.status(BIAS)
    assert outcome.status is RuleStatus.NOT_CHECKED
    assert f"the output of {factory.__name__}.forward carries no gradient ({cause})" in outcome.reason
    assert "no layer before it would ever train" in outcome.reason
    others = set(STRUCTURAL + NUMERIC) - {BIAS}  # their probes run each layer on its own, gradients or not
    assert statuses(report, others) == dict.fromkeys(others, RuleStatus.PASSED)


def test_inference_mode_with_hand_written_layers():
    """Was a CheckError ("Inference tensors do not track version counter") blaming the student's line."""
    report = check(UnderInferenceMode(HandBatchNorm, HandMaxPool), SHAPE)
    assert report.status(BIAS).status is RuleStatus.NOT_CHECKED
    assert "torch.inference_mode()" in report.status(BIAS).reason


# -- 3. forward returns no tensor -----------------------------------------------------------------------
class BatchDependent(nn.Module):
    """Subtracts the batch mean in eval mode too, and returns ``self.result``: the output, or not."""

    def __init__(self, result: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.result = result

    def forward(self, x):
        y = self.conv1(x)
        y = y - y.mean(0, keepdim=True)
        return {"tensor": y, "none": None, "str": "done", "scalar": y.square().mean()}[self.result]


def test_batch_dependence_is_found_when_forward_returns_the_batch():
    report = check(BatchDependent("tensor"), SHAPE)
    assert report.status(EVAL).status is RuleStatus.FINDINGS  # the look-alike below is not checked, not clean


@pytest.mark.parametrize("result, described", [
    pytest.param("none", "None", id="None"),
    pytest.param("str", "a str ('done')", id="str"),
    pytest.param("scalar", "a tensor of shape ()", id="scalar"),
])
def test_forward_without_a_batch_output_is_not_checked_where_outputs_are_compared(result, described):
    report = check(BatchDependent(result), SHAPE)
    outcome = report.status(EVAL)
    assert outcome.status is RuleStatus.NOT_CHECKED, outcome
    assert f"BatchDependent.forward returns {described}, with no batch of 4 samples first" in outcome.reason
    assert "cannot compare one sample's eval output with its output in the batch" in outcome.reason
    assert report.status("conv-param-formula").status is RuleStatus.PASSED


@pytest.mark.parametrize("result, described", [
    pytest.param(None, "None", id="None"),
    pytest.param("done", "a str ('done')", id="str"),
])
def test_forward_returning_no_tensor(result, described):
    class Returns(ConvPoolBN):
        def forward(self, x):
            super().forward(x)
            return result

    report = check(Returns(HandBatchNorm, HandMaxPool), SHAPE)
    bias = report.status(BIAS)
    assert bias.status is RuleStatus.NOT_CHECKED
    assert bias.reason == f"Returns.forward returns {described}, not a tensor: no training step can take gradients of it"
    assert report.status(EVAL).status is RuleStatus.NOT_CHECKED
    assert f"returns {described}" in report.status(EVAL).reason
    # each layer is probed on its own input: these do not need forward's result
    layerwise = set(STRUCTURAL + NUMERIC) - {BIAS, EVAL}
    assert statuses(report, layerwise) == dict.fromkeys(layerwise, RuleStatus.PASSED)


# -- 4. NaN and Inf -------------------------------------------------------------------------------------
def with_value(model: nn.Module, name: str, value: float, count: int) -> nn.Module:
    """``model`` with the first ``count`` entries of the tensor ``name`` set to ``value``."""
    tensor = model.get_parameter(name) if name in dict(model.named_parameters()) else model.get_buffer(name)
    with torch.no_grad():
        tensor.view(-1)[:count] = value
    return model


def assert_numeric_rules_not_checked(report, reason_start: str) -> None:
    for rule in NUMERIC:
        outcome = report.status(rule)
        assert outcome.status is RuleStatus.NOT_CHECKED, outcome
        assert outcome.reason.startswith(reason_start), outcome.reason
        assert outcome.reason.endswith("numeric probes cannot compare outputs computed from NaN or Inf")
    assert any(note.startswith(reason_start) and "are not checked" in note for note in report.notes), report.notes


def hand_written() -> ConvPoolBN:
    return ConvPoolBN(HandBatchNorm, HandMaxPool)


def test_finite_look_alike_is_checked():
    report = check(hand_written(), SHAPE)
    assert report.status(BIAS).status is RuleStatus.FINDINGS
    others = set(STRUCTURAL + NUMERIC) - {BIAS}
    assert statuses(report, others) == dict.fromkeys(others, RuleStatus.PASSED)
    assert not any("NaN" in note for note in report.notes)


@pytest.mark.parametrize("name, value, count, reason", [
    pytest.param("conv1.weight", float("nan"), 3, "conv1.weight holds 3 NaN: ", id="nan-weight"),
    pytest.param("bn1.running_var", float("inf"), 1, "bn1.running_var holds 1 Inf: ", id="inf-buffer"),
])
def test_non_finite_tensor_of_the_model(name, value, count, reason):
    # before: redundant-bias passed (its gradient test fails on NaN) and bn-train-behaviour reported a
    # running_mean update that is correct
    model = with_value(hand_written(), name, value, count)
    report = check(model, SHAPE)
    assert_numeric_rules_not_checked(report, reason)
    assert statuses(report, STRUCTURAL) == dict.fromkeys(STRUCTURAL, RuleStatus.PASSED)
    assert report.findings == []


def test_several_non_finite_tensors_are_named_in_order():
    model = with_value(with_value(hand_written(), "conv1.weight", float("nan"), 2), "bn1.weight", float("-inf"), 1)
    report = check(model, SHAPE)
    assert_numeric_rules_not_checked(report, "conv1.weight holds 2 NaN, bn1.weight holds 1 Inf: ")


@pytest.mark.parametrize("value, reason", [
    pytest.param(float("nan"), "the example input holds 5 NaN: ", id="nan"),
    pytest.param(float("inf"), "the example input holds 5 Inf: ", id="inf"),
])
def test_non_finite_example_input(value, reason):
    x = torch.randn(SHAPE)
    x.view(-1)[:5] = value
    report = check(hand_written(), x)
    assert_numeric_rules_not_checked(report, reason)
    assert statuses(report, STRUCTURAL) == dict.fromkeys(STRUCTURAL, RuleStatus.PASSED)


def test_structural_rules_still_find_on_nan_weights():
    class PoolWithScale(HandMaxPool):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return F.max_pool2d(x, 2) * self.scale

    model = with_value(ConvPoolBN(HandBatchNorm, PoolWithScale), "conv1.weight", float("nan"), 1)
    report = check(model, SHAPE)
    assert report.status("pool-has-parameters").status is RuleStatus.FINDINGS
    assert {f.rule for f in report.findings} == {"pool-has-parameters"}
    assert_numeric_rules_not_checked(report, "conv1.weight holds 1 NaN: ")


def test_hand_written_conv_is_compared_numerically_so_not_checked_on_nan():
    class HandConv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.in_channels, self.out_channels, self.kernel_size = 3, 4, (3, 3)
            self.weight = nn.Parameter(torch.randn(4, 3, 3, 3) * 0.1)
            self.bias = nn.Parameter(torch.zeros(4))

        def forward(self, x):
            cols = F.unfold(x, 3)  # (N, 27, L): the convolution as one matrix product
            out = self.weight.view(4, -1) @ cols + self.bias[:, None]
            side = x.shape[-1] - 2
            return out.view(x.shape[0], 4, side, side)

    clean = ConvPoolBN()
    clean.conv1 = HandConv()
    assert check(clean, SHAPE).status("conv-param-formula").status is RuleStatus.PASSED
    report = check(with_value(clean, "conv1.weight", float("nan"), 1), SHAPE)
    outcome = report.status("conv-param-formula")
    assert outcome.status is RuleStatus.NOT_CHECKED
    assert outcome.reason.startswith("conv1.weight holds 1 NaN: ")


def test_nan_made_in_forward_names_the_op():
    class LogOfNegative(ConvPoolBN):
        def forward(self, x):
            return super().forward(torch.log(x - 10))  # every input value is below 10: all NaN

    report = check(LogOfNegative(HandBatchNorm, HandMaxPool), SHAPE)
    where = f"{__file__}:{LogOfNegative.forward.__code__.co_firstlineno + 1}"
    assert_numeric_rules_not_checked(report, f"the input of conv1 (Conv2d) holds 768 NaN, first made by log at {where}: ")
    assert statuses(report, STRUCTURAL) == dict.fromkeys(STRUCTURAL, RuleStatus.PASSED)


def test_inf_padding_inside_a_pool_is_no_problem():
    # timm's MaxPool2dSame pads with -inf before its max: the pool's input and output are finite
    class SamePool(HandMaxPool):
        def forward(self, x):
            return F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float("-inf")), 2)

    report = check(ConvPoolBN(HandBatchNorm, SamePool), SHAPE)
    everything = STRUCTURAL + NUMERIC  # (a constant pad keeps the bias: it is not redundant here)
    assert statuses(report, everything) == dict.fromkeys(everything, RuleStatus.PASSED)
    assert report.notes == []


def test_nan_only_in_eval_mode():
    # a negative running variance: train mode normalises with the batch's, eval mode takes its square root
    model = with_value(ConvPoolBN(), "bn1.running_var", -100.0, 4)
    report = check(model, SHAPE)
    outcome = report.status(EVAL)
    assert outcome.status is RuleStatus.NOT_CHECKED
    assert outcome.reason.startswith("in eval mode the output of ConvPoolBN.forward holds 144 NaN: ")  # all of it
    assert report.status("bn-train-behaviour").status is RuleStatus.PASSED  # the train pass is finite


def test_the_note_comes_even_when_only_structural_rules_run():
    model = with_value(hand_written(), "conv1.weight", float("nan"), 3)
    report = check(model, SHAPE, checks=["pool-has-parameters"])
    assert report.status("pool-has-parameters").status is RuleStatus.PASSED
    assert any(note.startswith("conv1.weight holds 3 NaN: ") for note in report.notes), report.notes


INTEGER_PLUGIN = """
import torch
import cnncheck


@cnncheck.hookimpl
def cnncheck_example_input(model, input_shape, device):
    return torch.randint(0, 5, tuple(input_shape), generator=torch.Generator().manual_seed(0)).to(device)
"""

INTEGER_MODELS = HEADER + CONV_POOL_BN + """

class FromIntegers(ConvPoolBN):
    def forward(self, x):
        return self.body(x.float() / 4)  # pixel values given as integers


@cnncheck.model(input_shape=(4, 3, 8, 8))
def trainable():
    return FromIntegers()


@cnncheck.model(input_shape=(4, 3, 8, 8))
def frozen():
    return FromIntegers().requires_grad_(False)
"""


def test_an_integer_example_input_through_every_front_end(tmp_path, monkeypatch, pytester) -> None:
    """Integer pixels from a plugin's example input: a trainable model still has its bias finding;
    a frozen one says redundant-bias-before-bn was not checked, in the command's every format (and
    exit code) and in pytest's items."""
    import json
    import xml.etree.ElementTree as ET

    from cnncheck import cli
    from cnncheck.formats import FORMATS

    (tmp_path / "integer_input.py").write_text(INTEGER_PLUGIN)
    (tmp_path / "models.py").write_text(INTEGER_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    codes = {}
    for fmt in FORMATS:
        out = tmp_path / f"report.{fmt}"
        codes[fmt] = cli.main(["check", str(tmp_path / "models.py"), "--plugin", "integer_input", "--format", fmt,
                               "--output", str(out), "--sandbox", "none"])
    assert codes == dict.fromkeys(FORMATS, 1)
    models = {m["name"]: m for m in json.loads((tmp_path / "report.json").read_text())["models"]}
    assert [f["module"] for f in models["trainable"]["findings"]] == ["conv1"]
    states = {o["rule"]: o["status"] for o in models["frozen"]["outcomes"]}
    assert states[BIAS] == "not-checked" and models["frozen"]["verdict"] == "incomplete"
    assert "torch.int64" in next(o["reason"] for o in models["frozen"]["outcomes"] if o["rule"] == BIAS)
    cases = {(c.get("classname"), c.get("name")): c for c in ET.parse(tmp_path / "report.junit").iter("testcase")}
    frozen_case = next(c for (model, rule), c in cases.items() if model.endswith("frozen") and rule == BIAS)
    assert frozen_case.find("skipped") is not None
    assert "not checked: redundant-bias-before-bn" in (tmp_path / "report.text").read_text()

    pytester.makepyfile(integer_input=INTEGER_PLUGIN, models=INTEGER_MODELS)
    pytester.syspathinsert()
    result = pytester.runpytest("--cnncheck", "--cnncheck-plugin", "integer_input", "-rfs", "-p", "no:randomly")
    result.stdout.fnmatch_lines(["FAILED models.py::trainable::redundant-bias-before-bn*",
                                 "SKIPPED*models.py*not checked*torch.int64*"])
    assert result.parseoutcomes().get("failed") == 1
