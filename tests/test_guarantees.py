"""The promises every check keeps: the model is untouched, RNGs restored, verdicts deterministic."""

from __future__ import annotations

import importlib.util
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import cnncheck
from cnncheck import preserve

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _example_models():
    models = []
    for name in ("mistakes", "seed_convnet", "seed_convnet_fixed"):
        module = _load(name)
        for attr, value in vars(module).items():
            spec = getattr(value, "__cnncheck__", None)
            if spec is not None and "__cnncheck__" in vars(value):
                models.append(pytest.param(value, spec.input_shape, id=f"{name}.{attr}"))
    return models


class FrozenHalf(nn.Module):
    """Frozen first half, stale gradients and an eval-mode submodule: all must survive a check."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(8, 2))
        for p in self.features.parameters():
            p.requires_grad_(False)
        self.head[1].weight.grad = torch.full_like(self.head[1].weight, 7.0)
        self.head[0].eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def _snapshot(model: nn.Module) -> dict:
    state = {}
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        state[name] = (t.detach().clone(), t.requires_grad, None if t.grad is None else t.grad.clone(), t)
    flags = {name: m.training for name, m in model.named_modules()}
    return {"tensors": state, "flags": flags}


def _assert_unchanged(model: nn.Module, before: dict) -> None:
    after = _snapshot(model)
    assert after["flags"] == before["flags"]
    assert after["tensors"].keys() == before["tensors"].keys()
    for name, (value, requires_grad, grad, obj) in before["tensors"].items():
        now_value, now_requires_grad, now_grad, now_obj = after["tensors"][name]
        assert now_obj is obj, f"{name} was replaced"
        assert torch.equal(now_value, value), f"{name} changed"
        assert now_requires_grad == requires_grad, f"{name}.requires_grad changed"
        assert (grad is None) == (now_grad is None), f"{name}.grad appeared or vanished"
        if grad is not None:
            assert torch.equal(grad, now_grad), f"{name}.grad changed"


MODELS = [
    *_example_models(),
    pytest.param(FrozenHalf, (4, 3, 10, 10), id="frozen-half"),
    pytest.param(lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval(), (2, 3, 8, 8), id="eval-mode"),
]


@pytest.mark.parametrize(("factory", "shape"), MODELS)
def test_model_and_global_state_are_bit_identical_after_a_check(factory, shape) -> None:
    torch.manual_seed(123)
    model = factory()
    before = _snapshot(model)
    np.random.seed(5)
    random.seed(9)
    torch_rng, numpy_rng, python_rng = torch.get_rng_state(), np.random.get_state(), random.getstate()
    tf32 = torch.backends.cudnn.allow_tf32

    cnncheck.check_model(model, shape)

    _assert_unchanged(model, before)
    assert torch.equal(torch.get_rng_state(), torch_rng)
    after_numpy = np.random.get_state()
    assert after_numpy[0] == numpy_rng[0] and np.array_equal(after_numpy[1], numpy_rng[1])
    assert random.getstate() == python_rng
    assert torch.backends.cudnn.allow_tf32 == tf32


@pytest.mark.parametrize(("factory", "shape"), MODELS)
def test_two_checks_give_the_same_findings(factory, shape) -> None:
    first = cnncheck.check_model(factory(), shape)
    second = cnncheck.check_model(factory(), shape)
    assert first.findings == second.findings


def test_a_model_whose_forward_mutates_its_own_buffers_is_restored() -> None:
    class Counter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            self.calls = self.calls * 1  # replaces the buffer object as well
            return self.conv(x)

    model = Counter()
    before = _snapshot(model)
    cnncheck.check_model(model, (2, 1, 6, 6))
    _assert_unchanged(model, before)


def test_tied_weights_are_counted_once() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(4, 4, 3, padding=1)
            self.b = nn.Conv2d(4, 4, 3, padding=1)
            self.b.weight = self.a.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.relu(self.a(x)))

    model = Tied()
    counted = sum(layer.count for layer in cnncheck.model_param_formulas(model))
    assert counted == sum(p.numel() for p in model.parameters())
    assert counted == 4 * 4 * 9 + 4 + 4


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="CUDA is not available on this machine"))])
def test_checks_run_on_the_requested_device_and_leave_the_model_where_it_was(device) -> None:
    model = _load("mistakes").BiasBeforeBatchNorm()
    report = cnncheck.check_model(model, (4, 3, 16, 16), device=device)
    assert report.device.startswith(device)
    assert {(f.rule, f.module) for f in report.findings} == {("redundant-bias-before-bn", "conv")}
    assert all(p.device.type == "cpu" for p in model.parameters())


CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                      reason="CUDA is not available on this machine"))


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize(("factory", "shape"), _example_models())
def test_every_example_gets_the_same_verdict_on_every_device(factory, shape, device) -> None:
    reference = cnncheck.check_model(factory(), shape)
    on_device = cnncheck.check_model(factory(), shape, device=device)
    assert [(f.rule, f.module) for f in on_device.findings] == [(f.rule, f.module) for f in reference.findings]
    model = factory().to(device)
    before = _snapshot(model)
    cnncheck.check_model(model, shape)  # default: where the model's parameters are
    _assert_unchanged(model, before)


def test_a_forward_that_runs_too_many_ops_is_recorded_up_to_a_bound(monkeypatch) -> None:
    """A forward that loops (for ever, until the grading timeout) must not grow memory without bound:
    the trace stops recording at a bound, and the report says the rules saw only part of forward."""
    import cnncheck.trace as trace

    class Looping(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            x = self.conv(x)
            for _ in range(3000):
                x = x + 0.0
            return x.mean((2, 3))

    monkeypatch.setattr(trace, "MAX_NODES", 500)
    model = Looping()
    modules = trace.module_inventory(model)
    traced = trace.run_trace(model, (torch.randn(2, 3, 8, 8),), modules)
    assert traced.truncated and len(traced.nodes) <= 500
    report = cnncheck.check_model(model, (2, 3, 8, 8))
    assert any("ran more ops than cnncheck records" in note for note in report.notes), report.notes


def test_a_check_on_cpu_leaves_the_float32_precision_switches_alone() -> None:
    """torch 2.14: setting torch.backends.cuda.matmul.allow_tf32, even to its default, sets the CUDA
    matmul precision to 'ieee', after which every CPU conv of the process runs about 2x slower (the
    user's own training too). A CPU check never touches the switches."""
    precision = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    cnncheck.check_model(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), (2, 3, 8, 8))
    assert getattr(torch.backends.cuda.matmul, "fp32_precision", None) == precision


def test_a_check_pauses_the_garbage_collector_and_restores_it() -> None:
    import gc

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    assert gc.isenabled()
    cnncheck.check_model(model, (2, 3, 8, 8))
    assert gc.isenabled()
    gc.disable()
    try:
        cnncheck.check_model(model, (2, 3, 8, 8))
        assert not gc.isenabled()  # a caller that had it off gets it back off
    finally:
        gc.enable()


# -- large parameters are copied on their first write (preserve.LAZY_BYTES): every way to write one --------
@pytest.fixture
def small_lazy_threshold(monkeypatch):
    """1 MiB instead of 16: the weights of these models stay small, and above the threshold."""
    monkeypatch.setattr(preserve, "LAZY_BYTES", 1 << 20)
def _scale_in_place(w):
    with torch.no_grad():
        w.mul_(0.5)


def _clamp_data(w):
    w.data.clamp_(-0.01, 0.01)


def _replace_data(w):
    w.data = w.data * 2  # new storage: the parameter must get its own memory back


def _init_again(w):
    nn.init.normal_(w)


def _set_item(w):
    with torch.no_grad():
        w[0] = 0.0


def _write_a_view(w):
    with torch.no_grad():
        w.view(-1)[:10].zero_()


def _write_through_numpy(w):
    w.detach().numpy()[0, 0] = 123.0


def _foreach(w):
    with torch.no_grad():
        torch._foreach_mul_([w], 3.0)


def _out_argument(w):
    with torch.no_grad():
        torch.mul(w, 2.0, out=w)


WRITES = [_scale_in_place, _clamp_data, _replace_data, _init_again, _set_item, _write_a_view, _write_through_numpy,
          _foreach, _out_argument]


class _WritesItsWeight(nn.Module):
    """A head with a 2 MiB weight (above preserve.LAZY_BYTES) that its forward writes, in train mode, in
    eval mode only (the light eval pass and the one-sample pass), or in a pool and a dropout of its own
    that the rules' probes call again."""

    def __init__(self, write, when: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1024, 1)
        self.fc = nn.Linear(1024, 512)
        self.write, self.when = write, when

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alone = x.shape[0] == 1 and not self.training  # only the one-sample eval pass, outside the tracer
        if self.when == "always" or (self.when == "eval" and not self.training) or (self.when == "alone" and alone):
            self.write(self.fc.weight)
        return self.fc(self.conv(x).mean((2, 3)))


class _WritingPool(nn.Module):
    def __init__(self, write, only_when_probed: bool) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(512, 1024))
        self.write, self.only_when_probed = write, only_when_probed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.only_when_probed or x.shape[0] > 2:  # the channel probes run a batch of blocks
            self.write(self.table)
        return torch.nn.functional.max_pool2d(x, 2)


class _WritingDropout(nn.Module):
    """A dropout written out (placed by its ``p``: its ops are a mask, which the mode rule probes by calling it
    again) that writes the next Linear's weight, since a dropout owns no parameters."""

    def __init__(self, write, only_when_probed: bool, victim: nn.Linear) -> None:
        super().__init__()
        self.p, self.write, self.only_when_probed = 0.5, write, only_when_probed
        object.__setattr__(self, "victim", victim)  # not a child: this stays a dropout, not a block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.only_when_probed or bool((x >= 1).all()):  # the eval probe's input has no small values
            self.write(self.victim.weight)
        return x * (torch.rand_like(x) > self.p) / (1 - self.p) if self.training else x


@pytest.mark.parametrize("write", WRITES, ids=lambda f: f.__name__.lstrip("_"))
@pytest.mark.parametrize("where", ["always", "eval", "alone", "pool", "pool-probe", "dropout", "dropout-probe"])
def test_a_large_parameter_that_forward_writes_is_restored(write, where, small_lazy_threshold) -> None:
    torch.manual_seed(0)
    if where in ("always", "eval", "alone"):
        model = _WritesItsWeight(write, where)
    elif where.startswith("pool"):
        model = nn.Sequential(nn.Conv2d(3, 4, 3), _WritingPool(write, where.endswith("probe")), nn.Flatten(),
                              nn.Linear(4 * 3 * 3, 2))
    else:
        head = nn.Linear(4 * 6 * 6, 2048)
        model = nn.Sequential(nn.Conv2d(3, 4, 3), _WritingDropout(write, where.endswith("probe"), head), nn.Flatten(),
                              head)
    names = {"pool": "1.table", "pool-probe": "1.table", "dropout": "3.weight", "dropout-probe": "3.weight"}
    big = dict(model.named_parameters())[names.get(where, "fc.weight")]
    assert big.nbytes >= preserve.LAZY_BYTES
    before = _snapshot(model)
    storage = big.untyped_storage().data_ptr()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # 'could not be restored' would be a failure here
        report = cnncheck.check_model(model, (2, 3, 8, 8))
    assert not report.crashes, report.crashes
    _assert_unchanged(model, before)
    assert big.untyped_storage().data_ptr() == storage


def test_large_parameters_that_nothing_writes_are_not_copied(monkeypatch, small_lazy_threshold) -> None:
    """The point of copying on first write: vgg11_bn's 0.5 GB of weights are not cloned by a check."""
    cloned = []
    original = torch.Tensor.clone

    def counting_clone(self, *args, **kwargs):
        if self.nbytes >= preserve.LAZY_BYTES:
            cloned.append(tuple(self.shape))
        return original(self, *args, **kwargs)

    model = nn.Sequential(nn.Conv2d(3, 1024, 1), nn.Flatten(), nn.Linear(1024 * 4, 64))
    monkeypatch.setattr(torch.Tensor, "clone", counting_clone)
    cnncheck.check_model(model, (2, 3, 2, 2))
    assert (64, 4096) not in cloned
    assert not preserve._UNCOPIED  # nothing of a finished check is left waiting
