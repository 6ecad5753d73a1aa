"""Find the models to check in Python files: declared ones first, else every nn.Module subclass
defined (not imported) in the file that builds with no arguments."""

from __future__ import annotations

import functools
import importlib.util
import inspect
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnncheck.declare import ModelSpec, spec_of
from cnncheck.exits import contained_exits


@dataclass(frozen=True)
class Candidate:
    file: Path
    name: str
    build: Callable[[], Any]
    spec: ModelSpec
    variant: str | None = None
    line: int = 0  # where the class or factory is defined, 0-based: the line of its items in pytest

    @property
    def id(self) -> str:
        return f"{self.file}::{self.name}" + (f"[{self.variant}]" if self.variant else "")


def python_files(paths: list[str]) -> Iterator[Path]:
    """The .py files under ``paths``, skipping tests, conftests, and sub-folders that are projects of
    their own (they have a pyproject.toml or setup.py, and their own imports)."""
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            yield path
            continue
        for file in sorted(path.rglob("*.py")):
            if file.name.startswith(("test_", "conftest")):
                continue
            inner = file.parent
            nested = False
            while inner != path and path in inner.parents:
                if (inner / "pyproject.toml").exists() or (inner / "setup.py").exists():
                    nested = True
                    break
                inner = inner.parent
            if not nested:
                yield file


def load_file(path: Path) -> Any:
    name = f"cnncheck_user_{abs(hash(path.resolve()))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.parent.resolve()))
    try:
        with contained_exits(f"{path.name}, while it is imported,"):
            spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent.resolve()))
    return module


def load_target(target: str) -> tuple[Any, Path]:
    """Import a file path, or a ``package.module`` name (a ``module:attr`` target)."""
    path = Path(target)
    if path.suffix == ".py" or path.exists():
        return load_file(path), path
    module = importlib.import_module(target)
    return module, Path(getattr(module, "__file__", target))


def candidates(module: Any, file: Path, include_all: bool = False) -> list[Candidate]:
    """The models of ``module``: its declared ones, else (or, with ``include_all``, also) every
    nn.Module subclass it defines that builds with no arguments."""
    from torch import nn

    found = []
    for name, value in vars(module).items():
        if getattr(value, "__module__", None) != module.__name__:
            continue  # imported, not defined here
        spec = spec_of(value)
        if spec is not None and spec.variants:
            for variant, kwargs in spec.variants:
                build = functools.partial(value, **kwargs)
                found.append(Candidate(file, name, build, spec, variant, line_of(value)))
        elif spec is not None:
            found.append(Candidate(file, name, value, spec, line=line_of(value)))
    if found and not include_all:
        return found
    declared = {c.name for c in found}
    for name, value in vars(module).items():
        if name in declared:
            continue
        if (
            inspect.isclass(value)
            and issubclass(value, nn.Module)
            and value.__module__ == module.__name__
            and _builds_without_arguments(value)
        ):
            found.append(Candidate(file, name, value, ModelSpec(), line=line_of(value)))
    return found


def line_of(target: Any) -> int:
    """The 0-based line where a class or function is defined, or 0 when its source cannot be read."""
    try:
        return inspect.getsourcelines(target)[1] - 1
    except (OSError, TypeError):
        return 0


def _builds_without_arguments(cls: type) -> bool:
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        return False
    return all(
        p.default is not inspect.Parameter.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        for p in signature.parameters.values()
    )


def parse_shape(text: str) -> tuple[int, ...]:
    """``4,1,28,28``, ``4x1x28x28`` or ``(4, 1, 28, 28)``: batch first, every size positive."""
    cleaned = text.strip().strip("()[]").replace("x", ",").replace(" ", "")
    try:
        shape = tuple(int(part) for part in cleaned.split(",") if part)
    except ValueError:
        raise ValueError(f"{text!r} is not an input shape; write it like 4,1,28,28") from None
    if len(shape) < 2 or any(s <= 0 for s in shape):
        raise ValueError(f"{text!r}: give the batch first and positive sizes, like 4,1,28,28")
    return shape


@dataclass(frozen=True)
class Entry:
    """One line of the ``cnncheck_models`` ini key: ``pkg.mod:Attr`` or ``path.py::Attr``, then an
    optional shape."""

    file: Path
    attr: str
    shape: tuple[int, ...] | None


def parse_entry(line: str, rootdir: Path) -> Entry:
    target, _, shape_text = line.strip().partition(" ")
    shape = parse_shape(shape_text) if shape_text.strip() else None
    if "::" in target:
        path, _, attr = target.partition("::")
        file = (rootdir / path).resolve()
        if not file.exists():
            raise ValueError(f"cnncheck_models: {path} does not exist (relative to {rootdir})")
        return Entry(file, attr, shape)
    module_name, sep, attr = target.partition(":")
    if not sep or not attr:
        raise ValueError(
            f"cnncheck_models: {line.strip()!r} is neither 'package.module:Attr' nor 'path/to/file.py::Attr'"
        )
    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None:
        raise ValueError(f"cnncheck_models: cannot find module {module_name!r}")
    return Entry(Path(spec.origin).resolve(), attr, shape)


DEFAULT_SIDE = {1: 28, 3: 32}  # MNIST-like for one channel, CIFAR-like for RGB; 32 otherwise
DEFAULT_LENGTH = {1: 64, 3: 16}  # per conv rank: Conv1d sequences, Conv3d volumes


def infer_input_shape(model: Any) -> tuple[tuple[int, ...], str] | None:
    """A plausible input for a model with no declared shape, and the reason, for the report."""
    first = next((m for m in model.modules() if hasattr(m, "in_channels") and hasattr(m, "kernel_size")), None)
    if first is None:
        return None
    channels = int(first.in_channels)
    kernel = first.kernel_size
    rank = len(kernel) if isinstance(kernel, (tuple, list)) else 2
    side = DEFAULT_SIDE.get(channels, 32) if rank == 2 else DEFAULT_LENGTH.get(rank, 16)
    shape = (4, channels, *([side] * rank))
    reason = (
        f"input shape {'x'.join(map(str, shape))} inferred: the first conv takes {channels} channel(s); "
        f"declare another with @cnncheck.model(input_shape=...) or the cnncheck_input_shape ini key"
    )
    return shape, reason
