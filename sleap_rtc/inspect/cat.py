"""``inspect cat``: one line per message, for people or (``--json``) for programs."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, TextIO

from sleap_rtc.capture import format as fmt

if TYPE_CHECKING:
    from sleap_rtc.capture.read.reader import CaptureReader
    from sleap_rtc.capture.read.record import Record
    from sleap_rtc.inspect.pairing import Answer
from sleap_rtc.inspect.common import (
    add_filter_arguments,
    add_input_arguments,
    make_predicate,
    open_reader,
    report_problems,
    selected,
)

#: Line width when writing to a file or pipe (``--width 0`` for whole lines).
DEFAULT_WIDTH = 240
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser)
    add_filter_arguments(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument(
        "--fragments",
        action="store_true",
        help="show fragment frames as they crossed instead of the reassembled message",
    )
    parser.add_argument(
        "--limit", "-n", type=int, default=0, metavar="N", help="stop after N messages"
    )
    parser.add_argument(
        "--width",
        type=int,
        default=None,
        help="cut lines at this many characters; 0: never (default: terminal width, or 240)",
    )
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    parser.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="keep reading a capture being written; stop at its footer, Ctrl-C or --follow-timeout",
    )
    parser.add_argument(
        "--follow-timeout",
        type=float,
        default=None,
        metavar="S",
        help="with --follow: stop after S seconds without new data (default: never)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=0,
        metavar="N",
        help="--json: decode with N processes (default: one per CPU for captures over 16 MB)",
    )


def text_line(rec: Record, width: int = 0, answer: Answer | None = None) -> str:
    """The human-readable line of one record (``answer``: what it answers, and how fast)."""
    from sleap_rtc.capture.read.record import format_time

    t = format_time(rec.time_ns)[11:26] if rec.time_ns else "-"
    ids = ""
    if rec.message_id is not None:
        ids = f"#{rec.message_id}"
        if rec.correlation_id:
            ids += f" re #{rec.correlation_id}"
    body = rec.body
    if rec.legacy_type and rec.legacy_type != body:
        body = f"{body} ({rec.legacy_type})"
    if rec.fragments:
        body += f" [{rec.fragments} fragments]"
    job = f"job={rec.job_id}" if rec.job_id else ""
    summary = summarize(rec)
    if answer is not None:
        summary = (
            f"(answers {answer.request} #{answer.request_id} in {answer.latency_ms:.3f} ms) "
            + summary
        )
    arrow = fmt.ARROWS.get(rec.direction, "?")
    line = f"{t} {arrow:4} {ids:<13} {body:<22} {job:<14} {rec.size:>7}B  {summary}"
    if width and len(line) > width:
        line = line[: max(width - 1, 10)] + "…"
    return line


def summarize(rec: Record) -> str:
    from sleap_rtc.capture.read.record import raw_view

    if rec.kind == "raw":
        shown = raw_view(rec.raw or b"", limit=48)
        data = shown.get("text") or shown.get("hex", "")
        return f"RAW ({rec.reason}) {data!r}" if data else f"RAW ({rec.reason})"
    message = rec.message() or {}
    if rec.kind == "legacy":
        message = {k: v for k, v in message.items() if k != "legacy_type"}
    text = _JSON.encode(message) if message else ""
    header = envelope_header(rec)
    if header:
        text = f"envelope={_JSON.encode(header)} {text}"
    if rec.reason:
        text = f"[{rec.reason}] {text}"
    return text


def envelope_header(rec: Record) -> dict[str, object]:
    """Envelope header fields beyond v1.0's: by name where the schema names them, else raw."""
    from sleap_rtc.capture.read.decode import FIRST_BODY_FIELD
    from sleap_rtc.capture.read.rawproto import unknown_entry, unknown_field_set
    from sleap_rtc.capture.read.record import envelope_fields

    env, schema = rec.envelope, rec.schema
    if env is None or schema is None:
        return {}
    out: dict[str, object] = dict(envelope_fields(env, schema.extra_header))
    unknown = [
        unknown_entry(f) for f in unknown_field_set(env) if f.field_number < FIRST_BODY_FIELD
    ]
    if unknown:
        out["@unknown"] = unknown
    return out


def write_json(batches: Iterable[list[str]], out: TextIO, limit: int = 0) -> int:
    """Write batches of JSON lines in big writes; stop after ``limit`` lines (0: all).

    An item of a batch may hold several lines joined by newlines (the fast
    path gives one item per chunk of the capture): it is written as it is.
    """
    n = 0
    write = out.write
    for batch in batches:
        count = len(batch) + sum(item.count("\n") for item in batch)
        if limit and n + count >= limit:
            lines = "\n".join(batch).split("\n")[: limit - n]
            write("\n".join(lines) + "\n")
            return n + len(lines)
        if len(batch) == 1:
            write(batch[0])  # no copy of a chunk's worth of text
            write("\n")
        elif batch:
            write("\n".join(batch) + "\n")
        n += count
    return n


def _batches(lines: Iterator[str], size: int = 1024) -> Iterator[list[str]]:
    batch: list[str] = []
    for line in lines:
        batch.append(line)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


#: Captures at least this big are decoded in parallel by default.
PARALLEL_FROM_BYTES = 16 * 1024 * 1024


def _jobs(args: argparse.Namespace) -> int:
    if args.jobs:
        return max(1, int(args.jobs))
    if len(args.captures) != 1:
        return 1
    import os

    try:
        big = os.path.getsize(args.captures[0]) >= PARALLEL_FROM_BYTES
    except OSError:
        return 1
    return idle_cpus() if big else 1


def idle_cpus() -> int:
    """CPUs not already busy (count minus the 1-minute load average), 1 to 16.

    Decoding in N processes pays only when N cores are free: on a loaded
    machine extra processes just compete with each other and the ordering
    process (issue 14 measured 94k msg/s in two processes against 109k in one),
    so the default falls back to one process there.
    """
    import os

    cpus = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on this platform
        load = 0.0
    return max(1, min(16, int(cpus - load + 0.5)))


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stream = sys.stdout if out is None else out
    follow = None
    if args.follow:
        from sleap_rtc.capture.read.mcapio import Follow

        follow = Follow(args.follow_timeout)
    reader = open_reader(args, reassemble=not args.fragments, follow=follow)
    if follow is not None:
        try:
            _follow(reader, args, stream)
        except KeyboardInterrupt:  # Ctrl-C ends following: what was shown stands
            stream.flush()
        return report_problems(reader)
    records = selected(reader, args)
    if args.json:
        from sleap_rtc.capture.read.headers import headers
        from sleap_rtc.inspect.pairing import NOT_REQUESTS, Linker, json_links

        fast = make_predicate(args) is None and not args.fragments
        jobs = _jobs(args) if fast else 1
        if fast and jobs == 1:
            # One process: each request's answer is found by reading on from it.
            batches = reader.json_batches(1, hook=Linker(reader, args.fallback_schema))
        else:
            # A first pass over the headers pairs requests and answers (a request's line
            # names its answer, which comes later); the lines then carry the links.
            links = json_links(
                headers(reader.paths, reader.kinds, args.fallback_schema, skip=NOT_REQUESTS)
            )
            if fast:
                batches = reader.json_batches(jobs, links)
            else:
                reader.extras = links
                batches = _batches(reader.json_line(r) for r in records)
        write_json(batches, stream, args.limit)
        return report_problems(reader)
    color = args.color == "always" or (args.color == "auto" and out is None and stream.isatty())
    width = args.width
    if width is None:
        import shutil

        width = shutil.get_terminal_size().columns if stream.isatty() else DEFAULT_WIDTH
    console = None
    if color:
        from rich.console import Console

        console = Console(file=stream, highlight=False, soft_wrap=True, force_terminal=True)
    from sleap_rtc.inspect.pairing import Pairing

    # Pair over every record, so an answer names its request even when only it is selected.
    pairing = Pairing()
    keep = make_predicate(args)
    n = 0
    for rec in reader.records():
        answer = pairing.see(rec)
        if keep is not None and not keep(rec):
            continue
        n += 1
        line = text_line(rec, width, answer)
        if console is not None:
            from rich.text import Text

            style = (
                "red"
                if rec.kind == "raw" or rec.body == "error"
                else (
                    "yellow"
                    if rec.kind == "legacy"
                    else ("cyan" if rec.direction == fmt.CLIENT_TO_WORKER else "green")
                )
            )
            console.print(Text(line, style=style))
        else:
            stream.write(line + "\n")
        if args.limit and n >= args.limit:
            break
    return report_problems(reader)


def _follow(reader: CaptureReader, args: argparse.Namespace, stream: TextIO) -> None:
    """``cat -f``: lines as the capture grows, each written at once.

    One pass, so a JSON answer carries ``"answers"`` (its request came
    before it) but a request carries no ``"answered_by"`` (its answer is not
    written yet). Memory stays bounded: records are not kept, and pairing
    forgets the oldest open requests beyond its limit.
    """
    from sleap_rtc.inspect.pairing import Pairing, answer_members

    pairing = Pairing()
    keep = make_predicate(args)
    width = DEFAULT_WIDTH if args.width is None else args.width
    n = 0
    for rec in reader.records():
        answer = pairing.see(rec)
        if keep is not None and not keep(rec):
            continue
        n += 1
        if args.json:
            line = reader.json_line(rec)
            if answer is not None:
                line = line[:-1] + answer_members(answer) + "}"
        else:
            line = text_line(rec, width, answer)
        stream.write(line + "\n")
        stream.flush()
        if args.limit and n >= args.limit:
            break
