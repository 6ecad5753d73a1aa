"""The pytest plugin's entry point: options, ini keys, the marker and the fixtures.

Loaded through the ``pytest11`` entry point by every pytest run where cnncheck is installed, so this
module is small and imports only pytest and the standard library. The collection machinery
(:mod:`cnncheck.pytest_items`) and torch load only when ``--cnncheck`` (or ``cnncheck_enable``) is on,
or when a test asks for a cnncheck fixture.
"""

from __future__ import annotations

import argparse
from typing import Any, NamedTuple

import pytest

DEVICE_CHOICES = ("cpu", "cuda", "all", "auto")
FAIL_ON_CHOICES = ("warning", "error")


# -- options ------------------------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("cnncheck", "check PyTorch CNNs with cnncheck")
    group.addoption("--cnncheck", action="store_true", dest="cnncheck", default=None,
                    help="check every model found in the collected files, one test item per rule")
    group.addoption("--cnncheck-device", dest="cnncheck_device", default=None, type=_device,
                    help="cpu (default), cuda, all (cpu and cuda) or auto (cpu, plus cuda when available)")
    group.addoption("--cnncheck-select", dest="cnncheck_select", default=None, type=_ids,
                    help="comma-separated rule ids or prefixes to check (default: all)")
    group.addoption("--cnncheck-ignore", dest="cnncheck_ignore", default=None, type=_ids,
                    help="comma-separated rule ids or prefixes to skip")
    group.addoption("--cnncheck-fail-on", dest="cnncheck_fail_on", default=None, type=_fail_on,
                    help="warning (default): warnings fail too; error: warnings pass but are reported")
    parser.addini("cnncheck_enable", type="bool", default=False, help="run cnncheck as if --cnncheck were given")
    parser.addini("cnncheck_models", type="linelist", default=[],
                  help="models to check: 'pkg.module:Attr' or 'path/file.py::Attr', then an optional shape")
    parser.addini("cnncheck_input_shape", default="", help="default input shape, e.g. 4,3,32,32")
    parser.addini("cnncheck_device", default="cpu", help="see --cnncheck-device")
    parser.addini("cnncheck_select", type="args", default=[], help="see --cnncheck-select")
    parser.addini("cnncheck_ignore", type="args", default=[], help="see --cnncheck-ignore")
    parser.addini("cnncheck_fail_on", default="warning", help="see --cnncheck-fail-on")


def _device(value: str) -> str:
    if value not in DEVICE_CHOICES:
        raise argparse.ArgumentTypeError(f"{value!r}: choose one of {', '.join(DEVICE_CHOICES)}")
    return value


def _fail_on(value: str) -> str:
    if value not in FAIL_ON_CHOICES:
        raise argparse.ArgumentTypeError(f"{value!r}: choose 'warning' (warnings fail) or 'error' (they pass)")
    return value


def _ids(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


class Options(NamedTuple):
    """The session's cnncheck options (command line first, then ini)."""

    enabled: bool
    device: str
    select: list[str] | None
    ignore: list[str]
    fail_on: str
    default_shape: tuple[int, ...] | None
    models: list[str]

    @classmethod
    def from_config(cls, config: pytest.Config) -> Options:
        def pick(name: str) -> Any:
            value = config.getoption(name)
            return value if value is not None else config.getini(name)

        enabled = bool(config.getoption("cnncheck") or config.getini("cnncheck_enable"))
        try:
            device = _device(pick("cnncheck_device"))
            fail_on = _fail_on(pick("cnncheck_fail_on"))
        except argparse.ArgumentTypeError as exc:
            raise pytest.UsageError(f"cnncheck: {exc}") from None
        select = pick("cnncheck_select") or None
        shape_text = config.getini("cnncheck_input_shape")
        default_shape = None
        if shape_text:
            from cnncheck.discover import parse_shape

            try:
                default_shape = parse_shape(shape_text)
            except ValueError as exc:
                raise pytest.UsageError(f"cnncheck_input_shape: {exc}") from None
        return cls(enabled, device, select, list(pick("cnncheck_ignore") or []), fail_on, default_shape,
                   list(config.getini("cnncheck_models")))

    def devices(self) -> list[str]:
        if self.device in ("cpu", "cuda"):
            return [self.device]
        if self.device == "all":
            return ["cpu", "cuda"]
        import torch

        return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


OPTIONS = pytest.StashKey[Options]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cnncheck: a cnncheck rule check of one model (added by --cnncheck)")
    options = Options.from_config(config)
    config.stash[OPTIONS] = options
    if options.enabled:
        from cnncheck.pytest_items import Collection, Reporter

        _validate_rules(options)
        config.pluginmanager.register(Collection(config, options), "cnncheck-collection")
        config.pluginmanager.register(Reporter(options), "cnncheck-reporter")


def _validate_rules(options: Options) -> None:
    from cnncheck.plugins import all_rules
    from cnncheck.rules import select_rules

    try:
        select_rules(all_rules(), options.select, options.ignore)
    except ValueError as exc:
        raise pytest.UsageError(f"cnncheck: {exc}") from None


@pytest.fixture
def cnncheck(request: pytest.FixtureRequest) -> Checker:
    """A checker bound to this session's cnncheck options: ``.check(model, shape)`` and
    ``.assert_ok(model, shape, ignore=[...])``."""
    from cnncheck.pytest_items import Checker

    return Checker(request.config.stash[OPTIONS])


@pytest.fixture
def cnncheck_device(request: pytest.FixtureRequest) -> str:
    """The device of this test's parametrization: each device in use (see --cnncheck-device)."""
    return str(request.param)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "cnncheck_device" not in metafunc.fixturenames:
        return
    options = metafunc.config.stash[OPTIONS]
    devices = options.devices() if options.device != "cpu" else ["cpu", "cuda"]
    params = []
    for device in devices:
        marks = []
        if device == "cuda":
            from cnncheck.pytest_items import cuda_available

            marks.append(pytest.mark.skipif(not cuda_available(), reason="CUDA is not available on this machine"))
        params.append(pytest.param(device, id=device, marks=marks))
    metafunc.parametrize("cnncheck_device", params, indirect=True)
