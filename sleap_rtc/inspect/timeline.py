"""``inspect timeline``: the conversation as a sequence diagram (SVG or HTML).

Two lifelines, named after the peers (the capture's channel metadata, the
Hello's client name and software, the HelloAck's worker id and user); one
arrow per message with its body, ids, job and time, and under it the key
payload (a path check's found/missing counts, a job's state, epoch and loss,
an error's code and message). Each answer is tied to its request by a bracket
on the answering side with the latency (the pairing ``cat`` and ``stats``
use). Long runs of alike messages collapse to first, last and a summary
(count, time span, epochs, loss range); gaps longer than ``--pause`` seconds
are drawn as breaks with their length. The HTML version adds hover details
(the message's JSON) and highlights a request with its answer; it is one
self-contained file (inline CSS and JS, nothing fetched). The layout is
decided in :mod:`~sleap_rtc.inspect.timeline_layout`; this module draws it.
"""

from __future__ import annotations

import argparse
import json
import sys
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from sleap_rtc.capture import format as fmt
from sleap_rtc.inspect.common import (
    add_filter_arguments,
    add_input_arguments,
    open_reader,
    report_problems,
    selected,
)
from sleap_rtc.inspect.timeline_layout import Arrow, Layout, Pause, Run, TimelineBuilder
from sleap_rtc.inspect.timeline_payload import short, short_id

if TYPE_CHECKING:
    from collections.abc import Iterable

    from sleap_rtc.capture.read.record import Record

WIDTH = 1120
LEFT = 240
RIGHT = 880
MID = (LEFT + RIGHT) // 2
TIME_X = 84
HEAD_BOTTOM = 134
ROW = 40
RUN_ROW = 50
PAUSE_ROW = 38
LANE_X0 = 16
LANE_STEP = 14
#: Characters of a label / payload line between the lifelines.
LABEL_CHARS = 86
PAYLOAD_CHARS = 90

_COLORS = {
    "c2w": "#1f618d",
    "w2c": "#1e8449",
    "err": "#c0392b",
    "warn": "#ca6f1e",
    "legacy": "#b9770e",
    "unknown": "#8e44ad",
    "more": "#7f8c8d",
}

_CSS = """
text{font-family:DejaVu Sans Mono,Menlo,Consolas,monospace;font-size:12px}
.title{font-size:16px;font-weight:bold;font-family:DejaVu Sans,Helvetica,Arial,sans-serif}
.sub{fill:#555;font-family:DejaVu Sans,Helvetica,Arial,sans-serif}
.head rect{fill:#eef2f7;stroke:#34495e}
.head .role{font-weight:bold;font-size:13px}
.head .name{font-size:12px}
.head .det{fill:#555;font-size:10.5px}
.life{stroke:#95a5a6;stroke-dasharray:4,4}
.arrow line{stroke-width:1.7}
.arrow .pay{font-size:11px;fill:#444}
.arrow .pay.err{fill:#c0392b;font-weight:bold}
.arrow .pay.warn{fill:#ba4a00;font-weight:bold}
.time{fill:#666;font-size:11px}
.c2w line{stroke:#1f618d}.c2w .lbl{fill:#1f618d}
.w2c line{stroke:#1e8449}.w2c .lbl{fill:#1e8449}
.err line{stroke:#c0392b;stroke-width:2.4}.err .lbl{fill:#c0392b;font-weight:bold}
.warn line{stroke:#ca6f1e;stroke-width:2.2}.warn .lbl{fill:#ba4a00;font-weight:bold}
.raw line{stroke-dasharray:6,4}
.legacy line{stroke:#b9770e;stroke-dasharray:2,3}.legacy .lbl{fill:#b9770e}
.unknown line{stroke:#8e44ad;stroke-dasharray:4,2}.unknown .lbl{fill:#8e44ad}
.run line{stroke:#7f8c8d;stroke-dasharray:1,5;stroke-width:2.2}
.run .lbl{fill:#566573;font-style:italic}
.run .pay{fill:#566573;font-size:11px}
.link path{fill:none;stroke:#a569bd;stroke-width:1.3}
.link text{fill:#7d3c98;font-size:10.5px}
.pause rect{fill:#fdfefe}
.pause path{fill:none;stroke:#7f8c8d;stroke-width:1.2}
.pause text{fill:#7f8c8d;font-style:italic}
.legend text{font-size:11px;fill:#333;font-family:DejaVu Sans,Helvetica,Arial,sans-serif}
.hl line{stroke-width:3.5}.hl .lbl{text-decoration:underline}
.link.hl path{stroke:#6c3483;stroke-width:2.6}
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser)
    add_filter_arguments(parser)
    parser.add_argument(
        "--output",
        "-o",
        required=True,
        metavar="OUT.svg|OUT.html",
        help="file to write; the extension picks SVG or HTML",
    )
    parser.add_argument("--format", choices=("svg", "html"), help="override the extension")
    parser.add_argument(
        "--limit",
        type=int,
        default=2000,
        metavar="N",
        help="draw at most N arrows and collapsed runs (default 2000); later messages are "
        "counted, not drawn",
    )
    parser.add_argument(
        "--pause",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="draw gaps longer than this as a break with their length (default 2; 0: none)",
    )
    parser.add_argument(
        "--no-collapse",
        action="store_true",
        help="draw every message, even in long runs of the same type",
    )


def build_layout(
    records: Iterable[Record], *, limit: int = 2000, collapse: bool = True, pause_s: float = 2.0
) -> Layout:
    """Lay ``records`` out (see :class:`~sleap_rtc.inspect.timeline_layout.TimelineBuilder`)."""
    builder = TimelineBuilder(limit=limit, collapse=collapse, pause_s=pause_s)
    for rec in records:
        builder.add(rec)
    return builder.finish()


def _classes(item: Arrow) -> str:
    out = ["arrow", "w2c" if item.direction == fmt.WORKER_TO_CLIENT else "c2w"]
    if item.level:
        out.append(item.level)
    if item.kind == "raw":
        out.append("raw")
    elif item.kind == "legacy":
        out.append("legacy")
    elif item.body.startswith("unknown_body"):
        out.append("unknown")
    return " ".join(out)


def _marker(item: Arrow) -> str:
    if item.level:
        return item.level
    if item.kind == "legacy":
        return "legacy"
    if item.body.startswith("unknown_body"):
        return "unknown"
    return "w2c" if item.direction == fmt.WORKER_TO_CLIENT else "c2w"


def _rel(ns: int, t0: int) -> str:
    return f"+{(ns - t0) / 1e9:.3f}s" if ns and t0 else ""


def _head(layout: Layout, title: str) -> list[str]:
    from sleap_rtc.capture.read.record import format_time

    peers = layout.peers
    out = [
        f'<text class="title" x="{WIDTH // 2}" y="26" text-anchor="middle">{escape(title)}</text>'
    ]
    sub = []
    if peers.recorded_by:
        sub.append(f"recorded by the {peers.recorded_by}")
    if layout.t0:
        sub.append(f"start {format_time(layout.t0)}")
    span = (layout.t_end - layout.t0) / 1e9 if layout.t0 else 0.0
    sub.append(f"{layout.total} messages over {span:.3f} s")
    sub.append(f"{len(layout.links)} answers linked")
    if layout.connections > 1:
        sub.append(f"{layout.connections} connections")
    if layout.truncated:
        sub.append(f"first {layout.drawn} of {layout.total} drawn (--limit)")
    out.append(
        f'<text class="sub" x="{WIDTH // 2}" y="46" text-anchor="middle">'
        f"{escape(' · '.join(sub))}</text>"
    )
    out.append(_legend(62))
    for x, role, name, detail in (
        (LEFT, "CLIENT", peers.client, peers.client_detail),
        (RIGHT, "WORKER", peers.worker, peers.worker_detail),
    ):
        out.append(
            f'<g class="head peer-{role.lower()}"><rect x="{x - 150}" y="78" width="300" '
            f'height="54" rx="5"/>'
            f'<text class="role" x="{x}" y="95" text-anchor="middle">{role}</text>'
            f'<text class="name" x="{x}" y="110" text-anchor="middle">{escape(short(name, 40))}'
            f'</text><text class="det" x="{x}" y="125" text-anchor="middle">'
            f"{escape(short(detail, 46))}</text></g>"
        )
    return out


def _legend(y: int) -> str:
    parts = ['<g class="legend">']
    x = 40
    for cls, text, dash in (
        ("c2w", "client → worker", ""),
        ("w2c", "worker → client", ""),
        ("err", "error / failure", ""),
        ("warn", "missing path", ""),
        ("err", "raw frame", "6,4"),
        ("legacy", "legacy text", "2,3"),
        ("more", "collapsed run", "1,5"),
    ):
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(
            f'<line x1="{x}" y1="{y - 4}" x2="{x + 26}" y2="{y - 4}" stroke="{_COLORS[cls]}" '
            f'stroke-width="2"{dash_attr}/><text x="{x + 32}" y="{y}">{escape(text)}</text>'
        )
        x += 40 + 7 * len(text)
    parts.append(
        f'<path d="M{x},{y - 9} h8 v10 h-8" stroke="#a569bd" fill="none" stroke-width="1.3"/>'
        f'<text x="{x + 14}" y="{y}">answer ↔ request (latency)</text>'
    )
    parts.append("</g>")
    return "".join(parts)


def render_svg(layout: Layout, *, title: str = "", titles: bool = True) -> str:
    """The sequence diagram of ``layout`` as a standalone SVG document.

    ``titles`` adds an SVG ``<title>`` (the viewer's own tooltip) to each arrow;
    the HTML page turns it off and shows its own hover panel instead.
    """
    ys: list[int] = []
    y = HEAD_BOTTOM + 10
    for item in layout.items:
        step = PAUSE_ROW if isinstance(item, Pause) else RUN_ROW if isinstance(item, Run) else ROW
        y += step
        ys.append(y - step // 2 + (4 if isinstance(item, Arrow) else 0))
    bottom = y + 16
    height = bottom + (40 if layout.truncated else 24)
    lanes = max((link.lane for link in layout.links), default=-1) + 1
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}">',
        f"<style>{_CSS}</style><defs>",
    ]
    for name, color in _COLORS.items():
        out.append(
            f'<marker id="m-{name}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="11" '
            'markerHeight="11" markerUnits="userSpaceOnUse" orient="auto-start-reverse">'
            f'<path d="M0,0 L10,5 L0,10 z" fill="{color}"/></marker>'
        )
    out.append("</defs>")
    out.append(f'<rect width="{WIDTH}" height="{height}" fill="white"/>')
    out += _head(layout, title or "sleap-rtc datachannel timeline")
    for x in (LEFT, RIGHT):
        out.append(f'<line class="life" x1="{x}" y1="{HEAD_BOTTOM - 2}" x2="{x}" y2="{bottom}"/>')
    for index, item in enumerate(layout.items):
        if isinstance(item, Arrow):
            out.append(_arrow(index, item, ys[index], layout, titles))
        elif isinstance(item, Run):
            out.append(_run(item, ys[index]))
        else:
            out.append(_pause(item, ys[index]))
    for link in layout.links:
        y1, y2 = ys[link.request], ys[link.answer]
        if link.side == "worker":
            edge, xl, anchor = RIGHT + 3, RIGHT + LANE_X0 + LANE_STEP * link.lane, "start"
            tx = RIGHT + LANE_X0 + LANE_STEP * lanes + 2  # right of every lane in use
        else:
            edge, xl, anchor = LEFT - 3, LEFT - LANE_X0 - LANE_STEP * link.lane, "end"
            tx = LEFT - LANE_X0 - LANE_STEP * lanes - 2
        out.append(
            f'<g class="link" data-req="{link.request}" data-ans="{link.answer}">'
            f'<path d="M{edge},{y1} H{xl} V{y2} H{edge}"/>'
            f'<text x="{tx}" y="{y2 + 4}" text-anchor="{anchor}">{_ms(link.latency_ms)}</text>'
            "</g>"
        )
    if layout.truncated:
        out.append(
            f'<text class="sub" x="{MID}" y="{bottom + 22}" text-anchor="middle">'
            f"… {layout.total - layout.drawn} more messages not drawn (--limit)</text>"
        )
    out.append("</svg>")
    return "\n".join(out)


def _ms(ms: float) -> str:
    return f"{ms:.1f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def _arrow(index: int, item: Arrow, y: int, layout: Layout, titles: bool) -> str:
    x1, x2 = (RIGHT, LEFT) if item.direction == fmt.WORKER_TO_CLIENT else (LEFT, RIGHT)
    pay_class = f"pay {item.level}" if item.level else "pay"
    label = item.label
    if layout.connections > 1 and item.connection:
        label += f" conn={short_id(item.connection, 12)}"
    title = f"<title>{escape(short(item.detail, 600))}</title>" if titles else ""
    return (
        f'<g class="{_classes(item)}" data-i="{index}" data-body="{escape(item.body)}" '
        f'data-direction="{escape(item.direction)}">{title}'
        f'<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" marker-end="url(#m-{_marker(item)})"/>'
        f'<text class="lbl" x="{MID}" y="{y - 6}" text-anchor="middle">'
        f"{escape(short(label, LABEL_CHARS))}</text>"
        f'<text class="{pay_class}" x="{MID}" y="{y + 14}" text-anchor="middle">'
        f"{escape(short(item.payload, PAYLOAD_CHARS))}</text>"
        f'<text class="time" x="{TIME_X}" y="{y + 4}" text-anchor="end">'
        f"{escape(_rel(item.time_ns, layout.t0))}</text></g>"
    )


def _run(item: Run, y: int) -> str:
    arrow = fmt.ARROWS.get(item.direction, "?")
    head = f"⋯ {item.count} more {item.body} ({arrow})"
    if item.start_ns and item.end_ns:
        head += f" over {(item.end_ns - item.start_ns) / 1e9:.3f} s"
    return (
        f'<g class="run" data-body="{escape(item.body)}" data-count="{item.count}">'
        f'<line x1="{LEFT + 8}" y1="{y}" x2="{RIGHT - 8}" y2="{y}"/>'
        f'<text class="lbl" x="{MID}" y="{y - 7}" text-anchor="middle">{escape(head)}</text>'
        f'<text class="pay" x="{MID}" y="{y + 15}" text-anchor="middle">'
        f"{escape(short(item.summary, PAYLOAD_CHARS))}</text></g>"
    )


def _pause(item: Pause, y: int) -> str:
    top, low = y - PAUSE_ROW // 2 + 6, y + PAUSE_ROW // 2 - 6
    zig = "".join(
        f"M{x - 12},{yy} l6,-4 l6,8 l6,-8 l6,4 " for x in (LEFT, RIGHT) for yy in (top, low)
    )
    return (
        f'<g class="pause" data-seconds="{item.seconds:.3f}">'
        f'<rect x="{LEFT - 20}" y="{top}" width="{RIGHT - LEFT + 40}" height="{low - top}"/>'
        f'<path d="{zig}"/><text x="{MID}" y="{y + 4}" text-anchor="middle">'
        f"pause {item.seconds:.3f} s (nothing crossed)</text></g>"
    )


_JS = """
(function(){
var D=JSON.parse(document.getElementById('tl-data').textContent);
var tip=document.getElementById('tip'),svg=document.querySelector('svg');
var on=[];
function clear(){on.forEach(function(e){e.classList.remove('hl')});on=[];tip.style.display='none';}
function show(i,x,y){clear();var d=D[i];if(d===undefined)return;
 tip.textContent=d;tip.style.display='block';
 tip.style.left=Math.min(x+16,window.innerWidth-tip.offsetWidth-8)+'px';
 tip.style.top=(y+16)+'px';
 var q='[data-i="'+i+'"],.link[data-req="'+i+'"],.link[data-ans="'+i+'"]';
 svg.querySelectorAll(q).forEach(function(e){e.classList.add('hl');on.push(e);
  if(e.classList.contains('link')){[e.dataset.req,e.dataset.ans].forEach(function(j){
   var a=svg.querySelector('[data-i="'+j+'"]');if(a){a.classList.add('hl');on.push(a);}});}});}
svg.addEventListener('mouseover',function(ev){var g=ev.target.closest('g.arrow');
 if(g)show(g.dataset.i,ev.pageX,ev.pageY);});
svg.addEventListener('mouseleave',clear);
var m=/^#show=(\\d+)$/.exec(location.hash);
if(m){var g=svg.querySelector('[data-i="'+m[1]+'"]');if(g){var r=g.getBoundingClientRect();
 show(m[1],r.left+window.scrollX+40,r.top+window.scrollY);}}
document.getElementById('status').textContent='Hover an arrow for its message ('
 +Object.keys(D).length+' with details); a request and its answer light up together ('
 +svg.querySelectorAll('.link').length+' answers linked).';
})();
"""


def render_html(layout: Layout, title: str) -> str:
    """A self-contained HTML page: the SVG, a legend, hover details (no external resources)."""
    svg = render_svg(layout, title=title, titles=False)
    details = {
        str(i): item.detail for i, item in enumerate(layout.items) if isinstance(item, Arrow)
    }
    # "<" as \u003c: no "</script>" or "<!--" in the data can end or confuse the block
    data = json.dumps(details, ensure_ascii=False).replace("<", "\\u003c")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:1em;color:#222}"
        "#tip{position:absolute;display:none;max-width:640px;max-height:70vh;overflow:auto;"
        "background:#fffff0;border:1px solid #888;padding:6px 8px;font:11px monospace;"
        "white-space:pre-wrap;box-shadow:2px 2px 6px #aaa;pointer-events:none}"
        "g.arrow{cursor:pointer}#status{color:#666;font-size:12px}"
        "</style></head><body>"
        f'{svg}<p id="status">Hover details need JavaScript.</p><div id="tip"></div>'
        f'<script type="application/json" id="tl-data">{data}</script>'
        f"<script>{_JS}</script></body></html>\n"
    )


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stream = sys.stdout if out is None else out
    output = Path(args.output)
    kind = args.format or ("html" if output.suffix.lower() in (".html", ".htm") else "svg")
    if args.limit < 1:
        print("error: --limit must be at least 1", file=sys.stderr)
        return 2
    reader = open_reader(args)
    layout = build_layout(
        selected(reader, args),
        limit=args.limit,
        collapse=not args.no_collapse,
        pause_s=max(0.0, args.pause),
    )
    title = f"sleap-rtc timeline: {', '.join(Path(p).name for p in args.captures)}"
    text = render_svg(layout, title=title) if kind == "svg" else render_html(layout, title)
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"error: cannot write {output}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    arrows = sum(1 for i in layout.items if isinstance(i, Arrow))
    stream.write(
        f"wrote {kind.upper()} timeline of {layout.total} messages to {output} "
        f"({arrows} arrows, {len(layout.links)} answers linked"
        + (f"; first {layout.drawn} drawn" if layout.truncated else "")
        + ")\n"
    )
    return report_problems(reader)
