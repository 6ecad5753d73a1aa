"""Hand-written layers as tutorials and courses write them (``corpus_layers``): each flagged form gets
exactly its findings, each clean form none, and the model comes back as it was, plain tensor
attributes included."""

from __future__ import annotations

import corpus_layers as L
import pytest
import timm.layers
import torch
from checking import check_unmodified, rule_pairs
from torch import nn

SHAPE = (4, 3, 16, 16)
BN_TRAIN, MODE, CONV, POOL_PARAMS, BIAS = (
    "bn-train-behaviour", "mode-not-propagated", "conv-param-formula", "pool-has-parameters", "redundant-bias-before-bn")


def _line(text: str) -> str:
    """``corpus_layers.py:N`` of the first line containing ``text``."""
    with open(L.__file__, encoding="utf-8") as source:
        number = next(i for i, line in enumerate(source, 1) if text in line)
    return f"corpus_layers.py:{number}"


FLAGGED = [
    pytest.param(lambda: L.ConvNormNet(L.D2LBatchNorm(8, 4)),
                 {(MODE, "bn"): "torch.is_grad_enabled(), not self.training",
                  (BN_TRAIN, "bn"): "moving_var is updated with the biased batch variance"},
                 id="d2l-chapter-batchnorm-grad-mode-and-biased-running-var"),
    pytest.param(lambda: L.ConvNormNet(L.PortBatchNorm(8, 4)),
                 {(BN_TRAIN, "bn"): "(moving_mean, moving_var) are updated with their autograd history"},
                 id="dive-into-dl-pytorch-port-statistics-never-detached"),
    pytest.param(lambda: L.ConvNormNet(L.CS231nSpatialBatchNorm(8)),
                 {(BN_TRAIN, "bn"): "sigma2 is updated with the biased batch variance"},
                 id="cs231n-spatial-batchnorm-statistics-named-mu-sigma2"),
    pytest.param(lambda: L.ConvNormNet(nn.Identity(), L.Im2ColConv(3, 8, 3, padding=1, flatten_wrong=True)),
                 {(CONV, "conv"): "does not compute a convolution with its own weights"},
                 id="conv-by-unfold-reads-filters-in-the-wrong-order"),
    pytest.param(lambda: L.PoolNet(L.GeM()),
                 {(POOL_PARAMS, "pool"): "owns 1 learnable parameter(s)"}, id="gem-pooling-learnable-exponent"),
    pytest.param(lambda: L.ConvNormNet(nn.BatchNorm2d(8), L.Conv2dSame(3, 8, 3, stride=2)),
                 {(BIAS, "conv"): "cancelled by BatchNorm2d 'bn'"}, id="tf-same-conv-bias-before-bn"),
    pytest.param(lambda: L.ConvNormNet(nn.BatchNorm2d(8), L.WSConv2d(3, 8, 3, padding=1)),
                 {(BIAS, "conv"): "cancelled by BatchNorm2d 'bn'"}, id="weight-standardised-conv-bias-before-bn"),
    pytest.param(lambda: L.ConvNormNet(nn.BatchNorm2d(8, momentum=0.99)),
                 {(BN_TRAIN, "bn"): "momentum=0.99 is Keras' convention"}, id="stock-bn-keras-momentum"),
    pytest.param(lambda: L.ConvNormNet(nn.BatchNorm2d(8, 8, 3, 1)),
                 {(BN_TRAIN, "bn"): "eps=8"}, id="stock-bn-eps-and-momentum-by-position"),
    pytest.param(lambda: L.ConvNormNet(timm.layers.BatchNormAct2d(8, momentum=0.9, act_layer=nn.LeakyReLU)),
                 {(BN_TRAIN, "bn"): "momentum=0.9 is Keras' convention"}, id="timm-fused-bn-act-keras-momentum"),
]

CLEAN = [
    pytest.param(lambda: L.ConvNormNet(L.D2LBatchNormFixed(8, 4)), id="d2l-batchnorm-mode-from-training-unbiased"),
    pytest.param(lambda: L.ConvNormNet(L.CS231nSpatialBatchNorm(8, unbiased_running=True)),
                 id="cs231n-spatial-batchnorm-unbiased-running-var"),
    pytest.param(lambda: L.ConvNormNet(nn.Identity(), L.Im2ColConv(3, 8, 3, padding=1)), id="conv-by-unfold"),
    pytest.param(lambda: L.PoolNet(L.GeM(learn_p=False)), id="gem-pooling-fixed-exponent"),
    pytest.param(lambda: L.ConvNormNet(nn.BatchNorm2d(8), L.Conv2dSame(3, 8, 3, stride=2, bias=False)),
                 id="tf-same-conv-no-bias-before-bn"),
    pytest.param(lambda: L.ConvNormNet(nn.BatchNorm2d(8), L.WSConv2d(3, 8, 3, padding=1, bias=False)),
                 id="weight-standardised-conv"),
    pytest.param(lambda: L.ConvNormNet(nn.Identity(), L.ScaledWSConv2d(3, 8, 3, padding=1)),
                 id="scaled-weight-standardised-conv-with-gain"),
    pytest.param(lambda: L.ConvNormNet(timm.layers.BatchNormAct2d(8, act_layer=nn.LeakyReLU,
                                                                  act_kwargs={"negative_slope": 0.001})),
                 id="timm-fused-bn-leaky-relu-0.001"),
    pytest.param(lambda: L.ConvNormNet(nn.BatchNorm2d(8), timm.layers.StdConv2d(3, 8, 3, padding=1, bias=False)),
                 id="timm-std-conv"),
    pytest.param(lambda: L.ConvNormNet(nn.Identity(), L.RoutedCondConv(
                     timm.layers.CondConv2d(3, 8, 3, padding=1, num_experts=4), 3, 4)),
                 id="timm-condconv-experts-mixed-per-sample"),
    pytest.param(lambda: L.PoolNet(timm.layers.SelectAdaptivePool2d(pool_type="avgmax", flatten=True)),
                 id="timm-flattening-avgmax-pool"),
]


def _plain_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{name}.{attr}": value for name, m in model.named_modules()
            for attr, value in vars(m).items() if isinstance(value, torch.Tensor)}


def _checked(factory):
    torch.manual_seed(0)
    model = factory()
    tensors = _plain_tensors(model)
    copies = {k: v.clone() for k, v in tensors.items()}
    report = check_unmodified(model, SHAPE)
    after = _plain_tensors(model)
    assert after.keys() == tensors.keys()
    for key, value in tensors.items():
        assert after[key] is value and torch.equal(value, copies[key]), f"check_model changed {key}"
    assert report.crashes == [], report.crashes
    return report


@pytest.mark.parametrize("factory, expected", FLAGGED)
def test_real_world_layer_is_flagged(factory, expected):
    report = _checked(factory)
    assert rule_pairs(report) == set(expected), str(report)
    for (rule, module), fragment in expected.items():
        messages = [f.message for f in report.findings if (f.rule, f.module) == (rule, module)]
        assert any(fragment in m for m in messages), messages


@pytest.mark.parametrize("factory", CLEAN)
def test_real_world_layer_look_alike_is_clean(factory):
    report = _checked(factory)
    assert report.findings == [], str(report)


def test_d2l_grad_mode_finding_points_at_the_is_grad_enabled_line():
    report = _checked(lambda: L.ConvNormNet(L.D2LBatchNorm(8, 4)))
    finding = next(f for f in report.findings if f.rule == MODE)
    assert finding.location is not None
    assert finding.location.endswith(_line("if not torch.is_grad_enabled():"))
    assert "if not self.training" in (finding.fix or "")


def test_explain_counts_a_reparametrising_gain_beside_the_conv_formula():
    from cnncheck.explain import explain_model

    torch.manual_seed(0)
    table = explain_model(L.ConvNormNet(nn.Identity(), L.ScaledWSConv2d(3, 8, 3, padding=1)), SHAPE).render()
    assert "(3*3*3 + 1) * 8 + 8 (gain) = 232" in table
    assert "sum(p.numel()) = 322 (matches)" in table
    assert "conv (reparametrised)" in table


def test_explain_names_a_plain_conv_a_conv():
    from cnncheck.explain import explain_model

    torch.manual_seed(0)
    table = explain_model(L.ConvNormNet(nn.BatchNorm2d(8), L.Conv2dSame(3, 8, 3, bias=False)), SHAPE).render()
    assert "reparametrised" not in table and " conv " in table
