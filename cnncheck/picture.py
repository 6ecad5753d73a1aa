"""A model drawn as data flows through it: one SVG, with no program but a browser needed to view it.

Each feature map is a box drawn to scale as the classic CNN figure draws it, log-scaled: its width
and height follow the map's width and height, its depth the channels. Layers run top to bottom in
forward order; a residual add or a concat is a circle where branches join. The layers a finding
blames, and the layers between them, are outlined in red and labelled with the finding.
Every string comes from the data and is escaped: a student's layer name cannot inject markup.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from xml.sax.saxutils import escape

from cnncheck.flow import INPUT, MERGE, Flow, FlowNode

LANE_WIDTH = 470
MARGIN = 16
COLOURS = {"conv": "#4f81bd", "conv (reparametrised)": "#4f81bd", "pool": "#9bbb59", "batch_norm": "#f79646",
           "instance_norm": "#f7b446", "other_norm": "#f7c96e", "linear": "#8064a2", "dropout": "#b0b0b0",
           INPUT: "#5a5a5a", "function": "#c8c8c8", MERGE: "#ffffff", "identity": "#e0e0e0", "other": "#d9d9d9"}
BLAMED = "#d62728"


def _scale(size: int, cap: float) -> float:
    return min(cap, 6 + 9 * math.log2(max(size, 1)))


def _box(shape: Sequence[int] | None) -> tuple[float, float, float]:
    """(width, height, depth) of a feature map's box: log-scaled W, H and channels."""
    if not shape or len(shape) < 2:
        return 10.0, 8.0, 0.0
    channels = shape[1]
    depth = min(28.0, 2 + 2.2 * math.log2(max(channels, 1)))
    if len(shape) >= 4:
        return _scale(shape[-1], 110), _scale(shape[-2], 90), depth
    if len(shape) == 3:
        return _scale(shape[-1], 110), 10.0, depth
    return _scale(channels, 110), 8.0, 0.0


def _shape_text(shape: Sequence[int] | None) -> str:
    return "x".join(map(str, shape[1:])) if shape and len(shape) > 1 else ("x".join(map(str, shape)) if shape else "")


def _related(flow: Flow, findings: Iterable[tuple[str, str, str]]) -> dict[int, list[tuple[str, str, bool]]]:
    """Node ids to outline, with the (rule, message, named) each is part of: the blamed layer and the
    other layers its message names (``named``: they carry the label), and the nodes on the path
    between them (outlined only)."""
    by_name: dict[str, list[FlowNode]] = {}
    for node in flow.nodes:
        if node.kind not in (INPUT, MERGE, "function"):
            by_name.setdefault(node.name, []).append(node)
    marks: dict[int, list[tuple[str, str, bool]]] = {}
    for rule, module, message in findings:
        words = set(re.findall(r"[A-Za-z_][\w.]*", message))
        named = [module, *re.findall(r"'([^']+)'", message), *(name for name in by_name if name in words)]
        ends = {n.id for name in dict.fromkeys(named) for n in by_name.get(name, [])}
        path = _between(flow, min(ends), max(ends)) - ends if len(ends) >= 2 else set()
        for index in sorted(ends | path):
            marks.setdefault(index, []).append((rule, message, index in ends))
    return marks


def _between(flow: Flow, first: int, last: int) -> set[int]:
    """The nodes on some path from ``first`` to ``last``."""
    reaches = {first}
    for node in flow.nodes[first + 1:last + 1]:
        if any(s in reaches for s in node.sources):
            reaches.add(node.id)
    back = {last}
    for node in reversed(flow.nodes[first:last + 1]):
        if node.id in back:
            back.update(node.sources)
    return reaches & back


def render_svg(flow: Flow, findings: Iterable[tuple[str, str, str]] = (), *,
               element_id: str | None = None) -> str:
    """The SVG of ``flow``; ``findings`` are ``(rule, module, message)`` to outline and label."""
    marks = _related(flow, findings)
    levels = sorted({node.depth for node in flow.nodes})
    heights = {level: 0.0 for level in levels}
    for node in flow.nodes:
        _, h, d = _box(node.shape)
        extra = 14 * min(2, sum(named for _, _, named in marks.get(node.id, [])))
        heights[node.depth] = max(heights[node.depth], max(h + d, 30 if node.kind != MERGE else 22) + 24 + extra)
    tops: dict[int, float] = {}
    y = float(MARGIN)
    for level in levels:
        tops[level] = y
        y += heights[level]
    lanes = 1 + max((node.lane for node in flow.nodes), default=0)
    width = MARGIN * 2 + lanes * LANE_WIDTH
    anchors: dict[int, tuple[float, float, float]] = {}  # node: (x centre, top y, bottom y)
    shapes: list[str] = []
    for node in flow.nodes:
        shapes.append(_node(node, tops[node.depth], marks.get(node.id, []), anchors))
    edges = [_edge(anchors[s], anchors[node.id]) for node in flow.nodes for s in node.sources if s in anchors]
    label = escape(f"{flow.model}: {len(flow.nodes)} nodes")
    ident = f' id="{escape(element_id, {chr(34): "&quot;"})}"' if element_id else ""
    cut = (f'<text x="{MARGIN}" y="{y + 12:.0f}" class="cut">the picture stops here: forward ran more layers '
           f'than it draws</text>') if flow.cut else ""
    return (f'<svg xmlns="http://www.w3.org/2000/svg"{ident} class="cnncheck-flow" role="img" aria-label="{label}" '
            f'width="{width}" height="{y + (24 if flow.cut else 0) + MARGIN:.0f}" '
            f'viewBox="0 0 {width} {y + (24 if flow.cut else 0) + MARGIN:.0f}" font-family="sans-serif" font-size="11">'
            '<defs><marker id="arrow" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="6" markerHeight="6" '
            'orient="auto-start-reverse"><path d="M0,0 L8,4 L0,8 z" fill="#888"/></marker></defs>'
            f'<g class="edges">{"".join(edges)}</g><g class="nodes">{"".join(shapes)}</g>{cut}</svg>')


def _node(node: FlowNode, top: float, marks: list[tuple[str, str, bool]],
          anchors: dict[int, tuple[float, float, float]]) -> str:
    x = MARGIN + node.lane * LANE_WIDTH
    blamed = bool(marks)
    labels = [(rule, message) for rule, message, named in marks if named]
    stroke = BLAMED if blamed else "#333"
    thick = 3 if blamed else 1
    described = f"{node.type}({node.config})" if node.config or node.kind not in (INPUT, MERGE, "function") else node.type
    title = escape("\n".join([f"{node.name}: {described}", _shape_text(node.shape),
                              *(f"{rule}: {message}" for rule, message, _ in marks)]))
    parts = [f'<g class="node{" blamed" if blamed else ""}" data-name="{escape(node.name, {chr(34): "&quot;"})}">'
             f"<title>{title}</title>"]
    if node.kind == MERGE:
        r = 10.0
        cx, cy = x + r + 2, top + r + 2
        symbol = "+" if node.type in ("add", "__add__", "__iadd__", "add_", "__radd__", "sum") else (
            "×" if node.type.startswith(("mul", "__mul")) else "∥")
        parts.append(f'<circle cx="{cx}" cy="{cy}" r="{r}" fill="#fff" stroke="{stroke}" stroke-width="{thick}"/>'
                     f'<text x="{cx}" y="{cy + 4}" text-anchor="middle" font-size="13">{symbol}</text>')
        anchors[node.id] = (cx, top + 2, top + 2 * r + 2)
        text_x, text_y = x + 2 * r + 10, top + 8
    else:
        w, h, d = _box(node.shape)
        fill = COLOURS.get(node.kind, COLOURS["other"])
        fx, fy = x, top + d
        parts.append(f'<polygon points="{fx},{fy} {fx + d},{top} {fx + d + w},{top} {fx + w},{fy}" fill="{fill}" '
                     f'fill-opacity="0.55" stroke="{stroke}" stroke-width="{thick}"/>')
        parts.append(f'<polygon points="{fx + w},{fy} {fx + w + d},{top} {fx + w + d},{top + h} {fx + w},{fy + h}" '
                     f'fill="{fill}" fill-opacity="0.75" stroke="{stroke}" stroke-width="{thick}"/>')
        parts.append(f'<rect x="{fx}" y="{fy}" width="{w:.1f}" height="{h:.1f}" fill="{fill}" stroke="{stroke}" '
                     f'stroke-width="{thick}"/>')
        anchors[node.id] = (fx + w / 2, fy, fy + h)
        text_x, text_y = x + w + d + 8, top + 10
    heading = node.name if node.kind != INPUT else "input"
    if len(described) > 48:
        described = described[:47] + "…"
    figures = " · ".join(p for p in (_shape_text(node.shape), f"{node.params} params" if node.params else "",
                                     node.note) if p)
    parts.append(f'<text x="{text_x:.1f}" y="{text_y:.1f}"><tspan font-weight="bold">{escape(heading)}</tspan>'
                 f'<tspan x="{text_x:.1f}" dy="13">{escape(described)}</tspan>'
                 f'<tspan x="{text_x:.1f}" dy="13" fill="#555">{escape(figures)}</tspan>')
    for rule, message in labels[:2]:
        short = message if len(message) <= 60 else message[:59] + "…"
        parts.append(f'<tspan x="{text_x:.1f}" dy="14" fill="{BLAMED}" font-weight="bold">✗ {escape(rule)}: '
                     f'{escape(short)}</tspan>')
    parts.append("</text></g>")
    return "".join(parts)


def _edge(source: tuple[float, float, float], target: tuple[float, float, float]) -> str:
    x1, _, y1 = source
    x2, y2, _ = target
    bend = max(12.0, (y2 - y1) / 3)
    return (f'<path d="M{x1:.1f},{y1:.1f} C{x1:.1f},{y1 + bend:.1f} {x2:.1f},{y2 - bend:.1f} {x2:.1f},{y2 - 2:.1f}" '
            f'fill="none" stroke="#888" stroke-width="1.2" marker-end="url(#arrow)"/>')


def finding_marks(findings: Iterable[object]) -> list[tuple[str, str, str]]:
    """``(rule, module, message)`` of each finding, as :func:`render_svg` takes them."""
    return [(str(getattr(f, "rule", "")), str(getattr(f, "module", "") or ""), str(getattr(f, "message", "")))
            for f in findings]
