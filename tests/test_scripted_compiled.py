"""TorchScript models are refused before anything touches them; torch.compile'd ones are checked through
the module they wrap, with the same findings as that module."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import cnncheck
from cnncheck.api import CheckError

# torch.jit.script/trace warn that they are deprecated, and tracing BatchNorm in train mode that the trace
# is input-specific; these tests make TorchScript models on purpose, only to see them refused
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning"),
              pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]

SHAPE = (2, 3, 8, 8)
NOT_TRACEABLE = ("a TorchScript module cannot be checked because its forward is compiled TorchScript code "
                 "that cnncheck cannot trace")


class ConvNet(nn.Module):
    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=bias), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, bool]]:
    """Every parameter and buffer (copied) and every module's training flag."""
    tensors = {key: value.detach().clone() for key, value in model.state_dict().items()}
    return tensors, {name: module.training for name, module in model.named_modules()}


def assert_unchanged(model: nn.Module, before: tuple[dict[str, torch.Tensor], dict[str, bool]]) -> None:
    tensors, flags = snapshot(model)
    assert tensors.keys() == before[0].keys()
    changed = [key for key, value in tensors.items() if not torch.equal(value, before[0][key])]
    assert changed == []
    assert flags == before[1]


def scripted(model: nn.Module) -> nn.Module:
    return torch.jit.script(model)


def traced(model: nn.Module) -> nn.Module:
    return torch.jit.trace(model, torch.randn(SHAPE))


@pytest.mark.parametrize(("make", "made_by"), [(scripted, "torch.jit.script"), (traced, "torch.jit.trace")],
                         ids=["script", "trace"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_torchscript_model_is_refused_and_left_unchanged(make: Any, made_by: str, mode: str) -> None:
    python_model = ConvNet(bias=True)
    model = make(python_model.train(mode == "train"))
    before = snapshot(model)
    with pytest.raises(CheckError) as info:
        cnncheck.check_model(model, SHAPE)
    text = str(info.value)
    assert text.startswith(f"cannot check ConvNet: it is a TorchScript module ({made_by} returned it)")
    assert NOT_TRACEABLE in text
    assert "Check the Python model before torch.jit.script/trace" in text
    assert "cnncheck.check_model(ConvNet(), shape)" in text
    assert_unchanged(model, before)
    assert model.training is (mode == "train")


def test_a_model_holding_a_scripted_layer_is_refused_by_that_layers_name() -> None:
    model = ConvNet(bias=True)
    model.features[0] = torch.jit.script(model.features[0])
    before = snapshot(model)
    with pytest.raises(CheckError) as info:
        cnncheck.check_model(model, SHAPE)
    text = str(info.value)
    # its hooks and functional calls are invisible to cnncheck, so the bias before BN would go unseen
    assert text.startswith(
        "cannot check ConvNet: its submodule 'features.0' (Conv2d from torch.jit.script) is a TorchScript module")
    assert NOT_TRACEABLE in text and "the rules would not see the layers inside it" in text
    assert "Check the Python model before torch.jit.script/trace" in text
    assert_unchanged(model, before)


def test_every_scripted_or_traced_layer_is_named_once() -> None:
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    block = nn.Sequential(nn.BatchNorm2d(4), nn.ReLU())
    model = nn.Sequential(torch.jit.script(conv), torch.jit.trace(block.eval(), torch.randn(2, 4, 8, 8)))
    with pytest.raises(CheckError) as info:
        cnncheck.check_model(model, SHAPE)
    text = str(info.value)
    assert ("its submodules '0' (Conv2d from torch.jit.script) and '1' (Sequential from torch.jit.trace) "
            "are TorchScript modules") in text
    assert "'1.0'" not in text  # the layers inside a traced block are part of it


def test_a_model_holding_a_compiled_layer_is_refused_without_compiling_it() -> None:
    model = nn.Sequential(torch.compile(nn.Conv2d(3, 4, 3, padding=1)), nn.BatchNorm2d(4))
    before = snapshot(model)
    with pytest.raises(CheckError) as info:
        cnncheck.check_model(model, SHAPE)
    text = str(info.value)
    assert text.startswith(
        "cannot check Sequential: its submodule '0' (wrapping a Conv2d) is compiled with torch.compile")
    assert "or compile the whole model instead" in text
    assert_unchanged(model, before)


def compiled_without_running(model: nn.Module, monkeypatch: pytest.MonkeyPatch) -> nn.Module:
    """torch.compile(model), whose forward fails the test if called: it would compile, slowly."""
    compiled = torch.compile(model)  # lazy: nothing is compiled until forward runs
    assert isinstance(compiled._orig_mod, type(model))  # torch.compile works here; no skip without it

    def forward(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("cnncheck ran the compiled forward")

    monkeypatch.setattr(compiled, "forward", forward)
    return compiled


def test_a_compiled_model_gets_the_findings_of_the_module_it_wraps(monkeypatch: pytest.MonkeyPatch) -> None:
    original = ConvNet(bias=True)
    expected = cnncheck.check_model(original, SHAPE)
    compiled = compiled_without_running(original, monkeypatch)
    before = snapshot(compiled)
    report = cnncheck.check_model(compiled, SHAPE)
    assert [f.rule for f in report.findings] == ["redundant-bias-before-bn"]
    assert report.findings == expected.findings
    assert report.outcomes == expected.outcomes
    assert report.model_name == "ConvNet"
    note = ("checked the module that torch.compile wraps (_orig_mod, ConvNet): "
            "cnncheck runs its Python forward, not the compiled graph")
    assert report.notes == [note, *expected.notes]
    assert_unchanged(compiled, before)


def test_a_compiled_clean_model_is_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled = compiled_without_running(ConvNet(bias=False).eval(), monkeypatch)
    before = snapshot(compiled)
    report = cnncheck.check_model(compiled, SHAPE)
    assert report.ok and report.findings == []
    assert "checked the module that torch.compile wraps (_orig_mod, ConvNet)" in str(report)
    assert_unchanged(compiled, before)
    assert compiled.training is False


def test_a_compiled_traced_model_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    model = compiled_without_running(traced(ConvNet(bias=True)), monkeypatch)
    before = snapshot(model)
    with pytest.raises(CheckError, match=r"^cannot check ConvNet: it is a TorchScript module \(torch.jit.trace"):
        cnncheck.check_model(model, SHAPE)
    assert_unchanged(model, before)
