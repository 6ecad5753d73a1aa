"""cnncheck-course: an example cnncheck plugin.

- ``conv-channels-shrink``: in a plain CNN the channel count grows (or stays) along the conv stack.
- ``conv-even-kernel``: an even kernel has no centre pixel, so "same" padding cannot be symmetric.
- teaches cnncheck that :class:`~cnncheck_course.layers.CourseConv` is a convolution, so its numerics
  are checked against ``F.conv2d`` like any hand-written conv.

Installed, it is found through the ``cnncheck`` entry-point group; ``cnncheck.register("cnncheck_course")``
or ``pytest --cnncheck-plugin cnncheck_course`` load it without installing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import cnncheck
from cnncheck import LayerKind, Rule, Severity

from cnncheck_course.layers import CourseConv


def _conv_nodes(ctx: Any) -> list[Any]:
    """The convolution layers in the order forward ran them (the shared trace, not the module tree)."""
    return list(ctx.train_trace.module_nodes(LayerKind.CONV))


def check_channels(ctx: Any, rule: Rule) -> Iterator[cnncheck.Finding]:
    previous = None
    for node in _conv_nodes(ctx):
        if not node.outputs or node.outputs[0].dim() < 3:
            continue
        channels = int(node.outputs[0].shape[1])
        if previous is not None and channels < previous[1]:
            yield rule.finding(
                node.name,
                f"the conv stack shrinks from {previous[1]} channels ({previous[0]}) to {channels}",
                expected=f"at least {previous[1]} output channels",
                found=f"{channels} output channels",
                location=ctx.location_of(node.module),
            )
        previous = (node.name, channels)


def check_kernels(ctx: Any, rule: Rule) -> Iterator[cnncheck.Finding]:
    for node in _conv_nodes(ctx):
        weight = next((p for p in node.module.parameters(recurse=False) if p.dim() >= 3), None)
        if weight is None:
            continue
        kernel = tuple(int(k) for k in weight.shape[2:])
        if any(k % 2 == 0 for k in kernel):
            yield rule.finding(
                node.name,
                f"kernel {'x'.join(map(str, kernel))} is even: it has no centre pixel",
                expected="an odd kernel such as 3x3 or 5x5",
                found=f"kernel {'x'.join(map(str, kernel))}",
                location=ctx.location_of(node.module),
            )


CHANNELS = Rule(
    id="conv-channels-shrink",
    summary="A convolution with fewer output channels than the convolution before it.",
    why="In the plain CNNs of this course, each stage trades spatial size for more channels; a stage "
    "that drops channels throws away features that the classifier needs.",
    fix="Keep out_channels non-decreasing along the stack (e.g. 32 -> 64 -> 128).",
    severity=Severity.WARNING,
    check=check_channels,
    flagged_example="nn.Sequential(nn.Conv2d(3, 64, 3), nn.ReLU(), nn.Conv2d(64, 16, 3))",
    clean_example="nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3))",
)

EVEN_KERNEL = Rule(
    id="conv-even-kernel",
    summary="A convolution whose kernel has an even size.",
    why="An even kernel has no centre pixel: 'same' padding cannot be symmetric, and feature maps shift "
    "by half a pixel at every layer.",
    fix="Use odd kernels (3, 5, 7).",
    severity=Severity.WARNING,
    check=check_kernels,
    flagged_example="nn.Conv2d(3, 16, kernel_size=4)",
    clean_example="nn.Conv2d(3, 16, kernel_size=3, padding=1)",
)


@cnncheck.hookimpl
def cnncheck_register_rules() -> Iterable[Rule]:
    return [CHANNELS, EVEN_KERNEL]


@cnncheck.hookimpl
def cnncheck_classify_module(module: Any) -> LayerKind | None:
    return LayerKind.CONV if isinstance(module, CourseConv) else None
