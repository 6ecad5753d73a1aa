"""cnncheck on real architectures it was not written for: timm (one model per CNN family, random
weights, small inputs) and pytorchcv. Every finding must be a redundant bias read in the model's source
(``zoo_models.CONFIRMED``); no rule may crash; the model comes back unchanged.

The fast sample runs on every CI run; the whole zoo is ``slow``:
``.venv/bin/python -m pytest -m slow tests/test_zoo.py -n 2``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from checking import check_unmodified
from zoo_models import CONFIRMED, FAST_SAMPLE, ZOO, build, zoo_input_shape

REDUNDANT = "redundant-bias-before-bn"


def _built(name: str):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build(name)


def _verdict_holds(name: str) -> None:
    model = _built(name)
    report = check_unmodified(model, zoo_input_shape(name))
    assert report.crashes == [], report.crashes
    expected, why = CONFIRMED.get(name, (0, "no finding"))
    unexpected = [f for f in report.findings if f.rule != REDUNDANT]
    assert unexpected == [], "\n".join(f.render() for f in unexpected)
    assert len(report.findings) == expected, f"{why}\n{report}"


@pytest.mark.parametrize("name", FAST_SAMPLE)
def test_timm_sample(name: str) -> None:
    _verdict_holds(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for _, name in ZOO if name not in FAST_SAMPLE])
def test_timm_family(name: str) -> None:
    _verdict_holds(name)


def test_zoo_covers_the_families() -> None:
    families = {family for family, _ in ZOO}
    assert len(families) == len(ZOO) >= 80
    assert set(FAST_SAMPLE) <= {name for _, name in ZOO}
    assert set(CONFIRMED) <= {name for _, name in ZOO}


PYTORCHCV = [
    pytest.param("octresnet10_ad2", 0, id="octresnet-octconv-two-inputs"),
    pytest.param("shufflenetv2_wd2", 0, id="shufflenetv2-channel-shuffle"),
    pytest.param("bninception", 69, id="bninception-convs-keep-their-bias",
                 marks=pytest.mark.slow),  # bninception.py: conv blocks default to bias=True before BatchNorm2d
    pytest.param("diracnet18v2", 0, id="diracnet", marks=pytest.mark.slow),
    pytest.param("peleenet", 0, id="peleenet", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name, redundant", PYTORCHCV)
def test_pytorchcv(name: str, redundant: int) -> None:
    from pytorchcv import model_provider as provider  # a test dependency: missing is a failure, not a skip

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = provider.get_model(name, pretrained=False, num_classes=10)
    report = check_unmodified(model, (2, 3, 224, 224))
    assert report.crashes == []
    assert {f.rule for f in report.findings} <= {REDUNDANT}, str(report)
    assert len(report.findings) == redundant, str(report)


def _table_holds(name: str) -> None:
    """The layer table of a real architecture: every parameter in exactly one row, the text the same for
    a second instance, and no layer called "not run" that forward ran (a norm written as a block of ops)."""
    import cnncheck
    from cnncheck.layer_table import NOT_RUN

    model, again = _built(name), _built(name)
    arch = cnncheck.architecture(model, zoo_input_shape(name))
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert arch.total_params == total == sum(layer.params for layer in arch)
    assert [layer.label for layer in arch if layer.status == NOT_RUN] == []
    assert str(arch) == str(cnncheck.architecture(again, zoo_input_shape(name)))


@pytest.mark.parametrize("name", FAST_SAMPLE)
def test_timm_sample_layer_table(name: str) -> None:
    _table_holds(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for _, name in ZOO if name not in FAST_SAMPLE])
def test_timm_family_layer_table(name: str) -> None:
    _table_holds(name)
