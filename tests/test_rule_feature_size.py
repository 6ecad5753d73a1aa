"""feature-size-mismatch: the flattened map must fit the next Linear, and a reshape must keep the batch."""

from __future__ import annotations

import inspect
import re

import models_conv as M
import pytest
import torch
from models_conv import build, check_unmodified, line_of, rule_pairs
from torch import nn

import cnncheck

SHAPE = (4, 3, 16, 16)
MNIST = (4, 1, 28, 28)
RULE = "feature-size-mismatch"




FLAGGED = [
    pytest.param(M.SeedConvNet, MNIST, {"fc1"}, id="seed-convnet-maxpool-stride-5"),
    pytest.param(M.FunctionalPoolMismatch, SHAPE, {"fc"}, id="functional-max_pool2d-stride-4"),
    pytest.param(M.HandConvResidualMismatch, SHAPE, {"classifier.1"}, id="hand-conv-stride-2-residual-sequential-head"),
    pytest.param(M.FunctionalLinearMismatch, SHAPE, {""}, id="functional-linear-wrong-weight"),
    pytest.param(M.ViewFoldsBatch, SHAPE, {""}, id="view-minus-1-folds-batch"),
    pytest.param(M.ViewDoesNotDivide, SHAPE, {"fc"}, id="view-minus-1-does-not-divide"),
    pytest.param(M.HardCodedBatchView, SHAPE, {""}, id="view-4-minus-1-hard-codes-the-batch"),
    pytest.param(M.HardCodedBatchReshapeRaises, SHAPE, {""}, id="reshape-4-392-raises-for-one-sample"),
    pytest.param(M.HardCodedBatchInHead, SHAPE, {"head"}, id="view-tuple-4-minus-1-in-a-head"),
]


@pytest.mark.parametrize("factory, shape, expected", FLAGGED)
def test_feature_size_flags(factory, shape, expected):
    model = build(factory)
    full = check_unmodified(model, shape)  # a forward that raises is explained, not re-raised
    assert full.crashes == []
    want = {(RULE, m) for m in expected}
    assert rule_pairs(full, RULE) == want, str(full)
    assert rule_pairs(full) == want, str(full)
    only = check_unmodified(model, shape, checks=[RULE])
    assert rule_pairs(only) == want
    assert all(f.severity is cnncheck.Severity.ERROR for f in only.findings)


CLEAN = [
    pytest.param(M.FixedSeedConvNet, MNIST, id="seed-convnet-fixed-stride-2"),
    pytest.param(M.AdaptiveHead, SHAPE, id="adaptive-avgpool-head"),
    pytest.param(M.ViewKeepsBatch, SHAPE, id="view-minus-1-exact-features-and-view-size0"),
    pytest.param(M.PatchModel, SHAPE, id="patches-folded-into-batch-and-restored"),
]


@pytest.mark.parametrize("factory, shape", CLEAN)
def test_feature_size_lookalikes_clean(factory, shape):
    model = build(factory)
    only = check_unmodified(model, shape, checks=[RULE])
    assert rule_pairs(only, RULE) == set(), str(only)
    full = check_unmodified(model, shape)
    assert full.ok, str(full)


def _finding(factory, shape):
    [f] = check_unmodified(build(factory), shape, checks=[RULE]).findings
    return f


def test_seed_convnet_explains_576_vs_3136_and_the_stride():
    f = _finding(M.SeedConvNet, MNIST)
    assert f.module == "fc1"
    assert "fc1 expects 3136 = 64*7*7 input features but gets 576 = 64*3*3" in f.message
    assert "turns 28x28 into 6x6, and the map reaches 3x3" in f.message
    assert "layer1.2 MaxPool2d(kernel_size=2, stride=5)" in f.message
    assert f.expected == "3136 = 64*7*7: a 64x7x7 feature map"
    assert f.found == "576 = 64*3*3: a 64x3x3 feature map"
    assert "stride=2 instead of 5" in f.fix and "7x7" in f.fix
    trace = "\n".join(f.details)
    assert "32x6x6  after layer1.2 MaxPool2d(kernel_size=2, stride=5)" in trace
    assert "floor((28 + 2*0 - (2-1) - 1)/5) + 1 = 6" in trace
    assert "64x3x3  after layer2.2" in trace
    assert f.location.endswith(line_of(M.SeedConvNet, "nn.MaxPool2d(kernel_size=2, stride=5)"))


def test_the_selection_does_not_decide_whether_a_failing_forward_is_explained():
    """The diagnosis runs whether or not feature-size-mismatch is selected: with only the conv rule the
    model is still checked (past the repaired Linear), not refused, and the report says what happened."""
    only_conv = cnncheck.check_model(build(M.SeedConvNet), MNIST, checks=["conv-param-formula"])
    assert only_conv.findings == [] and only_conv.status("conv-param-formula").status is cnncheck.RuleStatus.PASSED
    assert any("as if fc1 received 3136 features" in note for note in only_conv.notes), only_conv.notes
    everything = cnncheck.check_model(build(M.SeedConvNet), MNIST)
    assert [f.rule for f in everything.findings] == ["feature-size-mismatch"]
    assert everything.status("conv-param-formula") == only_conv.status("conv-param-formula")


def test_an_unexplained_forward_failure_raises_whatever_is_selected():
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            raise ValueError("student bug")

    for checks in (None, ["conv-param-formula"], ["feature-size-mismatch"]):
        with pytest.raises(cnncheck.CheckError, match="Broken.forward raised"):
            cnncheck.check_model(Broken(), MNIST, checks=checks)


@pytest.mark.parametrize("factory, call, after", [
    (M.HardCodedBatchView, "view(4, -1)", "becomes (4, 98)"),
    (M.HardCodedBatchReshapeRaises, "reshape(4, 392)", "cannot be reshaped, and forward raises"),
    (M.HardCodedBatchInHead, "view((4, -1))", "becomes (4, 98)"),
])
def test_a_hard_coded_batch_size_is_named_at_its_line(factory, call, after):
    f = _finding(factory, SHAPE)
    assert f.message.startswith(f"{call} writes the batch size 4 into forward: one sample of shape (1, 8, 7, 7) {after}")
    assert "works only for batches of 4" in f.message
    assert f.fix == "take the batch size from the input: x.view(x.size(0), -1), or x.flatten(1)"
    source_line = {"view(4, -1)": ".view(4, -1))", "reshape(4, 392)": ".reshape(4, 392))",
                   "view((4, -1))": "x.view((4, -1))"}[call]
    owner = M._HardCodedHead if factory is M.HardCodedBatchInHead else factory
    assert f.location.endswith(line_of(owner, source_line))
    full = check_unmodified(build(factory), SHAPE)
    reason = full.status("bn-eval-behaviour").reason
    assert f"{call} at " in reason and "(see feature-size-mismatch)" in reason, reason


def test_a_model_that_refuses_one_sample_is_not_blamed_for_a_batch_size():
    report = check_unmodified(build(M.RefusesOneSample), SHAPE)
    assert report.findings == [] and report.verdict.value == "incomplete"
    assert "needs a batch of at least two samples" in report.status("bn-eval-behaviour").reason


def test_functional_pool_blamed_with_stride():
    f = _finding(M.FunctionalPoolMismatch, SHAPE)
    assert re.search(r"expects 512( = [\d*]+)? input features but gets 128\b", f.message)
    assert "F.max_pool2d(kernel_size=2, stride=4)" in f.message
    assert "stride=2 instead of 4" in f.fix
    assert f.location.endswith(line_of(M.FunctionalPoolMismatch, "F.max_pool2d("))


def test_hand_conv_stride_blamed():
    f = _finding(M.HandConvResidualMismatch, SHAPE)
    assert re.search(r"expects 512( = [\d*]+)? input features but gets 128\b", f.message)
    assert "conv1" in f.message
    assert "stride=1 instead of 2" in f.fix
    assert f.found == "128 = 8*4*4: a 8x4x4 feature map"


def test_functional_linear_counts():
    f = _finding(M.FunctionalLinearMismatch, SHAPE)
    assert re.search(r"expects 128( = [\d*]+)? input features but gets 512\b", f.message)


def test_view_folds_batch_message():
    f = _finding(M.ViewFoldsBatch, SHAPE)
    assert "view(-1, 256)" in f.message
    assert "4 samples of 512 features become 8 rows of 256" in f.message
    assert f.expected.startswith("batch size 4 kept")
    assert "(4, 8, 8, 8) -> (8, 256)" in f.found
    assert f.location.endswith(line_of(M.ViewFoldsBatch, "x = x.view(-1, 256)"))


def test_view_does_not_divide_names_linear():
    f = _finding(M.ViewDoesNotDivide, SHAPE)
    assert re.search(r"expects 512( = [\d*]+)? input features but gets 288\b", f.message)
    assert "view(-1, 512)" in f.message
    assert f.found == "288 = 8*6*6: a 8x6x6 feature map"


class TwoWrongLinears(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, bias=False)
        self.fc1 = nn.Linear(999, 64)  # the map is 8x6x6 = 288
        self.fc2 = nn.Linear(50, 10)  # fc1 gives 64

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1))))


def test_a_linear_fed_by_a_linear_is_explained_by_that_linear_and_the_repair_is_marked() -> None:
    report = cnncheck.check_model(TwoWrongLinears(), (4, 1, 8, 8), checks=["feature-size-mismatch"])
    fc1, fc2 = report.findings
    assert fc1.module == "fc1" and "288 = 8*6*6" in fc1.found
    assert fc2.module == "fc2"
    assert fc2.message == ("fc2 expects 50 input features but gets 64: the 64 outputs of fc1 "
                           "Linear(in_features=999, out_features=64)")
    assert "feature map" not in fc2.found and fc2.fix.startswith("set in_features=64: nn.Linear(64, 10)")
    assert fc2.location is not None and fc2.location.endswith(
        f"test_rule_feature_size.py:{inspect.getsourcelines(TwoWrongLinears)[1] + 5}")  # fc2's line
    trace = "\n".join(fc2.details)
    assert "narrow" not in trace and "cnncheck's repair: cut or zero-padded to fit the next layer" in trace
