"""``--format html``: one self-contained page (inline CSS, a few lines of inline JS, no network) with
an overview of every submission and rule, then each model's picture, findings and parameter table.

Everything a model's result holds is data from a worker that ran student code: every string is
escaped here, and the picture is drawn here from the checked flow data (:mod:`cnncheck.flow`).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING, Any

from cnncheck.findings import Finding, docs_url
from cnncheck.formats import _rule_ids, _totals_sentence, _unfinished, _unfinished_reason, rule_cell
from cnncheck.results import ModelResult

if TYPE_CHECKING:
    from cnncheck.rules import Rule

STATES = ("passed", "findings", "not-checked", "crashed", "error", "not-run")
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5rem auto;max-width:78rem;padding:0 1rem;
color:#1b1b1b;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.25rem;margin-top:2.2rem;border-bottom:1px solid #ddd}
h3{font-size:1.05rem;margin-top:1.4rem}code{background:#f4f4f4;padding:0 .25em;border-radius:3px}
table{border-collapse:collapse;font-size:.9rem}th,td{border:1px solid #ddd;padding:.3em .55em;text-align:left}
th{background:#f7f7f7;cursor:pointer;user-select:none}th[aria-sort=ascending]::after{content:" ▲"}
th[aria-sort=descending]::after{content:" ▼"}
td.passed{background:#e3f4e1}td.findings{background:#fbd7d4;font-weight:bold}td.not-checked{background:#fff2c6}
td.crashed{background:#f3c6f1}td.error{background:#d9d9d9;font-weight:bold}td.not-run{color:#999}
.verdict{font-weight:bold}.finding{border-left:4px solid #d62728;padding:.2rem .8rem;margin:.8rem 0;
background:#fff8f8}.finding.warning{border-color:#e69b00;background:#fffbf0}.finding dl{display:grid;
grid-template-columns:max-content 1fr;gap:.15rem .8rem;margin:.4rem 0}.finding dt{font-weight:bold}
.finding dd{margin:0}pre{background:#f6f6f6;padding:.5rem;overflow-x:auto}
.picture{overflow-x:auto;border:1px solid #eee;padding:.4rem;background:#fcfcfc;max-height:48rem;overflow-y:auto}
.legend span{display:inline-block;padding:0 .5em;margin-right:.4em;border:1px solid #ddd}
.note{color:#555}.wide{overflow-x:auto}
"""
SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, column) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var down = th.getAttribute("aria-sort") === "ascending";
      table.querySelectorAll("th").forEach(function (other) { other.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", down ? "descending" : "ascending");
      rows.sort(function (a, b) {
        var x = a.cells[column].getAttribute("data-key") || a.cells[column].textContent;
        var y = b.cells[column].getAttribute("data-key") || b.cells[column].textContent;
        var nx = parseFloat(x), ny = parseFloat(y);
        var order = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return down ? -order : order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _anchor(index: int) -> str:
    return f"model-{index}"


def _verdict_text(result: ModelResult) -> str:
    if result.error is not None:
        return f"could not be checked ({result.error_kind})" if result.error_kind else "could not be checked"
    return {"clean": "no problems found", "findings": f"{len(result.findings)} problem(s)",
            "incomplete": "not fully checked", "crashed": "a rule or a plugin crashed"}.get(str(result.verdict), str(result.verdict))


def _overview(results: Sequence[ModelResult], ids: list[str]) -> str:
    head = "".join(f"<th>{_e(i)}</th>" for i in ids)
    rows = []
    counts: Counter[str] = Counter()
    for index, result in enumerate(results):
        cells = []
        for rule_id in ids:
            state, text = rule_cell(result, rule_id)
            counts[state] += 1
            order = STATES.index(state)
            cells.append(f'<td class="{state}" data-key="{order}" title="{_e(rule_id)}: {state}">{_e(text)}</td>')
        rows.append(f'<tr data-model="{_e(result.id)}"><td><a href="#{_anchor(index)}">{_e(result.id)}</a></td>'
                    f'<td data-key="{_e(result.verdict)}">{_e(_verdict_text(result))}</td>{"".join(cells)}</tr>')
    legend = "".join(f'<span class="{state}">{state}: {counts[state]}</span>' for state in STATES if counts[state])
    return (f'<section id="overview"><h2>Overview</h2><div class="wide"><table id="overview-table" class="sortable">'
            f'<thead><tr><th>submission</th><th>verdict</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
            f'</div><p class="legend">{legend}</p></section>')


def _finding(finding: Finding) -> str:
    rows = [("expected", finding.expected), ("found", finding.found), ("where", finding.location or "not known"),
            ("fix", finding.fix)]
    listed = "".join(f"<dt>{name}</dt><dd>{_e(value)}</dd>" for name, value in rows if value)
    details = f"<pre>{_e(chr(10).join(finding.details))}</pre>" if finding.details else ""
    url = docs_url(finding.rule)
    docs = (f'<a href="{_e(url)}">{_e(finding.rule)}</a>' if url else f"<code>cnncheck rules {_e(finding.rule)}</code>")
    return (f'<div class="finding {_e(finding.severity)}"><p><code>{_e(finding.rule)}</code> '
            f'({_e(finding.severity)}) in layer <code>{_e(finding.module or "<model>")}</code>: {_e(finding.message)}</p>'
            f"<dl>{listed}<dt>docs</dt><dd>{docs}</dd></dl>{details}</div>")


def _picture(result: ModelResult, index: int) -> str:
    from cnncheck.flow import Flow
    from cnncheck.picture import finding_marks, render_svg

    if result.flow is None:
        return ""
    try:
        flow = Flow.from_dict(result.flow)
    except ValueError:
        return '<p class="note">No picture: the worker sent a data flow cnncheck does not accept.</p>'
    svg = render_svg(flow, finding_marks(result.findings), element_id=f"picture-{index}")
    return f'<h3>The model as data flows through it</h3><div class="picture">{svg}</div>'


def _formulas(result: ModelResult) -> str:
    table = result.architecture
    layers = table.get("layers") if isinstance(table, dict) else None
    if not isinstance(layers, list):
        return ""
    rows = []
    for layer in layers:
        if not isinstance(layer, dict) or not layer.get("params") and not layer.get("formula"):
            continue
        formula = f"{layer.get('formula')} = {layer.get('formula_count')}" if layer.get("formula") else "numel"
        shape = layer.get("output_shape")
        shown = "x".join(map(str, shape[1:])) if isinstance(shape, list) and len(shape) > 1 else (
            f"({layer.get('status')})" if layer.get("status") else "-")
        rows.append(f"<tr><td><code>{_e(layer.get('name') or '<model>')}</code></td><td>{_e(layer.get('type'))}"
                    f"</td><td>{_e(shown)}</td><td>{_e(formula)}</td><td data-key=\"{_e(layer.get('params'))}\">"
                    f"{_e(layer.get('params'))}</td></tr>")
    total = table.get("total_params") if isinstance(table, dict) else None
    return (f'<h3>Parameters, layer by layer</h3><table class="sortable formulas"><thead><tr><th>layer</th>'
            f'<th>type</th><th>output</th><th>formula</th><th>params</th></tr></thead><tbody>{"".join(rows)}'
            f'</tbody></table><p class="note">total: {_e(total)} parameters</p>')


def _model(result: ModelResult, index: int) -> str:
    shape = "x".join(map(str, result.input_shape)) if result.input_shape else "unknown"
    parts = [f'<section class="model" id="{_anchor(index)}" data-model="{_e(result.id)}">'
             f"<h2>{_e(result.id)}</h2><p>Input {_e(shape)} on {_e(result.device)}: "
             f'<span class="verdict">{_e(_verdict_text(result))}</span></p>']
    if result.error is not None:
        parts.append(f"<h3>What went wrong</h3><pre>{_e(result.error)}</pre>")
        if result.location:
            parts.append(f"<p>Your line: <code>{_e(result.location)}</code></p>")
    parts.append(_picture(result, index))
    if result.findings:
        parts.append("<h3>Problems</h3>" + "".join(_finding(f) for f in result.findings))
    unfinished = _unfinished(result) if result.error is None else []
    if unfinished:
        parts.append("<h3>Not checked</h3><ul>" + "".join(
            f"<li><code>{_e(o.rule)}</code>: {_e(_unfinished_reason(o))}</li>" for o in unfinished) + "</ul>")
    if result.notes:
        parts.append("<h3>Notes</h3><ul>" + "".join(f"<li>{_e(n)}</li>" for n in result.notes) + "</ul>")
    parts.append(_formulas(result))
    parts.append("</section>")
    return "".join(parts)


def render_html(results: Sequence[ModelResult], *, rules: Sequence[Rule] = (),
                root: str | os.PathLike[str] | None = None, sandbox: str | None = None) -> str:
    """The whole report: the overview (submissions down, rules across, sortable), then every model."""
    from cnncheck.sandbox import describe

    ids = _rule_ids(results, rules)
    header = [f"<p>{_e(_totals_sentence(results))}.</p>"]
    if sandbox is not None:
        header.append(f'<p class="sandbox">Sandbox: {_e(describe(sandbox))}</p>')
    body = "".join(_model(result, index) for index, result in enumerate(results))
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>cnncheck report</title><style>{STYLE}</style>'
            f'</head><body><header><h1>cnncheck report</h1>{"".join(header)}</header>{_overview(results, ids)}'
            f"{body}<script>{SCRIPT}</script></body></html>\n")
