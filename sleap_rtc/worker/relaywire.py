"""The Slurm relay's contract (sans-IO): its files and its wire messages.

A Slurm batch job runs :mod:`.relay` beside the trainer on the compute node. The
worker writes a :class:`RelaySpec` into the job's relay folder (``relay.json``,
0600, in a 0700 folder); the relay claims ``started`` (exactly once), reads the
spec, drops the secret key from disk (:func:`forget_secret`) once its socket has
it, runs the trainer, writes ``result.json`` and exits with the trainer's status.

Relay -> worker: :class:`Hello`, :class:`Progress`, :class:`Log`, :class:`Result`;
worker -> relay: :class:`Command`. A message is three frames,
``[b"sleap-rtc-relay/1", kind, JSON payload]`` (:func:`encode` / :func:`decode`);
bad frames raise :class:`RelayWireError` naming what is wrong. Progress, Log and
Result carry the relay's sequence (1, 2, ...; :mod:`.relayqueue` numbers,
resends and deduplicates them).

>>> msg = Log("job-1", 1, 1, ("hello",))
>>> frames = encode(msg)
>>> frames[:2]
[b'sleap-rtc-relay/1', b'log']
>>> decode(frames) == msg
True
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sleap_rtc.worker.jobrecord import RunResult
from sleap_rtc.worker.jobstore import plan_from_json, plan_to_json
from sleap_rtc.worker.trainer import RunLimits
from sleap_rtc.worker.trainplan import TrainPlan
from sleap_rtc.worker.zmqprogress import ProgressUpdate
from sleap_rtc_proto.v1 import progress_pb2

SPEC_FILE = "relay.json"
RESULT_FILE = "result.json"
STARTED_FILE = "started"
#: Written by the worker into a relay folder whose batch job must never run (its
#: submission was given up): a relay that finds it runs nothing.
ABANDONED_FILE = "abandoned"
#: The batch job's environment variable that may carry the client's secret key instead
#: of the spec (the spec's ``client_secret`` is then ""); the relay removes it from its
#: environment, and the trainer's environment is scrubbed anyway.
SECRET_ENV = "SLEAP_RTC_RELAY_SECRET"
#: First frame of every relay message (the wire's name and version).
PROTOCOL = b"sleap-rtc-relay/1"
#: Largest payload frame accepted (bytes).
MAX_FRAME = 1 << 20
#: Longest output line, and most lines, in one Log.
MAX_LINE_CHARS = 65_536
MAX_LINES = 10_000
#: Most metrics in one Progress; longest metric name; longest job id or text field.
MAX_METRICS = 1_000
MAX_NAME_CHARS = 256
MAX_TEXT_CHARS = 65_536
ACTIONS = ("stop", "cancel", "ack", "resend")
MODES = ("auto", "require", "off")
_SEQ_MAX = 2**63 - 1


class RelayWireError(ValueError):
    """A relay message that cannot be decoded; the text names what is wrong."""


class RelaySpecError(ValueError):
    """A relay or result file that is missing or cannot be read; names the file and field."""


# --- the files -------------------------------------------------------------------


@dataclass(frozen=True)
class RelaySpec:
    """What one relay runs, written by the worker into the job's relay folder.

    Attributes:
        job_id: the job this relay speaks for.
        endpoint: ``tcp://host:port`` of the worker's hub.
        server_key: the hub's CURVE public key (z85).
        client_public, client_secret: this job's CURVE key pair (z85); the
            secret is "" once the relay took it (:func:`forget_secret`).
        trainer_command: the trainer command prefix (``sleap-nn train``).
        plan: the run; ``config_file`` lies in the relay folder.
        confinement: ``auto`` | ``require`` | ``off`` (:class:`~.launcher.Mode`).
        mounts: the mount roots (read-only for the trainer).
        allow_reporting: the operator allows reporting services (wandb).
        trainer_env: the operator's trainer environment.
        limits: the run's limits (:class:`~.trainer.RunLimits`).
        result_wait_s: how long the relay waits for the worker to acknowledge the
            result before it exits (the result file stays either way).
    """

    job_id: str
    endpoint: str
    server_key: str
    client_public: str
    client_secret: str
    trainer_command: tuple[str, ...]
    plan: TrainPlan
    confinement: str
    mounts: tuple[str, ...]
    allow_reporting: bool = False
    trainer_env: Mapping[str, str] = field(default_factory=dict)
    limits: RunLimits = field(default_factory=RunLimits)
    result_wait_s: float = 30.0


def _write_private(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (a 0600 temp file beside it, then rename)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def spec_to_json(spec: RelaySpec) -> str:
    data = {
        "job_id": spec.job_id,
        "endpoint": spec.endpoint,
        "server_key": spec.server_key,
        "client_public": spec.client_public,
        "client_secret": spec.client_secret,
        "trainer_command": list(spec.trainer_command),
        "plan": json.loads(plan_to_json(spec.plan)),
        "confinement": spec.confinement,
        "mounts": list(spec.mounts),
        "allow_reporting": spec.allow_reporting,
        "trainer_env": dict(spec.trainer_env),
        "limits": dataclasses.asdict(spec.limits),
        "result_wait_s": spec.result_wait_s,
    }
    return json.dumps(data, indent=1, sort_keys=True)


def _need(data: Mapping[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    if name not in data:
        raise RelaySpecError(f"{where}: field {name!r} is missing")
    value = data[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
        raise RelaySpecError(f"{where}: field {name!r} has the wrong type ({type(value).__name__})")
    return value


def _strings(value: Any, name: str, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RelaySpecError(f"{where}: field {name!r} must be a list of strings")
    return tuple(value)


def _limits(value: Any, where: str) -> RunLimits:
    if not isinstance(value, dict):
        raise RelaySpecError(f"{where}: field 'limits' must be an object")
    known = {f.name: f for f in dataclasses.fields(RunLimits)}
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key not in known:
            raise RelaySpecError(f"{where}: field 'limits.{key}' is unknown")
        optional = key in ("no_progress_timeout_s", "max_run_s")
        number = isinstance(item, int | float) and not isinstance(item, bool)
        if not (number or (optional and item is None)):
            raise RelaySpecError(f"{where}: field 'limits.{key}' must be a number")
        if number and not (math.isfinite(item) and item >= 0):
            raise RelaySpecError(f"{where}: field 'limits.{key}' must be finite and >= 0")
        out[key] = int(item) if key.endswith(("_lines", "_chars")) and number else item
    return RunLimits(**out)


def spec_from_json(text: str, where: str = SPEC_FILE) -> RelaySpec:
    """Parse a spec; raises :class:`RelaySpecError` naming the bad field."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise RelaySpecError(f"{where} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RelaySpecError(f"{where} must hold a JSON object")
    plan_data = _need(data, "plan", dict, where)
    try:
        plan = plan_from_json(json.dumps(plan_data))
    except (KeyError, TypeError, ValueError) as exc:
        raise RelaySpecError(f"{where}: field 'plan' is not a run plan: {exc!r}") from None
    mode = _need(data, "confinement", str, where)
    if mode not in MODES:
        raise RelaySpecError(f"{where}: field 'confinement' must be one of {', '.join(MODES)}")
    endpoint = _need(data, "endpoint", str, where)
    if not endpoint.startswith("tcp://"):
        raise RelaySpecError(f"{where}: field 'endpoint' must be tcp://host:port")
    env = data.get("trainer_env", {})
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise RelaySpecError(f"{where}: field 'trainer_env' must map strings to strings")
    command = _strings(_need(data, "trainer_command", list, where), "trainer_command", where)
    if not command:
        raise RelaySpecError(f"{where}: field 'trainer_command' is empty")
    keys = {}
    for name in ("server_key", "client_public", "client_secret"):
        keys[name] = (
            _need(data, name, str, where) if name != "client_secret" else (data.get(name) or "")
        )
        empty_ok = name == "client_secret"  # "" once the relay took it
        if not isinstance(keys[name], str) or (
            len(keys[name]) != 40 and not (empty_ok and not keys[name])
        ):
            raise RelaySpecError(f"{where}: field {name!r} is not a z85 CURVE key (40 chars)")
    wait = data.get("result_wait_s", 30.0)
    if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait < 1e6:
        raise RelaySpecError(f"{where}: field 'result_wait_s' must be a number of seconds")
    reporting = data.get("allow_reporting", False)
    if not isinstance(reporting, bool):
        raise RelaySpecError(f"{where}: field 'allow_reporting' must be true or false")
    job_id = _need(data, "job_id", str, where)
    if not job_id:
        raise RelaySpecError(f"{where}: field 'job_id' is empty")
    return RelaySpec(
        job_id=job_id,
        endpoint=endpoint,
        server_key=keys["server_key"],
        client_public=keys["client_public"],
        client_secret=keys["client_secret"],
        trainer_command=command,
        plan=plan,
        confinement=mode,
        mounts=_strings(data.get("mounts", []), "mounts", where),
        allow_reporting=reporting,
        trainer_env=dict(env),
        limits=_limits(data.get("limits", {}), where),
        result_wait_s=float(wait),
    )


def write_spec(folder: Path, spec: RelaySpec) -> Path:
    """Write ``relay.json`` (0600) into ``folder`` (made 0700), atomically."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    return _write_private(folder / SPEC_FILE, spec_to_json(spec))


def read_spec(folder: Path) -> RelaySpec:
    path = folder / SPEC_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RelaySpecError(
            f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    return spec_from_json(text, str(path))


def forget_secret(folder: Path) -> None:
    """Rewrite the spec without the client's secret key (atomic: the old file's
    blocks are no longer reachable through the folder)."""
    spec = read_spec(folder)
    write_spec(folder, dataclasses.replace(spec, client_secret=""))


def result_to_json(result: RunResult) -> dict[str, Any]:
    """The relay's part of a result (the worker adds the scheduler's view itself)."""
    return {
        "completed": result.completed,
        "failure_code": result.failure_code,
        "exit_code": result.exit_code,
        "message": result.message,
        "stopped_early": result.stopped_early,
        "duration_s": result.duration_s,
        "log_tail": list(result.log_tail),
        "outputs": list(result.outputs),
    }


def result_from_json(data: Any, where: str) -> RunResult:
    """A RunResult from its JSON object; raises :class:`RelaySpecError` naming the field."""
    if not isinstance(data, dict):
        raise RelaySpecError(f"{where}: the result must be an object")
    completed = _need(data, "completed", bool, where)
    code = data.get("failure_code", 0)
    exit_code = data.get("exit_code")
    if isinstance(code, bool) or not isinstance(code, int):
        raise RelaySpecError(f"{where}: field 'failure_code' must be an integer")
    if exit_code is not None and (isinstance(exit_code, bool) or not isinstance(exit_code, int)):
        raise RelaySpecError(f"{where}: field 'exit_code' must be an integer or null")
    message = data.get("message", "")
    if not isinstance(message, str) or len(message) > MAX_TEXT_CHARS:
        raise RelaySpecError(f"{where}: field 'message' must be a string")
    stopped = data.get("stopped_early", False)
    if not isinstance(stopped, bool):
        raise RelaySpecError(f"{where}: field 'stopped_early' must be true or false")
    duration = data.get("duration_s", 0.0)
    if isinstance(duration, bool) or not isinstance(duration, int | float):
        raise RelaySpecError(f"{where}: field 'duration_s' must be a number")
    tail = _strings(data.get("log_tail", []), "log_tail", where)
    outputs = _strings(data.get("outputs", []), "outputs", where)
    if len(tail) > MAX_LINES or any(len(line) > MAX_LINE_CHARS for line in tail):
        raise RelaySpecError(f"{where}: field 'log_tail' is too long")
    return RunResult(
        completed=completed,
        failure_code=code,
        exit_code=exit_code,
        message=message,
        stopped_early=stopped,
        duration_s=float(duration),
        log_tail=tail,
        outputs=outputs,
    )


def write_result(folder: Path, result: RunResult) -> Path:
    """Write ``result.json`` (0600) atomically."""
    return _write_private(folder / RESULT_FILE, json.dumps(result_to_json(result), sort_keys=True))


def read_result(folder: Path) -> RunResult | None:
    """The relay's result, or None when it wrote none; :class:`RelaySpecError` if garbled."""
    path = folder / RESULT_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise RelaySpecError(
            f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise RelaySpecError(f"{path} is not JSON: {exc}") from None
    return result_from_json(data, str(path))


# --- the wire --------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """Sent on every (re)connection and when the trainer started; not numbered and never
    deduplicated. ``assigned``: the last sequence the relay numbered so far; ``acked``:
    the last one a worker acknowledged (the relay no longer has those). ``seq`` is 0 on
    the wire; the hub delivers a Hello with ``seq`` set to the last sequence it delivered
    before it, so every delivered message's ``seq`` is the stream's position."""

    job_id: str
    node: str
    relay_pid: int
    trainer_pid: int | None = None
    assigned: int = 0
    acked: int = 0
    seq: int = 0


@dataclass(frozen=True)
class Progress:
    job_id: str
    seq: int
    update: ProgressUpdate


@dataclass(frozen=True)
class Log:
    """Output lines. ``first`` (0: the same as ``seq``) is set on the relay's note that
    stands for dropped messages: it covers sequences ``first`` .. ``seq``."""

    job_id: str
    seq: int
    stream: int
    lines: tuple[str, ...]
    first: int = 0


@dataclass(frozen=True)
class Result:
    job_id: str
    seq: int
    result: RunResult


@dataclass(frozen=True)
class Command:
    """Worker -> relay. ``stop`` / ``cancel`` the run; ``ack``: everything up to ``upto``
    was delivered; ``resend``: the same, and send everything after it again."""

    action: str
    upto: int = 0
    job_id: str = ""


RelayMessage = Hello | Progress | Log | Result
WireMessage = Hello | Progress | Log | Result | Command

_KINDS: dict[type, bytes] = {
    Hello: b"hello",
    Progress: b"progress",
    Log: b"log",
    Result: b"result",
    Command: b"command",
}


def _payload(msg: WireMessage) -> dict[str, Any]:
    if isinstance(msg, Progress):
        u = msg.update
        return {
            "job_id": msg.job_id,
            "seq": msg.seq,
            "event": u.event,
            "epoch": u.epoch,
            "batch": u.batch,
            "metrics": dict(u.metrics),
            "what": u.what,
        }
    if isinstance(msg, Result):
        return {"job_id": msg.job_id, "seq": msg.seq, "result": result_to_json(msg.result)}
    data = dataclasses.asdict(msg)
    if isinstance(msg, Log):
        data["lines"] = list(msg.lines)
    return data


def encode(msg: WireMessage) -> list[bytes]:
    """The three frames of ``msg``."""
    body = json.dumps(_payload(msg), separators=(",", ":"), ensure_ascii=False)
    return [PROTOCOL, _KINDS[type(msg)], body.encode("utf-8")]


def _int(data: Mapping[str, Any], name: str, *, optional: bool = False, low: int = 0) -> Any:
    value = data.get(name)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= _SEQ_MAX:
        raise RelayWireError(f"field {name!r} must be an integer >= {low}")
    return value


def _text(data: Mapping[str, Any], name: str, limit: int = MAX_TEXT_CHARS) -> str:
    value = data.get(name, "")
    if not isinstance(value, str) or len(value) > limit:
        raise RelayWireError(f"field {name!r} must be a string of at most {limit} characters")
    return value


def _job_id(data: Mapping[str, Any]) -> str:
    job_id = _text(data, "job_id", MAX_NAME_CHARS)
    if not job_id:
        raise RelayWireError("field 'job_id' is empty")
    return job_id


def _metrics(value: Any) -> dict[str, float]:
    if not isinstance(value, dict) or len(value) > MAX_METRICS:
        raise RelayWireError(f"field 'metrics' must be an object of at most {MAX_METRICS} entries")
    out: dict[str, float] = {}
    for key, item in value.items():
        if len(key) > MAX_NAME_CHARS:
            raise RelayWireError("a metric name is too long")
        if isinstance(item, bool) or not isinstance(item, int | float):
            raise RelayWireError(f"metric {key[:40]!r} is not a number")
        out[key] = float(item)
    return out


def decode(frames: list[bytes]) -> WireMessage:
    """The message in ``frames``; :class:`RelayWireError` names what is wrong."""
    if len(frames) != 3:
        raise RelayWireError(f"expected 3 frames, got {len(frames)}")
    proto, kind, body = (bytes(f) for f in frames)
    if proto != PROTOCOL:
        raise RelayWireError(f"not a relay message (first frame {proto[:32]!r})")
    if len(body) > MAX_FRAME:
        raise RelayWireError(f"payload of {len(body)} bytes is over the limit of {MAX_FRAME}")
    try:
        data = json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise RelayWireError(f"{kind[:16]!r} payload is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RelayWireError(f"{kind[:16]!r} payload must be a JSON object")
    if kind == b"hello":
        return Hello(
            job_id=_job_id(data),
            node=_text(data, "node", MAX_NAME_CHARS),
            relay_pid=_int(data, "relay_pid", low=1),
            trainer_pid=_int(data, "trainer_pid", optional=True, low=1),
            assigned=_int(data, "assigned"),
            acked=_int(data, "acked"),
            seq=_int(data, "seq"),
        )
    if kind == b"progress":
        event = _int(data, "event")
        if event not in progress_pb2.ProgressEvent.values() or event == 0:
            raise RelayWireError(f"field 'event' has an unknown value {event}")
        update = ProgressUpdate(
            event=event,
            epoch=_int(data, "epoch", optional=True),
            batch=_int(data, "batch", optional=True),
            metrics=_metrics(data.get("metrics", {})),
            what=_text(data, "what"),
        )
        return Progress(_job_id(data), _int(data, "seq", low=1), update)
    if kind == b"log":
        lines = data.get("lines")
        if not isinstance(lines, list) or len(lines) > MAX_LINES:
            raise RelayWireError(f"field 'lines' must be a list of at most {MAX_LINES} lines")
        if not all(isinstance(line, str) and len(line) <= MAX_LINE_CHARS for line in lines):
            raise RelayWireError(f"a line is not a string of at most {MAX_LINE_CHARS} characters")
        seq = _int(data, "seq", low=1)
        first = _int(data, "first") if "first" in data else 0
        if first > seq:
            raise RelayWireError("field 'first' is after 'seq'")
        return Log(_job_id(data), seq, _int(data, "stream"), tuple(lines), first)
    if kind == b"result":
        try:
            result = result_from_json(data.get("result"), "field 'result'")
        except RelaySpecError as exc:
            raise RelayWireError(str(exc)) from None
        return Result(_job_id(data), _int(data, "seq", low=1), result)
    if kind == b"command":
        action = data.get("action")
        if action not in ACTIONS:
            raise RelayWireError(f"field 'action' must be one of {', '.join(ACTIONS)}")
        return Command(action, _int(data, "upto"), _text(data, "job_id", MAX_NAME_CHARS))
    raise RelayWireError(f"unknown message kind {kind[:32]!r}")
