"""cnncheck: check any PyTorch CNN for the mistakes that make it silently wrong.

Importing ``cnncheck`` does not import torch; the public names load on first use, so the pytest
plugin costs nothing to anyone who has cnncheck installed but does not ask for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cnncheck.declare import model
from cnncheck.hookspecs import hookimpl

__version__ = "0.1.0"

_EXPORTS = {
    "check_model": "cnncheck.api",
    "assert_cnn_correct": "cnncheck.api",
    "assert_conv_params": "cnncheck.api",
    "assert_pooling_parameter_free": "cnncheck.api",
    "assert_no_redundant_bias": "cnncheck.api",
    "assert_bn_per_channel": "cnncheck.api",
    "assert_bn_train_eval": "cnncheck.api",
    "CheckError": "cnncheck.api",
    "CheckFailed": "cnncheck.api",
    "conv_param_count": "cnncheck.formulas",
    "Finding": "cnncheck.findings",
    "Report": "cnncheck.findings",
    "RuleOutcome": "cnncheck.findings",
    "RuleStatus": "cnncheck.findings",
    "Severity": "cnncheck.findings",
    "Rule": "cnncheck.rules",
    "Pass": "cnncheck.rules",
    "LayerKind": "cnncheck.layers",
    "all_rules": "cnncheck.plugins",
    "register": "cnncheck.plugins",
    "unregister": "cnncheck.plugins",
    "model_param_formulas": "cnncheck.explain",
    "architecture": "cnncheck.layer_table",
    "Architecture": "cnncheck.layer_table",
    "Layer": "cnncheck.layer_table",
    "assert_param_count": "cnncheck.invariants",
    "assert_output_shape": "cnncheck.invariants",
    "assert_architecture": "cnncheck.invariants",
}

__all__ = ["__version__", "hookimpl", "model", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cnncheck' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from cnncheck.api import (
        CheckError,
        CheckFailed,
        assert_bn_per_channel,
        assert_bn_train_eval,
        assert_cnn_correct,
        assert_conv_params,
        assert_no_redundant_bias,
        assert_pooling_parameter_free,
        check_model,
    )
    from cnncheck.explain import model_param_formulas
    from cnncheck.findings import Finding, Report, RuleOutcome, RuleStatus, Severity
    from cnncheck.formulas import conv_param_count
    from cnncheck.invariants import assert_architecture, assert_output_shape, assert_param_count
    from cnncheck.layer_table import Architecture, Layer, architecture
    from cnncheck.layers import LayerKind
    from cnncheck.plugins import all_rules, register, unregister
    from cnncheck.rules import Pass, Rule
