"""``inspect info``: what a capture holds: versions, peers, time span, counts."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import TYPE_CHECKING, Any, TextIO

from sleap_rtc.inspect.common import add_input_arguments, open_reader, report_problems

if TYPE_CHECKING:
    from sleap_rtc.capture.read.reader import CaptureReader

_HELLO_KEYS = (
    "min_version",
    "max_version",
    "software",
    "components",
    "features",
    "client_name",
    "token",
)
_ACK_KEYS = (
    "chosen_version",
    "min_version",
    "max_version",
    "software",
    "components",
    "features",
    "worker_id",
    "session_id",
    "subject",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _version(v: Any) -> str:
    if isinstance(v, dict):
        return f"{v.get('major', 0)}.{v.get('minor', 0)}"
    return ""


def gather(reader: CaptureReader) -> dict[str, Any]:
    """The info of a capture as a JSON-ready dict."""
    from sleap_rtc.capture.read.record import format_time

    kinds: Counter[str] = Counter()
    bodies: Counter[str] = Counter()
    directions: Counter[str] = Counter()
    first = last = 0
    total = size = 0
    hellos: list[dict[str, Any]] = []
    acks: list[dict[str, Any]] = []
    versions: Counter[str] = Counter()
    jobs: set[str] = set()
    for rec in reader.records():
        total += 1
        size += rec.size
        kinds[rec.kind] += 1
        bodies[rec.body] += 1
        directions[rec.direction or "unknown"] += 1
        if rec.version:
            versions[rec.version] += 1
        if rec.job_id:
            jobs.add(rec.job_id)
        jobs.update(rec.job_ids)
        if rec.time_ns:
            first = rec.time_ns if not first else min(first, rec.time_ns)
            last = max(last, rec.time_ns)
        if rec.body == "hello" and rec.kind == "protobuf" and len(hellos) < 20:
            msg = rec.message() or {}
            hellos.append(
                {
                    "connection": rec.connection,
                    "time": format_time(rec.time_ns),
                    **{k: msg[k] for k in _HELLO_KEYS if k in msg},
                }
            )
        elif rec.body == "hello_ack" and rec.kind == "protobuf" and len(acks) < 20:
            msg = rec.message() or {}
            acks.append(
                {
                    "connection": rec.connection,
                    "time": format_time(rec.time_ns),
                    **{k: msg[k] for k in _ACK_KEYS if k in msg},
                }
            )
    connections: dict[str, dict[str, str]] = {}
    files = []
    for info in reader.files:
        meta = {name: values for name, values in info.metadata}
        files.append(
            {
                "path": info.path,
                "kind": info.kind,
                "library": info.library,
                "complete": info.complete,
                "metadata": meta,
                "schemas": sorted({f"{s.name} ({s.encoding})" for s in info.schemas.values()}),
            }
        )
        for ch in info.channels.values():
            cid = ch.metadata.get("connection_id", "")
            if cid or ch.metadata:
                entry = connections.setdefault(cid, {})
                for key in ("client_peer", "worker_peer", "local_role"):
                    if ch.metadata.get(key):
                        entry[key] = ch.metadata[key]
    return {
        "files": files,
        "connections": connections,
        "hello": hellos,
        "hello_ack": acks,
        "envelope_versions": dict(versions),
        "start": format_time(first),
        "end": format_time(last),
        "duration_s": round((last - first) / 1e9, 6) if first else None,
        "messages": total,
        "bytes": size,
        "by_kind": dict(kinds),
        "by_direction": dict(directions),
        "by_body": dict(bodies.most_common()),
        "jobs": sorted(jobs),
        "problems": [str(p) for p in reader.problems],
        "partial": reader.stopped_early,
        "damaged": reader.damaged,
    }


def _print_text(info: dict[str, Any], out: TextIO) -> None:
    w = out.write
    for f in info["files"]:
        meta = f["metadata"].get("sleap_rtc.capture", {})
        extra = f" part {meta['part']}, tokens {meta.get('tokens', '?')}" if meta else ""
        state = "complete" if f["complete"] else "INCOMPLETE"
        w(f"file        {f['path']} ({f['kind']}, {state}{',' + extra if extra else ''})\n")
        if f["library"]:
            w(f"  written by {f['library']}\n")
        for s in f["schemas"]:
            w(f"  schema    {s}\n")
    for cid, c in info["connections"].items():
        w(
            f"connection  {cid or '-'}: client {c.get('client_peer', '?')} <-> worker "
            f"{c.get('worker_peer', '?')} (recorded by the {c.get('local_role', '?')})\n"
        )
    for h in info["hello"]:
        w(
            f"hello       {h.get('software', '?')} speaks {_version(h.get('min_version'))}.."
            f"{_version(h.get('max_version'))}"
        )
        if h.get("components"):
            w(" " + ", ".join(f"{k} {v}" for k, v in h["components"].items()))
        w("\n")
    for a in info["hello_ack"]:
        w(
            f"hello_ack   {a.get('software', '?')} (worker {a.get('worker_id', '?')}) chose "
            f"{_version(a.get('chosen_version'))}"
        )
        if a.get("components"):
            w(" " + ", ".join(f"{k} {v}" for k, v in a["components"].items()))
        w("\n")
    if info["envelope_versions"]:
        w(
            "versions    "
            + ", ".join(f"{v} x{n}" for v, n in info["envelope_versions"].items())
            + "\n"
        )
    if info["start"]:
        w(f"time        {info['start']} .. {info['end']} ({info['duration_s']:.3f} s)\n")
    w(
        f"messages    {info['messages']} ({info['bytes']} bytes): "
        + ", ".join(f"{k} {v}" for k, v in info["by_kind"].items())
        + "\n"
    )
    w("direction   " + ", ".join(f"{k} {v}" for k, v in info["by_direction"].items()) + "\n")
    for body, n in info["by_body"].items():
        w(f"  {body:<24} {n}\n")
    if info["jobs"]:
        w(
            "jobs        "
            + ", ".join(info["jobs"][:20])
            + (" ..." if len(info["jobs"]) > 20 else "")
            + "\n"
        )


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stream = sys.stdout if out is None else out
    reader = open_reader(args)
    info = gather(reader)
    if args.json:
        stream.write(json.dumps(info, ensure_ascii=False, indent=2) + "\n")
        return 1 if reader.damaged else 0
    _print_text(info, stream)
    return report_problems(reader)
