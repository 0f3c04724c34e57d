"""What the timeline prints under each arrow: the key payload of one message.

:func:`payload` turns a decoded body (the JSON-ready dict ``Record.message()``
returns: json_format's shape, enum values by name) into one short line, and
says whether the message reports a problem (an error, a failure, a missing
path). :func:`progress_facts` reads the few progress fields a collapsed run
summarises, from the decoded Envelope when there is one (fast) or the dict.
Both are pure and never raise on odd input: a field of the wrong type is
skipped, so a damaged or newer message still gets a line.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from typing import Any

ERR = "err"
WARN = "warn"
#: The longest payload line (characters); longer ones end in "…".
MAX_PAYLOAD = 96
#: Path statuses that count as found.
_FOUND = frozenset({"found", "embedded"})


def short(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ending in "…" when cut."""
    return text if len(text) <= limit else text[: max(1, limit - 1)] + "…"


def short_id(job: str, limit: int = 16) -> str:
    """A long job id cut for a label (the hover shows it whole)."""
    return short(job, limit)


def enum_name(value: Any, prefix: str) -> str:
    """``PATH_STATUS_FOUND`` -> ``found``; unknown numbers stay numbers."""
    text = str(value)
    if text.startswith(prefix):
        text = text[len(prefix) :]
    return text.lower()


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def fmt_num(value: float) -> str:
    """A metric for a label: 4 significant digits."""
    return f"{value:.4g}"


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _version(value: Any) -> str:
    v = _dict(value)
    return f"{v.get('major', 0)}.{v.get('minor', 0)}"


def losses(metrics: dict[str, Any]) -> tuple[float | None, float | None]:
    """(loss, val_loss) from a metrics dict: sleap-nn's names and the legacy ones."""
    loss = _num(metrics.get("loss", metrics.get("train/loss", metrics.get("train_loss"))))
    val = _num(metrics.get("val/loss", metrics.get("val_loss")))
    return loss, val


def _hello(m: dict[str, Any]) -> tuple[str, str]:
    parts = [str(m.get("software", "")), str(m.get("client_name", ""))]
    parts.append(f"speaks {_version(m.get('min_version'))}..{_version(m.get('max_version'))}")
    features = _list(m.get("features"))
    if features:
        parts.append(f"features {','.join(str(f) for f in features)}")
    return " · ".join(p for p in parts if p), ""


def _hello_ack(m: dict[str, Any]) -> tuple[str, str]:
    parts = [f"worker {m['worker_id']}" if m.get("worker_id") else ""]
    parts.append(f"chose {_version(m.get('chosen_version'))}")
    if m.get("subject"):
        parts.append(f"user {m['subject']}")
    parts.append(str(m.get("software", "")))
    nn = _dict(m.get("components")).get("sleap-nn")
    if nn:
        parts.append(f"sleap-nn {nn}")
    return " · ".join(p for p in parts if p), ""


def _error(m: dict[str, Any]) -> tuple[str, str]:
    code = enum_name(m.get("code", "unspecified"), "ERROR_CODE_").upper()
    text = f"{code}: {m.get('message', '')}"
    if m.get("retryable"):
        text += " (retryable)"
    return text, ERR


def _path_check_request(m: dict[str, Any]) -> tuple[str, str]:
    text = f"labels {posixpath.basename(str(m.get('labels_path', '')))}"
    maps = len(_dict(m.get("path_mappings"))) + len(_dict(m.get("prefix_mappings")))
    if maps:
        text += f" · {maps} mapping{'s' if maps != 1 else ''}"
    files = len(_list(m.get("client_files")))
    if files:
        text += f" · {files} file facts"
    return text, ""


def _path_check_result(m: dict[str, Any]) -> tuple[str, str]:
    labels = enum_name(_dict(m.get("labels")).get("status", "unspecified"), "PATH_STATUS_")
    statuses = [
        enum_name(_dict(v).get("status", "unspecified"), "PATH_STATUS_")
        for v in _list(m.get("videos"))
    ]
    found = sum(1 for s in statuses if s in _FOUND)
    missing = len(statuses) - found
    text = f"labels {labels} · videos {found} found, {missing} missing"
    if missing:
        kinds: dict[str, int] = {}
        for s in statuses:
            if s not in _FOUND:
                kinds[s] = kinds.get(s, 0) + 1
        text += " (" + ", ".join(f"{n} {s}" for s, n in sorted(kinds.items())) + ")"
    suggestions = sum(len(_list(_dict(v).get("suggestions"))) for v in _list(m.get("videos")))
    if suggestions:
        text += f" · {suggestions} suggestion{'s' if suggestions != 1 else ''}"
    if m.get("check_token"):
        text += " · check token"
    refused = len(_list(m.get("refused_mappings")))
    if refused:
        text += f" · {refused} mappings refused"
    return text, WARN if missing or labels not in _FOUND or refused else ""


def _job_submit(m: dict[str, Any]) -> tuple[str, str]:
    spec = _dict(m.get("spec"))
    parts = [f"labels {posixpath.basename(str(spec.get('labels_path', '')))}"]
    if spec.get("max_epochs"):
        parts.append(f"{spec['max_epochs']} epochs")
    if m.get("check_token"):
        parts.append("check token")
    return " · ".join(parts), ""


def _job_accepted(m: dict[str, Any]) -> tuple[str, str]:
    text = "accepted"
    if m.get("duplicate"):
        text += " (duplicate: already running)"
    if m.get("run_dir"):
        text += f" · run {posixpath.basename(str(m['run_dir']))}"
    warnings = _list(m.get("warnings"))
    if warnings:
        text += f" · {len(warnings)} warning(s): {warnings[0]}"
    return text, ""


def _job_rejected(m: dict[str, Any]) -> tuple[str, str]:
    violations = [_dict(v) for v in _list(m.get("violations"))]
    text = f"REJECTED: {m.get('message', '')}".rstrip(": ")
    if violations:
        first = violations[0]
        code = enum_name(first.get("code", ""), "VIOLATION_CODE_")
        text += f" · {len(violations)} violation(s): {first.get('field', '')} {code}"
        if first.get("message"):
            text += f" ({first['message']})"
    return text, ERR


def _job_progress(m: dict[str, Any]) -> tuple[str, str]:
    parts = [enum_name(m.get("event", "?"), "PROGRESS_EVENT_")]
    if m.get("sequence") is not None:
        parts.append(f"seq {m['sequence']}")
    if m.get("epoch") is not None:
        parts.append(f"epoch {m['epoch']}")
    if m.get("batch") is not None:
        parts.append(f"batch {m['batch']}")
    loss, val = losses(_dict(m.get("metrics", m.get("logs"))))
    if loss is not None:
        parts.append(f"loss {fmt_num(loss)}")
    if val is not None:
        parts.append(f"val_loss {fmt_num(val)}")
    if m.get("what"):
        parts.append(str(m["what"]))
    return " · ".join(parts), ""


def _batch(m: dict[str, Any]) -> tuple[str, str]:
    items = [_dict(i) for i in _list(m.get("items"))]
    stats = ProgressStats()
    for item in items:
        loss, val = losses(_dict(item.get("metrics")))
        epoch = item.get("epoch")
        stats.add(
            enum_name(item.get("event", "?"), "PROGRESS_EVENT_"),
            int(epoch) if isinstance(epoch, int) else None,
            loss,
            val,
        )
    return " · ".join([f"{len(items)} items", *stats.describe()]), ""


def _job_log(m: dict[str, Any]) -> tuple[str, str]:
    lines = [str(x) for x in _list(m.get("lines"))]
    stream = enum_name(m["stream"], "LOG_STREAM_") + " " if m.get("stream") else ""
    last = lines[-1].strip() if lines else ""
    return f"{stream}{len(lines)} line{'s' if len(lines) != 1 else ''}: {last}", ""


def _job_complete(m: dict[str, Any]) -> tuple[str, str]:
    parts = ["COMPLETE"]
    duration = _num(m.get("duration_seconds"))
    if duration is not None:
        parts.append(f"in {duration:.1f} s")
    outputs = _list(m.get("outputs"))
    parts.append(f"{len(outputs)} outputs")
    if m.get("stopped_early"):
        parts.append("stopped early")
    return " · ".join(parts), ""


def _job_failed(m: dict[str, Any]) -> tuple[str, str]:
    code = enum_name(m.get("code", "unspecified"), "FAILURE_CODE_").upper()
    text = f"FAILED {code}"
    if m.get("exit_code") is not None:
        text += f" (exit {m['exit_code']})"
    if m.get("message"):
        text += f": {m['message']}"
    return text, ERR


def _job_control(m: dict[str, Any]) -> tuple[str, str]:
    return enum_name(m.get("action", "?"), "CONTROL_ACTION_"), ""


def _job_attach(m: dict[str, Any]) -> tuple[str, str]:
    return f"after seq {m.get('after_sequence', 0)}", ""


def _job_status(m: dict[str, Any]) -> tuple[str, str]:
    state = enum_name(m.get("state", "unspecified"), "JOB_STATE_")
    text = f"state {state}"
    if m.get("last_sequence") is not None:
        text += f" · seq {m['last_sequence']}"
    if m.get("message"):
        text += f" · {m['message']}"
    return text, ERR if state == "failed" else ""


def _directory_list_request(m: dict[str, Any]) -> tuple[str, str]:
    return str(m.get("path", "")) or "/", ""


def _directory_list(m: dict[str, Any]) -> tuple[str, str]:
    entries = len(_list(m.get("entries")))
    text = f"{m.get('path', '')}: {entries} entries"
    if m.get("total"):
        text += f" of {m['total']}"
    if m.get("next_page_token"):
        text += " · more"
    return text, ""


def _fragment(m: dict[str, Any]) -> tuple[str, str]:
    index = m.get("index", 0)
    return (
        f"piece {int(index) + 1 if isinstance(index, int) else index}/{m.get('count', '?')}"
        f" of #{m.get('fragmented_message_id', '?')}",
        "",
    )


_SUMMARIES: dict[str, Callable[[dict[str, Any]], tuple[str, str]]] = {
    "hello": _hello,
    "hello_ack": _hello_ack,
    "error": _error,
    "path_check_request": _path_check_request,
    "path_check_result": _path_check_result,
    "job_submit": _job_submit,
    "job_accepted": _job_accepted,
    "job_rejected": _job_rejected,
    "job_progress": _job_progress,
    "job_progress_batch": _batch,
    "job_log": _job_log,
    "job_complete": _job_complete,
    "job_failed": _job_failed,
    "job_control": _job_control,
    "job_attach": _job_attach,
    "job_status": _job_status,
    "directory_list_request": _directory_list_request,
    "directory_list": _directory_list,
    "fragment": _fragment,
}

#: Bodies that report a problem whatever their payload says.
PROBLEM_BODIES = frozenset({"error", "job_failed", "job_rejected"})


def payload(body: str, message: dict[str, Any] | None) -> tuple[str, str]:
    """The key payload of one message as a line, and its level ("err", "warn" or "")."""
    if message is None:
        return "", ERR if body in PROBLEM_BODIES else ""
    if "legacy_type" in message:  # a legacy TYPE::json frame: its JSON is under "payload"
        inner = message.get("payload")
        if not isinstance(inner, dict):
            return short(str(inner or ""), MAX_PAYLOAD), ERR if body in PROBLEM_BODIES else ""
        message = inner
    summary = _SUMMARIES.get(body)
    if summary is None:
        unknown = _list(message.get("@unknown"))
        return (f"{len(unknown)} field(s) this schema does not name" if unknown else ""), ""
    try:
        text, level = summary(message)
    except (TypeError, ValueError, KeyError, AttributeError):  # odd shapes: still a line
        text, level = "", ERR if body in PROBLEM_BODIES else ""
    return short(text, MAX_PAYLOAD), level


class ProgressStats:
    """What a run of progress messages did: epochs, the loss range, the events seen."""

    __slots__ = ("epochs", "events", "loss", "loss_first", "loss_last", "val")

    def __init__(self) -> None:
        self.epochs: tuple[int, int] | None = None
        self.loss: tuple[float, float] | None = None
        self.loss_first: float | None = None
        self.loss_last: float | None = None
        self.val: tuple[float, float] | None = None
        self.events: dict[str, int] = {}

    def add(self, event: str, epoch: int | None, loss: float | None, val: float | None) -> None:
        self.events[event] = self.events.get(event, 0) + 1
        if epoch is not None:
            lo, hi = self.epochs or (epoch, epoch)
            self.epochs = (min(lo, epoch), max(hi, epoch))
        if loss is not None:
            lo_f, hi_f = self.loss or (loss, loss)
            self.loss = (min(lo_f, loss), max(hi_f, loss))
            if self.loss_first is None:
                self.loss_first = loss
            self.loss_last = loss
        if val is not None:
            lo_f, hi_f = self.val or (val, val)
            self.val = (min(lo_f, val), max(hi_f, val))

    def describe(self) -> list[str]:
        out: list[str] = []
        if self.epochs is not None:
            lo, hi = self.epochs
            out.append(f"epoch {lo}" if lo == hi else f"epochs {lo}–{hi}")
        if self.loss is not None and self.loss_first is not None and self.loss_last is not None:
            lo_f, hi_f = self.loss
            text = f"loss {fmt_num(self.loss_first)} → {fmt_num(self.loss_last)}"
            if {lo_f, hi_f} != {self.loss_first, self.loss_last}:
                text += f" (min {fmt_num(lo_f)}, max {fmt_num(hi_f)})"
            out.append(text)
        if self.val is not None:
            lo_f, hi_f = self.val
            out.append(
                f"val_loss {fmt_num(lo_f)}"
                if lo_f == hi_f
                else f"val_loss {fmt_num(lo_f)}–{fmt_num(hi_f)}"
            )
        notable = {k: n for k, n in self.events.items() if k not in ("batch_start", "batch_end")}
        if notable:
            out.append(", ".join(f"{n} {k}" for k, n in sorted(notable.items())))
        return out


_EVENT_NAMES: dict[Any, dict[int, str]] = {}

Fact = tuple[str, int | None, float | None, float | None]


def _event_names(descriptor: Any) -> dict[int, str]:
    """Event number -> short name for a JobProgress descriptor (cached per schema)."""
    names = _EVENT_NAMES.get(descriptor)
    if names is None:
        if len(_EVENT_NAMES) > 64:
            _EVENT_NAMES.clear()
        values = descriptor.fields_by_name["event"].enum_type.values
        names = _EVENT_NAMES[descriptor] = {
            v.number: enum_name(v.name, "PROGRESS_EVENT_") for v in values
        }
    return names


def _facts_of_envelope(body: str, envelope: Any) -> list[Fact]:
    inner = getattr(envelope, body)
    items = inner.items if body == "job_progress_batch" else (inner,)
    out: list[Fact] = []
    for item in items:
        loss, val = losses(dict(item.metrics))
        event = item.event
        out.append(
            (
                _event_names(item.DESCRIPTOR).get(event) or str(event),
                item.epoch if item.HasField("epoch") else None,
                loss,
                val,
            )
        )
    return out


def progress_facts(
    body: str, envelope: Any, message: Callable[[], dict[str, Any] | None]
) -> list[Fact]:
    """(event, epoch, loss, val_loss) of a JobProgress or of each item of a batch.

    Reads the decoded Envelope when given (no dict is built), else ``message()``.
    """
    if envelope is not None:
        try:
            return _facts_of_envelope(body, envelope)
        except (AttributeError, KeyError, ValueError, TypeError):
            pass  # a schema without these fields: read the dict instead
    m = message() or {}
    if "legacy_type" in m:
        m = _dict(m.get("payload"))
    entries = _list(m.get("items")) if body == "job_progress_batch" else [m]
    out: list[Fact] = []
    for entry in entries:
        d = _dict(entry)
        epoch = d.get("epoch")
        loss, val = losses(_dict(d.get("metrics", d.get("logs"))))
        out.append(
            (
                enum_name(d.get("event", "?"), "PROGRESS_EVENT_"),
                epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None,
                loss,
                val,
            )
        )
    return out


def log_lines(envelope: Any, message: Callable[[], dict[str, Any] | None]) -> int:
    """How many output lines a JobLog carries."""
    if envelope is not None:
        try:
            return len(envelope.job_log.lines)
        except AttributeError:
            pass
    return len(_list((message() or {}).get("lines")))
