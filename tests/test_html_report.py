"""The HTML report and the picture: what they show, that no string from a submission becomes markup,
and, in a real headless Chromium, that the report of examples/ renders without errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import textwrap
from pathlib import Path

import pytest
from examples_loader import EXAMPLES, declared_models, load_example

import cnncheck
from cnncheck.cli import main
from cnncheck.flow import Flow, flow_of
from cnncheck.html_report import render_html
from cnncheck.layer_table import traced
from cnncheck.picture import finding_marks, render_svg
from cnncheck.results import ModelResult

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
SHAPE = (4, 1, 28, 28)


def _seed_picture() -> tuple[Flow, str]:
    model = load_example("seed_convnet").ConvNet()
    report = cnncheck.check_model(model, SHAPE)
    flow = flow_of(traced(model, SHAPE))
    return flow, render_svg(flow, finding_marks(report.findings))


def _blamed(svg: str) -> list[str]:
    return re.findall(r'<g class="node blamed" data-name="([^"]*)"', svg)


def test_the_seed_picture_blames_the_pool_with_stride_5_and_the_linear_it_starves() -> None:
    flow, svg = _seed_picture()
    assert [n.name for n in flow.nodes][:4] == ["input", "layer1.0", "layer1.1", "layer1.2"]
    assert flow.nodes[-1].name == "fc1" and flow.nodes[-1].note == "forward raised here"
    blamed = _blamed(svg)
    assert blamed[0] == "layer1.2" and blamed[-1] == "fc1"  # the cause, the path, and the layer that raised
    assert "input" not in blamed and "layer1.0" not in blamed
    assert "✗ feature-size-mismatch: fc1 expects 3136" in svg
    assert "32x6x6" in svg and "3137000 params" in svg


def test_a_residual_add_joins_two_branches() -> None:
    tvm = pytest.importorskip("torchvision.models")
    flow = flow_of(traced(tvm.resnet18(), (1, 3, 64, 64)))
    add = next(n for n in flow.nodes if n.kind == "merge")
    assert len(add.sources) == 2 and add.name == "layer1.0.add_()"
    assert {flow.nodes[s].name for s in add.sources} == {"layer1.0.bn2", "maxpool"}
    down = next(n for n in flow.nodes if n.name == "layer2.0.downsample.0")
    assert down.lane == 1  # the downsampling branch beside the main path
    svg = render_svg(flow)
    assert svg.count("<circle") == 8 and svg.count('class="node"') == len(flow.nodes)


def test_an_untrusted_flow_is_checked_and_every_string_escaped() -> None:
    flow, _ = _seed_picture()
    data = json.loads(json.dumps(flow.to_dict()))
    data["nodes"][1]["name"] = '"><script>alert(1)</script>'
    data["nodes"][1]["config"] = "<img src=x onerror=alert(2)>"
    svg = render_svg(Flow.from_dict(data))
    assert "<script>" not in svg and "<img" not in svg and "&lt;script&gt;" in svg
    for broken in ({"nodes": "x"}, {"nodes": [{"id": 5}]}, {"nodes": [dict(data["nodes"][0], sources=[3])]},
                   {"nodes": [dict(data["nodes"][0], shape=["a"])]}):
        with pytest.raises(ValueError):
            Flow.from_dict(broken)


def test_the_report_escapes_a_hostile_result_and_refuses_a_bad_flow() -> None:
    hostile = ModelResult("subs/<script>x</script>/model.py::Net", "subs/model.py", "Net", input_shape=(1, 3),
                          error="</pre><script>alert(3)</script>", error_kind="forward",
                          flow={"nodes": [{"id": 0, "name": "<b>", "sources": [7]}]},
                          architecture={"layers": [{"name": "<i>", "params": "<u>", "formula": "<s>"}]})
    page = render_html([hostile])
    assert "<script>alert" not in page and "<b>" not in page and "<i>" not in page.split("<style>")[1]
    assert "No picture: the worker sent a data flow cnncheck does not accept." in page


def test_check_html_has_an_overview_row_and_a_picture_per_model(tmp_path: Path) -> None:
    out, pages = tmp_path / "report.html", tmp_path / "students"
    assert main(["check", str(EXAMPLES), "--format", "html", "-o", str(out), "--per-model-dir", str(pages)]) == 1
    page = out.read_text()
    rows = re.findall(r'<tr data-model="([^"]+)">', page)
    assert len(rows) == declared_models() and "examples/seed_convnet.py::ConvNet" in rows
    assert page.count('<svg xmlns="http://www.w3.org/2000/svg"') == declared_models()
    assert 'class="findings"' in page and 'class="passed"' in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")  # self-contained: no CDN, no fetch
    assert "Sandbox: " in page
    written = sorted(p.name for p in pages.iterdir())
    assert len(written) == declared_models() and all(name.endswith(".html") for name in written)
    one = (pages / "examples_seed_convnet.py_ConvNet.html").read_text()
    assert one.count("<tr data-model=") == 1 and "feature-size-mismatch" in one


def test_explain_draws_one_model_as_svg_or_html(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seed = EXAMPLES / "seed_convnet.py"
    assert main(["explain", str(seed), "--format", "svg", "--output", str(tmp_path / "seed.svg")]) == 0
    svg = (tmp_path / "seed.svg").read_text()
    assert svg.startswith('<svg xmlns="http://www.w3.org/2000/svg"') and _blamed(svg)[0] == "layer1.2"
    models = (EXAMPLES / "mistakes.py").read_text().count("\n@cnncheck.model(")
    assert main(["explain", str(EXAMPLES / "mistakes.py"), "--format", "svg"]) == 2
    assert f"has {models} models" in capsys.readouterr().err
    assert main(["explain", str(EXAMPLES / "mistakes.py"), "--format", "html", "-o", str(tmp_path / "m.html")]) == 0
    assert (tmp_path / "m.html").read_text().count("<svg") == models


def test_pytest_writes_the_same_report(pytester: pytest.Pytester) -> None:
    shutil.copy(EXAMPLES / "seed_convnet.py", pytester.path / "seed_convnet.py")
    pytester.makepyfile(fixed=(EXAMPLES / "seed_convnet_fixed.py").read_text())
    result = pytester.runpytest("--cnncheck", "--cnncheck-html", "report.html", "-p", "no:randomly",
                                "seed_convnet.py", "fixed.py")
    result.stdout.fnmatch_lines(["cnncheck: wrote the HTML report of 2 model(s) to report.html"])
    page = (pytester.path / "report.html").read_text()
    assert len(re.findall(r'<tr data-model="', page)) == 2 and page.count("<svg") == 2


# -- in a real browser ---------------------------------------------------------------------------------------
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.mark.skipif(_chromium() is None, reason="no Chromium on this machine (.ci/run installs the Debian package)")
def test_the_report_of_the_examples_renders_in_headless_chromium(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    report = tmp_path / "report.html"
    main(["check", str(EXAMPLES), "--format", "html", "-o", str(report)])
    artifacts = Path(os.environ.get("CNNCHECK_ARTIFACTS", ROOT / "artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda request: errors.append(f"fetched {request.url}")
                    if not request.url.startswith(("file:", "data:")) else None)
            page.goto(report.as_uri())
            rows = page.locator("#overview-table tbody tr")
            assert rows.count() == declared_models()
            pictures = page.locator("svg.cnncheck-flow")
            assert pictures.count() == declared_models()
            for index in range(pictures.count()):
                picture = pictures.nth(index)
                picture.scroll_into_view_if_needed()
                assert picture.is_visible()
                box = picture.bounding_box()
                assert box is not None and box["width"] > 100 and box["height"] > 100
                assert picture.locator("g.node").count() >= 3
            page.locator("#overview-table th").nth(1).click()  # sort by verdict: the script runs
            assert page.locator("#overview-table th").nth(1).get_attribute("aria-sort") == "ascending"
            page.screenshot(path=str(artifacts / "html-report.png"), full_page=False)
        finally:
            browser.close()
    assert errors == []
    assert (artifacts / "html-report.png").stat().st_size > 10_000


def test_the_picture_kept_by_a_test_is_plain_svg() -> None:
    _, svg = _seed_picture()
    assert textwrap.dedent(svg).count("<svg") == 1 and svg.endswith("</svg>")
