"""Helpers every rule test uses: check a model, prove it came back unchanged, read the verdict."""

from __future__ import annotations

import torch

import cnncheck

# The built-in rules' ids, in their order: a public contract (baselines, ignores and CI configs name them).
PUBLIC_IDS = [
    "conv-param-formula", "pool-has-parameters", "pool-mixes-channels", "redundant-bias-before-bn",
    "bn-not-per-channel", "bn-train-behaviour", "bn-eval-behaviour", "mode-not-propagated",
    "feature-size-mismatch", "layer-not-used", "bn-reused", "parameter-without-gradient",
]


def check_unmodified(model, example_input, **options):
    """Run cnncheck.check_model and assert that the model came back exactly as it was."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = {n: (p.requires_grad, p.grad) for n, p in model.named_parameters()}
    modes = [(n, m.training) for n, m in model.named_modules()]
    report = cnncheck.check_model(model, example_input, **options)
    after = model.state_dict()
    assert after.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(after[key], value), f"check_model changed {key}"
    assert {n: (p.requires_grad, p.grad) for n, p in model.named_parameters()} == params
    assert [(n, m.training) for n, m in model.named_modules()] == modes
    return report


def rule_pairs(report, rule=None):
    """{(rule, module)} of the report's findings, for one rule or for all."""
    return {(f.rule, f.module) for f in report.findings if rule is None or f.rule == rule}


def run(model, checks=None, *, shape):
    """check_model on ``shape``: the model must come back unchanged and no rule may crash."""
    report = check_unmodified(model, shape, checks=checks)
    assert report.crashes == [], report.crashes
    return report


def pairs(report, rule):
    return rule_pairs(report, rule)
