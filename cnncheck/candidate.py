"""Checking one discovered model: build it, find its input shape, check it, and say why when it cannot be.

The one path from a :class:`~cnncheck.discover.Candidate` to a :class:`~cnncheck.results.ModelResult`,
shared by the ``cnncheck check`` worker process and the ``pytest --cnncheck`` items, so that both give
a model the same verdict.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from cnncheck.exits import CodeExited, contained_exits
from cnncheck.frames import traceback_location
from cnncheck.results import ModelResult


def check_candidate(candidate: Any, *, shape: tuple[int, ...] | None, device: str | None,
                    select: Sequence[str] | None, ignore: Sequence[str], drawn: bool = False,
                    sites: bool = False) -> ModelResult:
    """The result of checking one candidate; student code that raises, even ``sys.exit``, becomes the
    result's ``error`` (with ``error_kind`` and the student's line), never an exception. ``drawn`` adds
    the layer table and the data flow that the HTML report draws (one more eval forward); ``sites``, where
    each conv, linear and pooling layer was built, for the fixes (:mod:`cnncheck.fixes`)."""
    start = time.perf_counter()
    result = ModelResult(candidate.id, str(candidate.file), candidate.name)
    label = candidate.name + (f"[{candidate.variant}]" if candidate.variant else "")
    try:
        with contained_exits(label):
            model = _check_into(result, candidate, label, shape, device, select, ignore)
            if drawn and model is not None and result.input_shape is not None:
                _draw_into(result, model, result.input_shape, device)
            if sites and model is not None and result.error is None:
                result.layer_sites = layer_sites(model)
    except CodeExited as exc:
        result.error, result.error_kind = str(exc), "exit"
    finally:
        result.seconds = time.perf_counter() - start
    return result


def layer_sites(model: Any) -> dict[str, list[str]] | None:
    """Where each conv, linear and pooling layer of ``model`` was built (``file:line:column``) -> the
    names of the layers built there: a call in a loop, or in a block class used twice, builds several, and
    a fix at that call must suit all of them, in every model of the run (a model with no finding too).
    None for a model whose class an installed library defines (timm's, torchvision's): cnncheck edits no
    installed file, and their sources are large to read."""
    import inspect

    from torch import nn

    from cnncheck.locate import creation_position

    try:
        source = inspect.getsourcefile(type(model)) or ""
    except TypeError:
        return None
    if any(part in ("site-packages", "dist-packages") for part in source.replace("\\", "/").split("/")):
        return None
    kinds = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)
    found: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if isinstance(module, kinds):
            site = creation_position(model, name)
            if site is not None:
                key = site.location if site.column is None else f"{site.location}:{site.column}"
                found.setdefault(key, []).append(name)
    return found


def _draw_into(result: ModelResult, model: Any, shape: tuple[int, ...], device: str | None) -> None:
    """The table and flow of one eval forward; a model that cannot be drawn simply has no picture."""
    from cnncheck.flow import flow_of
    from cnncheck.layer_table import table_of, traced

    try:  # its own eval forward: the check's train trace ran with repairs (fc1 fed as if it fitted)
        run = traced(model, shape, device=device)
        result.architecture = table_of(run).to_dict()
        result.flow = flow_of(run).to_dict()
    except Exception as exc:  # a picture is an extra: its absence is noted, the verdict stands
        result.notes.append(f"no picture: {type(exc).__name__}: {exc}")


def _check_into(result: ModelResult, candidate: Any, label: str, shape: tuple[int, ...] | None,
                device: str | None, select: Sequence[str] | None, ignore: Sequence[str]) -> Any:
    from cnncheck.api import CheckError, check_model
    from cnncheck.discover import infer_input_shape

    given = shape  # the option's (--input-shape, the ini key), not the model's own declaration
    try:
        try:
            model = candidate.build()
        except Exception as exc:  # the student's constructor raised
            result.error_kind, result.error = _failure(exc, f"cannot build {label}: ")
            result.location = traceback_location(exc)
            return None
        shape = shape or candidate.spec.input_shape
        if shape is None:
            inferred = infer_input_shape(model)
            if inferred is None:
                result.error_kind = "input-shape"
                result.error = (f"no input shape for {label} and no conv to infer one from; declare it with "
                                f"@cnncheck.model(input_shape=...), --input-shape or the cnncheck_input_shape "
                                f"ini key")
                return None
            shape, result.shape_note = inferred
        result.input_shape = tuple(shape)
        # the model's own ignores suppress findings rather than skip the rule, so that an ignore that
        # no longer matches anything is noticed
        model_ignores = [p if ":" in p else f"{p}:*" for p in candidate.spec.ignore]
        report = check_model(model, shape, device=device, checks=select, ignore=[*ignore, *model_ignores])
        result.device, result.rules_run = report.device, report.rules_run
        result.findings = list(report.findings)
        result.outcomes = list(report.outcomes)
        result.notes += [f"unused ignore {p!r}: it matches no finding; remove it" for p in report.unused_ignores]
        result.plugin_problems = [str(p) for p in report.plugin_problems]
        result.notes += result.plugin_problems
        result.notes += report.notes
        return model
    except CheckError as exc:
        result.error, result.error_kind = str(exc), exc.stage
        result.location = traceback_location(exc.__cause__)
        wrong_rank = _wrong_rank(model, given) if given is not None and exc.__cause__ is not None else None
        if wrong_rank is not None:  # the option fits no conv: a usage error, not the model's
            result.error, result.error_kind, result.location = wrong_rank, "usage", None
        return model if exc.stage == "forward" else None  # drawn up to where forward raised
    except MemoryError as exc:
        result.error, result.error_kind = f"out of memory: {exc}", "memory"
    except Exception as exc:  # anything else from student code outside forward
        result.error_kind, result.error = _failure(exc)
        result.location = traceback_location(exc)
    return None


_CONV_INPUT = {1: "(N, C, L)", 2: "(N, C, H, W)", 3: "(N, C, D, H, W)"}


def _wrong_rank(model: Any, shape: tuple[int, ...]) -> str | None:
    """Why a given input shape cannot fit the model's first conv, when its rank is not the conv's."""
    from torch import nn

    for name, module in model.named_modules():
        if isinstance(module, (nn.modules.conv._ConvNd)):
            dims = len(module.kernel_size)
            if len(shape) == dims + 2:
                return None
            text = ",".join(str(s) for s in shape)
            like = ",".join(str(s) for s in (4, module.in_channels, *(28,) * dims))
            return (f"the input shape {text} has {len(shape)} numbers, but the first layer, {name} "
                    f"{type(module).__name__}, expects {_CONV_INPUT[dims]}: give {dims + 2}, like {like}")
    return None


def _failure(exc: Exception, prefix: str = "") -> tuple[str, str]:
    """(error_kind, message) for an exception from student code: torch's allocator failing under the
    memory limit is ``memory``, anything else ``build``."""
    if "can't allocate memory" in str(exc) or "out of memory" in str(exc).lower():
        return "memory", f"out of memory (the --max-memory limit): {str(exc).splitlines()[0]}"
    return "build", f"{prefix}{type(exc).__name__}: {exc}"
