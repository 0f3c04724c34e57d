"""``inspect timeline``: the conversation as a sequence diagram (SVG or HTML).

Two lifelines, client on the left and worker on the right; one arrow per
message, labelled with its body type, ids, job and time since the first
message. Long runs of the same message (e.g. thousands of JobProgress) are
collapsed to their first and last arrow and a "N more" marker, so the file
stays small enough to open.
"""

from __future__ import annotations

import argparse
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

if TYPE_CHECKING:
    from sleap_rtc.capture.record import Record

WIDTH = 960
LEFT = 190
RIGHT = 770
TOP = 90
ROW = 30


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
        "--limit", type=int, default=2000, metavar="N", help="draw at most N arrows (default 2000)"
    )
    parser.add_argument(
        "--no-collapse",
        action="store_true",
        help="draw every message, even in long runs of the same type",
    )


class _Run:
    __slots__ = ("count", "first", "last")

    def __init__(self, rec: Record) -> None:
        self.first = rec
        self.last = rec
        self.count = 1


def _rows(records: list[Record], collapse: bool) -> list[tuple[str, Record | _Run]]:
    """("msg", record) or ("more", run) rows; runs of >3 alike messages are collapsed."""
    rows: list[tuple[str, Record | _Run]] = []
    i = 0
    while i < len(records):
        rec = records[i]
        j = i + 1
        if collapse:
            while (
                j < len(records)
                and records[j].body == rec.body
                and records[j].direction == rec.direction
                and records[j].kind == rec.kind
            ):
                j += 1
        if j - i > 3:
            run = _Run(records[i + 1])
            run.last = records[j - 2]
            run.count = j - i - 2
            rows += [("msg", rec), ("more", run), ("msg", records[j - 1])]
        else:
            rows += [("msg", r) for r in records[i:j]]
        i = j
    return rows


def _label(rec: Record, t0: int, connections: int) -> tuple[str, str]:
    parts = [rec.body if not rec.legacy_type else f"{rec.body} ({rec.legacy_type})"]
    if rec.message_id is not None:
        parts.append(f"#{rec.message_id}")
    if rec.correlation_id:
        parts.append(f"re #{rec.correlation_id}")
    if rec.job_id:
        parts.append(f"job={rec.job_id}")
    if rec.fragments:
        parts.append(f"[{rec.fragments} fragments]")
    if connections > 1 and rec.connection:
        parts.append(f"conn={rec.connection}")
    if rec.kind == "raw":
        parts.append(f"RAW: {rec.reason}")
    when = f"+{(rec.time_ns - t0) / 1e9:.3f}s" if rec.time_ns and t0 else ""
    return " ".join(parts), when


def _style(rec: Record) -> tuple[str, str]:
    if rec.kind == "raw":
        return "#c0392b", "6,4"
    if rec.body == "error" or rec.body in ("job_failed", "job_rejected"):
        return "#c0392b", ""
    if rec.kind == "legacy":
        return "#d68910", "2,3"
    if rec.body.startswith("unknown_body"):
        return "#8e44ad", "4,2"
    return ("#1f618d", "") if rec.direction == fmt.CLIENT_TO_WORKER else ("#1e8449", "")


def render_svg(
    records: list[Record], *, collapse: bool = True, title: str = "", total: int = 0
) -> str:
    """The sequence diagram of ``records`` as a standalone SVG document."""
    from sleap_rtc.capture.record import format_time

    rows = _rows(records, collapse)
    t0 = next((r.time_ns for r in records if r.time_ns), 0)
    connections = len({r.connection for r in records})
    height = TOP + ROW * (len(rows) + 1) + 40
    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="monospace" font-size="12">',
        "<defs>",
    ]
    colors = {"#1f618d", "#1e8449", "#c0392b", "#d68910", "#8e44ad", "#7f8c8d"}
    for color in sorted(colors):
        out.append(
            f'<marker id="a{color[1:]}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" '
            f'markerHeight="8" orient="auto-start-reverse">'
            f'<path d="M0,0 L10,5 L0,10 z" fill="{color}"/></marker>'
        )
    out.append("</defs>")
    out.append(f'<rect width="{WIDTH}" height="{height}" fill="white"/>')
    head = escape(title or "sleap-rtc datachannel timeline")
    out.append(
        f'<text x="{WIDTH // 2}" y="24" text-anchor="middle" font-size="15" '
        f'font-weight="bold">{head}</text>'
    )
    if t0:
        note = f"start {format_time(t0)}; {len(records)} messages"
        if total > len(records):
            note += f" (first {len(records)} of {total} drawn)"
        out.append(
            f'<text x="{WIDTH // 2}" y="42" text-anchor="middle" fill="#555">{escape(note)}</text>'
        )
    bottom = height - 30
    for x, name in ((LEFT, "client"), (RIGHT, "worker")):
        out.append(
            f'<rect x="{x - 60}" y="52" width="120" height="26" rx="4" fill="#eef" stroke="#334"/>'
        )
        out.append(f'<text x="{x}" y="70" text-anchor="middle" font-weight="bold">{name}</text>')
        out.append(
            f'<line x1="{x}" y1="78" x2="{x}" y2="{bottom}" stroke="#889" stroke-dasharray="4,4"/>'
        )
    y = TOP
    for kind, item in rows:
        y += ROW
        if kind == "more":
            assert isinstance(item, _Run)
            arrow = fmt.ARROWS.get(item.first.direction, "?")
            text = f"… {item.count} more {item.first.body} ({arrow})"
            if item.first.time_ns and item.last.time_ns:
                text += f" over {(item.last.time_ns - item.first.time_ns) / 1e9:.3f} s"
            out.append(
                f'<text class="more" x="{(LEFT + RIGHT) // 2}" y="{y - 4}" text-anchor="middle" '
                f'fill="#7f8c8d" font-style="italic">{escape(text)}</text>'
            )
            continue
        assert not isinstance(item, _Run)
        rec = item
        label, when = _label(rec, t0, connections)
        color, dash = _style(rec)
        x1, x2 = (LEFT, RIGHT) if rec.direction != fmt.WORKER_TO_CLIENT else (RIGHT, LEFT)
        if not rec.direction:
            x1, x2 = LEFT, RIGHT
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(
            f'<g class="arrow" data-body="{escape(rec.body)}" '
            f'data-direction="{escape(rec.direction)}">'
            f'<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" stroke="{color}" '
            f'stroke-width="1.6"{dash_attr} marker-end="url(#a{color[1:]})"/>'
            f'<text x="{(LEFT + RIGHT) // 2}" y="{y - 5}" text-anchor="middle" '
            f'fill="{color}">{escape(label)}</text>'
            f'<text x="{LEFT - 70}" y="{y + 4}" text-anchor="end" fill="#555">{escape(when)}</text>'
            f"<title>{escape(format_time(rec.time_ns))} {escape(label)} "
            f"({rec.size} bytes)</title></g>"
        )
    out.append("</svg>")
    return "\n".join(out)


def render_html(svg: str, title: str, summary: str) -> str:
    """A self-contained HTML page around the SVG."""
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:1.5em;color:#222}"
        ".legend span{margin-right:1.5em}</style></head><body>"
        f"<h1>{escape(title)}</h1><p>{escape(summary)}</p>"
        '<p class="legend"><span style="color:#1f618d">&#8594; client to worker</span>'
        '<span style="color:#1e8449">&#8592; worker to client</span>'
        '<span style="color:#c0392b">errors, failures, raw frames (dashed)</span>'
        '<span style="color:#d68910">legacy text frames</span>'
        '<span style="color:#8e44ad">unknown bodies</span></p>'
        f"{svg}</body></html>\n"
    )


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stream = sys.stdout if out is None else out
    output = Path(args.output)
    kind = args.format or ("html" if output.suffix.lower() in (".html", ".htm") else "svg")
    reader = open_reader(args)
    records: list[Record] = []
    total = 0
    for rec in selected(reader, args):
        total += 1
        if len(records) < args.limit:
            records.append(rec)
    title = f"sleap-rtc timeline: {', '.join(Path(p).name for p in args.captures)}"
    svg = render_svg(records, collapse=not args.no_collapse, title=title, total=total)
    text = (
        svg
        if kind == "svg"
        else render_html(
            svg,
            title,
            f"{total} messages; first {len(records)} drawn."
            if total > len(records)
            else f"{total} messages.",
        )
    )
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"error: cannot write {output}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    stream.write(f"wrote {kind.upper()} timeline of {len(records)} messages to {output}\n")
    return report_problems(reader)
