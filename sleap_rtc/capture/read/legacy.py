"""The legacy ``TYPE::arg::json`` text frames, all in one place: which frames are
legacy, their types and the v1 bodies that replaced them, parsing them, and
reading plain-text captures.

A plain-text capture has one frame per line, optionally prefixed by a time (ISO
8601, or Python logging's ``2026-01-02 03:04:05,612 - name - INFO -``) and a
direction: ``2026-01-02T03:04:05.123Z client_to_worker JOB_SUBMIT::j1::{...}``.
Blank lines and lines starting with ``#`` are skipped. Frames are split on
``::`` with a fixed number of splits per type, so payload JSON (and paths that
contain ``::``) stay whole. Types map to the v1 body that replaced them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Final

from sleap_rtc.capture import format as fmt
from sleap_rtc.capture.read.mcapio import CaptureError, Problem

_LEGACY_RE = re.compile(rb"^[A-Z][A-Z0-9_]{1,63}(?:::|$)")
#: Legacy frame types and the v1 body that replaced each.
LEGACY_TO_V1: Final[dict[str, str]] = {
    "JOB_SUBMIT": "job_submit",
    "JOB_ACCEPTED": "job_accepted",
    "JOB_REJECTED": "job_rejected",
    "JOB_PROGRESS": "job_progress",
    "PROGRESS_REPORT": "job_progress",
    "JOB_COMPLETE": "job_complete",
    "JOB_FAILED": "job_failed",
    "JOB_STOP": "job_control",
    "JOB_CANCEL": "job_control",
    "USE_WORKER_PATH": "path_check_request",
    "WORKER_PATH_OK": "path_check_result",
    "WORKER_PATH_ERROR": "path_check_result",
    "FS_CHECK_VIDEOS_RESPONSE": "path_check_result",
}
#: Legacy types the client sends; every other type is sent by the worker.
LEGACY_FROM_CLIENT: Final = frozenset({"JOB_SUBMIT", "JOB_STOP", "JOB_CANCEL", "USE_WORKER_PATH"})
#: How many ``::`` separated arguments precede the (whole, unsplit) last one.
_LEGACY_LEADING_ARGS: Final = {"JOB_SUBMIT": 1, "JOB_REJECTED": 1}


def looks_legacy(frame: bytes) -> bool:
    """True when ``frame`` reads as a legacy ``TYPE::...`` text frame.

    A bare upper-case word is a frame only when it is a known legacy type
    (``JOB_STOP``); ``DONE`` or ``OK`` on a line of their own are log lines.
    """
    match = _LEGACY_RE.match(frame)
    if match is None:
        return False
    if match.group().endswith(b"::"):
        return True
    return frame.rstrip(b"\r\n ").decode("ascii", "replace") in LEGACY_TO_V1


def legacy_split(text: str) -> tuple[str, list[str]]:
    """Split a legacy frame into its type and arguments, safely.

    The last argument is kept whole (``maxsplit``), so a JSON payload or a path
    that itself contains ``::`` is never cut.

    >>> legacy_split('USE_WORKER_PATH::/data/a::b.slp')
    ('USE_WORKER_PATH', ['/data/a::b.slp'])
    >>> legacy_split('JOB_SUBMIT::j1::{"a": "x::y"}')
    ('JOB_SUBMIT', ['j1', '{"a": "x::y"}'])
    """
    kind, sep, rest = text.partition("::")
    if not sep:
        return kind, []
    leading = _LEGACY_LEADING_ARGS.get(kind, 0)
    return kind, rest.split("::", leading) if leading else [rest]


_DIRECTION_WORDS = {
    "client_to_worker": fmt.CLIENT_TO_WORKER,
    "c2w": fmt.CLIENT_TO_WORKER,
    "c->w": fmt.CLIENT_TO_WORKER,
    "client->worker": fmt.CLIENT_TO_WORKER,
    ">": fmt.CLIENT_TO_WORKER,
    "->": fmt.CLIENT_TO_WORKER,
    "worker_to_client": fmt.WORKER_TO_CLIENT,
    "w2c": fmt.WORKER_TO_CLIENT,
    "w->c": fmt.WORKER_TO_CLIENT,
    "worker->client": fmt.WORKER_TO_CLIENT,
    "<": fmt.WORKER_TO_CLIENT,
    "<-": fmt.WORKER_TO_CLIENT,
}


def _maybe_json(text: str) -> Any:
    stripped = text.strip()
    if stripped[:1] in ("{", "[") or stripped in ("null", "true", "false"):
        try:
            return json.loads(stripped)
        except ValueError:
            return text
    return text


def parse_frame(text: str) -> dict[str, Any]:
    """One legacy frame as ``{type, body, job_id, message}``.

    ``body`` is the v1 body name for the type, or the legacy type itself where
    v1 has none. ``message`` holds the arguments, with JSON ones parsed.
    """
    kind, args = legacy_split(text)
    body = LEGACY_TO_V1.get(kind, kind)
    message: dict[str, Any] = {"legacy_type": kind}
    job_id: str | None = None
    if kind == "JOB_SUBMIT" and len(args) == 2:
        job_id = args[0]
        message["client_job_id"] = args[0]
        message["spec"] = _maybe_json(args[1])
    elif kind == "JOB_REJECTED" and len(args) == 2:
        job_id = args[0]
        message["client_job_id"] = args[0]
        message["payload"] = _maybe_json(args[1])
    elif kind == "JOB_ACCEPTED" and args:
        job_id = args[0]
        message["job_id"] = args[0]
    elif kind in ("USE_WORKER_PATH", "WORKER_PATH_OK") and args:
        message["path"] = args[0]
    elif kind == "WORKER_PATH_ERROR" and args:
        message["reason"] = args[0]
    elif args:
        message["payload"] = (
            _maybe_json(args[0]) if len(args) == 1 else [_maybe_json(a) for a in args]
        )
    payload = message.get("payload")
    if job_id is None and isinstance(payload, dict):
        for key in ("job_id", "client_job_id"):
            if isinstance(payload.get(key), str):
                job_id = payload[key]
                break
    return {"type": kind, "body": body, "job_id": job_id, "message": message}


def default_direction(legacy_type: str) -> str:
    """Who sends a legacy frame type (the client sends few; the worker the rest)."""
    return fmt.CLIENT_TO_WORKER if legacy_type in LEGACY_FROM_CLIENT else fmt.WORKER_TO_CLIENT


def _parse_time(token: str) -> int | None:
    text = token.strip()
    if not text or not text[0].isdigit() or "-" not in text:
        return None
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp()) * 10**9 + moment.microsecond * 1000


#: Python logging's default time and ``name - LEVEL - `` prefix:
#: ``2026-01-02 03:04:05,612 - sleap_rtc.worker - INFO - JOB_ACCEPTED::j1``.
_LOGGING_LINE = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})[ T](?P<time>\d{2}:\d{2}:\d{2})(?:[,.](?P<frac>\d{1,9}))?"
    r"(?P<zone>Z|[+-]\d{2}:?\d{2})?"
    r"(?: - [^ ]+ - (?:DEBUG|INFO|WARNING|ERROR|CRITICAL) -)? (?P<rest>.*)$"
)


def _logging_time(line: str) -> tuple[int, str] | None:
    """(ns, the rest) of a line that starts with a ``date time`` stamp (logging's format)."""
    m = _LOGGING_LINE.match(line)
    if m is None:
        return None
    frac = (m.group("frac") or "0").ljust(9, "0")
    zone = m.group("zone") or "+00:00"
    stamp = _parse_time(f"{m.group('date')}T{m.group('time')}{'' if zone == 'Z' else zone}")
    if stamp is None:
        return None
    return stamp + int(frac), m.group("rest")


def split_line(line: str) -> tuple[int, str, str]:
    """Split ``<time> <direction> <frame>`` (both prefixes optional).

    The time is ISO 8601 (``2026-01-02T03:04:05.5Z``) or Python logging's
    ``2026-01-02 03:04:05,612``, optionally followed by logging's
    ``- name - LEVEL -``. Returns (ns or 0, direction or "", frame).
    """
    t = 0
    logged = _logging_time(line)
    if logged is not None and logged[1]:
        t, line = logged
        head, _, rest = line.partition(" ")
    else:
        head, _, rest = line.partition(" ")
        stamp = _parse_time(head)
        if stamp is not None and rest:
            t, line = stamp, rest
            head, _, rest = line.partition(" ")
    if head.lower() in _DIRECTION_WORDS and rest:
        return t, _DIRECTION_WORDS[head.lower()], rest
    return t, "", line


def read_text_capture(
    path: str | os.PathLike[str], problems: list[Problem] | None = None
) -> Iterator[dict[str, Any]]:
    """The frames of a plain-text legacy capture, as keyword dicts for a reader ``Record``.

    Raises:
        CaptureError: the file cannot be opened or is not text.
    """
    name = os.fspath(path)
    try:
        f = open(name, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise CaptureError(f"cannot open {name}: {exc.strerror or exc}") from None
    with f:
        head = f.read(4096)
        if b"\x00" in head:
            raise CaptureError(f"{name} is neither an MCAP file nor a text capture (binary data)")
        f.seek(0)
        offset = 0
        for number, raw_line in enumerate(f, 1):
            line_offset = offset
            offset += len(raw_line)
            line = raw_line.decode("utf-8", "replace").rstrip("\r\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            t, direction, frame = split_line(line)
            size = len(frame.encode("utf-8"))
            if looks_legacy(frame.encode("utf-8")):
                parsed = parse_frame(frame)
                yield {
                    "time_ns": t,
                    "direction": direction or default_direction(parsed["type"]),
                    "kind": "legacy",
                    "body": parsed["body"],
                    "job_id": parsed["job_id"],
                    "legacy_type": parsed["type"],
                    "size": size,
                    "message": parsed["message"],
                    "raw": frame.encode("utf-8"),
                    "source": f"{name}:{number}",
                }
            else:
                if problems is not None and len(problems) < 1000:
                    problems.append(
                        Problem(name, line_offset, f"line {number} is not a legacy frame")
                    )
                yield {
                    "time_ns": t,
                    "direction": direction,
                    "kind": "raw",
                    "body": "raw",
                    "size": size,
                    "reason": "not a legacy TYPE::... frame (a log line?)",
                    "raw": frame.encode("utf-8"),
                    "source": f"{name}:{number}",
                }
