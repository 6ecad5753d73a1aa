"""Rule docs are rendered from the rules themselves; the CLI checks files and shows rules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from checking import PUBLIC_IDS

from cnncheck.cli import main
from cnncheck.plugins import all_rules
from cnncheck.rules import render_index, render_markdown

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "rules"



def test_rule_ids_are_the_public_contract() -> None:
    assert [r.id for r in all_rules()] == PUBLIC_IDS


@pytest.mark.parametrize("rule", all_rules(), ids=lambda r: r.id)
def test_docs_page_is_rendered_from_the_rule(rule) -> None:
    page = DOCS / f"{rule.id}.md"
    assert page.read_text(encoding="utf-8") == render_markdown(rule), (
        f"{page} is stale: run `cnncheck rules --write-docs docs/rules`"
    )
    for heading in ("## Why it matters", "## How to fix", "## Flagged"):
        assert heading in page.read_text(encoding="utf-8")


def test_docs_index_lists_every_rule() -> None:
    assert (DOCS / "index.md").read_text(encoding="utf-8") == render_index(all_rules())


def test_rules_command_lists_and_explains(capsys) -> None:
    assert main(["rules"]) == 0
    listing = capsys.readouterr().out
    assert all(rule_id in listing for rule_id in PUBLIC_IDS)
    assert main(["rules", "redundant-bias-before-bn"]) == 0
    assert "bias=False" in capsys.readouterr().out
    assert main(["rules", "no-such-rule"]) == 2


def test_check_command_on_the_seed_convnet(capsys) -> None:
    assert main(["check", str(ROOT / "examples" / "seed_convnet.py")]) == 1
    out = capsys.readouterr().out
    assert "feature-size-mismatch" in out and "576" in out and "3136" in out and "stride=5" in out
    assert main(["check", str(ROOT / "examples" / "seed_convnet_fixed.py")]) == 0
    assert "no findings" in capsys.readouterr().out


def test_check_command_reports_every_rule_on_the_examples(capsys) -> None:
    assert main(["check", str(ROOT / "examples")]) == 1
    out = capsys.readouterr().out
    missing = [rule_id for rule_id in PUBLIC_IDS if f"{rule_id} [" not in out]
    assert missing == []
    assert "could not be checked" in out and ", 0 could not be checked" in out


def test_the_examples_look_alikes_are_clean(capsys) -> None:
    assert main(["check", str(ROOT / "examples" / "lookalikes.py")]) == 0
    out = capsys.readouterr().out
    assert out.count(" clean ") == 3 and "3 models: 3 clean" in out


def test_check_command_reports_a_file_that_does_not_import(tmp_path, capsys) -> None:
    bad = tmp_path / "student.py"
    bad.write_text("import torch\nclass Net(torch.nn.Module)\n    pass\n")
    assert main(["check", str(bad), "--input-shape", "2,1,8,8"]) == 1
    assert "cannot import student.py: SyntaxError" in capsys.readouterr().out


def test_bad_input_shape_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as info:
        main(["check", "x.py", "--input-shape", "four"])
    assert info.value.code == 2


def test_python_dash_m_works() -> None:
    out = subprocess.run([sys.executable, "-m", "cnncheck", "rules"], capture_output=True, text=True, check=True)
    assert "conv-param-formula" in out.stdout


VGG_LIKE = """
from torch import nn
import cnncheck

@cnncheck.model(input_shape=(2, 3, 8, 8))
def vgg_like():
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias={first}), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, bias={second}), nn.BatchNorm2d(4))
"""


def test_check_command_baseline_write_then_report_only_new_findings(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    nets = tmp_path / "nets.py"
    nets.write_text(VGG_LIKE.format(first=True, second=False))
    assert main(["check", "nets.py", "--baseline-write", "baseline.json"]) == 0  # recorded, not failed
    assert "wrote 1 finding(s) to baseline.json" in capsys.readouterr().err
    assert '"model": "nets.py::vgg_like", "rule": "redundant-bias-before-bn", "module": "0"' in (
        tmp_path / "baseline.json").read_text()

    assert main(["check", "nets.py", "--baseline", "baseline.json"]) == 0
    out, err = capsys.readouterr()
    assert "redundant-bias-before-bn [" not in out and "1 known finding(s) from the baseline not shown" in out
    assert "1 known finding(s) passed; 0 entries fixed" in err

    nets.write_text(VGG_LIKE.format(first=True, second=True))  # a new finding on layer 3
    assert main(["check", "nets.py", "--baseline", "baseline.json", "--format", "json"]) == 1
    out = capsys.readouterr().out
    assert '"module": "3"' in out and '"module": "0"' not in out

    nets.write_text(VGG_LIKE.format(first=False, second=False))  # the known one is fixed
    assert main(["check", "nets.py", "--baseline", "baseline.json"]) == 0
    assert "fixed: nets.py::vgg_like redundant-bias-before-bn 0 (remove it from the baseline)" in (
        capsys.readouterr().err)


def test_check_command_missing_baseline_is_a_usage_error(tmp_path, capsys) -> None:
    nets = tmp_path / "nets.py"
    nets.write_text(VGG_LIKE.format(first=False, second=False))
    assert main(["check", str(nets), "--baseline", str(tmp_path / "nope.json")]) == 2
    assert "nope.json does not exist; create it with" in capsys.readouterr().err


def test_the_api_reference_covers_every_public_name() -> None:
    import cnncheck

    reference = (ROOT / "docs" / "api.md").read_text()
    headings = [line for line in reference.splitlines() if line.startswith("### ")]
    missing = [name for name in cnncheck.__all__ if not any(f"`{name}" in h or f", `{name}`" in h for h in headings)]
    assert not missing, f"docs/api.md has no heading for {missing}"


def test_the_architecture_guide_runs_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    import re

    guide = (ROOT / "docs" / "testing-your-architecture.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", guide, re.S)
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, "testing-your-architecture.md", "exec"), namespace)  # noqa: S102
    printed = capsys.readouterr().out
    table = re.search(r"```text\n(ConvNet on input.*?)```", guide, re.S)
    assert table is not None and table.group(1) in printed  # the table shown is the table printed
    assert "65978 too many" in printed
    assert "downsampling: 4, expected 2 (input 4x1x28x28, the last conv or pool gives 4x128x7x7 after body)" in printed
    assert "test_the_architecture_we_reviewed" in namespace  # the snapshot test is defined, run by pytest itself
    from torch import nn

    import cnncheck
    from cnncheck.layer_table import describe_changes

    wider = namespace["ConvNet"]()
    wider.stem = nn.Conv2d(1, 8, 5, stride=2, padding=2, bias=False)  # the change the guide's diff shows
    before = cnncheck.architecture(namespace["ConvNet"](), (4, 1, 28, 28))
    for line in describe_changes(str(before), str(cnncheck.architecture(wider, (4, 1, 28, 28)))):
        assert f"  {line}\n" in guide, line


def test_the_docs_site_lists_every_page_and_every_rule() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    pages = sorted(str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md"))
    assert [page for page in pages if page not in config] == []
    assert all(f"rules/{rule.id}.md" in config for rule in all_rules())
