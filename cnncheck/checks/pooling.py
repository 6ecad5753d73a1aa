"""``pool-has-parameters`` and ``pool-mixes-channels``: pooling is parameter-free and per channel."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import cast

import torch
from torch import nn

from cnncheck.context import CheckContext
from cnncheck.findings import Finding, Severity
from cnncheck.layers import LayerKind, as_tuple, from_torch
from cnncheck.preserve import guarding_writes
from cnncheck.probes import same_randomness, tolerance
from cnncheck.rules import Rule


def check_parameters(ctx: CheckContext, rule: Rule) -> Iterator[Finding]:
    for module, info in ctx.modules_of(LayerKind.POOL):
        owned = {id(p): (n, p) for n, p in ctx.layer_parameters(module)}
        if not owned:
            continue
        count = sum(p.numel() for _, p in owned.values())
        listing = ", ".join(f"{n} {tuple(p.shape)}" for n, p in owned.values())
        yield rule.finding(
            info.name,
            f"pooling layer {type(module).__name__} owns {count} learnable parameter(s)",
            expected="0 parameters: pooling applies the same fixed max/average to every window",
            found=f"{count} parameter(s): {listing}",
            location=ctx.location_of(module),
        )


def check_channels(ctx: CheckContext, rule: Rule) -> Iterator[Finding]:
    for node in ctx.train_trace.module_nodes(LayerKind.POOL):
        x = node.probe_input
        if x is None or x.dim() < 3 or not node.outputs:
            continue
        out = node.outputs[0]
        where = ctx.location_of(node.module) if node.module is not None else None
        c_in, c_out = x.shape[1], out.shape[1] if out.dim() > 1 else None
        if c_out != c_in:
            yield rule.finding(
                node.name,
                f"pooling layer {type(node.module).__name__} changes the number of channels",
                expected=f"{c_in} output channels, one per input channel",
                found=f"{c_out} output channels (input {tuple(x.shape)}, output {tuple(out.shape)})",
                location=where,
            )
            continue
        if _per_channel_by_construction(node.module, x):
            continue
        leak = _channel_leak(node.module, _probe_input(node.module, x))  # type: ignore[arg-type]
        if leak is not None:
            source, target = leak
            yield rule.finding(
                node.name,
                f"pooling layer {type(node.module).__name__} mixes channels",
                expected="output channel c depends on input channel c only",
                found=f"changing input channel {source} changes output channel {target}",
                location=where,
            )


def _per_channel_by_construction(module: nn.Module | None, x: torch.Tensor) -> bool:
    """torch's own N-d pooling layer on an (N+2)-d map pools each channel alone; on a map of another rank
    (a MaxPool3d fed a 4-d map takes the channels for depth) it is probed."""
    if module is None or not from_torch(module):
        return False
    rank = next((r for r, classes in _POOL_RANKS.items() if isinstance(module, classes)), None)
    return rank == x.dim() - 2


_POOL_RANKS: dict[int, tuple[type, ...]] = {
    1: (nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d, nn.LPPool1d),
    2: (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d, nn.FractionalMaxPool2d),
    3: (nn.MaxPool3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d, nn.LPPool3d, nn.FractionalMaxPool3d),
}
"""The spatial rank of torch's pooling layers: on a map of that rank plus two they pool per channel."""


def _probe_input(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """For torch's own pooling layers, one sample and a small spatial window are enough to see
    channel mixing (a MaxPool3d fed a 4-d map, say); a student's layer gets its whole input, since
    its behaviour may depend on the size."""
    if type(module).__module__ != "torch.nn.modules.pooling":
        return x.clone()  # the layer may change its input in place
    kernel = getattr(module, "kernel_size", 1)
    stride = getattr(module, "stride", None) or kernel
    reach = 2 * max(as_tuple(kernel, 1)) + 2 * max(as_tuple(stride, 1))
    side = max(16, reach)
    window = (slice(0, 1), slice(None)) + tuple(slice(0, side) for _ in range(x.dim() - 2))
    return x[window]


def _channel_leak(module: nn.Module, x: torch.Tensor) -> tuple[int, int] | None:
    """Find an input channel that moves another output channel, in one batched call.

    For each bit of the channel index, raise the channels whose bit is 1 (then those whose bit is 0):
    any pair i != j differs in some bit, so one of these 2*log2(C) probes raises i and not j.
    """
    channels = x.shape[1]
    if channels < 2:
        return None
    bits = max(1, math.ceil(math.log2(channels)))
    index = torch.arange(channels, device=x.device)
    masks = []
    for bit in range(bits):
        on = ((index >> bit) & 1).bool()
        masks += [on, ~on]
    lift = float(x.detach().abs().max()) * 4 + 1.0
    batch = x.shape[0]
    view = [1, channels] + [1] * (x.dim() - 2)
    probes = [x] + [x + lift * m.to(x.dtype).reshape(view) for m in masks]
    out = _run_blocks(module, probes)
    if not isinstance(out, torch.Tensor) or out.shape[0] != batch * len(probes):
        return None
    base = out[:batch]
    rtol, atol = tolerance(out.dtype)

    def moved_channels(block: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        moved = (block - reference).abs() > atol + rtol * reference.abs()
        return moved.reshape(moved.shape[0], moved.shape[1], -1).any(2).any(0)  # (N, C) too: a flattening pool

    for k, mask in enumerate(masks):
        changed = moved_channels(out[batch * (k + 1) : batch * (k + 2)], base)
        leaked = changed & ~mask
        if bool(leaked.any()):
            target = int(leaked.nonzero()[0])
            return _source_of(module, x, target, lift, view, moved_channels), target
    return None


def _source_of(module: nn.Module, x: torch.Tensor, target: int, lift: float, view: list[int],
               moved_channels: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> int:
    """An input channel (not ``target``) that moves output channel ``target``, checked one at a time
    in batched chunks: the message must name a pair that truly leaks."""
    channels, batch = x.shape[1], x.shape[0]
    others = [c for c in range(channels) if c != target]
    base = cast(torch.Tensor, _run_blocks(module, [x]))  # a tensor: the caller's probe of x gave one
    for start in range(0, len(others), 16):
        chunk = others[start : start + 16]
        probes = []
        for c in chunk:
            bump = torch.zeros(channels, dtype=x.dtype, device=x.device)
            bump[c] = lift
            probes.append(x + bump.reshape(view))
        out = cast(torch.Tensor, _run_blocks(module, probes))
        for i, c in enumerate(chunk):
            if bool(moved_channels(out[batch * i : batch * (i + 1)], base)[target]):
                return c
    return others[0]


def _run_blocks(module: nn.Module, blocks: list[torch.Tensor]) -> object:
    """The layer on every block, concatenated: one batched call, or one call per block with the same
    random numbers when the layer draws them (FractionalMaxPool2d picks its regions at random per
    sample and channel, so batched probes would differ by chance)."""
    with torch.no_grad(), guarding_writes():
        with same_randomness(blocks[0]):
            first = module(blocks[0])
        with same_randomness(blocks[0]):
            torch.rand(1, device=blocks[0].device)  # a different draw
            again = module(blocks[0])
        random = isinstance(first, torch.Tensor) and isinstance(again, torch.Tensor) and not torch.equal(first, again)
        if not random:
            return module(torch.cat(blocks)) if len(blocks) > 1 else first
        outs = []
        for block in blocks:
            with same_randomness(block):
                outs.append(module(block))
        return torch.cat(outs)


HAS_PARAMETERS = Rule(
    id="pool-has-parameters",
    summary="A pooling layer, built-in or hand-written, owns learnable parameters.",
    why=(
        "Pooling down-samples with a fixed rule, the max or the average of each window: it has nothing "
        "to learn. Parameters inside a pooling layer are either dead weight that the optimizer updates "
        "for nothing, or a sign that the layer is really something else (a strided conv) under the "
        "wrong name."
    ),
    fix="Remove the parameters from the pooling layer; if a learnable down-sampling is wanted, use a "
    "strided `nn.Conv2d` and call it that.",
    severity=Severity.ERROR,
    check=check_parameters,
    compares_values=False,
    flagged_example="""
class MyPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.kernel_size = 2
        self.scale = nn.Parameter(torch.ones(1))
    def forward(self, x):
        return F.max_pool2d(x, 2) * self.scale
""",
    clean_example="self.pool = nn.MaxPool2d(kernel_size=2, stride=2)",
    limits="A hand-written pooling layer is recognised by what its forward runs: pooling ops, or a "
    "reduction over spatial dims (mean, amax, a p-norm as in GeM) that makes its output smaller. A GeM pool "
    "with a learnable exponent is flagged: a deliberate design can ignore the rule for that layer "
    "(`pool-has-parameters:head.pool`). A block that stores `kernel_size` but runs convolutions (xception's "
    "SeparableConv2d, fastvit's MobileOneBlock) is checked as the convs and BNs it contains, and a block "
    "that pools and then flattens is a block, not a pooling layer.",
)

MIXES_CHANNELS = Rule(
    id="pool-mixes-channels",
    summary="A pooling layer whose output has a different channel count than its input, or whose "
    "output channel depends on other input channels.",
    why=(
        "Pooling works on each channel's feature map separately: a 2x2 max pool keeps the strongest "
        "response of each filter in each window. Pooling across channels (a max over dim 1, a reshape "
        "that folds channels into space) silently destroys what the filters learnt."
    ),
    fix="Reduce over the spatial dims only, e.g. `F.max_pool2d(x, 2)` or `x.mean(dim=(2, 3), keepdim=True)`; "
    "never over dim 1.",
    severity=Severity.ERROR,
    check=check_channels,
    flagged_example="""
class ChannelMaxPool(nn.Module):
    kernel_size = 2
    def forward(self, x):
        pooled = F.max_pool2d(x, 2)
        return pooled.max(dim=1, keepdim=True).values.expand_as(pooled)
""",
    clean_example="self.pool = nn.AvgPool2d(2)",
    limits="Checked numerically on the input the layer received in the traced forward, with 2*log2(C) "
    "perturbed copies of it in one batched call.",
)
