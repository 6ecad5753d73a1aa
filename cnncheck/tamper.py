"""Whether student code changed what a check runs on: cnncheck's own modules and hooks, and the torch
functions, tensor methods and layer classes the rules rely on.

The command's worker takes a :class:`Snapshot` of those objects before it imports a submission and
compares after each check; anything replaced (``cnncheck.api.check_model`` wrapped, a rule's helper
swapped, a ``cnncheck_report`` hook registered that clears findings, ``F.conv2d`` patched) makes that
submission's row "tampered" instead of a verdict. This catches the simple cases: code that rewrites
cnncheck inside its own process can always lie about itself (see the threat model in docs/grading.md).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _import_all_of_cnncheck() -> None:
    """Every cnncheck module, imported before the submission, so that each is watched from the start."""
    import cnncheck

    for info in pkgutil.walk_packages(cnncheck.__path__, "cnncheck."):
        if info.name not in ("cnncheck.__main__", "cnncheck._warmup"):
            importlib.import_module(info.name)


def _watched_namespaces() -> dict[str, dict[str, Any]]:
    spaces = {name: vars(module) for name, module in sys.modules.items()
              if module is not None and (name == "cnncheck" or name.startswith("cnncheck."))}
    spaces["torch"] = vars(torch)
    spaces["torch.nn.functional"] = vars(F)
    spaces["torch.Tensor"] = dict(vars(torch.Tensor))
    for name, value in vars(nn).items():
        if isinstance(value, type) and issubclass(value, nn.Module):
            spaces[f"torch.nn.{name}"] = dict(vars(value))
    return spaces


def _watched_refs() -> dict[str, Any]:
    return {f"{space}.{key}": value for space, names in _watched_namespaces().items() for key, value in list(names.items())}


_OWN_STATE = "cnncheck.tamper._TAKEN_BEFORE_ANY_SUBMISSION"  # set after the snapshot it holds


def _hooks() -> dict[str, tuple[Any, ...]]:
    from cnncheck.plugins import plugin_manager

    pm = plugin_manager()
    return {name: tuple(impl.function for impl in getattr(pm.hook, name).get_hookimpls())
            for name in dir(pm.hook) if name.startswith("cnncheck_")}


class Snapshot:
    """The objects a check relies on, by name, as they are now."""

    def __init__(self) -> None:
        try:  # torch._dynamo, imported by torchvision, timm and torch.compile, re-wraps torch.manual_seed:
            import torch._dynamo  # noqa: F401  (a library's own change, made before the snapshot)
        except ImportError:
            pass
        _import_all_of_cnncheck()
        self.modules = {name: module for name, module in sys.modules.items()
                        if name == "cnncheck" or name.startswith("cnncheck.")}
        self.refs = {name: value for name, value in _watched_refs().items() if name != _OWN_STATE}
        self.hooks = _hooks()

    def changed(self) -> list[str]:
        """What is no longer the object it was: replaced or removed (new names are not changes)."""
        found = [f"sys.modules[{name!r}]" for name, module in self.modules.items() if sys.modules.get(name) is not module]
        now = _watched_refs()
        found += [name for name, value in self.refs.items() if name not in now or now[name] is not value]
        hooks = _hooks()
        found += [f"the {name} hook's implementations" for name, impls in self.hooks.items()
                  if hooks.get(name) != impls]
        return found


_TAKEN_BEFORE_ANY_SUBMISSION: Snapshot | None = None


def take_server_snapshot() -> None:
    """Called once in the fork server, before it forks any worker: workers inherit it, and it costs
    them nothing (a snapshot takes about 0.1 s)."""
    global _TAKEN_BEFORE_ANY_SUBMISSION
    _TAKEN_BEFORE_ANY_SUBMISSION = Snapshot()


def snapshot_before_submission(fresh: bool) -> Snapshot:
    """The fork server's snapshot, or with ``fresh`` (plugins loaded in this worker) a new one."""
    if fresh or _TAKEN_BEFORE_ANY_SUBMISSION is None:
        return Snapshot()
    return _TAKEN_BEFORE_ANY_SUBMISSION
