"""Find the models to check in Python files, the same way for ``cnncheck check`` and ``pytest --cnncheck``.

A model is what the file declares with ``@cnncheck.model`` (or names in ``cnncheck_models``). A file that
declares none has as models the ``nn.Module`` subclasses it defines (not imports) that build with no
arguments, own parameters, and are not a part of another such class of the file: a ``Flatten`` helper, or
the ``Block`` the real model is made of, is not a model. Test files (``test_*.py``, ``*_test.py``) have
only their declared models; ``conftest.py`` has none."""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
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
    module_target: str | None = None  # "torchvision.models" of torchvision.models:resnet18: the id names it

    @property
    def id(self) -> str:
        where = f"{self.module_target}:{self.name}" if self.module_target else f"{self.file}::{self.name}"
        return where + (f"[{self.variant}]" if self.variant else "")

    @property
    def label(self) -> str:
        return f"{self.name}[{self.variant}]" if self.variant else self.name


MODEL_DEFINITION = ("a model is an nn.Module subclass defined in the file that builds with no arguments, owns "
                    "parameters and is no part of another such class, or a class or factory declared with "
                    "@cnncheck.model (file.py::Name checks any class by name)")

TEST_FILE_PATTERNS = ("test_*.py", "*_test.py")


def is_test_file(path: Path) -> bool:
    """A test module: it may declare models, but its other classes are test helpers, not models."""
    return any(path.match(pattern) for pattern in TEST_FILE_PATTERNS)


def python_files(paths: list[str]) -> Iterator[Path]:
    """The .py files under ``paths`` that can hold models, skipping conftests, test files that never
    mention cnncheck (so cannot declare a model), and sub-folders that are projects of their own (they
    have a pyproject.toml or setup.py, and their own imports)."""
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            yield path
            continue
        for file in sorted(_python_files_below(path)):
            if file.name == "conftest.py" or (is_test_file(file) and not _mentions_cnncheck(file)):
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


def _python_files_below(root: Path) -> Iterator[Path]:
    """Every ``.py`` file under ``root``, following symlinked folders (a submission may be one), each real
    folder once (a link to a parent folder does not loop)."""
    seen: set[tuple[int, int]] = set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        try:
            status = os.stat(folder)
        except OSError:
            subfolders[:] = []
            continue
        if (status.st_dev, status.st_ino) in seen:
            subfolders[:] = []
            continue
        seen.add((status.st_dev, status.st_ino))
        # real folders before links to them, so that a link to a folder already walked is the one skipped
        subfolders.sort(key=lambda name: (os.path.islink(os.path.join(folder, name)), name))
        yield from (Path(folder) / name for name in files if name.endswith(".py"))


def no_model_reason(module: Any, file: Path) -> str:
    """Why a file has no model, in words that say what to change."""
    from torch import nn

    try:
        if not file.read_text(encoding="utf-8", errors="replace").strip():
            return f"{file.name} is empty"
    except OSError:
        pass
    classes = [v for v in vars(module).values() if inspect.isclass(v) and issubclass(v, nn.Module)
               and getattr(v, "__module__", None) == module.__name__]
    if not classes:
        return f"{file.name} defines no nn.Module subclass"
    needs = [c for c in classes if not _builds_without_arguments(c)]
    if needs:
        cls = needs[0]
        required = [n for n, p in inspect.signature(cls).parameters.items() if p.default is inspect.Parameter.empty
                    and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        return (f"{cls.__name__}() needs arguments ({', '.join(required)}): declare a factory that builds it, "
                f"with @cnncheck.model(input_shape=...)")
    return f"no class of {file.name} is a model: {MODEL_DEFINITION}"


def _mentions_cnncheck(file: Path) -> bool:
    try:
        return "cnncheck" in file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return True  # let the import say what is wrong


def load_file(path: Path) -> Any:
    """Import one file under a name of its own. A file of a package (its folder has ``__init__.py``) keeps
    its package, so that its relative imports (``from .layers import Block``) work as they do in the
    student's own code; its folder, or the folder above its top package, is searched first."""
    name = f"cnncheck_user_{abs(hash(path.resolve()))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    package, search = _package_of(path.resolve())
    if package:
        module.__package__ = package
    sys.modules[name] = module
    sys.path.insert(0, search)
    try:
        with contained_exits(f"{path.name}, while it is imported,"):
            spec.loader.exec_module(module)
    finally:
        sys.path.remove(search)
    return module


def _package_of(path: Path) -> tuple[str, str]:
    """The dotted package that holds ``path`` ("" for none) and the folder to search first: the file's own
    folder, or the one above its top package."""
    parts: list[str] = []
    folder = path.parent
    while (folder / "__init__.py").is_file() and folder.parent != folder:
        parts.insert(0, folder.name)
        folder = folder.parent
    if not parts or not all(part.isidentifier() for part in parts):
        return "", str(path.parent)
    return ".".join(parts), str(folder)


def is_module_target(target: str) -> bool:
    """``package.module`` (of ``package.module:Name``) rather than a file or folder path."""
    return Path(target).suffix != ".py" and not Path(target).exists()


def import_failure(where: Path | str, exc: BaseException) -> str:
    """Why a file (or a ``package.module``) could not be imported, as its row or error item says it."""
    from cnncheck.exits import CodeExited

    what = str(exc) if isinstance(exc, CodeExited) else f"{type(exc).__name__}: {exc}"
    return f"cannot import {where.name if isinstance(where, Path) else where}: {what}"


def load_module(name: str) -> Any:
    """Import ``package.module`` by its name, found from the current folder first, as ``python -m``
    finds it: a module of a package, relative imports and all."""
    here = str(Path.cwd())
    sys.path.insert(0, here)
    try:
        with contained_exits(f"{name}, while it is imported,"):
            return importlib.import_module(name)
    finally:
        sys.path.remove(here)


def load_target(target: str) -> tuple[Any, Path]:
    """Import a file path, or a ``package.module`` name (a ``module:attr`` target) with :func:`load_module`."""
    path = Path(target)
    if not is_module_target(target):
        return load_file(path), path
    module = load_module(target)
    return module, Path(getattr(module, "__file__", None) or target)


class NoSuchModel(LookupError):
    """A target names a model its file or module does not have."""


def named_candidates(target: str, name: str) -> list[Candidate]:
    """The model ``name`` of ``target`` (``file.py::Name``, ``package.module:Name``): a class or a factory
    function, defined there or re-exported (``torchvision.models:AlexNet``), or for ``timm:NAME`` the model
    ``timm.create_model(NAME)`` builds. Raises NoSuchModel when there is none."""
    module, path = load_target(target)
    return model_named(module, path, name, target, by_module=is_module_target(target))


def model_named(module: Any, path: Path, name: str, target: str, *, by_module: bool) -> list[Candidate]:
    """The model ``name`` of an imported ``module`` (see :func:`named_candidates`; the ``cnncheck_models``
    ini key looks its models up here too). ``target`` is where it is as the user wrote it: the file
    ``path``, or with ``by_module`` a ``package.module``, which then names the model in its id."""
    module_target = target if by_module else None
    found = [replace(c, module_target=module_target) for c in candidates(module, path, include_all=True)
             if name in (c.name, c.label)]
    if found:
        return found
    value = getattr(module, name, None)
    if value is None and getattr(module, "__name__", "") == "timm" and module.is_model(name):
        value = functools.partial(module.create_model, name)
    if value is None or not callable(value):
        raise NoSuchModel(f"{target} has no model named {name!r}")
    spec = spec_of(value) or ModelSpec()
    return [Candidate(path, name, value, spec, line=line_of(value), module_target=module_target)]


def candidates(module: Any, file: Path, include_all: bool = False, test_file: bool | None = None) -> list[Candidate]:
    """The models of ``module`` (see the module's docstring); with ``include_all`` (a model asked for by
    name), every class that builds with no arguments too, parts included. ``test_file`` overrides the
    file-name patterns (pytest's ``python_files`` decides under pytest)."""
    found = [c for name, value in vars(module).items() for c in declared(module, name, value, file)]
    test_file = is_test_file(file) if test_file is None else test_file
    if (found or test_file) and not include_all:
        return found
    names = {c.name for c in found}
    classes = {name: value for name, value in vars(module).items()
               if name not in names and _undeclared_model_class(module, value)}
    if include_all:
        return found + [Candidate(file, n, c, ModelSpec(), line=line_of(c)) for n, c in classes.items()]
    return found + _whole_models(file, classes)


def declared(module: Any, name: str, value: Any, file: Path) -> list[Candidate]:
    """``value``'s candidates when ``module`` defines it and declares it a model: one per variant."""
    spec = spec_of(value)
    if spec is None or getattr(value, "__module__", None) != module.__name__:
        return []
    if not spec.variants:
        return [Candidate(file, name, value, spec, line=line_of(value))]
    return [Candidate(file, name, functools.partial(value, **kwargs), spec, variant, line_of(value))
            for variant, kwargs in spec.variants]


def _undeclared_model_class(module: Any, value: Any) -> bool:
    from torch import nn

    return (inspect.isclass(value) and issubclass(value, nn.Module) and value.__module__ == module.__name__
            and _builds_without_arguments(value))


def _whole_models(file: Path, classes: dict[str, type]) -> list[Candidate]:
    """The classes that own parameters and are no part of another: each is built once to see (seeded, the
    global random state kept), and that instance is the one checked. A class that cannot be built stays:
    its check says why."""
    from cnncheck.preserve import preserved_global_state

    built: dict[str, Any] = {}
    for name, cls in classes.items():
        try:
            with preserved_global_state(), contained_exits(name):
                built[name] = cls()
        except Exception:
            continue
    parts = {type(m) for instance in built.values() for m in instance.modules() if m is not instance}
    return [
        Candidate(file, name, _Prebuilt(cls, built[name]) if name in built else cls, ModelSpec(), line=line_of(cls))
        for name, cls in classes.items()
        if name not in built or (cls not in parts and any(True for _ in built[name].parameters()))
    ]


class _Prebuilt:
    """Builds ``cls``, handing out the instance discovery already built the first time."""

    def __init__(self, cls: type, instance: Any) -> None:
        self.cls, self.instance = cls, instance

    def __call__(self) -> Any:
        instance, self.instance = self.instance, None
        return instance if instance is not None else self.cls()


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
    """``4,1,28,28``, ``4x1x28x28`` or ``(4, 1, 28, 28)``: batch first, every size a positive integer."""
    cleaned = text.strip().strip("()[]").strip()
    parts = [part.strip() for part in re.split(r"[x,]", cleaned)]
    if parts and parts[-1] == "" and "," in cleaned:
        parts.pop()  # "(4, 1, 28, 28,)"
    if not all(part.isdigit() for part in parts):
        raise ValueError(f"{text!r} is not an input shape: every part must be a whole number; write it like 4,1,28,28")
    shape = tuple(int(part) for part in parts)
    if len(shape) < 2 or any(s <= 0 for s in shape):
        raise ValueError(f"{text!r}: give the batch first and positive sizes, like 4,1,28,28")
    return shape


@dataclass(frozen=True)
class Entry:
    """One line of the ``cnncheck_models`` ini key: ``pkg.mod:Attr`` or ``path.py::Attr``, then an
    optional shape, then an optional ``ignore=RULE,RULE:layer-glob,...`` for this model only
    (``ignore=*`` leaves the model out), and any architecture invariants: ``max_params=N``,
    ``params=N``, ``min_params=N``, ``trainable_params=N``, ``output_shape=*,10`` (``*``: any size),
    ``downsampling=32``, ``no_kinds=dropout,pool``, ``clean=RULE,...``."""

    file: Path
    attr: str
    shape: tuple[int, ...] | None
    ignore: tuple[str, ...] = ()
    invariants: tuple[tuple[str, Any], ...] = ()
    module: str | None = None  # "pkg.mod" of pkg.mod:Attr: imported by that name (load_module), not as a file

    @property
    def left_out(self) -> bool:
        return "*" in self.ignore


def parse_entry(line: str, rootdir: Path) -> Entry:
    target, *rest = line.split()
    ignore: tuple[str, ...] = ()
    shape_parts = []
    invariants: list[tuple[str, Any]] = []
    for part in rest:
        key, sep, value = part.partition("=")
        if part.startswith("ignore="):
            ignore = tuple(p for p in part.removeprefix("ignore=").split(",") if p)
        elif sep:
            invariants.append((key, _invariant(key, value, line)))
        else:
            shape_parts.append(part)
    shape_text = " ".join(shape_parts)
    shape = parse_shape(shape_text) if shape_text.strip() else None
    return replace(_entry_target(target, line, rootdir), shape=shape, ignore=ignore, invariants=tuple(invariants))


def _invariant(key: str, value: str, line: str) -> Any:
    """One ``key=value`` invariant of a ``cnncheck_models`` line, as ``assert_architecture`` takes it."""
    from cnncheck.declare import INVARIANTS

    if key not in INVARIANTS:
        raise ValueError(f"cnncheck_models: {line.strip()!r}: unknown invariant {key!r}; the invariants are "
                         f"{', '.join(INVARIANTS)} (and ignore=)")
    parts = [p.strip() for p in value.strip("()[]").split(",") if p.strip()]
    try:
        if key in ("no_kinds", "clean"):
            return tuple(parts)
        if key == "output_shape":
            return tuple(None if p in ("*", "None", "_") else int(p) for p in parts)
        if key == "downsampling":
            return int(parts[0]) if len(parts) == 1 else tuple(int(p) for p in parts)
        return int(value.replace("_", ""))
    except (ValueError, IndexError):
        raise ValueError(f"cnncheck_models: {line.strip()!r}: {key}={value!r} is not a valid value") from None


def _entry_target(target: str, line: str, rootdir: Path) -> Entry:
    if "::" in target:
        path, _, attr = target.partition("::")
        file = (rootdir / path).resolve()
        if not file.exists():
            raise ValueError(f"cnncheck_models: {path} does not exist (relative to {rootdir})")
        return Entry(file, attr, None)
    module_name, sep, attr = target.partition(":")
    if not sep or not attr:
        raise ValueError(
            f"cnncheck_models: {line.strip()!r} is neither 'package.module:Attr' nor 'path/to/file.py::Attr'"
        )
    try:
        spec = importlib.util.find_spec(module_name)
    except ImportError as exc:  # its package is missing: find_spec imports the parents
        raise ValueError(f"cnncheck_models: cannot find module {module_name!r} ({exc})") from None
    if spec is None or spec.origin is None:
        raise ValueError(f"cnncheck_models: cannot find module {module_name!r}")
    return Entry(Path(spec.origin).resolve(), attr, None, module=module_name)


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
    reason = f"input shape {'x'.join(map(str, shape))} inferred: the first conv takes {channels} channel(s)"
    return shape, reason


def inferred_shapes_note(count: int) -> str:
    """Said once per run, to whoever runs the check (not in each student's report)."""
    return (f"{count} model(s) declare no input shape, so each was checked on one inferred from its first conv; "
            f"declare the real one with @cnncheck.model(input_shape=...), --input-shape or the "
            f"cnncheck_input_shape ini key")
