"""The op tables: which torch functions are convolutions, pools, norms, reshapes..., and how to read
their arguments. One home for each table; the tracer, the recogniser and the rules all use these."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.modules.padding import _CircularPadNd, _ConstantPadNd, _ReflectionPadNd, _ReplicationPadNd

from cnncheck.layers import LayerKind

if TYPE_CHECKING:
    from cnncheck.trace import Node

CONV_FUNCTIONS = frozenset(
    {"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}
)
POOL_FUNCTIONS = frozenset({
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
    "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
    "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices", "lp_pool1d", "lp_pool2d",
    "fractional_max_pool2d", "fractional_max_pool3d",
})
BATCH_NORM_FUNCTIONS = frozenset({"batch_norm"})
DROPOUT_FUNCTIONS = frozenset(
    {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout"}
)
BIASED_FUNCTIONS = CONV_FUNCTIONS | {"linear"}
RANDOM_FUNCTIONS = frozenset({
    "rand", "rand_like", "randn", "randn_like", "randint", "randint_like", "randperm", "bernoulli", "bernoulli_",
    "normal", "normal_", "uniform_", "multinomial", "poisson", "exponential_", "geometric_", "cauchy_",
    "log_normal_", "random_",
})
MODAL_FUNCTIONS = BATCH_NORM_FUNCTIONS | DROPOUT_FUNCTIONS | RANDOM_FUNCTIONS | {"instance_norm"}
"""Ops whose result depends on train/eval mode: all that a pass checking the mode needs to see."""

RESHAPES = frozenset({"view", "reshape", "flatten"})
"""Ops that regroup elements without moving them: the ones that can fold a batch or flatten a map."""


def requested_shape(args: tuple[Any, ...]) -> list[int]:
    """The sizes a ``view``/``reshape`` call asks for, given one by one (``x.view(4, -1)``) or as one
    tuple (``x.view((4, -1))``); ``args[0]`` is the tensor."""
    sizes = [a for a in args[1:] if isinstance(a, int)]
    if sizes:
        return sizes
    return [int(a) for arg in args[1:2] if isinstance(arg, (tuple, list, torch.Size)) for a in arg]


def shown_arguments(args: tuple[Any, ...]) -> str:
    """A reshape's size arguments as the student wrote them: ``(4, -1)``, ``((4, -1))``."""
    return "(" + ", ".join(str(a) for a in args[1:] if isinstance(a, (int, tuple, list))) + ")"

LAYOUT_FUNCTIONS = RESHAPES | {
    "contiguous", "squeeze", "unsqueeze", "transpose", "permute", "flip", "roll", "t", "movedim",
    "swapaxes", "swapdims", "rot90", "view_as", "reshape_as", "clone", "detach", "__getitem__", "to",
}
"""Ops that move values around without computing new ones."""

COPIES = frozenset({"contiguous", "clone", "detach", "to"})
"""Layout ops that hand on the same values in the same shape: a weight passed through them is the weight."""

REDUCTIONS = frozenset({"mean", "amax", "amin", "max", "min", "sum", "logsumexp", "nanmean", "norm"})

_FUNCTION_KINDS = {
    LayerKind.CONV: CONV_FUNCTIONS,
    LayerKind.POOL: POOL_FUNCTIONS,
    LayerKind.BATCH_NORM: BATCH_NORM_FUNCTIONS,
    LayerKind.INSTANCE_NORM: frozenset({"instance_norm"}),
    LayerKind.OTHER_NORM: frozenset({"layer_norm", "group_norm"}),
    LayerKind.DROPOUT: DROPOUT_FUNCTIONS,
    LayerKind.LINEAR: frozenset({"linear"}),
}
_KIND_OF_FUNCTION = {name: kind for kind, names in _FUNCTION_KINDS.items() for name in names}


def function_kind(name: str) -> LayerKind:
    return _KIND_OF_FUNCTION.get(name, LayerKind.OTHER)


def argument(node: Node, name: str, position: int, default: Any = None) -> Any:
    """An argument of a traced call, given by keyword or by position."""
    if name in node.kwargs:
        return node.kwargs[name]
    return node.args[position] if len(node.args) > position else default


def reduced_dims(node: Node) -> tuple[int, ...]:
    """The dims a reduction (``x.mean(dim=...)``) ran over, non-negative; every dim when none is given."""
    if not node.inputs:
        return ()
    rank = node.inputs[0].dim()
    dims = argument(node, "dim", 1)
    if dims is None and node.func_name == "norm":
        dims = argument(node, "dim", 2)
    if dims is None:
        return tuple(range(rank))
    if isinstance(dims, int):
        dims = (dims,)
    if not isinstance(dims, (tuple, list)) or not all(isinstance(d, int) for d in dims):
        return ()
    return tuple(sorted({d % rank for d in dims})) if rank else ()


# F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps) and
# torch.batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn)
_F_ORDER = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
_TORCH_ORDER = ("input", "weight", "bias", "running_mean", "running_var", "training", "momentum", "eps")


def batch_norm_arguments(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments of a traced ``batch_norm`` call by name, whichever of torch's two it was."""
    order = _F_ORDER if func is torch.nn.functional.batch_norm else _TORCH_ORDER
    named = dict(zip(order, args))
    named.update({k: v for k, v in kwargs.items() if k in order})
    named.setdefault("momentum", 0.1)
    named.setdefault("eps", 1e-5)
    named.setdefault("training", False)
    return named


# torch's own layers whose forward is one functional op, with the pad mode it passes: the tracer does
# not look inside torch's layers, so a rule that judges ops gives such a layer its op's verdict.
TORCH_LAYER_OPS: tuple[tuple[type, str, str | None], ...] = (
    (nn.Upsample, "interpolate", None),  # and its subclasses UpsamplingNearest2d, UpsamplingBilinear2d
    (nn.PixelShuffle, "pixel_shuffle", None),
    (nn.PixelUnshuffle, "pixel_unshuffle", None),
    (nn.ChannelShuffle, "channel_shuffle", None),
    (_ReflectionPadNd, "pad", "reflect"),
    (_ReplicationPadNd, "pad", "replicate"),
    (_CircularPadNd, "pad", "circular"),
    (_ConstantPadNd, "pad", "constant"),  # and ZeroPad1d/2d/3d
)


def torch_layer_op(module: nn.Module) -> tuple[str, str | None] | None:
    """The functional op (and pad mode) that one of torch's own layers runs in its forward, if it runs
    one of ``TORCH_LAYER_OPS``. Ask it only of a layer with no traced inner ops, that is, one running
    torch's forward: a subclass with a forward of its own is judged by the ops it ran."""
    return next(((name, mode) for klass, name, mode in TORCH_LAYER_OPS if isinstance(module, klass)), None)
