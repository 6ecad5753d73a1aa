"""The pytest plugin's entry point: options, ini keys, the marker and the fixtures.

Loaded through the ``pytest11`` entry point by every pytest run where cnncheck is installed, so this
module is small and imports only pytest and the standard library. The collection machinery
(:mod:`cnncheck.pytest_items`) and torch load only when ``--cnncheck`` (or ``cnncheck_enable``) is on,
or when a test asks for a cnncheck fixture.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

    from cnncheck.pytest_items import Checker

from cnncheck.pytest_options import OPTIONS, UNDO, Options, device_choice, fail_on_choice, rule_id_list


# -- options ------------------------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("cnncheck", "check PyTorch CNNs with cnncheck")
    group.addoption("--cnncheck", action="store_true", dest="cnncheck", default=None,
                    help="check every model found in the collected files, one test item per rule")
    group.addoption("--cnncheck-device", dest="cnncheck_device", default=None, type=device_choice,
                    help="cpu (default), cuda, all (cpu and cuda) or auto (cpu, plus cuda when available)")
    group.addoption("--cnncheck-select", dest="cnncheck_select", default=None, type=rule_id_list,
                    help="comma-separated rule ids or prefixes to check (default: all)")
    group.addoption("--cnncheck-ignore", dest="cnncheck_ignore", default=None, type=rule_id_list,
                    help="comma-separated rule ids or prefixes to skip")
    group.addoption("--cnncheck-fail-on", dest="cnncheck_fail_on", default=None, type=fail_on_choice,
                    help="warning (default): warnings fail too; error: warnings pass but are reported")
    group.addoption("--cnncheck-plugin", dest="cnncheck_plugins", action="append", default=None,
                    metavar="MODULE", help="load a cnncheck plugin module (repeatable)")
    group.addoption("--cnncheck-disable-plugin", dest="cnncheck_disable_plugins", action="append", default=None,
                    metavar="NAME", help="disable a cnncheck plugin by name, e.g. an entry point (repeatable)")
    group.addoption("--cnncheck-baseline", dest="cnncheck_baseline", default=None, metavar="FILE",
                    help="fail only on findings not recorded in this baseline file")
    group.addoption("--cnncheck-html", dest="cnncheck_html", default=None, metavar="FILE",
                    help="also write the HTML report (a picture of each model) of this run's models to FILE")
    group.addoption("--cnncheck-baseline-write", dest="cnncheck_baseline_write", default=None, metavar="FILE",
                    help="record every finding of this run in a baseline file")
    parser.addini("cnncheck_enable", type="bool", default=False, help="run cnncheck as if --cnncheck were given")
    parser.addini("cnncheck_models", type="linelist", default=[],
                  help="models to check: 'pkg.module:Attr' or 'path/file.py::Attr', then an optional shape")
    parser.addini("cnncheck_input_shape", default="", help="default input shape, e.g. 4,3,32,32")
    parser.addini("cnncheck_device", default="cpu", help="see --cnncheck-device")
    parser.addini("cnncheck_select", type="args", default=[], help="see --cnncheck-select")
    parser.addini("cnncheck_ignore", type="args", default=[], help="see --cnncheck-ignore")
    parser.addini("cnncheck_fail_on", default="warning", help="see --cnncheck-fail-on")
    parser.addini("cnncheck_plugins", type="linelist", default=[], help="see --cnncheck-plugin")
    parser.addini("cnncheck_disable_plugins", type="linelist", default=[], help="see --cnncheck-disable-plugin")
    parser.addini("cnncheck_baseline", default="", help="see --cnncheck-baseline")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cnncheck: a cnncheck rule check of one model (added by --cnncheck)")
    options = Options.from_config(config)
    config.stash[OPTIONS] = options
    config.stash[UNDO] = []
    config.pluginmanager.register(ConftestBridge(config), "cnncheck-conftest-bridge")
    if options.plugins or options.disabled:
        _load_plugins(config, options)
    if options.enabled:
        from cnncheck.pytest_items import Collection, Reporter

        _validate_rules(options)
        config.pluginmanager.register(Collection(config, options), "cnncheck-collection")
        config.pluginmanager.register(Reporter(options), "cnncheck-reporter")


def _load_plugins(config: pytest.Config, options: Options) -> None:
    from cnncheck import plugins

    try:
        plugins.load_and_block(options.plugins, options.disabled, config.stash[UNDO])
    except (ImportError, ValueError) as exc:
        raise pytest.UsageError(f"cnncheck: {exc}") from None


class ConftestBridge:
    """Makes a conftest.py (or any pytest plugin) with ``@cnncheck.hookimpl`` functions a cnncheck
    plugin too, for the session. pytest replays earlier registrations to a newly registered
    implementer, so conftests loaded before configure are seen as well."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_plugin_registered(self, plugin: object) -> None:
        if not any(getattr(getattr(plugin, name, None), "cnncheck_impl", None) for name in _hook_names(plugin)):
            return
        from cnncheck import plugins

        plugins.register(plugin, name=f"conftest:{getattr(plugin, '__file__', plugin)!s}")
        self.config.stash[UNDO].append(lambda: plugins.unregister(plugin))


def _hook_names(plugin: object) -> list[str]:
    try:
        return [name for name in vars(plugin) if name.startswith("cnncheck_")]
    except TypeError:  # objects without __dict__ have no hook functions of ours
        return []


def pytest_unconfigure(config: pytest.Config) -> None:
    steps: list[Callable[[], None]] = config.stash.get(UNDO, [])
    for undo in reversed(steps):
        undo()


def _validate_rules(options: Options) -> None:
    from cnncheck.plugins import all_rules
    from cnncheck.rules import select_rules

    try:
        select_rules(all_rules(problems=[]), options.select, options.ignore)
    except ValueError as exc:
        raise pytest.UsageError(f"cnncheck: {exc}") from None


@pytest.fixture
def cnncheck(request: pytest.FixtureRequest) -> Checker:
    """A checker bound to this session's cnncheck options: ``.check(model, shape)`` and
    ``.assert_ok(model, shape, ignore=[...])``."""
    from cnncheck.pytest_items import Checker

    return Checker(request.config.stash[OPTIONS])


@pytest.fixture
def cnncheck_snapshot(request: pytest.FixtureRequest) -> Any:
    """syrupy's ``snapshot``, storing an architecture as its stable layer table in a ``.txt`` file:
    ``assert cnncheck.architecture(model, x) == cnncheck_snapshot`` (needs ``cnncheck[snapshot]``)."""
    try:
        snapshot = request.getfixturevalue("snapshot")
    except pytest.FixtureLookupError:
        raise pytest.UsageError("cnncheck_snapshot needs syrupy: pip install 'cnncheck[snapshot]'") from None
    from cnncheck.snapshot import ArchitectureSnapshot

    return snapshot.use_extension(ArchitectureSnapshot)


@pytest.fixture
def cnncheck_device(request: pytest.FixtureRequest) -> str:
    """The device of this test's parametrization: each device in use (see --cnncheck-device)."""
    return str(request.param)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "cnncheck_device" not in metafunc.fixturenames:
        return
    options = metafunc.config.stash[OPTIONS]
    from cnncheck.pytest_items import cuda_available

    # by default, cpu and, where there is one, cuda: no skipped [cuda] variant on every CPU-only CI run
    devices = options.devices() if options.device != "cpu" else ["cpu", *(["cuda"] if cuda_available() else [])]
    params = []
    for device in devices:
        marks = []
        if device == "cuda":
            marks.append(pytest.mark.skipif(not cuda_available(), reason="CUDA is not available on this machine"))
        params.append(pytest.param(device, id=device, marks=marks))
    metafunc.parametrize("cnncheck_device", params, indirect=True)
