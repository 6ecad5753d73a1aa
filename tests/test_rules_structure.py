"""layer-not-used, bn-reused and parameter-without-gradient (cnncheck/checks/structure.py): models that
must be flagged, look-alikes that must not be, custom forwards and functional calls among both, and the
model left as it was."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from checking import check_unmodified
from torch import nn

RULES = ["layer-not-used", "bn-reused", "parameter-without-gradient"]


def _found(model: nn.Module, shape: tuple[int, ...]) -> set[tuple[str, str]]:
    report = check_unmodified(model, shape, checks=RULES)
    assert report.crashes == [] and not report.not_checked, report
    return {(f.rule, f.module) for f in report.findings}


# -- layer-not-used ------------------------------------------------------------------------------------------
class ForgottenBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).mean(dim=(2, 3)))  # bn and drop: built, never called


class UnusedHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
        self.heads = nn.ModuleDict({"cls": nn.Linear(4, 10), "box": nn.Linear(4, 4)})

    def forward(self, x):
        return self.heads["cls"](self.body(x).mean(dim=(2, 3)))


class FunctionalInsteadOfTheLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.pool = nn.MaxPool2d(2)
        self.proj = nn.Conv2d(4, 4, 1)  # meant to run after the pool

    def forward(self, x):
        return F.max_pool2d(self.conv(x), 2).flatten(1)


class AuxInTrainOnly(nn.Module):  # inception's aux head: run in train mode only
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.aux = nn.Linear(4, 10)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        x = self.conv(x).mean(dim=(2, 3))
        return (self.fc(x), self.aux(x)) if self.training else self.fc(x)


class CalibratedInEval(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.calibrate = nn.Linear(6, 6)

    def forward(self, x):
        x = self.fc(x)
        return x if self.training else self.calibrate(x)


class WeightsReadNotCalled(nn.Module):
    """A tied head, F.linear on a layer's weight, and a relative-position table read by a method."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 6, bias=False)
        self.head = nn.Linear(6, 6, bias=False)
        self.head.weight = self.embed.weight
        self.proj = nn.Linear(6, 6)
        self.position = nn.Embedding(11, 1)

    def bias(self) -> torch.Tensor:
        return self.position.weight[torch.arange(6)].view(1, 6)

    def forward(self, x):
        x = F.linear(self.embed(x), self.proj.weight, self.proj.bias)
        return F.linear(x, self.head.weight) + self.bias()


class FusedAttentionDropout(nn.Module):  # timm's Attention: the dropout's rate goes to SDPA
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.attn_drop = nn.Dropout(0.1)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)


@pytest.mark.parametrize("model, shape, expected", [
    pytest.param(ForgottenBN, (2, 1, 8, 8), {"bn", "drop"}, id="forgotten-bn-and-dropout"),
    pytest.param(UnusedHead, (2, 1, 8, 8), {"heads.box"}, id="a-head-of-a-moduledict"),
    pytest.param(FunctionalInsteadOfTheLayer, (2, 1, 8, 8), {"proj"}, id="functional-call-instead"),
    pytest.param(AuxInTrainOnly, (2, 1, 8, 8), set(), id="aux-head-in-train-only"),
    pytest.param(CalibratedInEval, (2, 6), set(), id="a-layer-run-in-eval-only"),
    pytest.param(WeightsReadNotCalled, (2, 6), set(), id="tied-functional-and-indexed-weights"),
    pytest.param(FusedAttentionDropout, (2, 5, 8), set(), id="dropout-rate-handed-to-sdpa"),
])
def test_layer_not_used(model, shape, expected) -> None:
    found = _found(model(), shape)
    assert {module for rule, module in found if rule == "layer-not-used"} == expected
    assert FunctionalInsteadOfTheLayer.__name__  # (the pool is unused too, but owns no parameters: not flagged)


def test_an_unused_layer_says_what_it_costs() -> None:
    import cnncheck

    report = cnncheck.check_model(ForgottenBN(), (2, 1, 8, 8), checks=["layer-not-used"])
    bn = next(f for f in report.findings if f.module == "bn")
    assert bn.message == ("BatchNorm2d 'bn' is never used: forward does not run it in train or eval mode "
                          "on the example input")
    assert "16 parameter(s) that never train, and they inflate the model's parameter count" in bn.found

    line = next(i for i, text in enumerate(inspect.getsource(ForgottenBN).splitlines()) if "self.bn =" in text)
    assert bn.location and bn.location.endswith(f"test_rules_structure.py:{inspect.getsourcelines(ForgottenBN)[1] + line}")


# -- bn-reused ------------------------------------------------------------------------------------------------
class TwoPlaces(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        x = F.relu(self.bn(self.conv1(x)))
        x = F.relu(self.bn(self.conv2(x)))
        return x.mean(dim=(2, 3))


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.step = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        for _ in range(3):
            x = F.relu(self.bn(self.step(x)))
        return x


class HelperCalledTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(6, 8)
        self.norm = nn.BatchNorm1d(8)

    def project(self, layer: nn.Module, x):
        return self.norm(layer(x))

    def forward(self, x):
        left = self.project(self.a, x)
        right = self.project(self.b, x)
        return left + right


class OneEach(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(8), nn.BatchNorm2d(8)

    def forward(self, x):
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))


class SharedNormsWithoutStatistics(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.ln = nn.GroupNorm(2, 8)
        self.untracked = nn.BatchNorm2d(8, track_running_stats=False)

    def forward(self, x):
        x = self.ln(self.conv(x))
        x = self.ln(self.conv2(F.relu(self.untracked(x))))
        return self.untracked(x)


class SharedConv(nn.Module):  # weight sharing of a conv: not a norm
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(F.relu(self.conv(x)))


class Siamese(nn.Module):
    """One encoder (its BatchNorm included) run on two views of the input: one place of the network."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        a = self.encoder(x).mean(dim=(2, 3))
        b = self.encoder(torch.flip(x, dims=(3,))).mean(dim=(2, 3))
        return self.fc(torch.cat([a, b], dim=1))


@pytest.mark.parametrize("model, shape, expected", [
    pytest.param(TwoPlaces, (2, 3, 8, 8), {"bn"}, id="two-places"),
    pytest.param(Siamese, (2, 3, 8, 8), set(), id="a-shared-encoder-on-two-views"),
    pytest.param(Recurrent, (2, 4, 8, 8), {"bn"}, id="a-recurrent-loop"),
    pytest.param(HelperCalledTwice, (4, 6), {"norm"}, id="a-helper-method-called-twice"),
    pytest.param(OneEach, (2, 3, 8, 8), set(), id="one-bn-per-place"),
    pytest.param(SharedNormsWithoutStatistics, (2, 3, 8, 8), set(), id="norms-without-running-statistics"),
    pytest.param(SharedConv, (2, 4, 8, 8), set(), id="a-shared-conv"),
])
def test_bn_reused(model, shape, expected) -> None:
    assert {module for rule, module in _found(model(), shape) if rule == "bn-reused"} == expected


def test_a_loop_is_explained_as_a_loop() -> None:
    import cnncheck

    loop = cnncheck.check_model(Recurrent(), (2, 4, 8, 8), checks=["bn-reused"]).findings[0]
    places = cnncheck.check_model(TwoPlaces(), (2, 3, 8, 8), checks=["bn-reused"]).findings[0]
    assert loop.message == "BatchNorm2d 'bn' runs 3 times in one forward, step after step at one line (a loop)"
    assert "one per step" in (loop.fix or "") and "mix the distributions of every step of the loop" in loop.found
    assert places.message == "BatchNorm2d 'bn' runs 2 times in one forward, at 2 places"
    assert "move 2 times per step" in places.found


# -- parameter-without-gradient -----------------------------------------------------------------------------
class DetachedScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.scale = nn.Parameter(torch.ones(8, 1, 1))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc((self.conv(x) * self.scale.detach()).mean(dim=(2, 3)))


class NoGradInForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        with torch.no_grad():
            x = self.stem(x)
        return self.fc(x.mean(dim=(2, 3)))


class DataAndIntegerCast(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 6))
        self.gain = nn.Parameter(torch.full((4,), 2.0))

    def forward(self, x):
        return F.linear(x, self.weight.data) * self.gain.long()


class FrozenBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(1, 8, 3).requires_grad_(False)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.backbone(x).mean(dim=(2, 3)))


class ZeroGradientByChance(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.gate = nn.Parameter(torch.zeros(6))

    def forward(self, x):
        return self.fc(x) * self.gate * 0.0  # in the graph: a gradient of zeros is a gradient


class BufferAndUnusedLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.spare = nn.Linear(6, 6)  # layer-not-used's case, not this rule's
        self.register_buffer("offset", torch.ones(6))

    def forward(self, x):
        return self.fc(x) + self.offset


@pytest.mark.parametrize("model, shape, expected", [
    pytest.param(DetachedScale, (2, 1, 8, 8), {""}, id="detach"),
    pytest.param(NoGradInForward, (2, 1, 8, 8), {"stem"}, id="no-grad-inside-forward"),
    pytest.param(DataAndIntegerCast, (2, 6), {""}, id="dot-data-and-an-integer-cast"),
    pytest.param(FrozenBackbone, (2, 1, 8, 8), set(), id="frozen"),
    pytest.param(ZeroGradientByChance, (2, 6), set(), id="zero-gradient-by-chance"),
    pytest.param(BufferAndUnusedLayer, (2, 6), set(), id="buffers-and-unused-layers"),
])
def test_parameter_without_gradient(model, shape, expected) -> None:
    found = _found(model(), shape)
    assert {module for rule, module in found if rule == "parameter-without-gradient"} == expected


def test_a_missing_gradient_names_the_parameters_and_the_cut() -> None:
    import cnncheck

    check = cnncheck.check_model
    detached = check(DetachedScale(), (2, 1, 8, 8), checks=["parameter-without-gradient"])
    assert detached.findings[0].message == ("DetachedScale's parameter 'scale' gets no gradient in a train step, "
                                            "so it never trains")
    line = inspect.getsourcelines(DetachedScale.forward)[1] + 1  # the .detach() in forward, not a constructor
    assert detached.findings[0].location.endswith(f"test_rules_structure.py:{line}")
    both = check(DataAndIntegerCast(), (2, 6), checks=["parameter-without-gradient"])
    assert "parameters 'weight', 'gain' get no gradient" in both.findings[0].message
    stem = check(NoGradInForward(), (2, 1, 8, 8), checks=["parameter-without-gradient"])
    assert "weight (8, 1, 3, 3), bias (8,)" in stem.findings[0].found
    assert "torch.no_grad()" in stem.findings[0].found


def test_the_command_reports_them(tmp_path) -> None:
    import json
    import textwrap

    from cnncheck.cli import main

    (tmp_path / "model.py").write_text(textwrap.dedent("""
        import torch.nn.functional as F
        from torch import nn


        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(1, 8, 3)
                self.bn = nn.BatchNorm2d(8)
                self.fc = nn.Linear(8, 10)

            def forward(self, x):
                return self.fc(F.relu(self.conv(x)).mean(dim=(2, 3)))
    """))
    out = tmp_path / "report.json"
    assert main(["check", str(tmp_path / "model.py"), "--input-shape", "2,1,8,8", "--format", "json", "-o", str(out)]) == 1
    model = json.loads(out.read_text())["models"][0]
    assert [(f["rule"], f["module"]) for f in model["findings"]] == [("layer-not-used", "bn")]
    assert {"layer-not-used", "bn-reused", "parameter-without-gradient"} <= set(model["rules_run"])


# -- what the three rules share with the others ------------------------------------------------------------------
class PoolWithAForgottenConv(nn.Module):
    """A downsampling block whose forward forgot its conv: the block runs only a pool op."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return F.max_pool2d(x, 2)


class DetachedAfterActivation(nn.Module):
    """F.conv2d on an activation, with a detached weight: still a convolution with its own weight."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4, 3, 3) * 0.1)

    def forward(self, x):
        return F.conv2d(F.gelu(x), self.weight.detach(), padding=1)


def test_a_forgotten_child_is_not_its_parents_parameter() -> None:
    """The forgotten conv is layer-not-used's finding; the block that ran is a pool with no parameters
    of its own (pool-has-parameters would blame the pool for the conv)."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.ReLU(), PoolWithAForgottenConv(), nn.Flatten(),
                          nn.Linear(36, 2))
    report = check_unmodified(model, (2, 1, 8, 8))
    assert [(f.rule, f.module) for f in report.findings] == [("layer-not-used", "2.proj")]


def test_a_detached_weight_is_the_layers_own_weight() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), DetachedAfterActivation(), nn.Flatten(), nn.Linear(144, 2))
    report = check_unmodified(model, (2, 1, 8, 8))
    assert [(f.rule, f.module) for f in report.findings] == [("parameter-without-gradient", "1")]
    assert "a .detach() in its forward" in report.findings[0].found


def test_a_batchnorm_shared_in_a_sequential_is_two_places_and_the_verdict_is_stable() -> None:
    bn = nn.BatchNorm2d(4)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), bn, nn.ReLU(), nn.Conv2d(4, 4, 3, bias=False), bn)
    first = check_unmodified(model, (4, 3, 10, 10))
    again = check_unmodified(model, (4, 3, 10, 10))
    assert [(f.rule, f.module) for f in first.findings] == [("bn-reused", "1")]
    assert "at 2 places" in first.findings[0].message
    assert first.findings == again.findings  # no line of the caller's code in the finding


def test_a_parameter_forward_never_reads_is_named_as_such() -> None:
    class ForgottenScale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 1, 3, 3))
            self.scale = nn.Parameter(torch.ones(4, 1, 1))  # forward forgets it

        def forward(self, x):
            return F.conv2d(x, self.weight, padding=1)

    model = nn.Sequential(ForgottenScale(), nn.ReLU(), nn.Flatten(), nn.Linear(256, 2))
    report = check_unmodified(model, (2, 1, 8, 8), checks=["parameter-without-gradient"])
    assert report.findings[0].module == "0"
    assert "no gradient reaches scale (4, 1, 1) (4 values): the layer ran, but no op of its forward reads it" \
        in report.findings[0].found
