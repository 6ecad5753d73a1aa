"""The cnncheck hook specifications.

Every hook is prefixed ``cnncheck_``. cnncheck's own rules are registered through these same hooks
(see :mod:`cnncheck.checks`), so a third-party plugin is a first-class citizen. Specs only ever gain
arguments; an implementation may accept a subset of them.

A plugin is any object or module with functions marked ``@cnncheck.hookimpl``::

    import cnncheck

    @cnncheck.hookimpl
    def cnncheck_register_rules():
        return [cnncheck.Rule(id="odd-kernel", ...)]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from cnncheck.layers import LayerKind
    from cnncheck.rules import Rule

PROJECT = "cnncheck"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def cnncheck_register_rules() -> Iterable[Rule]:  # type: ignore[empty-body]  # a spec: pluggy never runs it
    """Return the rules this plugin contributes.

    Called once per plugin manager. Every implementation's rules are collected; two rules with the
    same id are an error that names both plugins.
    """


@hookspec(firstresult=True)
def cnncheck_classify_module(module: Any) -> LayerKind | None:
    """Say what kind of layer ``module`` (an ``nn.Module``) is, or return None to let others decide.

    Used for layers that cnncheck cannot place by their attributes and behaviour, for example a fused
    or quantized convolution. First non-None result wins; cnncheck's own duck typing runs last.
    """


@hookspec(firstresult=True)
def cnncheck_example_input(model: Any, input_shape: Any, device: Any) -> Any:
    """Build the example input for ``model`` from the declared ``input_shape`` (whatever the user
    passed as ``example_input``: a shape, a tensor, ...), or return None to let others decide.

    Return a tensor, a tuple of positional arguments, or a dict of keyword arguments for a model whose
    ``forward`` takes several inputs or a dict. First non-None result wins; cnncheck's default makes a
    seeded ``torch.randn(input_shape)``.
    """


@hookspec
def cnncheck_report(report: Any, model: Any) -> None:
    """See the finished :class:`~cnncheck.Report` of ``model`` before it is returned: add notes
    (``report.notes.append(...)``) or export it somewhere. Return values are ignored."""
