"""Real architectures: every torchvision classification model that builds offline with weights=None.

Each model must check clean (only the vgg*_bn convolutions, whose biases feed a BatchNorm, are
flagged), be left bit-identical by the check, and have, by formula, exactly the parameter count that
torchvision's weights metadata states (the metadata ships with torchvision: nothing is downloaded).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

tvm = pytest.importorskip("torchvision.models")

import cnncheck  # noqa: E402
from cnncheck.explain import total_param_count  # noqa: E402

REDUNDANT = "redundant-bias-before-bn"

# name: (builder kwargs, weights enum name, smallest square input side that the checks use).
# 32 is the floor: ResNets and friends run on 1x1 images, which would not exercise any spatial logic.
# AlexNet needs 63; Inception-v3's aux head (conv 5x5 after avg_pool(5, 3)) needs 299.
MODELS: dict[str, tuple[dict[str, Any], str, int]] = {
    "resnet18": ({}, "ResNet18_Weights", 32),
    "resnet34": ({}, "ResNet34_Weights", 32),
    "resnet50": ({}, "ResNet50_Weights", 32),
    "resnext50_32x4d": ({}, "ResNeXt50_32X4D_Weights", 32),
    "wide_resnet50_2": ({}, "Wide_ResNet50_2_Weights", 32),
    "vgg11": ({}, "VGG11_Weights", 32),
    "vgg11_bn": ({}, "VGG11_BN_Weights", 32),
    "vgg13_bn": ({}, "VGG13_BN_Weights", 32),
    "vgg16_bn": ({}, "VGG16_BN_Weights", 32),
    "vgg19_bn": ({}, "VGG19_BN_Weights", 32),
    "mobilenet_v2": ({}, "MobileNet_V2_Weights", 32),
    "mobilenet_v3_small": ({}, "MobileNet_V3_Small_Weights", 32),
    "mobilenet_v3_large": ({}, "MobileNet_V3_Large_Weights", 32),
    "densenet121": ({}, "DenseNet121_Weights", 32),
    "efficientnet_b0": ({}, "EfficientNet_B0_Weights", 32),
    "regnet_y_400mf": ({}, "RegNet_Y_400MF_Weights", 32),
    "shufflenet_v2_x0_5": ({}, "ShuffleNet_V2_X0_5_Weights", 32),
    "squeezenet1_0": ({}, "SqueezeNet1_0_Weights", 32),
    "convnext_tiny": ({}, "ConvNeXt_Tiny_Weights", 32),
    "mnasnet0_5": ({}, "MNASNet0_5_Weights", 32),
    # The published weights drop GoogLeNet's aux heads (num_params excludes them); init_weights=True
    # silences the FutureWarning about the default initialisation.
    "googlenet": ({"aux_logits": False, "init_weights": True}, "GoogLeNet_Weights", 32),
    # Inception-v3's published num_params includes AuxLogits; in train mode it returns the namedtuple
    # InceptionOutputs(logits, aux_logits), which the checks must handle.
    "inception_v3": ({"aux_logits": True, "init_weights": True}, "Inception_V3_Weights", 299),
    "alexnet": ({}, "AlexNet_Weights", 63),
}
PARAMS = [pytest.param(name, id=name) for name in MODELS]


def build(name: str) -> nn.Module:
    kwargs, _, _ = MODELS[name]
    builder: Callable[..., nn.Module] = getattr(tvm, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return builder(weights=None, **kwargs)


def expected_findings(name: str, model: nn.Module) -> set[tuple[str, str]]:
    """The findings each model must have, confirmed by reading torchvision's source:

    - vgg*_bn: every conv in ``features`` is followed directly by a BatchNorm, its bias cancelled;
    - efficientnet: every MBConv builds a ``StochasticDepth`` but ``MBConv.forward`` runs it only when
      ``use_res_connect`` (torchvision/models/efficientnet.py), so in the first block of each stage it is
      a layer forward never runs.
    """
    if name.startswith("vgg") and name.endswith("_bn"):
        return {
            (REDUNDANT, f"features.{sub}")
            for sub, m in model.features.named_modules()  # type: ignore[union-attr]
            if isinstance(m, nn.Conv2d)
        }
    if name.startswith("efficientnet"):
        from torchvision.models.efficientnet import MBConv

        return {("layer-not-used", f"{block_name}.stochastic_depth") for block_name, block in model.named_modules()
                if isinstance(block, MBConv) and not block.use_res_connect}
    return set()


@pytest.mark.parametrize("name", PARAMS)
def test_param_count_matches_torchvision_meta(name: str) -> None:
    try:
        with torch.device("meta"):  # the count comes from formulas: no weights need to exist
            model = build(name)
    except NotImplementedError:  # RegNet computes its widths with tensor ops that need real data
        model = build(name)
    expected = getattr(tvm, MODELS[name][1]).DEFAULT.meta["num_params"]
    assert total_param_count(model) == expected


@pytest.mark.parametrize("name", PARAMS)
def test_check_model_clean_and_model_untouched(name: str) -> None:
    model = build(name)
    side = MODELS[name][2]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]

    report = cnncheck.check_model(model, (2, 3, side, side))

    found = [(f.rule, f.module) for f in report.findings]
    assert not report.crashes, report.crashes
    assert len(found) == len(set(found)), found
    assert set(found) == expected_findings(name, model), str(report)
    after = model.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k, v in before.items() if not torch.equal(after[k], v)]
    assert not changed, f"check_model changed {changed}"
    assert [m.training for m in model.modules()] == modes


def test_inception_v3_train_output_is_a_namedtuple() -> None:
    """Guards the point of the inception_v3 case: check_model sees a namedtuple, not a tensor."""
    model = build("inception_v3").train()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 299, 299))
    assert isinstance(out, tuple) and hasattr(out, "_fields"), type(out)


@pytest.mark.parametrize("name", PARAMS)
def test_architecture_table_counts_what_torchvision_states(name: str) -> None:
    model = build(name)
    side = MODELS[name][2]
    arch = cnncheck.architecture(model, (1, 3, side, side))
    expected = getattr(tvm, MODELS[name][1]).DEFAULT.meta["num_params"]
    assert arch.total_params == expected == sum(layer.params for layer in arch)
    assert arch.output_shape == (1, 1000)
    assert all(layer.formula_count in (None, layer.params) or layer.kind == "parameters" for layer in arch), name
    assert str(arch) == str(cnncheck.architecture(build(name), (1, 3, side, side)))  # whatever the weights
