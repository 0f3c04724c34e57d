"""Shared by the inspect verbs: opening inputs, record predicates, problem reports."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TextIO

from sleap_rtc.capture import format as fmt

if TYPE_CHECKING:
    from sleap_rtc.capture.read.mcapio import Follow
    from sleap_rtc.capture.read.reader import CaptureReader
    from sleap_rtc.capture.read.record import Record

_DIRECTION_ALIASES = {
    "client_to_worker": fmt.CLIENT_TO_WORKER,
    "c2w": fmt.CLIENT_TO_WORKER,
    "worker_to_client": fmt.WORKER_TO_CLIENT,
    "w2c": fmt.WORKER_TO_CLIENT,
}


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "captures",
        nargs="+",
        metavar="CAPTURE",
        help="MCAP capture(s), e.g. run.mcap run.1.mcap, or a plain-text legacy capture",
    )
    parser.add_argument(
        "--fallback-schema",
        action="store_true",
        help="decode channels that carry no schema with this program's schema",
    )


def add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("selection")
    group.add_argument(
        "--body",
        "-b",
        action="append",
        default=[],
        metavar="TYPE",
        help="keep this body type (repeatable; comma lists allowed), e.g. job_submit,error",
    )
    group.add_argument(
        "--direction", "-d", choices=sorted(_DIRECTION_ALIASES), help="keep one direction"
    )
    group.add_argument(
        "--job",
        "-j",
        action="append",
        default=[],
        metavar="JOB_ID",
        help="keep messages of this job id (repeatable)",
    )
    group.add_argument(
        "--correlation",
        "-c",
        action="append",
        default=[],
        type=parse_correlation,
        metavar="[DIR:]ID",
        help="keep the message with this id and the answers that name it (repeatable); ids "
        "are numbered per direction: c2w:3 is the client's message 3 and the worker's answers "
        "to it, a bare 3 matches either direction",
    )
    group.add_argument(
        "--connection",
        action="append",
        default=[],
        metavar="ID",
        help="keep one connection (repeatable)",
    )
    group.add_argument(
        "--since",
        type=parse_time_bound,
        metavar="TIME",
        help="keep from this time: ISO 8601 (UTC unless zoned) or +SECONDS from the start",
    )
    group.add_argument(
        "--until",
        type=parse_time_bound,
        metavar="TIME",
        help="keep up to this time: ISO 8601 or +SECONDS from the start",
    )


def parse_correlation(text: str) -> tuple[str, int]:
    """``3`` -> ("", 3); ``c2w:3`` -> ("client_to_worker", 3)."""
    head, sep, tail = text.strip().rpartition(":")
    direction = _DIRECTION_ALIASES.get(head.lower()) if sep else ""
    if direction is None:
        raise argparse.ArgumentTypeError(
            f"not a direction: {head!r} (use {', '.join(sorted(_DIRECTION_ALIASES))})"
        )
    try:
        return direction, int(tail)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a message id: {tail!r}") from None


def _correlates(rec: Record, wanted: set[tuple[str, int]]) -> bool:
    for direction, mid in wanted:
        if not direction:
            if rec.message_id == mid or rec.correlation_id == mid:
                return True
        elif rec.direction == direction:
            if rec.message_id == mid:
                return True
        elif rec.correlation_id == mid and rec.direction:
            return True
    return False


def parse_time_bound(text: str) -> tuple[str, float]:
    """``+1.5`` / ``+1.5s`` -> ("rel", 1.5); an ISO time -> ("abs", ns)."""
    value = text.strip()
    if value.startswith("+"):
        try:
            return ("rel", float(value[1:].rstrip("s")))
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    iso = value[:-1] + "+00:00" if value.endswith("Z") else value
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time or +SECONDS: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return ("abs", float(int(moment.timestamp()) * 10**9 + moment.microsecond * 1000))


def make_predicate(args: argparse.Namespace) -> Callable[[Record], bool] | None:
    """The selection of ``add_filter_arguments`` as one test; None selects everything."""
    bodies = {b.strip() for item in getattr(args, "body", []) for b in item.split(",") if b.strip()}
    direction = _DIRECTION_ALIASES.get(getattr(args, "direction", None) or "")
    jobs = set(getattr(args, "job", []))
    correlations = set(getattr(args, "correlation", []))
    connections = set(getattr(args, "connection", []))
    since = getattr(args, "since", None)
    until = getattr(args, "until", None)
    if not (bodies or direction or jobs or correlations or connections or since or until):
        return None
    start: list[int] = []

    def bound(b: tuple[str, float] | None, t0: int) -> float | None:
        if b is None:
            return None
        return b[1] if b[0] == "abs" else t0 + b[1] * 1e9

    def keep(rec: Record) -> bool:
        if not start and rec.time_ns:
            start.append(rec.time_ns)
        if bodies and rec.body not in bodies and (rec.legacy_type or "") not in bodies:
            return False
        if direction and rec.direction != direction:
            return False
        if jobs and rec.job_id not in jobs and not jobs.intersection(rec.job_ids):
            return False
        if connections and rec.connection not in connections:
            return False
        if correlations and not _correlates(rec, correlations):
            return False
        if since or until:
            t0 = start[0] if start else 0
            lo, hi = bound(since, t0), bound(until, t0)
            if lo is not None and rec.time_ns < lo:
                return False
            if hi is not None and rec.time_ns > hi:
                return False
        return True

    return keep


def open_reader(
    args: argparse.Namespace,
    *,
    keep_frames: bool = False,
    reassemble: bool = True,
    follow: Follow | None = None,
) -> CaptureReader:
    from sleap_rtc.capture.read.reader import CaptureReader

    return CaptureReader(
        args.captures,
        reassemble=reassemble,
        fallback_schema=getattr(args, "fallback_schema", False),
        keep_frames=keep_frames,
        follow=follow,
    )


def selected(reader: CaptureReader, args: argparse.Namespace) -> Iterator[Record]:
    keep = make_predicate(args)
    records = reader.records()
    if keep is None:
        return records
    return (r for r in records if keep(r))


def report_problems(reader: CaptureReader, stream: TextIO | None = None, limit: int = 20) -> int:
    """Print the problems met while reading; 1 when a file could not be read to its end."""
    out = sys.stderr if stream is None else stream
    problems = reader.problems
    for problem in problems[:limit]:
        print(f"warning: {problem}", file=out)
    if len(problems) > limit:
        print(f"warning: ... and {len(problems) - limit} more problems", file=out)
    if reader.damaged:
        lost = sum(1 for p in problems if p.fatal or p.lost)
        print(
            f"error: the capture is damaged ({lost} damaged place(s), listed above); "
            "the output above is partial",
            file=out,
        )
        return 1
    return 0
