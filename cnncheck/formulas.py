"""The textbook formulas, each with a rendering that shows the layer's own numbers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Count:
    """A parameter count together with the arithmetic that produced it."""

    value: int
    formula: str

    def __str__(self) -> str:
        return f"{self.formula} = {self.value}"


def _kernel(kernel_size: int | Sequence[int], rank: int = 2) -> tuple[int, ...]:
    if isinstance(kernel_size, int):
        return (kernel_size,) * rank
    return tuple(int(k) for k in kernel_size)


def conv_param_count(
    in_channels: int,
    out_channels: int,
    kernel_size: int | Sequence[int],
    groups: int = 1,
    bias: bool = True,
    *,
    transposed: bool = False,
) -> int:
    """Parameters of a convolution: ``(C_in/groups * prod(kernel) + [bias]) * C_out``.

    Every output channel has one filter of ``prod(kernel) * C_in/groups`` weights and one bias.
    (The seed post's "(N*M*L + 1) * K" swaps input and output channels: it is not this.)
    An int ``kernel_size`` means a square 2-d kernel. Transposed: ``C_in * C_out/groups * prod(kernel)
    + [bias] * C_out``.
    """
    return conv_param_formula(
        in_channels, out_channels, kernel_size, groups, bias, transposed=transposed
    ).value


def conv_param_formula(
    in_channels: int,
    out_channels: int,
    kernel_size: int | Sequence[int],
    groups: int = 1,
    bias: bool = True,
    *,
    transposed: bool = False,
) -> Count:
    kernel = _kernel(kernel_size)
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"in_channels={in_channels} and out_channels={out_channels} must both be divisible by "
            f"groups={groups}"
        )
    k = "*".join(str(v) for v in kernel)
    area = math.prod(kernel)
    if transposed:
        weights = in_channels * (out_channels // groups) * area
        c_out = f"{out_channels}/{groups}" if groups > 1 else str(out_channels)
        text = f"{k}*{in_channels}*{c_out}" + (f" + {out_channels}" if bias else "")
        return Count(weights + (out_channels if bias else 0), text)
    c_in = f"{in_channels}/{groups}" if groups > 1 else str(in_channels)
    per_filter = area * (in_channels // groups) + (1 if bias else 0)
    text = f"({k}*{c_in}" + (" + 1" if bias else "") + f") * {out_channels}"
    return Count(per_filter * out_channels, text)


def expected_conv_weight_shape(
    in_channels: int, out_channels: int, kernel: Sequence[int], groups: int, transposed: bool
) -> tuple[int, ...]:
    if transposed:
        return (in_channels, out_channels // groups, *kernel)
    return (out_channels, in_channels // groups, *kernel)


def output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1,
                ceil_mode: bool = False) -> int:
    """``floor((H + 2p - d(k-1) - 1)/s) + 1``: the spatial size after a conv or a pooling layer."""
    numerator = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (-(-numerator // stride) if ceil_mode else numerator // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1  # PyTorch drops a last window that would start in the right padding
    return out


def output_size_text(size: int, kernel: int, stride: int, padding: int, dilation: int,
                     ceil_mode: bool = False) -> str:
    floor = "ceil" if ceil_mode else "floor"
    dil = f"{dilation}*" if dilation != 1 else ""
    out = output_size(size, kernel, stride, padding, dilation, ceil_mode)
    return f"{floor}(({size} + 2*{padding} - {dil}({kernel}-1) - 1)/{stride}) + 1 = {out}"
