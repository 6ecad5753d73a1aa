"""Find the models to check in Python files: declared ones first, else every nn.Module subclass
defined (not imported) in the file that builds with no arguments."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnncheck.declare import ModelSpec, spec_of


@dataclass(frozen=True)
class Candidate:
    file: Path
    name: str
    build: Callable[[], Any]
    spec: ModelSpec

    @property
    def id(self) -> str:
        return f"{self.file}::{self.name}"


def python_files(paths: list[str]) -> Iterator[Path]:
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*.py") if not p.name.startswith(("test_", "conftest")))
        else:
            yield path


def load_file(path: Path) -> Any:
    name = f"cnncheck_user_{abs(hash(path.resolve()))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.parent.resolve()))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent.resolve()))
    return module


def candidates(module: Any, file: Path) -> list[Candidate]:
    from torch import nn

    found = []
    for name, value in vars(module).items():
        if getattr(value, "__module__", None) != module.__name__:
            continue  # imported, not defined here
        spec = spec_of(value)
        if spec is not None:
            found.append(Candidate(file, name, value, spec))
    if found:
        return found
    for name, value in vars(module).items():
        if (
            inspect.isclass(value)
            and issubclass(value, nn.Module)
            and value.__module__ == module.__name__
            and _builds_without_arguments(value)
        ):
            found.append(Candidate(file, name, value, ModelSpec()))
    return found


def _builds_without_arguments(cls: type) -> bool:
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        return False
    return all(
        p.default is not inspect.Parameter.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        for p in signature.parameters.values()
    )
