"""The public API: assertions, formulas, reports, and clear errors for bad input."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from checking import PUBLIC_IDS
from torch import nn

import cnncheck
from cnncheck.api import CheckError, CheckFailed


def small() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 8 * 8, 3))


def test_clean_model_report_is_ok_and_says_so() -> None:
    report = cnncheck.check_model(small(), (4, 1, 8, 8))
    assert report.ok
    assert report.findings == []
    assert f"no findings ({len(PUBLIC_IDS)} rules)" in str(report)


def test_a_tensor_works_as_the_example_input() -> None:
    report = cnncheck.check_model(small(), torch.randn(2, 1, 8, 8))
    assert report.ok and report.input_shape == (2, 1, 8, 8)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((1, 32, 5), (5 * 5 * 1 + 1) * 32),
        ((32, 64, 5), (5 * 5 * 32 + 1) * 64),
        ((3, 64, (3, 5), 1, False), 3 * 5 * 3 * 64),
        ((32, 64, 3, 4), (3 * 3 * 8 + 1) * 64),
        ((32, 32, 3, 32, False), 9 * 32),
    ],
)
def test_conv_param_count_matches_pytorch(args, expected) -> None:
    assert cnncheck.conv_param_count(*args) == expected
    c_in, c_out, k, *rest = args
    groups = rest[0] if rest else 1
    bias = rest[1] if len(rest) > 1 else True
    layer = nn.Conv2d(c_in, c_out, k, groups=groups, bias=bias)
    assert sum(p.numel() for p in layer.parameters()) == expected


def test_conv_param_count_is_not_the_seed_posts_swapped_formula() -> None:
    # the post's "(N*M*L + 1) * K" with K input and L output channels: (5*5*32 + 1) * 1 = 801
    assert cnncheck.conv_param_count(1, 32, 5) == 832 != (5 * 5 * 32 + 1) * 1


def test_assertion_raises_check_failed_with_every_finding() -> None:
    from examples_loader import load_example

    model = load_example("mistakes").PlainListOfLayers()
    with pytest.raises(CheckFailed) as info:
        cnncheck.assert_bn_train_eval(model, (4, 3, 16, 16))
    assert isinstance(info.value, AssertionError)
    text = str(info.value)
    assert "bns[0]" in text and "bns[1]" in text and "F.dropout" in text
    assert "fix:" in text and "docs:" in text
    assert len(info.value.report.findings) == 3


def test_each_assertion_checks_only_its_concern() -> None:
    from examples_loader import load_example

    model = load_example("mistakes").BiasBeforeBatchNorm()
    cnncheck.assert_conv_params(model, (4, 3, 16, 16))
    cnncheck.assert_bn_per_channel(model, (4, 3, 16, 16))
    cnncheck.assert_pooling_parameter_free(model, (4, 3, 16, 16))
    with pytest.raises(CheckFailed, match="redundant-bias-before-bn"):
        cnncheck.assert_no_redundant_bias(model, (4, 3, 16, 16))
    with pytest.raises(CheckFailed):
        cnncheck.assert_cnn_correct(model, (4, 3, 16, 16))


def test_not_a_module_is_a_type_error_that_says_what_was_passed() -> None:
    with pytest.raises(TypeError, match=r"expects a torch.nn.Module, got type: .*Sequential"):
        cnncheck.check_model(nn.Sequential, (1, 1, 4, 4))
    with pytest.raises(TypeError, match="got str"):
        cnncheck.check_model("resnet18", (1, 3, 8, 8))


def test_forward_that_raises_gives_a_check_error_naming_model_shape_and_cause() -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("student bug")

    with pytest.raises(CheckError) as info:
        cnncheck.check_model(Broken(), (2, 3, 8, 8))
    message = str(info.value)
    assert "Broken.forward raised ValueError" in message and "2x3x8x8" in message and "student bug" in message
    assert isinstance(info.value.__cause__, ValueError)
    frames = []
    tb = info.value.__cause__.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    package = os.path.join(os.path.dirname(cnncheck.__file__), "")  # a checkout folder may be named cnncheck too
    assert frames and not any(f.startswith(package) for f in frames)
    assert frames[-1] == __file__


class ReluTwiceInPlace(nn.Module):
    """A model that runs but cannot be trained: the in-place ReLU overwrites the output the first ReLU
    saved for its backward. Its conv bias feeds the BatchNorm directly (redundant, when it can train)."""

    def __init__(self, in_place: bool = True) -> None:
        super().__init__()
        self.in_place = in_place
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        x = F.relu(x)
        return F.relu(x, inplace=self.in_place).mean((2, 3))


def test_a_backward_pass_that_fails_is_a_note_not_a_crash() -> None:
    """Found by the fuzz: autograd's in-place error surfaced as "internal error in rule
    redundant-bias-before-bn". The report says that training would crash; the other rules still run."""
    report = cnncheck.check_model(ReluTwiceInPlace(), (4, 3, 8, 8))
    assert report.crashes == []
    assert any("backward pass of ReluTwiceInPlace fails" in n and "modified by an inplace operation" in n
               for n in report.notes)
    assert "backward pass of ReluTwiceInPlace fails" in str(report)
    assert set(report.rules_run) == {r.id for r in cnncheck.all_rules()}
    trainable = cnncheck.check_model(ReluTwiceInPlace(in_place=False), (4, 3, 8, 8))
    assert trainable.notes == [] and {f.rule for f in trainable.findings} == {"redundant-bias-before-bn"}


def test_wrong_input_channels_is_a_clear_check_error() -> None:
    with pytest.raises(CheckError, match=r"Sequential.forward raised RuntimeError in 0 .* 4x3x8x8"):
        cnncheck.check_model(small(), (4, 3, 8, 8))


@pytest.mark.parametrize("shape", [(0, 1, 8, 8), (4,), (4, -1, 8, 8)])
def test_invalid_shape_is_a_value_error(shape) -> None:
    with pytest.raises(ValueError, match="batch first"):
        cnncheck.check_model(small(), shape)


def test_bad_example_input_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="example_input"):
        cnncheck.check_model(small(), "4x1x8x8")


def test_lazy_modules_must_be_initialised_first() -> None:
    model = nn.Sequential(nn.LazyConv2d(4, 3), nn.ReLU())
    with pytest.raises(CheckError, match="lazy layers"):
        cnncheck.check_model(model, (2, 3, 8, 8))


def test_meta_device_model_is_refused_clearly() -> None:
    with torch.device("meta"):
        model = small()
    with pytest.raises(CheckError, match="meta device"):
        cnncheck.check_model(model, (2, 1, 8, 8))


def test_unknown_rule_id_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown cnncheck rule 'conv-param-formla'"):
        cnncheck.check_model(small(), (2, 1, 8, 8), checks=["conv-param-formla"])


def test_rule_prefix_selects_every_bn_rule() -> None:
    report = cnncheck.check_model(small(), (2, 1, 8, 8), checks=["bn"])
    assert report.rules_run == ("bn-not-per-channel", "bn-train-behaviour", "bn-eval-behaviour", "bn-reused")


def test_dict_and_namedtuple_outputs_are_handled() -> None:
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, bias=False)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            y = F.relu(self.bn(self.conv(x)))
            return {"logits": y.mean(dim=(2, 3)), "aux": (y.amax(dim=(2, 3)), y)}

    assert cnncheck.check_model(TwoHeads(), (2, 3, 8, 8)).ok


def test_several_tensor_inputs_are_passed_positionally() -> None:
    class Fuse(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.b = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.a(x) + self.b(y)

    report = cnncheck.check_model(Fuse(), (torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)))
    assert report.ok


def test_report_table_lists_rule_module_and_fix() -> None:
    from examples_loader import load_example

    report = cnncheck.check_model(load_example("seed_convnet").ConvNet(), (4, 1, 28, 28))
    text = str(report)
    assert text.splitlines()[1].split() == ["rule", "module", "severity", "what", "is", "wrong"]
    assert "feature-size-mismatch  fc1" in text
    assert "fix:" in text and "docs:     cnncheck rules feature-size-mismatch" in text


def test_importing_cnncheck_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, cnncheck; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
