"""What kind of layer a module is, decided from what it has and what it is, never its class name.

Built-in layers are placed by their torch base classes. A student's own layer is placed by duck
typing on the attributes such layers carry (``in_channels``/``out_channels``/``kernel_size`` for a
convolution, ``running_mean``/``running_var`` buffers or ``num_features`` for a BatchNorm, ...). The
rules then confirm the verdict numerically against ``torch.nn.functional``. Plugins can place layers
that neither route can, through the ``cnncheck_classify_module`` hook.
"""

from __future__ import annotations

import enum
import re
import weakref
from typing import Any

import torch
from torch import nn
from torch.nn.modules import batchnorm, conv, dropout, instancenorm, pooling


class LayerKind(str, enum.Enum):
    CONV = "conv"
    POOL = "pool"
    BATCH_NORM = "batch_norm"
    INSTANCE_NORM = "instance_norm"
    OTHER_NORM = "other_norm"  # LayerNorm, GroupNorm: they do not cancel a per-channel constant
    DROPOUT = "dropout"
    LINEAR = "linear"
    IDENTITY = "identity"
    OTHER = "other"


_POOL_BASES: tuple[type, ...] = (
    pooling._MaxPoolNd,
    pooling._AvgPoolNd,
    pooling._AdaptiveAvgPoolNd,
    pooling._AdaptiveMaxPoolNd,
    pooling._LPPoolNd,
    pooling.FractionalMaxPool2d,
    pooling.FractionalMaxPool3d,
)


def classify(module: nn.Module) -> LayerKind:
    """The kind of ``module`` before it runs: torch's base classes, then duck typing. For a module
    that is not torch's own, the ops it runs decide later (``cnncheck.recognize``); a plugin's answer
    (``cnncheck_classify_module``) overrides both and is handed in by the caller."""
    if isinstance(module, conv._ConvNd):
        return LayerKind.CONV
    if isinstance(module, _POOL_BASES):
        return LayerKind.POOL
    if isinstance(module, batchnorm._BatchNorm):
        return LayerKind.BATCH_NORM
    if isinstance(module, instancenorm._InstanceNorm):
        return LayerKind.INSTANCE_NORM
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)):
        return LayerKind.OTHER_NORM
    if isinstance(module, dropout._DropoutNd):
        return LayerKind.DROPOUT
    if isinstance(module, (nn.Linear, nn.Bilinear)):
        return LayerKind.LINEAR
    if isinstance(module, nn.Identity):
        return LayerKind.IDENTITY
    if from_torch(module):
        return LayerKind.OTHER  # MaxUnpool2d, Fold, Upsample...: torch's own, not a student's pool or conv
    return _duck_type(module)


_IMPLEMENTATION = ("forward", "_conv_forward")


def from_torch(module: nn.Module) -> bool:
    """Whether ``module`` runs torch's own code: its ``forward`` (and a conv's ``_conv_forward``) is
    defined by torch, as in ``nn.Conv2d`` or a subclass that only changes ``__init__``. timm's
    ``StdConv2d`` or ``BatchNormAct2d`` subclass torch's layers but run their own forward: they are
    traced inside and recognised by the ops they run. The one predicate for "torch's own"."""
    klass = type(module)
    known = _FROM_TORCH.get(klass)
    if known is None:
        known = _FROM_TORCH[klass] = _class_from_torch(klass)
    return known


_FROM_TORCH: weakref.WeakKeyDictionary[type, bool] = weakref.WeakKeyDictionary()  # asked on every module call


def _class_from_torch(klass: type) -> bool:
    for method in _IMPLEMENTATION:
        owner = next((k for k in klass.__mro__ if method in vars(k)), None)
        if owner is not None and not owner.__module__.startswith("torch."):
            return False
    return klass.__module__.startswith("torch.") or any(
        k.__module__.startswith("torch.nn.modules.") for k in klass.__mro__[1:] if k is not nn.Module)


def _duck_type(module: nn.Module) -> LayerKind:
    """A student's own layer: a module without child modules whose attributes say what it is.

    A block with children that merely records ``in_channels``/``out_channels`` is a container, not a
    layer: its children are checked in its place. A "pooling layer" is placed even with children, so
    that a strided conv disguised as a pool is caught owning parameters.
    """
    if (_has(module, "kernel_size") or _has(module, "output_size")) and not _has(module, "in_channels"):
        return LayerKind.POOL  # even with children: a "pool" built from a conv is a disguised conv
    if _children(module):
        return LayerKind.OTHER
    has_params = any(True for _ in module.parameters(recurse=False))
    if _has(module, "in_channels", "out_channels", "kernel_size") and has_params:
        return LayerKind.CONV
    own = list(module.parameters(recurse=False))
    statistics = running_buffers(module) is not None or (
        _has(module, "num_features") and (_has(module, "eps") or _has(module, "momentum"))
    )
    if statistics and len(own) <= 2:  # gamma and beta at most: a block with its own filters is not a norm
        return LayerKind.BATCH_NORM
    if _has(module, "in_features", "out_features"):
        return LayerKind.LINEAR
    p = _attribute(module, "p")
    if isinstance(p, float) and 0.0 <= p <= 1.0 and not has_params and not _children(module):
        return LayerKind.DROPOUT
    return LayerKind.OTHER


def _attribute(module: nn.Module, name: str) -> Any:
    """An instance or class attribute that is data, not a method or property of nn.Module."""
    if name in vars(module):
        return vars(module)[name]
    value = getattr(type(module), name, None)
    return None if callable(value) or isinstance(value, property) else value


def _has(module: nn.Module, *names: str) -> bool:
    return all(_attribute(module, name) is not None for name in names)


def _children(module: nn.Module) -> bool:
    return any(True for _ in module.children())


_MEAN_NAMES = ("mean", "mu", "avg")
_VAR_NAMES = ("var", "sigma", "std")


def running_buffers(module: nn.Module) -> tuple[str, str] | None:
    """Names of the (mean, variance) running statistics of a BatchNorm-like module, if any: buffers or
    plain tensor attributes (the d2l.ai chapter keeps ``moving_mean`` as one), named like a mean
    (``running_mean``, ``moving_mean``, ``mu``) and like a variance (``running_var``, ``sigma2``). The
    probes then judge what the module does with them."""
    names = [n for n, t in state_tensors(module).items() if t.is_floating_point()]
    means = [n for n in names if any(k in n.lower() for k in _MEAN_NAMES)]
    variances = [n for n in names if any(k in n.lower() for k in _VAR_NAMES) and n not in means]
    if means and variances:
        return means[0], variances[0]
    return None


def statistic(module: nn.Module, name: str) -> torch.Tensor:
    """A running statistic of ``module`` by name, a buffer or a plain tensor attribute."""
    tensor = state_tensors(module).get(name)
    assert tensor is not None, name
    return tensor


def state_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's own tensors that are not parameters: its buffers and plain tensor attributes."""
    found = {n: b for n, b in module._buffers.items() if b is not None}
    for name, value in vars(module).items():
        if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter) and not name.startswith("_"):
            found.setdefault(name, value)
    return found


def affine_parameters(module: nn.Module, channels: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(gamma, beta) of a norm layer: ``weight``/``bias`` as in PyTorch, ``gamma``/``beta`` by hand.

    A frozen BatchNorm keeps them as buffers, so buffers count too (never the running statistics).
    Falls back to the first and second parameter of the module, in registration order.
    """
    params = dict(module.named_parameters(recurse=False))
    running = running_buffers(module) or ()
    tensors = {n: b for n, b in state_tensors(module).items() if n not in running}
    tensors.update(params)
    scale = next((tensors[n] for n in ("weight", "gamma", "scale") if n in tensors), None)
    shift = next((tensors[n] for n in ("bias", "beta", "shift") if n in tensors), None)
    if scale is None and shift is None and len(params) == 2:
        scale, shift = list(params.values())
    return scale, shift


def is_transposed(module: nn.Module) -> bool:
    return bool(getattr(module, "transposed", False)) or isinstance(module, conv._ConvTransposeNd)


def conv_weight(module: nn.Module) -> tuple[str, torch.Tensor] | None:
    """The filter bank of a conv layer: ``weight`` when present (also a reparametrized one, computed from
    other parameters as weight_norm and spectral_norm do), else its highest-rank parameter."""
    params = dict(module.named_parameters(recurse=False))
    if "weight" in params:
        return "weight", params["weight"]
    effective = getattr(module, "weight", None)
    if isinstance(effective, torch.Tensor) and effective.dim() >= 3:
        return "weight", effective
    ranked = sorted(params.items(), key=lambda item: -item[1].dim())
    if ranked and ranked[0][1].dim() >= 3:
        return ranked[0]
    return None


def as_tuple(value: Any, rank: int) -> tuple[int, ...]:
    if isinstance(value, (tuple, list)):
        return tuple(int(v) for v in value)
    return (int(value),) * rank


_DEFAULTS = re.compile(
    r",?\s*\b(padding=0|padding=\(0(, 0)*,?\)|dilation=1|dilation=\(1(, 1)*,?\)|ceil_mode=False|bias=True|"
    r"inplace=False|stride=\(1(, 1)*,?\)|return_indices=False|count_include_pad=True|affine=True|"
    r"track_running_stats=True|eps=1e-05|momentum=0.1)(?=,|$)"
)
_SQUARE = re.compile(r"\((\d+)(?:(?:, \1)+|,)\)")


def short_repr(module: nn.Module) -> str:
    """``MaxPool2d(kernel_size=2, stride=5)``: the module's repr without its default arguments."""
    extra = _DEFAULTS.sub("", module.extra_repr()).strip(", ")
    extra = _SQUARE.sub(r"\1", extra)
    return f"{type(module).__name__}({extra})"


def layer_label(name: str, module: nn.Module | None) -> str:
    """How a message names a layer: ``Conv2d 'layer1.0'``."""
    kind = type(module).__name__ if module is not None else "layer"
    return f"{kind} '{name}'" if name else f"the model ({kind})"
