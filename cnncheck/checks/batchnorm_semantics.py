"""What a BatchNorm must compute, probed on a private copy of one layer: its statistics dims (by
dataflow), its train-mode output and running-stat update, its eval-mode output, and whether it
cancels a per-channel constant. The BN rules (``batchnorm.py``) and the redundant-bias rule ask these."""

from __future__ import annotations

from functools import partial
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from cnncheck.layers import affine_parameters, from_torch, running_buffers, statistic
from cnncheck.probes import mismatch, private_copy, same_randomness, tolerance

_FUSED_ACTIVATIONS = (
    F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.mish, F.elu, F.leaky_relu, torch.sigmoid, torch.tanh,
    partial(F.gelu, approximate="tanh"), partial(F.leaky_relu, negative_slope=0.1),
    partial(F.leaky_relu, negative_slope=0.2), partial(F.leaky_relu, negative_slope=0.3), F.selu, F.celu,
    F.softplus, F.hardsigmoid, F.hardtanh,
)


def conditioning(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Per channel, how much normalising amplifies the rounding of ``x``: max|x| / sqrt(var + eps).
    A constant channel (a dead ReLU) has variance 0, and its rounding grows by 1/sqrt(eps)."""
    dims = tuple(d for d in range(x.dim()) if d != 1)
    x64 = x.detach().double()
    view = [1, x.shape[1]] + [1] * (x.dim() - 2)
    return (1 + x64.abs().amax(dims) / torch.sqrt(x64.var(dims, unbiased=False) + eps)).reshape(view)


def normalised_input(y: torch.Tensor, normalise: Any, x: torch.Tensor, eps: float) -> torch.Tensor | None:
    """The tensor that ``y`` is ``normalise`` of: ``x`` itself, or ``x`` through a common activation
    when the layer applies one first (ReLU then BatchNorm in one forward); None when ``y`` is neither.
    An activation after the normalisation is accepted too: a fused BN+activation layer (timm's
    BatchNormAct2d) is a correct BatchNorm. Tolerances grow with how much normalising amplifies the
    rounding of each channel."""
    if mismatch(y, normalise(x), scale=conditioning(x, eps)) is None:
        return x
    for act in _FUSED_ACTIVATIONS:
        if mismatch(y, act(normalise(x)), scale=conditioning(x, eps)) is None:
            return x
        activated = act(x)
        if mismatch(y, normalise(activated), scale=conditioning(activated, eps)) is None:
            return activated
    return None


def matches_normalisation(y: torch.Tensor, normalise: Any, x: torch.Tensor, eps: float) -> bool:
    return normalised_input(y, normalise, x, eps) is not None


def is_stock_batchnorm(module: nn.Module) -> bool:
    """A torch BatchNorm whose ``forward`` is torch's own: correct by construction, no probe needed."""
    return isinstance(module, _BatchNorm) and from_torch(module)


def _fresh_train_call(module: nn.Module, inp: torch.Tensor, dtype: torch.dtype | None = None,
                      neutral_affine: bool = False) -> Any:
    """One train-mode call of a fresh copy of ``module`` (buffers untouched by earlier probe calls),
    with the same random numbers as every other probe call; gamma=1 and beta=0 if ``neutral_affine``."""
    layer = private_copy(module).train()
    if dtype is not None:
        layer = layer.to(dtype)
    if neutral_affine:
        with torch.no_grad():
            for affine, neutral in zip(affine_parameters(layer, inp.shape[1]), (1.0, 0.0)):
                if affine is not None and affine.is_floating_point():
                    affine.fill_(neutral)
    return _train_call(layer, inp)


def _train_call(layer: nn.Module, inp: torch.Tensor) -> Any:
    """``layer(inp)`` as in training: with gradients on (the d2l.ai chapter's BatchNorm picks its mode by
    ``torch.is_grad_enabled()``) and the probes' random numbers; the result detached."""
    with torch.enable_grad(), same_randomness(inp):
        out = layer(inp)
    return out.detach() if isinstance(out, torch.Tensor) else out


def statistics_dims(module: nn.Module, x: torch.Tensor) -> tuple[int, ...] | None:
    """The dims over which a norm layer takes its train-mode statistics, found by dataflow.

    One input element is pushed far out; every output that shares a statistic with it moves. The
    statistics are taken over dim ``d`` exactly when an output at another index along ``d`` moves: a
    per-channel BN moves its whole channel, a per-pixel one the same pixel of every sample, a
    whole-tensor one everything. Returns None when only the element itself moves: the layer does not
    normalise with batch statistics at all (a frozen BatchNorm, for example).

    An elementwise activation in the layer's forward must not hide the dataflow, so the probe input
    has the shape of ``x`` and distinct values in [1, 2] (normalising a set whose other elements are
    all equal, zeros from a dead ReLU, gives the same output whatever the pushed element is), and the
    element is pushed both ways: up, so that a ReLU *before* the normalisation lets the push through;
    down, so that the others come out above their mean and a ReLU *after* it lets them through
    (gamma and beta of the probed copy are set to 1 and 0 for that).
    """
    compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    generator = torch.Generator().manual_seed(3)
    probe = (torch.rand(x.shape, generator=generator, dtype=torch.float64) + 1).to(device=x.device, dtype=compute)
    flat = probe.numel() // 2
    where = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), x.shape))
    far = 10.0 * probe.numel() ** 0.5  # far enough out to dominate the variance of any set it is in

    def run(push: float) -> torch.Tensor | None:
        inp = probe.clone()
        inp[where] += push
        # neutral gamma and beta: a negative beta would let a ReLU after the normalisation hide what moved
        out = _fresh_train_call(module, inp, dtype=compute, neutral_affine=True)
        return out.double() if isinstance(out, torch.Tensor) and out.shape == x.shape else None

    base = run(0.0)
    if base is None:
        return None
    rtol, atol = tolerance(compute)
    moved = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    for push in (far, -far):
        out = run(push)
        if out is None:
            return None
        moved |= (out - base).abs() > 10 * (atol + rtol * base.abs())
        moved |= torch.isnan(out) != torch.isnan(base)
    moved[where] = False
    positions = moved.nonzero()
    dims = tuple(d for d in range(x.dim()) if bool((positions[:, d] != where[d]).any()))
    return dims or None


def cancels_channel_constant(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether a norm layer's train-mode output ignores a constant added to each channel of its input,
    as a BatchNorm's mean subtraction does. Probed on a synthetic input of ``x``'s shape with both signs
    in every channel, so that an activation inside the layer (ReLU, then the normalisation) cannot pass
    the constant through unchanged by the luck of the data."""
    if x.dim() < 2 or not x.is_floating_point():
        return True
    generator = torch.Generator().manual_seed(13)
    probe = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(x)
    shift = (torch.randn([1, x.shape[1]] + [1] * (x.dim() - 2), generator=generator, dtype=torch.float64)
             * 2).to(x)

    base, shifted = _fresh_train_call(module, probe), _fresh_train_call(module, probe + shift)
    if not isinstance(base, torch.Tensor) or not isinstance(shifted, torch.Tensor):
        return True
    return mismatch(shifted, base, scale=10) is None


def per_channel_dims(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(d for d in range(x.dim()) if d != 1 and x.shape[d] > 1)


def _telling_buffers(layer: nn.Module, channels: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Give a copied layer running statistics that differ from any batch's, and return them."""
    names = running_buffers(layer)
    if names is None:
        return None
    mean, var = (statistic(layer, n) for n in names)
    assert mean is not None and var is not None
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        mean.copy_((torch.randn(mean.shape, generator=generator) * 0.5 - 2.0).to(mean))
        var.copy_((torch.rand(var.shape, generator=generator) * 2 + 0.5).to(var))
    return mean.detach().clone(), var.detach().clone()


def _affine(layer: nn.Module, channels: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    gamma, beta = affine_parameters(layer, channels)
    if gamma is not None and gamma.numel() != channels:
        gamma = None
    if beta is not None and beta.numel() != channels:
        beta = None
    return (
        gamma.detach().reshape(channels) if gamma is not None else None,
        beta.detach().reshape(channels) if beta is not None else None,
    )


def _eps(layer: nn.Module) -> float:
    """The layer's epsilon: ``eps`` as in PyTorch, ``epsilon`` as in a Keras port, or another float
    attribute named like one (``variance_epsilon``, ``bn_eps``); PyTorch's default otherwise."""
    for name in ("eps", "epsilon"):
        value = getattr(layer, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    for name, value in vars(layer).items():
        if "eps" in name.lower() and isinstance(value, float) and 0 < value < 1:
            return value
    return 1e-5


def channels_apart(x: torch.Tensor, seed: int = 7) -> torch.Tensor:
    """``x`` with each channel scaled and shifted apart, at the data's own scale (a fixed offset on tiny
    activations would drown them in the rounding of the offset): batch statistics that differ from any
    running statistics, even after a BatchNorm has normalised ``x``."""
    generator = torch.Generator().manual_seed(seed)
    view = [1, x.shape[1]] + [1] * (x.dim() - 2)
    spread = float(x.detach().double().std()) if x.numel() > 1 else 1.0
    spread = spread if spread > 0 else 1.0
    scale = (torch.rand(view, generator=generator, dtype=torch.float64) + 0.5).to(x)
    offset = ((torch.rand(view, generator=generator, dtype=torch.float64) * 2 + 1) * spread).to(x)
    return x.detach() * scale + offset


def follows_grad_mode(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether a hand-written BatchNorm in eval mode computes something else with gradients on than
    under ``torch.no_grad()``: it picks its mode by ``torch.is_grad_enabled()``, not ``self.training``
    (the d2l.ai chapter's BatchNorm)."""
    telling = channels_apart(x, seed=17)
    outputs = []
    for grad in (False, True):
        layer = private_copy(module).eval()
        with torch.set_grad_enabled(grad):
            try:
                out = layer(telling.clone())
            except Exception:  # noqa: BLE001 - the student's layer fails alone: not this probe's verdict
                return False
        if not isinstance(out, torch.Tensor):
            return False
        outputs.append(out.detach())
    return mismatch(outputs[1], outputs[0], scale=10) is not None


def train_problems(module: nn.Module, x: torch.Tensor) -> list[str]:
    """Problems of a per-channel norm layer in train mode (none for one frozen by design)."""
    channels = x.shape[1]
    layer = private_copy(module).train()
    xp = channels_apart(x)
    stats = _telling_buffers(layer, channels, xp)
    tracked = layer._buffers.get("num_batches_tracked")
    if tracked is not None:
        with torch.no_grad():
            tracked.fill_(5)
    gamma, beta = _affine(layer, channels)
    eps = _eps(layer)
    y = _train_call(layer, xp.clone())  # an in-place activation inside the layer must not change xp
    problems: list[str] = []
    def batch_stats(inp: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(inp, None, None, gamma, beta, True, 0.0, eps)

    reference = batch_stats(xp)
    normalised = normalised_input(y, batch_stats, xp, eps)
    found = None if normalised is not None else mismatch(y, reference)
    if found is not None:
        def running(inp: torch.Tensor) -> torch.Tensor:
            assert stats is not None
            return F.batch_norm(inp, stats[0].flatten(), stats[1].flatten(), gamma, beta, False, 0.0, eps)

        normalised = None if stats is None else normalised_input(y, running, xp, eps)
        if normalised is not None:
            names = running_buffers(layer)
            unchanged = names is not None and all(
                torch.equal(statistic(layer, n).detach(), s)
                for n, s in zip(names, cast("tuple[torch.Tensor, torch.Tensor]", stats))
            )
            if unchanged:
                return []  # frozen: fixed statistics, never updated
            problems.append(
                "in train mode it normalises with its running statistics (while also updating "
                "them); it must use the batch's per-channel mean and variance"
            )
        else:
            affine_view = [1, channels] + [1] * (x.dim() - 2)

            def unbiased(inp: torch.Tensor) -> torch.Tensor:
                dims = per_channel_dims(inp)
                out = (inp - inp.mean(dims, keepdim=True)) / torch.sqrt(inp.var(dims, unbiased=True, keepdim=True) + eps)
                if gamma is not None:
                    out = out * gamma.reshape(affine_view)
                return out + beta.reshape(affine_view) if beta is not None else out

            if matches_normalisation(y, unbiased, xp, eps):
                problems.append(
                    "it normalises with the unbiased variance (divides by n-1); BatchNorm divides "
                    "by n, the biased variance of the batch"
                )
            else:
                problems.append(
                    f"its train-mode output differs from F.batch_norm(x, training=True, eps={eps:g}) "
                    f"with its own gamma and beta: {found}"
                )
    if stats is not None:  # the running estimates follow the tensor that was normalised
        problems.extend(_update_problems(module, layer, xp if normalised is None else normalised, stats, eps))
    if tracked is not None and int(tracked) != 6:
        problems.append(f"num_batches_tracked went from 5 to {int(tracked)} after one batch; expected 6")
    return problems


def _update_problems(
    module: nn.Module, layer: nn.Module, xp: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor], eps: float
) -> list[str]:
    names = running_buffers(layer)
    assert names is not None
    new_mean = statistic(layer, names[0]).detach().flatten().double()
    new_var = statistic(layer, names[1]).detach().flatten().double()
    old_mean, old_var = stats[0].flatten().double(), stats[1].flatten().double()
    dims = tuple(d for d in range(xp.dim()) if d != 1)  # every dim but the channels, size 1 or not
    batch_mean = xp.double().mean(dims)
    batch_var = xp.double().var(dims, unbiased=True)
    biased_var = xp.double().var(dims, unbiased=False)
    if torch.equal(new_mean, old_mean) and torch.equal(new_var, old_var):
        return [
            f"its running statistics ({names[0]}, {names[1]}) are not updated in train mode, so eval "
            f"mode will normalise with stale values"
        ]
    momentum = getattr(module, "momentum", 0.1)
    if momentum is None and layer._buffers.get("num_batches_tracked") is None:
        # a cumulative average whose batch counter has a name of its own: its weight 1/n is unknown,
        # so take the one the mean update implies, if it is the same for every channel
        implied_w = (new_mean - old_mean) / (batch_mean - old_mean)
        w = float(implied_w.mean()) if implied_w.numel() else 1.0
        ok = implied_w.numel() and 0 < w <= 1 and bool(((implied_w - w).abs() <= 1e-3 * w).all())
        weights = {"a cumulative average (momentum=None)": w if ok else 1.0}
    elif momentum is None:
        weights = {"a cumulative average (momentum=None)": 1.0 / 6}
    else:
        momentum = float(momentum)
        weights = {f"momentum={momentum:g} as the weight of the new batch (PyTorch)": momentum}
        if momentum > 0.5:
            weights[f"momentum={momentum:g} as the weight of the old value (Keras)"] = 1 - momentum

    tol = 100 * torch.finfo(xp.dtype).eps

    def implied(new: torch.Tensor, old: torch.Tensor, w: float) -> torch.Tensor:
        """The batch statistic that ``new = (1-w)*old + w*batch`` implies: compared directly, a
        biased variance stands out even when n is large and the update hides it."""
        return (new - (1 - w) * old) / w

    def close(a: torch.Tensor, b: torch.Tensor, w: float) -> bool:
        return bool(((a - b).abs() <= tol * (b.abs() + 1) / w).all())

    for label, w in weights.items():
        if close(implied(new_mean, old_mean, w), batch_mean, w):
            var = implied(new_var, old_var, w)
            if close(var, batch_var, w):
                return []
            if close(var, biased_var, w):
                return [
                    f"{names[1]} is updated with the biased batch variance; running estimates use "
                    f"the unbiased one (divide by n-1)"
                ]
            return [f"{names[1]} is not updated as (1-w)*old + w*batch_var for {label}"]
    if momentum is not None and 0 < momentum < 1:
        if close(implied(new_mean, old_mean, 1 - momentum), batch_mean, 1 - momentum):
            return [
                f"{names[0]} = {momentum:g}*old + {1 - momentum:g}*batch: momentum={momentum:g} is used as "
                f"the weight of the old value (Keras' convention), but in PyTorch momentum is the weight of "
                f"the new batch: running = (1-momentum)*running + momentum*batch"
            ]
    expected = next(iter(weights.values()))
    return [
        f"{names[0]} after one batch does not follow (1-w)*old + w*batch_mean with w={expected:g}: "
        f"{mismatch(new_mean.float(), ((1 - expected) * old_mean + expected * batch_mean).float())}"
    ]


def eval_problems(module: nn.Module, x: torch.Tensor) -> list[str]:
    """Problems of a hand-written norm layer in eval mode: batch statistics used, or buffers changed
    (torch's own BatchNorm is judged by its configuration: see bn-eval-behaviour)."""
    channels = x.shape[1]
    layer = private_copy(module).eval()
    stats = _telling_buffers(layer, channels, x)
    before = {n: b.detach().clone() for n, b in layer.named_buffers() if b is not None}
    gamma, beta = _affine(layer, channels)
    eps = _eps(layer)
    with torch.no_grad():
        y = layer(x.clone())
    problems = []
    changed = [n for n, b in layer.named_buffers() if b is not None and not torch.equal(b, before[n])]
    if stats is None:
        with torch.no_grad():
            alone = layer(x[:1].clone())
        if x.shape[0] > 1 and mismatch(alone, y[:1], scale=10) is not None:
            problems.append(
                "it has no running statistics, so in eval mode each sample's output depends on the "
                "rest of the batch; keep running_mean/running_var buffers and use them when not training"
            )
    else:
        def running(inp: torch.Tensor) -> torch.Tensor:
            return F.batch_norm(inp, stats[0].flatten(), stats[1].flatten(), gamma, beta, False, 0.0, eps)

        def batch_stats(inp: torch.Tensor) -> torch.Tensor:
            return F.batch_norm(inp, None, None, gamma, beta, True, 0.0, eps)

        reference = running(x)
        if not matches_normalisation(y, running, x, eps):
            if matches_normalisation(y, batch_stats, x, eps):
                problems.append(
                    "it still normalises with the batch's statistics instead of its "
                    "running statistics (does its forward check self.training?)"
                )
            else:
                problems.append(
                    "its eval-mode output differs from F.batch_norm(x, running_mean, running_var, "
                    f"training=False): {mismatch(y, reference)}"
                )
    if changed:
        problems.append(f"it changes {', '.join(changed)} in eval mode; eval must leave buffers alone")
    return problems
