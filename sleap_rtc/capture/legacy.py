"""The legacy ``TYPE::arg::json`` text frames: parse them, and read plain-text captures.

A plain-text capture has one frame per line, optionally prefixed by an ISO
time and a direction: ``2026-01-02T03:04:05.123Z client_to_worker JOB_SUBMIT::j1::{...}``.
Blank lines and lines starting with ``#`` are skipped. Frames are split on
``::`` with a fixed number of splits per type, so payload JSON (and paths that
contain ``::``) stay whole. Types map to the v1 body that replaced them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from sleap_rtc.capture import format as fmt
from sleap_rtc.capture.mcapio import CaptureError, Problem

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
    kind, args = fmt.legacy_split(text)
    body = fmt.LEGACY_TO_V1.get(kind, kind)
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
    return fmt.CLIENT_TO_WORKER if legacy_type in fmt.LEGACY_FROM_CLIENT else fmt.WORKER_TO_CLIENT


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


def is_text_capture(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` looks like a text file (no NUL bytes in its first 4 KiB)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return b"\x00" not in head


def split_line(line: str) -> tuple[int, str, str]:
    """Split ``<time> <direction> <frame>`` (both prefixes optional).

    Returns (ns or 0, direction or "", frame).
    """
    t = 0
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
            if fmt.looks_legacy(frame.encode("utf-8")):
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
