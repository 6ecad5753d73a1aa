"""The pytest plugin's options, read once per session: the one home that the entry point
(:mod:`cnncheck.pytest_plugin`) and the collection (:mod:`cnncheck.pytest_items`) both import.
Imports only pytest and the standard library, like the entry point."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest

DEVICE_CHOICES = ("cpu", "cuda", "all", "auto")
FAIL_ON_CHOICES = ("warning", "error")


def device_choice(value: str) -> str:
    if value not in DEVICE_CHOICES:
        raise argparse.ArgumentTypeError(f"{value!r}: choose one of {', '.join(DEVICE_CHOICES)}")
    return value


def fail_on_choice(value: str) -> str:
    if value not in FAIL_ON_CHOICES:
        raise argparse.ArgumentTypeError(f"{value!r}: choose 'warning' (warnings fail) or 'error' (they pass)")
    return value


def rule_id_list(value: str) -> list[str]:
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
    plugins: list[str]
    disabled: list[str]
    baseline: str
    baseline_write: str
    html: str = ""

    @classmethod
    def from_config(cls, config: pytest.Config) -> Options:
        def pick(name: str) -> Any:
            value = config.getoption(name)
            return value if value is not None else config.getini(name)

        enabled = bool(config.getoption("cnncheck") or config.getini("cnncheck_enable"))
        try:
            device = device_choice(pick("cnncheck_device"))
            fail_on = fail_on_choice(pick("cnncheck_fail_on"))
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
                   list(config.getini("cnncheck_models")), list(pick("cnncheck_plugins") or []),
                   list(pick("cnncheck_disable_plugins") or []), pick("cnncheck_baseline") or "",
                   config.getoption("cnncheck_baseline_write") or "", config.getoption("cnncheck_html") or "")

    def devices(self) -> list[str]:
        if self.device in ("cpu", "cuda"):
            return [self.device]
        if self.device == "all":
            return ["cpu", "cuda"]
        import torch

        return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


OPTIONS = pytest.StashKey[Options]()
UNDO = pytest.StashKey[list[Callable[[], None]]]()  # callables that undo this session's plugin changes, at unconfigure
