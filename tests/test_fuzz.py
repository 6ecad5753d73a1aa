"""Verdicts you can trust: generated architectures with known ground truth (tests/fuzz_models.py).

For every generated CNN, cnncheck must report exactly the injected defects as (rule, module) pairs,
crash no rule, leave every parameter, buffer and training flag as it was, and give the same findings
when run again. ``CNNCHECK_FUZZ_EXAMPLES`` sets the number of examples (30 by default, for CI); a
failure prints the architecture, the expected and found pairs, and a blob to reproduce it with
``@reproduce_failure``.
"""

from __future__ import annotations

import os
from typing import Any

import fuzz_models as fm
import pytest
import torch
from hypothesis import HealthCheck, Phase, event, given, note, settings
from hypothesis import strategies as st

import cnncheck

pytest_plugins = ["pytester"]

EXAMPLES = int(os.environ.get("CNNCHECK_FUZZ_EXAMPLES", "30"))


class DataChooser:
    """The generator's choices, drawn by hypothesis (so that a failure shrinks to a small model)."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def integer(self, lo: int, hi: int) -> int:
        # hypothesis favours small values in a small range, which makes short, mostly clean models;
        # a 16-bit draw reduced modulo the range is near uniform, and still shrinks to lo
        return lo + self.data.draw(st.integers(0, 2**16 - 1)) % (hi - lo + 1)


def pairs(report: cnncheck.Report) -> set[tuple[str, str]]:
    return {(f.rule, f.module) for f in report.findings}


def snapshot(built: fm.Built) -> list[tuple[Any, ...]]:
    """Every parameter and buffer (of registered modules and of those kept in plain lists), as a
    copy, with the tensor object itself, and every module's training flag."""
    state = []
    for module in built.all_modules():
        for name, t in [*module._parameters.items(), *module._buffers.items()]:
            state.append((module, name, t, None if t is None else t.detach().clone()))
        state.append((module, "<training>", None, module.training))
    return state


def assert_unchanged(built: fm.Built, state: list[tuple[Any, ...]]) -> None:
    for module, name, tensor, saved in state:
        if name == "<training>":
            assert module.training == saved, f"the training flag of {type(module).__name__} changed"
            continue
        now = {**module._parameters, **module._buffers}[name]
        assert now is tensor, f"{type(module).__name__}.{name} was replaced"
        if tensor is not None:
            assert torch.equal(tensor.detach(), saved), f"{type(module).__name__}.{name} changed"
            assert tensor.grad is None, f"{type(module).__name__}.{name} has a .grad now"


def assert_verdicts(arch: fm.Arch, log: Any = note) -> None:
    """The property: exactly the injected (rule, module) pairs, no rule crash, the model untouched,
    and the same findings from a second check. ``log`` shows the architecture on failure."""
    built = arch.build()
    log(f"architecture:\n{arch.describe()}\nmodel:\n{built.model}")
    log(f"expected: {sorted(built.expected)}")
    state = snapshot(built)

    report = cnncheck.check_model(built.model, arch.input_shape)

    log(f"found:    {sorted(pairs(report))}\n{report}")
    assert report.crashes == []
    assert pairs(report) == built.expected
    assert_unchanged(built, state)

    again = cnncheck.check_model(built.model, arch.input_shape)
    assert again.findings == report.findings
    assert again.crashes == []
    assert_unchanged(built, state)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],  # no slow "explain"
)
@given(st.data())
def test_findings_are_exactly_the_injected_defects(data: st.DataObject) -> None:
    arch = fm.generate(DataChooser(data))
    for rule in sorted({rule for rule, _ in arch.build().expected}) or ["clean"]:
        event(f"expects {rule}")  # shown by --hypothesis-show-statistics
    assert_verdicts(arch)


@pytest.mark.parametrize("seed", range(int(os.environ.get("CNNCHECK_FUZZ_SEEDS", "40"))))
def test_findings_of_seeded_models(seed: int) -> None:
    """The same property on models drawn uniformly from a seed (hypothesis favours small, clean
    models; these make the default run cover more defects). Rebuild one with fm.from_seed(seed)."""
    assert_verdicts(fm.from_seed(seed), log=print)


def test_a_seed_rebuilds_the_same_model_and_ground_truth() -> None:
    for seed in range(20):
        a, b = fm.from_seed(seed).build(), fm.from_seed(seed).build()
        assert a.expected == b.expected
        sa, sb = a.model.state_dict(), b.model.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_generator_covers_every_rule_and_clean_models() -> None:
    """The seeds 0..199 inject a defect of every rule, leave some models clean, and write hand-written
    BNs with an activation in their own forward, before and after normalising."""
    seen: set[str] = set()
    clean = 0
    fused: set[str] = set()
    for seed in range(200):
        arch = fm.from_seed(seed)
        expected = arch.build().expected
        seen |= {rule for rule, _ in expected}
        clean += not expected
        fused |= {s.cfg["fused"] for s in arch.all_steps() if s.kind == "norm" and s.cfg.get("fused")}
    assert seen == {rule.id for rule in cnncheck.all_rules()}
    assert clean >= 20
    assert fused == {"pre", "post"}


def sample_seeds() -> list[int]:
    """A few seeds that together inject a defect of every rule, plus a clean model."""
    rules = {rule.id for rule in cnncheck.all_rules()}
    chosen: list[int] = []
    covered: set[str] = set()
    clean = None
    for seed in range(500):
        found = {rule for rule, _ in fm.from_seed(seed).build().expected}
        if not found and clean is None:
            clean = seed
        elif found - covered:
            chosen.append(seed)
            covered |= found
        if covered == rules and clean is not None:
            break
    assert covered == rules and clean is not None
    return [clean, *chosen]


FACTORY = '''
@cnncheck.model(input_shape={shape})
def fuzz_{seed}():
    return fuzz_models.from_seed({seed}).build().model
'''


def test_pytest_plugin_gives_the_api_verdicts(pytester: pytest.Pytester) -> None:
    """The sampled models as factories in a file: ``pytest --cnncheck`` fails exactly the items of the
    rules with expected findings, as the API reports them."""
    seeds = sample_seeds()
    source = "import cnncheck\nimport fuzz_models\n" + "".join(
        FACTORY.format(seed=seed, shape=fm.from_seed(seed).input_shape) for seed in seeds
    )
    pytester.makepyfile(sampled=source)
    result = pytester.runpytest("--cnncheck", "-p", "no:cacheprovider", "-rA")

    outcomes: dict[tuple[str, str], str] = {}
    for line in result.outlines:
        if line.startswith(("PASSED sampled.py::", "FAILED sampled.py::")):
            status, nodeid = line.split()[:2]
            _, factory, item = nodeid.split("::")
            outcomes[(factory, item.split("[")[0])] = status
    rules = [rule.id for rule in cnncheck.all_rules()]
    assert len(outcomes) == len(seeds) * len(rules), result.stdout.str()
    for seed in seeds:
        arch = fm.from_seed(seed)
        expected = {rule for rule, _ in arch.build().expected}
        api = {rule for rule, _ in pairs(cnncheck.check_model(arch.build().model, arch.input_shape))}
        plugin = {rule for rule in rules if outcomes[(f"fuzz_{seed}", rule)] == "FAILED"}
        assert plugin == api == expected, f"seed {seed}"
