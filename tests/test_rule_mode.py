"""mode-not-propagated: model.train()/model.eval() reaches every BN and dropout forward runs."""

from __future__ import annotations

import functools
import os

import checking
import models_bn
import pytest
from models_bn import (
    SHAPE,
    BNList,
    C,
    FrozenByEvalNoSuper,
    FunctionalBN2d,
    FunctionalDropoutNet,
    HandDropout,
    HardcodedBNBlock,
    ModeAwareBNBlock,
    ModeAwareDropoutNet,
    ModeAwareHandDropout,
    ModuleDictDropout,
    Plain,
    PlainDictDropout,
    PlainListBN,
    RandomMaskNet,
    ReluInPlainList,
    ResidualBlockNoSuper,
    SequentialResidual,
    TrainNoSuper,
    TrainWithSuper,
    WithBlock,
    WithDropout,
    marker_line,
)
from torch import nn

RULE = "mode-not-propagated"




run = functools.partial(checking.run, shape=SHAPE)
pairs = checking.pairs


def same_place(location: str | None, marker: str) -> bool:
    assert location is not None
    path, line = location.rsplit(":", 1)
    return os.path.realpath(path) == os.path.realpath(models_bn.__file__) and int(line) == marker_line(marker)


FLAGGED = [
    pytest.param(PlainListBN, {"bns[0]", "bns[1]"}, None,
                 ["kept in a plain Python container (bns)", "nn.ModuleList"], id="bns-in-plain-list-residual"),
    pytest.param(PlainDictDropout, {"layers['norm']", "layers['drop']"}, None,
                 ["plain Python container (layers)", "nn.ModuleDict"], id="bn-and-dropout-in-plain-dict"),
    pytest.param(TrainNoSuper, {"features.1", "drop"}, "TRAIN-NO-SUPER",
                 ["TrainNoSuper.train() is overridden and does not pass the mode on", "super().train(mode)"],
                 id="train-override-without-super"),
    pytest.param(ResidualBlockNoSuper, {"block.bn"}, "BLOCK-NO-SUPER",
                 ["block.train() is overridden and does not pass the mode on, so model.eval() never reaches block.bn"],
                 id="residual-block-train-override-without-super"),
    pytest.param(FrozenByEvalNoSuper, {"features.1", "drop"}, "FROZEN-NO-SUPER",
                 ["model.train() does not reach features.1", "training=True after model.train()"],
                 id="bn-eval-in-init-and-train-override-without-super"),
    pytest.param(lambda: WithBlock(HardcodedBNBlock()), {"block"}, "HARDCODED-BN",
                 ["F.batch_norm(...) in block.forward runs in training mode even after model.eval()",
                  "training=self.training"], id="residual-block-F.batch_norm-training-True"),
    pytest.param(FunctionalDropoutNet, {""}, "FUNCTIONAL-DROPOUT",
                 ["F.dropout(...) in FunctionalDropoutNet.forward runs in training mode",
                  "F.dropout defaults to training=True"], id="F.dropout-without-training-arg"),
    pytest.param(RandomMaskNet, {""}, "RANDOM-MASK",
                 ["torch.rand_like in RandomMaskNet.forward draws random numbers in eval mode"],
                 id="rand_like-mask-in-forward"),
    pytest.param(lambda: WithDropout(HandDropout()), {"drop"}, None,
                 ["HandDropout still drops activations in eval mode", "self.training"],
                 id="hand-dropout-ignores-self.training"),
]


@pytest.mark.parametrize(("factory", "modules", "marker", "fragments"), FLAGGED)
def test_mode_not_propagated_flagged(factory, modules, marker, fragments):
    report = run(factory())
    assert pairs(report, RULE) == {(RULE, m) for m in modules}, report.findings
    mine = [f for f in report.findings if f.rule == RULE]
    text = "\n".join(f"{f.message} | {f.expected} | {f.found} | {f.fix}" for f in mine)
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in:\n{text}"
    if marker is not None:
        for f in mine:
            assert same_place(f.location, marker), (f.module, f.location, marker_line(marker))
    # the mode leak is this rule's finding; the BN eval rule must not report it a second time
    assert pairs(report, "bn-eval-behaviour") == set(), report.findings


def test_hidden_list_layers_keep_their_names_and_error_severity():
    report = run(PlainListBN(), checks=[RULE])
    assert sorted(f.module for f in report.findings) == ["bns[0]", "bns[1]"]
    assert {str(f.severity) for f in report.findings} == {"error"}
    assert report.rules_run == (RULE,)


CLEAN = [
    pytest.param(BNList, id="modulelist-of-bn2d-residual"),
    pytest.param(ModuleDictDropout, id="moduledict-bn-and-dropout"),
    pytest.param(TrainWithSuper, id="train-override-calling-super"),
    pytest.param(lambda: WithBlock(ModeAwareBNBlock()), id="residual-block-F.batch_norm-training-self.training"),
    pytest.param(ModeAwareDropoutNet, id="F.dropout-training-self.training"),
    pytest.param(lambda: WithDropout(ModeAwareHandDropout()), id="hand-dropout-checks-self.training"),
    pytest.param(lambda: WithDropout(nn.Dropout(0.5)), id="builtin-dropout"),
    pytest.param(SequentialResidual, id="sequential-residual-bn-dropout2d"),
    pytest.param(ReluInPlainList, id="relu-in-plain-list"),
    pytest.param(lambda: Plain(FunctionalBN2d(C)), id="hand-bn-F.batch_norm-self.training"),
]


@pytest.mark.parametrize("factory", CLEAN)
def test_mode_lookalikes_clean(factory):
    report = run(factory())
    assert report.findings == [], report.findings


def test_mode_restored_after_check():
    model = TrainNoSuper()
    flags = {n: m.training for n, m in model.named_modules()}
    run(model, checks=[RULE])
    assert {n: m.training for n, m in model.named_modules()} == flags
