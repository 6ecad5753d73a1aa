"""cnncheck.architecture, the layer table, and the invariant assertions of a team's own tests."""

from __future__ import annotations

import json
import re
import textwrap

import pytest
import torch
from examples_loader import load_example
from torch import nn

import cnncheck
from cnncheck import CheckError, CheckFailed

pytest_plugins = ["pytester"]

SHAPE = (4, 1, 28, 28)


def _fixed():
    return load_example("seed_convnet_fixed").ConvNet()


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.cls = nn.Linear(8, 5)
        self.box = nn.Linear(8, 4)

    def forward(self, x):
        x = self.bn(self.stem(x)).mean(dim=(2, 3))
        return {"logits": self.cls(x), "boxes": (self.box(x), x)}


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 6, bias=False)
        self.head = nn.Linear(6, 6, bias=False)
        self.head.weight = self.embed.weight  # one tensor, two owners
        self.token = nn.Parameter(torch.zeros(6))  # a loose parameter of the model itself

    def forward(self, x):
        return self.head(self.embed(x) + self.token)


def test_the_table_follows_forward_with_shapes_counts_and_formulas() -> None:
    arch = cnncheck.architecture(_fixed(), SHAPE)
    assert [layer.name for layer in arch.where(kind="conv")] == ["layer1.0", "layer2.0"]
    conv = arch["layer1.0"]
    assert (conv.type, conv.output_shape, conv.params, conv.trainable) == ("Conv2d", (4, 32, 28, 28), 832, 832)
    assert (conv.formula, conv.formula_count) == ("(5*5*1 + 1) * 32", 832)
    assert arch["fc2"].output_shape == (4, 10) and arch.output_shape == (4, 10)
    assert arch.input_shape == SHAPE and arch.downsampling == 4  # 28x28 -> 7x7 before flattening
    assert arch.total_params == arch.trainable_params == sum(p.numel() for p in _fixed().parameters())
    assert arch.total_params == sum(layer.params for layer in arch)
    assert [layer.kind for layer in arch][:3] == ["conv", "other", "pool"]
    assert any(layer.kind == "function" and layer.output_shape == (4, 3136) for layer in arch)  # the reshape
    assert len(arch) == len(list(arch)) == len(arch.to_dict()["layers"])
    with pytest.raises(KeyError, match="has no layer named 'layer1.9'; did you mean"):
        arch["layer1.9"]


def test_to_dict_is_json_and_holds_every_field() -> None:
    data = json.loads(json.dumps(cnncheck.architecture(_fixed(), SHAPE).to_dict()))
    assert data["total_params"] == 3199106 and data["output_shape"] == [4, 10]
    assert data["layers"][0] == {"name": "layer1.0", "kind": "conv", "type": "Conv2d",
                                 "config": "1, 32, kernel_size=5, padding=2", "output_shape": [4, 32, 28, 28],
                                 "params": 832, "trainable": 832, "formula": "(5*5*1 + 1) * 32",
                                 "formula_count": 832, "status": None}


def test_the_text_is_stable_across_seeds_and_instances() -> None:
    torch.manual_seed(0)
    first = cnncheck.architecture(_fixed(), SHAPE)
    torch.manual_seed(1234)
    second = cnncheck.architecture(_fixed(), SHAPE)
    assert str(first) == str(second) and first == second
    text = str(first)
    assert not re.search(r"0x[0-9a-f]{6,}", text) and "/" not in text and ".py" not in text
    assert text.splitlines()[0] == ("ConvNet on input 4x1x28x28: output 4x10, 3199106 parameters "
                                    "(3199106 trainable), downsampling 4x")
    changed = load_example("seed_convnet").ConvNet()  # stride 5: a different architecture
    assert cnncheck.architecture(changed.layer1, SHAPE) != cnncheck.architecture(_fixed().layer1, SHAPE)


def test_a_shared_parameter_is_counted_once_at_its_first_owner_and_loose_ones_have_a_row() -> None:
    arch = cnncheck.architecture(Tied(), (2, 6))
    assert arch.total_params == 36 + 6
    assert arch["embed"].params == 36 and arch["head"].params == 0
    assert arch["<model>"].kind == "parameters" and arch["<model>"].params == 6
    frozen = Tied()
    frozen.embed.weight.requires_grad_(False)
    assert cnncheck.architecture(frozen, (2, 6)).trainable_params == 6


def test_several_outputs_give_a_structure_of_shapes() -> None:
    arch = cnncheck.architecture(TwoHeads(), (2, 3, 16, 16))
    assert arch.output_shape == {"logits": (2, 5), "boxes": ((2, 4), (2, 8))}
    assert arch.downsampling == 2
    assert "output {logits: 2x5, boxes: (2x4, 2x8)}" in str(arch)


def test_the_model_is_left_as_it_was() -> None:
    model = _fixed().train()
    model.fc1.weight.grad = torch.ones_like(model.fc1.weight)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    cnncheck.architecture(model, SHAPE)
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert torch.equal(model.fc1.weight.grad, torch.ones_like(model.fc1.weight))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")
def test_on_cuda_a_copy_runs_and_the_model_stays_where_it_was() -> None:
    model = _fixed()
    arch = cnncheck.architecture(model, SHAPE, device="cuda")
    assert arch == cnncheck.architecture(model, SHAPE)  # the same table on either device
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_a_layer_used_through_its_parameters_is_not_called_not_run() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(6, 6)
            self.unused = nn.Linear(6, 6)

        def forward(self, x):
            return nn.functional.linear(x, self.qkv.weight, self.qkv.bias)

    arch = cnncheck.architecture(Functional(), (2, 6))
    assert arch["qkv"].status == "not called; forward uses its parameters" and arch["qkv"].params == 42
    assert arch["unused"].status == "not run by forward"


def test_a_forward_that_raises_is_a_check_error_naming_the_model() -> None:
    with pytest.raises(CheckError, match=r"ConvNet.forward does not run on 4x1x28x28: RuntimeError: mat1 and mat2"):
        cnncheck.architecture(load_example("seed_convnet").ConvNet(), SHAPE)
    with pytest.raises(TypeError, match="expects a torch.nn.Module, got str"):
        cnncheck.architecture("resnet", SHAPE)  # type: ignore[arg-type]


def test_explain_prints_the_same_table() -> None:
    from cnncheck.explain import explain_model

    text = explain_model(_fixed(), SHAPE).render()
    assert text.startswith(str(cnncheck.architecture(_fixed(), SHAPE)) + "\n")
    assert text.endswith("sum(p.numel()) = 3199106 (matches)")


# -- assertions ----------------------------------------------------------------------------------------------
def test_assert_param_count_passes_and_fails_saying_by_how_much_and_where() -> None:
    model = _fixed()
    assert cnncheck.assert_param_count(model, 3199106, max=4_000_000, min=1, trainable=3199106) == 3199106
    with pytest.raises(CheckFailed) as failed:
        cnncheck.assert_param_count(model, max=1_000_000)
    assert str(failed.value) == ("ConvNet has 3199106 parameters, expected at most 1000000 (2199106 too many); "
                                 "the largest layers: fc1 Linear 3137000 (98.1%), layer2.0 Conv2d 51264 (1.6%), "
                                 "fc2 Linear 10010 (0.3%)")
    assert failed.value.report is None
    with pytest.raises(CheckFailed, match=r"3199106 parameters, expected 3199000 \(106 more\)"):
        cnncheck.assert_param_count(model, 3199000)
    with pytest.raises(CheckFailed, match=r"expected at least 4000000 \(800894 too few\)"):
        cnncheck.assert_param_count(model, min=4_000_000)
    model.layer1.requires_grad_(False)
    with pytest.raises(CheckFailed, match=r"3198274 trainable parameters, expected 3199106 \(832 fewer; 832 are frozen\)"):
        cnncheck.assert_param_count(model, trainable=3199106)
    with pytest.raises(TypeError, match="give expected, max, min or trainable"):
        cnncheck.assert_param_count(model)


def test_assert_output_shape_with_free_dimensions_and_several_outputs() -> None:
    assert cnncheck.assert_output_shape(_fixed(), SHAPE, (None, 10)).output_shape == (4, 10)
    with pytest.raises(CheckFailed) as failed:
        cnncheck.assert_output_shape(_fixed(), SHAPE, (None, 1000))
    assert str(failed.value) == ("ConvNet's output on input 4x1x28x28 has shape 4x10, expected *x1000: dimension 1 "
                                 "is 10, not 1000; the last layer is fc2 Linear(in_features=1000, out_features=10)")
    with pytest.raises(CheckFailed, match=r"expected 4x10x1 \(2 dimensions, not 3\)"):
        cnncheck.assert_output_shape(_fixed(), SHAPE, (4, 10, 1))
    heads = TwoHeads()
    cnncheck.assert_output_shape(heads, (2, 3, 16, 16), {"logits": (None, 5), "boxes": ((None, 4), (None, 8))})
    with pytest.raises(CheckFailed, match=r"output on input 2x3x16x16\['boxes'\]\[0\] has shape 2x4, expected \*x5"):
        cnncheck.assert_output_shape(heads, (2, 3, 16, 16), {"logits": (None, 5), "boxes": ((None, 5), (None, 8))})


def test_assert_architecture_reports_every_broken_invariant() -> None:
    model = _fixed()
    arch = cnncheck.assert_architecture(model, SHAPE, max_params=4_000_000, output_shape=(None, 10), downsampling=4,
                                        no_kinds=("batch_norm",), clean=("bn", "redundant-bias-before-bn"))
    assert arch.total_params == 3199106
    with pytest.raises(CheckFailed) as failed:
        cnncheck.assert_architecture(model, SHAPE, max_params=1_000_000, output_shape=(None, 10), downsampling=2,
                                     no_kinds=("dropout",), clean=("conv-param-formula",))
    lines = str(failed.value).splitlines()
    assert lines[0] == "ConvNet does not hold its architecture invariants:"
    assert lines[1].startswith("  - has 3199106 parameters, expected at most 1000000 (2199106 too many)")
    assert lines[2] == "  - downsampling: 4, expected 2 (input 4x1x28x28, the last conv or pool gives 4x64x7x7 after layer2.2)"
    assert lines[3] == "  - no_kinds: forward runs 1 dropout layer(s): dropout Dropout(p=0.5)"
    assert len(lines) == 4  # the output shape and the clean rule hold


class Strided(nn.Module):
    """Two stride-2 convs on a 28x56 input: 7x14 after the second."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.body = nn.Conv2d(8, 16, 3, stride=2, padding=1)

    def forward(self, x):
        return nn.functional.dropout(self.body(self.stem(x)), 0.5).mean(dim=(2, 3))  # F.dropout: on in eval too


def test_what_a_reviewer_found_one_number_is_every_axis_and_kinds_are_checked() -> None:
    arch = cnncheck.assert_architecture(Strided(), (2, 1, 28, 56), downsampling=(4, 4))
    assert arch.downsampling == 4
    cnncheck.assert_architecture(Strided(), (2, 1, 28, 56), downsampling=4)
    with pytest.raises(CheckFailed, match=r"no_kinds: forward runs 1 dropout layer"):  # the functional one too
        cnncheck.assert_architecture(Strided(), (2, 1, 28, 56), no_kinds="dropout")  # one string: one kind
    with pytest.raises(ValueError, match="unknown layer kind.s. 'batchnorm'; the kinds are conv, pool, batch_norm"):
        cnncheck.assert_architecture(Strided(), (2, 1, 28, 56), no_kinds=("batchnorm",))
    with pytest.raises(ValueError, match="unknown layer kind"):
        arch.where(kind="Dropout")
    with pytest.raises(ValueError, match="min=10 is more than max=5"):
        cnncheck.assert_param_count(Strided(), min=10, max=5)
    with pytest.raises(TypeError, match="expected must be a whole number of parameters, got str"):
        cnncheck.assert_param_count(Strided(), "1450")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="give a tuple of sizes, None for any size"):
        cnncheck.assert_output_shape(Strided(), (2, 1, 28, 56), None)
    with pytest.raises(CheckFailed, match="is one tensor of shape 2x16, expected 2 outputs"):
        cnncheck.assert_output_shape(Strided(), (2, 1, 28, 56), ((None, 16), (None, 16)))


def test_a_strided_conv_s_1x1_map_counts_and_a_global_pool_s_does_not() -> None:
    tvm = pytest.importorskip("torchvision.models")
    assert cnncheck.architecture(tvm.resnet18(num_classes=10), (2, 3, 32, 32)).downsampling == 32  # layer4: 1x1
    assert cnncheck.architecture(tvm.resnet18(), (1, 3, 224, 224)).downsampling == 32  # avgpool's 1x1 is not


def test_rows_follow_forward_and_a_module_run_twice_has_a_row_per_call() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(3, 3, 3, stride=2, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.scale = nn.Parameter(torch.ones(3, 1, 1))  # a loose parameter, used after the second pool

        def forward(self, x):
            return self.pool(self.c(self.pool(self.c(x)))) * self.scale

    arch = cnncheck.architecture(Twice(), (1, 3, 64, 64))
    assert [layer.name for layer in arch] == ["c", "pool", "c[2]", "pool[2]", ""]
    assert arch["c[2]"].output_shape == (1, 3, 8, 8) and arch["c[2]"].params == 0
    assert arch.total_params == sum(layer.params for layer in arch) == 84 + 3


def test_the_text_has_no_address_and_no_folder_even_when_a_repr_prints_them() -> None:
    class MyConv(nn.Conv2d):
        def extra_repr(self) -> str:
            return super().extra_repr() + f", init={nn.init.kaiming_normal_}, source={__file__}"

    text = str(cnncheck.architecture(nn.Sequential(MyConv(3, 4, 3)), (1, 3, 8, 8)))
    assert "0x" not in text and "/" not in text
    assert "init=<function kaiming_normal_>, source=test_architecture.py" in text


def test_compiled_models_are_counted_as_their_module() -> None:
    compiled = torch.compile(_fixed())
    with pytest.raises(CheckFailed, match=r"^ConvNet has 3199106 parameters.*the largest layers: fc1 Linear"):
        cnncheck.assert_param_count(compiled, max=10)


def test_assert_architecture_requires_clean_rules_to_have_checked() -> None:
    biased = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(CheckError):  # not ready: the lazy layer has no shape yet
        cnncheck.assert_architecture(biased, SHAPE, clean=("redundant-bias-before-bn",))
    biased = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(CheckFailed, match=r"clean: redundant-bias-before-bn \[warning\] 0: the bias of Conv2d '0'"):
        cnncheck.assert_architecture(biased, SHAPE, clean=("redundant-bias-before-bn",))


def test_unknown_invariants_are_refused_where_they_are_declared() -> None:
    with pytest.raises(TypeError, match="unknown invariant.s. max_param; the invariants are params, max_params"):
        cnncheck.model(input_shape=SHAPE, max_param=10)
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_param'"):
        cnncheck.assert_architecture(_fixed(), SHAPE, max_param=10)  # type: ignore[call-arg]


def test_the_invariants_are_one_list() -> None:
    import inspect

    from cnncheck.declare import INVARIANTS

    keywords = [p for p, v in inspect.signature(cnncheck.assert_architecture).parameters.items()
                if v.kind is v.KEYWORD_ONLY and p != "device"]
    assert tuple(keywords) == INVARIANTS


# -- pytest: snapshots and the invariants item ---------------------------------------------------------------
NET = textwrap.dedent("""
    import torch
    from torch import nn
    import cnncheck

    K = {k}

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 8, K, padding=K // 2, bias=False)
            self.bn1 = nn.BatchNorm2d(8)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(self.bn1(self.conv1(x)).mean(dim=(2, 3)))


    def test_architecture(cnncheck_snapshot):
        assert cnncheck.architecture(Net(), (2, 1, 28, 28)) == cnncheck_snapshot
""")


def test_a_snapshot_is_created_passes_then_names_the_changed_layer(pytester: pytest.Pytester) -> None:
    pytest.importorskip("syrupy")
    pytester.makepyfile(test_arch=NET.format(k=3))
    pytester.runpytest("-p", "no:randomly", "--snapshot-update").assert_outcomes(passed=1)
    stored = pytester.path / "__snapshots__" / "test_arch" / "test_architecture.txt"
    assert stored.read_text().startswith("Net on input 2x1x28x28: output 2x10, 178 parameters")
    pytester.runpytest("-p", "no:randomly").assert_outcomes(passed=1)
    pytester.makepyfile(test_arch=NET.format(k=5))
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*the architecture changed:*",
                                 "*conv1: kernel_size 3 -> 5, padding 1 -> 2, params 72 -> 200*",
                                 "*model: 178 parameters (178 trainable) -> 306 parameters (306 trainable)*"])


DECLARED = textwrap.dedent("""
    from torch import nn
    import cnncheck


    @cnncheck.model(input_shape=(2, 1, 28, 28), max_params=1000, output_shape=(None, 10), no_kinds=("dropout",))
    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, 10)

        def forward(self, x):
            return self.fc(self.bn(self.conv(x)).mean(dim=(2, 3)))


    @cnncheck.model(input_shape=(2, 1, 28, 28), output_shape=(None, 12), no_kinds=("dropout",))
    class Dropped(Small):
        def __init__(self):
            super().__init__()
            self.drop = nn.Dropout()

        def forward(self, x):
            return self.drop(super().forward(x))


    class Plain(Small):
        pass
""")


def test_declared_invariants_become_one_item_per_model_and_device(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(models=DECLARED)
    pytester.makeini("[pytest]\ncnncheck_models =\n    models.py::Plain 2,1,28,28 max_params=10 downsampling=1\n")
    result = pytester.runpytest("--cnncheck", "-p", "no:randomly", "-v", "models.py")
    result.stdout.fnmatch_lines(["*models.py::Small::invariants[[]cpu[]] PASSED*",
                                 "*models.py::Dropped::invariants[[]cpu[]] FAILED*",
                                 "*models.py::Plain::invariants[[]cpu[]] FAILED*"])
    out = result.stdout.str()
    assert "output_shape: its output on input 2x1x28x28 has shape 2x10, expected *x12: dimension 1 is 10, not 12" in out
    assert "no_kinds: forward runs 1 dropout layer(s): drop Dropout(p=0.5)" in out
    assert "Plain does not hold its architecture invariants:\n  - has 94 parameters, expected at most 10" in out
    result.stdout.fnmatch_lines(["cnncheck: architecture invariants: 2 broken, 1 held"])
    assert "Traceback" not in out


def test_a_parameter_count_invariant_needs_no_input_shape(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(models=DECLARED.replace("@cnncheck.model(input_shape=(2, 1, 28, 28), max_params=1000,"
                                                " output_shape=(None, 10), no_kinds=(\"dropout\",))",
                                                "@cnncheck.model(max_params=50)"))
    result = pytester.runpytest("--cnncheck", "-p", "no:randomly", "-v", "models.py")
    result.stdout.fnmatch_lines(["*models.py::Small::invariants[[]cpu[]] FAILED*"])
    assert "Small has 94 parameters, expected at most 50 (44 too many)" in result.stdout.str()


def test_an_invariant_the_ini_key_does_not_know_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(models=DECLARED)
    pytester.makeini("[pytest]\ncnncheck_models =\n    models.py::Plain max_param=10\n")
    result = pytester.runpytest("--cnncheck", "-p", "no:randomly")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown invariant 'max_param'; the invariants are params, max_params*"])
