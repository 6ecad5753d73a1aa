"""The plugin manager: specs, cnncheck's own rules, installed plugins, and safe hook calls.

Plugins come from the ``cnncheck`` entry-point group, :func:`register` in code, the ``plugins=``
argument of :func:`cnncheck.check_model`, and (under pytest) conftest files and
``--cnncheck-plugin``. A plugin that raises or returns garbage is reported by name and hook; the
other plugins and rules go on.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import pluggy

from cnncheck import hookspecs
from cnncheck.rules import Rule

ENTRY_POINT_GROUP = "cnncheck"
BUILTIN = "cnncheck.builtin"


@dataclass(frozen=True, slots=True)
class PluginProblem:
    """A plugin that misbehaved: which plugin, in which hook, and what it did."""

    plugin: str
    hook: str
    error: str

    def __str__(self) -> str:
        return f"plugin {self.plugin!r} failed in {self.hook}: {self.error}"


@functools.cache
def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built on first use.

    Order matters: specs first, then cnncheck's own plugin, then the entry-point group, then
    ``check_pending`` so that a misspelt hook name fails loudly instead of being ignored.
    """
    from cnncheck import checks

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(checks, name=BUILTIN)
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    pm.check_pending()
    return pm


def register(plugin: Any, name: str | None = None) -> str:
    """Register a plugin (a module, class instance or any object with ``cnncheck_*`` hookimpls).

    A module path string is imported first. Returns the name it is registered under.
    """
    pm = plugin_manager()
    if isinstance(plugin, str):
        name = name or plugin
        plugin = importlib.import_module(plugin)
    if pm.is_registered(plugin):
        return pm.get_name(plugin) or ""
    registered = pm.register(plugin, name=name)
    if registered is None:
        raise ValueError(f"cnncheck plugin {name or plugin!r} is blocked; unblock it to use it")
    pm.check_pending()
    return registered


def unregister(plugin: Any) -> None:
    pm = plugin_manager()
    if isinstance(plugin, str):
        pm.unregister(name=plugin)
    elif pm.is_registered(plugin):
        pm.unregister(plugin)


def block(name: str) -> Any:
    """Disable a plugin by name (an entry-point name or a registered name); returns the plugin
    object it removed (or None), so that :func:`unblock` can put it back."""
    pm = plugin_manager()
    if name not in plugin_names() and not pm.is_blocked(name):
        known = ", ".join(plugin_names())
        raise ValueError(f"no cnncheck plugin named {name!r} to disable; registered: {known}")
    plugin = pm.get_plugin(name)
    pm.set_blocked(name)
    return plugin


def unblock(name: str, plugin: Any = None) -> None:
    pm = plugin_manager()
    pm.unblock(name)
    if plugin is not None and not pm.is_registered(plugin):
        pm.register(plugin, name=name)


def plugin_names() -> list[str]:
    pm = plugin_manager()
    return [name for name, plugin in pm.list_name_plugin() if plugin is not None]


def load_and_block(load: Iterable[str], disable: Iterable[str], undo: list[Callable[[], None]]) -> None:
    """Register the plugin modules ``load`` and block the plugins named in ``disable`` (``--plugin`` and
    ``--disable-plugin`` of the command and of pytest), appending to ``undo`` the steps that put the
    registry back as it was. Raises ImportError or ValueError for a module or name that is wrong."""
    for module in load:
        name = register(module)
        undo.append(cast("Callable[[], None]", lambda name=name: unregister(name)))
    for name in disable:
        removed = block(name)
        undo.append(cast("Callable[[], None]", lambda name=name, removed=removed: unblock(name, removed)))


@contextlib.contextmanager
def registered(plugins: Iterable[Any]) -> Iterator[None]:
    """Register ``plugins`` for the duration of one check; those already registered stay."""
    added = []
    try:
        for plugin in plugins:
            if not plugin_manager().is_registered(plugin):
                register(plugin)
                added.append(plugin)
        yield
    finally:
        for plugin in added:
            unregister(plugin)


def call_each(pm: pluggy.PluginManager, hook: str, problems: list[PluginProblem], *,
              registration_order: bool = False, **kwargs: Any) -> Iterator[tuple[str, Any]]:
    """Call every implementation of ``hook`` one at a time, so that one that raises is reported by
    plugin name (in ``problems``) and skipped instead of stopping the run. The order is pluggy's
    (the last registered first), or registration order when listing (cnncheck's own rules first)."""
    caller = getattr(pm.hook, hook)
    impls = caller.get_hookimpls()
    for impl in impls if registration_order else reversed(impls):
        arguments = {name: kwargs[name] for name in impl.argnames}
        try:
            yield impl.plugin_name, impl.function(**arguments)
        except Exception as exc:  # a third party's bug: name it, keep going
            problems.append(PluginProblem(impl.plugin_name, hook, f"{type(exc).__name__}: {exc}"))


def first_result(pm: pluggy.PluginManager, hook: str, problems: list[PluginProblem], **kwargs: Any) -> Any:
    for _, result in call_each(pm, hook, problems, **kwargs):
        if result is not None:
            return result
    return None


def all_rules(pm: pluggy.PluginManager | None = None, problems: list[PluginProblem] | None = None) -> list[Rule]:
    """Every registered rule, in registration order.

    A plugin whose hook raises or returns something that is not a :class:`Rule` is reported in
    ``problems`` (or raised as a ``TypeError`` naming the plugin when no list is given); a duplicate
    id names both plugins.
    """
    pm = pm or plugin_manager()
    strict = problems is None
    problems = [] if problems is None else problems
    rules: dict[str, Rule] = {}
    owners: dict[str, str] = {}
    for owner, result in call_each(pm, "cnncheck_register_rules", problems, registration_order=True):
        try:
            contributed = list(result or ())
        except TypeError:
            contributed = [result]
        for rule in contributed:
            if not isinstance(rule, Rule):
                problems.append(PluginProblem(owner, "cnncheck_register_rules",
                                              f"returned {rule!r}, which is not a cnncheck.Rule"))
                continue
            if rule.id in rules:
                raise ValueError(
                    f"rule id {rule.id!r} is registered by both {owners[rule.id]!r} and {owner!r}"
                )
            rules[rule.id] = rule
            owners[rule.id] = owner
    if strict and problems:
        raise TypeError("; ".join(str(p) for p in problems))
    return list(rules.values())


def plugin_kind(pm: pluggy.PluginManager, problems: list[PluginProblem], module: Any) -> Any:
    """A plugin's ``cnncheck_classify_module`` answer for ``module`` as a ``LayerKind``, or None. An
    answer that is not a kind is recorded in ``problems`` and ignored."""
    from cnncheck.layers import LayerKind

    for plugin, answer in call_each(pm, "cnncheck_classify_module", problems, module=module):
        if answer is None:
            continue
        try:
            return LayerKind(answer)
        except ValueError:
            problems.append(PluginProblem(plugin, "cnncheck_classify_module",
                                          f"returned {answer!r}, which is not a cnncheck.LayerKind"))
    return None
