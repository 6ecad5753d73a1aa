"""The plugin manager: specs, cnncheck's own rules, installed plugins, and validation."""

from __future__ import annotations

import functools

import pluggy

from cnncheck import hookspecs
from cnncheck.rules import Rule

ENTRY_POINT_GROUP = "cnncheck"


@functools.cache
def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built on first use.

    Order matters: specs first, then cnncheck's own plugin, then the entry-point group, then
    ``check_pending`` so that a misspelt hook name fails loudly instead of being ignored.
    """
    from cnncheck import checks

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(checks, name="cnncheck.builtin")
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    pm.check_pending()
    return pm


def all_rules(pm: pluggy.PluginManager | None = None) -> list[Rule]:
    """Every registered rule, in registration order; a duplicate id names both plugins."""
    pm = pm or plugin_manager()
    rules: dict[str, Rule] = {}
    owners: dict[str, str] = {}
    for impl in reversed(pm.hook.cnncheck_register_rules.get_hookimpls()):
        owner = impl.plugin_name
        for rule in impl.function() or ():
            if not isinstance(rule, Rule):
                raise TypeError(
                    f"plugin {owner!r}: cnncheck_register_rules returned {rule!r}, not a cnncheck.Rule"
                )
            if rule.id in rules:
                raise ValueError(
                    f"rule id {rule.id!r} is registered by both {owners[rule.id]!r} and {owner!r}"
                )
            rules[rule.id] = rule
            owners[rule.id] = owner
    return list(rules.values())
