"""The presubmission flow (seed steps 1-6) as one orchestrator with injected parts.

:class:`PresubmissionFlow` builds the config in memory, checks the login,
opens **one** connection to the worker, checks paths (and re-checks the
user's mappings), submits, and follows progress, all on that connection. It
never fails open: if the worker cannot be reached nothing is submitted. Every
outcome is a frozen :class:`FlowResult` with one clear message.

Collaborators are injected, so SLEAP's dialog, the CLI and tests share it:

- ``connect``: ``async () -> Link`` (WebRTC in production, an in-memory pair in tests);
- ``auth``: an :class:`AuthCheck` (token getter, verifier, login callable);
- ``resolver``: a path-resolution callback (:mod:`sleap_rtc.client.resolve`);
- ``sinks``: progress sinks (LossViewer bridge, terminal display).

Example::

    flow = PresubmissionFlow(connect=connect, auth=auth, resolver=TerminalResolver())
    result = await flow.run(config={"trainer_config": {...}}, labels_path="/data/fly.slp")
    if result.status is FlowStatus.ERROR:
        print(result.message)
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from sleap_rtc.auth.tokens import DEFAULT_LEEWAY_S, TokenError, TokenVerifier, unverified_expiry
from sleap_rtc.client.config import ConfigError, ConfigSource, check_config_content, config_to_yaml
from sleap_rtc.client.connection import (
    ConnectionLost,
    HelloRefusedError,
    JobEvent,
    RemoteError,
    RequestTimeout,
    WorkerConnection,
)
from sleap_rtc.client.resolve import PrefixStore, ResolutionFailed, Resolver, prefixes_learned
from sleap_rtc.client.session import (
    ClientSession,
    JobCompleted,
    JobFailedEvent,
    LogReceived,
    ProgressReceived,
)
from sleap_rtc.client.views import CheckView, Resolution
from sleap_rtc.jobs.spec import TrainJobSpec
from sleap_rtc.transport.link import Link
from sleap_rtc_proto.rules import is_valid_job_id
from sleap_rtc_proto.v1 import error_pb2, job_pb2, progress_pb2

log = logging.getLogger(__name__)

#: The seed's messages, exactly.
LOGIN_REQUIRED = "Login required. Please try again."
COULD_NOT_CONNECT = "Could not connect to worker. Check that the worker is running."
CONNECTION_LOST = "Connection lost. Try again."
#: A worker that stays silent during the path check.
NO_ANSWER = "The worker did not answer in time. Try again."

T = TypeVar("T")


class FlowStatus(StrEnum):
    """How a flow ended."""

    SUCCESS = "success"
    CANCELLED = "cancelled"
    ERROR = "error"


@dataclass(frozen=True)
class ViolationView:
    """One reason the worker gave for rejecting a job, field by field."""

    field: str
    rule_id: str
    code: str
    message: str
    path: str = ""
    line: int = 0

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line else ""
        return f"{self.field}: {self.message}{where}"


@dataclass(frozen=True)
class AcceptedView:
    """The worker's JobAccepted."""

    job_id: str
    run_dir: str
    warnings: tuple[str, ...] = ()
    duplicate: bool = False


@dataclass(frozen=True)
class CompletionView:
    """The worker's JobComplete."""

    run_dir: str
    outputs: tuple[str, ...]
    duration_seconds: float
    stopped_early: bool


@dataclass(frozen=True)
class FailureView:
    """The worker's JobFailed."""

    code: str
    message: str
    exit_code: int | None
    log_tail: tuple[str, ...]
    duration_seconds: float


@dataclass(frozen=True)
class FlowResult:
    """The outcome of a presubmission flow.

    Attributes:
        status: success, cancelled (the user cancelled; show nothing) or error.
        message: one sentence for the user ("" when cancelled).
        stage: where it ended: config, auth, connect, check, resolve, submit,
            progress or done.
        job_id: the submitted job id ("" if nothing was submitted). After a
            "Connection lost" during submit, retry with ``retry_job_id=job_id``:
            the worker never starts a job id twice.
        labels_path: the labels file as the worker sees it.
        path_mappings / prefix_mappings: the mappings used (and submitted).
        check_token: the passing check's token.
        check: the last path check, for display.
        accepted / completion / failure: the worker's answers, when reached.
        violations: JobRejected's reasons, field by field.
        details: extra lines (the underlying error, a hint).
    """

    status: FlowStatus
    message: str = ""
    stage: str = ""
    job_id: str = ""
    labels_path: str = ""
    path_mappings: Mapping[str, str] = field(default_factory=dict)
    prefix_mappings: Mapping[str, str] = field(default_factory=dict)
    check_token: str = ""
    check: CheckView | None = None
    accepted: AcceptedView | None = None
    completion: CompletionView | None = None
    failure: FailureView | None = None
    violations: tuple[ViolationView, ...] = ()
    details: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status is FlowStatus.SUCCESS

    @property
    def cancelled(self) -> bool:
        return self.status is FlowStatus.CANCELLED

    @property
    def submitted(self) -> bool:
        """True when the worker accepted the job (possibly as a duplicate)."""
        return self.accepted is not None


#: The seed's name for the result of the presubmission checks.
PresubmissionResult = FlowResult


# ----------------------------------------------------------------------------- auth


class LoginRequired(Exception):
    """No usable token, and login did not produce one."""


@dataclass
class AuthCheck:
    """Step 2: a valid JWT, or the login callback.

    Args:
        get_token: the stored token, or None.
        login: runs the (browser) login; returns the new token or None. May be async.
        verifier: checks signature, expiry (with leeway), audience and issuer.
            Without one, only the expiry is checked (the worker verifies fully).
        room: the room the token must be for, when known.
        leeway_s: clock skew tolerated when no verifier is given.
        clock: wall-clock seconds (injected for tests).
    """

    get_token: Callable[[], str | None]
    login: Callable[[], str | Awaitable[str | None] | None]
    verifier: TokenVerifier | None = None
    room: str | None = None
    leeway_s: float = DEFAULT_LEEWAY_S
    clock: Callable[[], float] = time.time
    #: The token the last successful :meth:`token` call returned (for connectors).
    current: str = ""

    def _problem(self, token: str | None) -> str | None:
        if not token:
            return "no stored token"
        if self.verifier is not None:
            try:
                self.verifier.verify(token, room=self.room, now=self.clock())
            except TokenError as exc:
                return exc.message
            return None
        expiry = unverified_expiry(token)
        if expiry is None:
            return "the stored token is not a JWT with an expiry"
        if expiry + self.leeway_s <= self.clock():
            return "token has expired; log in again"
        return None

    async def token(self) -> str:
        """A usable token, logging in when needed.

        Raises:
            LoginRequired: login failed, was declined, or gave a bad token.
        """
        token = self.get_token()
        problem = self._problem(token)
        if problem is None:
            assert token is not None
            self.current = token
            return token
        log.info("login needed: %s", problem)
        try:
            fresh = await _maybe_await(self.login())
        except Exception as exc:
            raise LoginRequired(f"login failed: {exc}") from exc
        problem = self._problem(fresh)
        if problem is not None:
            raise LoginRequired(f"login did not give a usable token: {problem}")
        assert fresh is not None
        self.current = fresh
        return fresh


# ----------------------------------------------------------------------------- sinks


class ProgressSink(Protocol):
    """Receives job events. May also define ``open()``, ``close()`` and
    ``stop_requested() -> bool`` (LossViewer's Stop button)."""

    def handle(self, event: JobEvent) -> None: ...


@dataclass(frozen=True)
class FlowTimeouts:
    """Seconds each step may take."""

    connect_s: float = 20.0
    hello_s: float = 10.0
    check_s: float = 30.0
    submit_s: float = 30.0
    control_s: float = 10.0
    #: Silence during training before the flow asks the worker for the job's state.
    idle_s: float = 300.0
    #: How often the progress loop looks at stop requests.
    tick_s: float = 0.1


def new_job_id() -> str:
    """A fresh job id that satisfies the ``job_id.format`` rule (``job-<uuid4 hex>``)."""
    return f"job-{uuid.uuid4().hex}"


class _Stop(Exception):
    """Internal: ends the flow with a result."""

    def __init__(self, result: FlowResult) -> None:
        super().__init__(result.message)
        self.result = result


@dataclass
class _Checked:
    view: CheckView
    path_mappings: dict[str, str]
    prefix_mappings: dict[str, str]


class PresubmissionFlow:
    """Seed steps 1-6 over one connection.

    Args:
        connect: opens the link to the chosen worker.
        auth: the login check; None for workers without authentication.
        resolver: called with missing paths; None means missing paths are an error.
        sinks: progress sinks, fed every job event after acceptance.
        store: saved prefix rules (offered first, updated after a passing check).
        worker_id: the chosen worker (for saved rules; HelloAck's id wins).
        follow_progress: after JobAccepted, follow the job to its end.
        on_accepted: called once with the JobAccepted view (e.g. close the dialog).
        timeouts: per-step limits.
        max_rounds: resolution rounds before giving up.
        software / components / client_name: sent in Hello.
        clock: monotonic seconds for request deadlines.
    """

    def __init__(
        self,
        *,
        connect: Callable[[], Awaitable[Link]],
        auth: AuthCheck | None = None,
        resolver: Resolver | None = None,
        sinks: Sequence[ProgressSink] = (),
        store: PrefixStore | None = None,
        worker_id: str = "",
        follow_progress: bool = True,
        on_accepted: Callable[[AcceptedView], Any] | None = None,
        timeouts: FlowTimeouts = FlowTimeouts(),
        max_rounds: int = 5,
        software: str = "",
        components: Mapping[str, str] | None = None,
        client_name: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.connect = connect
        self.auth = auth
        self.resolver = resolver
        self.sinks = list(sinks)
        self.store = store
        self.worker_id = worker_id
        self.follow_progress = follow_progress
        self.on_accepted = on_accepted
        self.timeouts = timeouts
        self.max_rounds = max_rounds
        self.software = software
        self.components = dict(components or {})
        self.client_name = client_name
        self.clock = clock
        self._stop_requested = False
        self._stop_sent = False
        #: The open connection while a flow runs (None otherwise).
        self.connection: WorkerConnection | None = None

    def request_stop(self) -> None:
        """Ask the running job to stop early (thread-safe flag, read by the progress loop)."""
        self._stop_requested = True

    # ------------------------------------------------------------------ entry points

    async def run(
        self,
        *,
        labels_path: str | None = None,
        config: ConfigSource | None = None,
        config_content: str | None = None,
        spec: TrainJobSpec | None = None,
        path_mappings: Mapping[str, str] | None = None,
        prefix_mappings: Mapping[str, str] | None = None,
        retry_job_id: str | None = None,
        **overrides: Any,
    ) -> FlowResult:
        """Run the whole flow: config, auth, connect, check, resolve, submit, progress.

        Give the config as ``config`` (a mapping, DictConfig or YAML file
        path), as ``config_content`` (YAML text) or inside ``spec``.
        ``overrides`` are TrainJobSpec fields (max_epochs, batch_size,
        learning_rate, run_name, val_labels_path, resume_ckpt_path).
        ``retry_job_id`` resubmits a job id after "Connection lost": safe,
        the worker answers a duplicate acceptance and starts nothing twice.
        """
        try:
            draft = _draft_spec(
                labels_path, config, config_content, spec, path_mappings, prefix_mappings,
                overrides,
            )
            job_id = retry_job_id or new_job_id()
            if not is_valid_job_id(job_id):
                return _error("config", f"Invalid job id {job_id!r}.")
            token = await self._token()
            conn = await self._open(token)
        except _Stop as stop:
            return stop.result
        self.connection = conn
        try:
            checked = await self._check(conn, draft.labels_path, draft.path_mappings,
                                        draft.prefix_mappings)
            spec_msg = _final_spec(draft, checked)
            accepted = await self._submit(conn, job_id, spec_msg, checked)
            if not self.follow_progress:
                return _success(checked, job_id, accepted, f"Job {job_id} accepted.", "submit")
            return await self._follow(conn, token, job_id, accepted, checked)
        except _Stop as stop:
            return stop.result
        finally:
            self.connection = None
            await conn.close()

    async def check(
        self,
        labels_path: str,
        *,
        path_mappings: Mapping[str, str] | None = None,
        prefix_mappings: Mapping[str, str] | None = None,
    ) -> FlowResult:
        """Steps 2-4 only (auth, connect, path check, resolution); submits nothing.

        A success carries the worker's labels path, the mappings to put in the
        TrainJobSpec, and the check token.
        """
        try:
            token = await self._token()
            conn = await self._open(token)
        except _Stop as stop:
            return stop.result
        try:
            checked = await self._check(conn, labels_path, dict(path_mappings or {}),
                                        dict(prefix_mappings or {}))
            view = checked.view
            return FlowResult(
                FlowStatus.SUCCESS,
                "All paths were found on the worker.",
                stage="check",
                labels_path=view.labels.worker_path or view.labels.original_path,
                path_mappings=_video_mappings(checked),
                prefix_mappings=checked.prefix_mappings,
                check_token=view.check_token,
                check=view,
            )
        except _Stop as stop:
            return stop.result
        finally:
            await conn.close()

    # ------------------------------------------------------------------ steps

    async def _token(self) -> str:
        if self.auth is None:
            return ""
        try:
            return await self.auth.token()
        except LoginRequired as exc:
            raise _Stop(_error("auth", LOGIN_REQUIRED, str(exc))) from None

    async def _open(self, token: str) -> WorkerConnection:
        """Connect and say Hello; any failure is 'Could not connect', nothing sent after."""
        try:
            link = await asyncio.wait_for(self.connect(), self.timeouts.connect_s)
        except TimeoutError:
            raise _Stop(_error("connect", COULD_NOT_CONNECT,
                               f"no connection within {self.timeouts.connect_s:g} s")) from None
        except Exception as exc:
            if getattr(exc, "is_auth", False) is True:  # the signaling server refused the token
                raise _Stop(_error("auth", LOGIN_REQUIRED, _describe(exc))) from None
            raise _Stop(_error("connect", COULD_NOT_CONNECT, _describe(exc))) from None
        session = ClientSession(
            token=token,
            software=self.software,
            components=self.components,
            client_name=self.client_name,
        )
        conn = WorkerConnection(link, session, clock=self.clock)
        try:
            await conn.hello(timeout_s=self.timeouts.hello_s)
        except HelloRefusedError as exc:
            await conn.close()
            if exc.code == error_pb2.ERROR_CODE_UNAUTHENTICATED:
                raise _Stop(_error("auth", LOGIN_REQUIRED,
                                   f"the worker refused the token: {exc.message}")) from None
            raise _Stop(_error("connect", COULD_NOT_CONNECT,
                               f"the worker refused the connection: {exc.message}")) from None
        except (ConnectionLost, RequestTimeout, RemoteError) as exc:
            await conn.close()
            raise _Stop(_error("connect", COULD_NOT_CONNECT, _describe(exc))) from None
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _check(
        self,
        conn: WorkerConnection,
        labels_path: str,
        path_mappings: Mapping[str, str],
        prefix_mappings: Mapping[str, str],
    ) -> _Checked:
        """Check, resolve, re-check, until every path is found (or cancel / give up)."""
        mappings = dict(path_mappings)
        prefixes = dict(prefix_mappings)
        ack = conn.session.hello_ack
        worker_id = (ack.worker_id if ack is not None else "") or self.worker_id
        saved = self.store.load(worker_id) if self.store is not None else {}
        chosen = Resolution()
        view: CheckView | None = None
        for attempt in range(1, self.max_rounds + 2):
            try:
                result = await conn.check_paths(
                    labels_path,
                    path_mappings=mappings,
                    prefix_mappings=prefixes,
                    timeout_s=self.timeouts.check_s,
                )
            except ConnectionLost as exc:
                raise _Stop(_error("check", CONNECTION_LOST, _describe(exc), view=view)) from None
            except RequestTimeout as exc:
                raise _Stop(_error("check", NO_ANSWER, _describe(exc), view=view)) from None
            except RemoteError as exc:
                raise _Stop(_error("check", f"The worker could not check the paths: {exc.message}",
                                   view=view)) from None
            view = CheckView.from_result(
                result,
                path_mappings=mappings,
                prefix_mappings=prefixes,
                saved_prefixes=saved,
                mounts=conn.session.mounts,
                attempt=attempt,
                worker_id=worker_id,
            )
            if view.passed:
                if self.store is not None:
                    learned = {**prefixes_learned(chosen.path_mappings), **chosen.prefix_mappings}
                    self.store.remember(learned, worker_id)
                return _Checked(view, mappings, prefixes)
            if self.resolver is None or attempt > self.max_rounds:
                why = (
                    f"still missing after {self.max_rounds} resolution round(s)"
                    if self.resolver is not None
                    else "missing on the worker"
                )
                raise _Stop(_missing_error(view, why))
            try:
                resolution = await _maybe_await(self.resolver(view))
            except ResolutionFailed as exc:
                raise _Stop(_error("resolve", exc.message, view=view,
                                   mappings=(mappings, prefixes))) from None
            except Exception as exc:  # a broken UI callback must not leave a half-done flow
                log.exception("path resolution callback failed")
                raise _Stop(_error("resolve", f"Path resolution failed: {_describe(exc)}",
                                   view=view, mappings=(mappings, prefixes))) from None
            if resolution is None:
                raise _Stop(FlowResult(FlowStatus.CANCELLED, "", stage="resolve", check=view,
                                       path_mappings=mappings, prefix_mappings=prefixes))
            if resolution.empty:
                raise _Stop(_missing_error(view, "missing on the worker (nothing was mapped)"))
            mappings.update(resolution.path_mappings)
            prefixes.update(resolution.prefix_mappings)
            chosen = Resolution(
                {**chosen.path_mappings, **resolution.path_mappings},
                {**chosen.prefix_mappings, **resolution.prefix_mappings},
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def _submit(
        self, conn: WorkerConnection, job_id: str, spec: Any, checked: _Checked
    ) -> AcceptedView:
        try:
            answer = await conn.submit(
                job_id, spec, check_token=checked.view.check_token, timeout_s=self.timeouts.submit_s
            )
        except (ConnectionLost, RequestTimeout) as exc:
            raise _Stop(_error("submit", CONNECTION_LOST, _describe(exc),
                               "Retrying with the same job id is safe: it never starts twice.",
                               view=checked.view, job_id=job_id,
                               mappings=_mappings_of(checked))) from None
        except RemoteError as exc:
            busy = exc.code == error_pb2.ERROR_CODE_BUSY
            message = (f"The worker is busy: {exc.message}" if busy
                       else f"The worker refused the job: {exc.message}")
            raise _Stop(_error("submit", message, view=checked.view, job_id=job_id,
                               mappings=_mappings_of(checked))) from None
        if isinstance(answer, job_pb2.JobRejected):
            violations = tuple(
                ViolationView(
                    v.field,
                    v.rule_id,
                    _code_name(job_pb2.ViolationCode, "VIOLATION_CODE_", v.code),
                    v.message,
                    v.path,
                    v.line,
                )
                for v in answer.violations
            )
            lines = "\n".join(f"- {v}" for v in violations)
            summary = "The worker rejected the job" + (
                ":" if lines else f": {answer.message}" if answer.message else "."
            )
            raise _Stop(FlowResult(
                FlowStatus.ERROR,
                f"{summary}\n{lines}" if lines else summary,
                stage="submit",
                job_id=job_id,
                labels_path=spec.labels_path,
                path_mappings=_video_mappings(checked),
                prefix_mappings=checked.prefix_mappings,
                check_token=checked.view.check_token,
                check=checked.view,
                violations=violations,
            ))
        accepted = AcceptedView(answer.job_id or job_id, answer.run_dir, tuple(answer.warnings),
                                answer.duplicate)
        if self.on_accepted is not None:
            try:
                await _maybe_await(self.on_accepted(accepted))
            except Exception:
                log.exception("on_accepted callback failed")
        return accepted

    async def _follow(
        self,
        conn: WorkerConnection,
        token: str,
        job_id: str,
        accepted: AcceptedView,
        checked: _Checked,
    ) -> FlowResult:
        """Step 6: feed the sinks, in sequence order, until JobComplete / JobFailed.

        Job events are numbered from 1 without gaps. Replays (after a duplicate
        submit or a reconnect) can interleave with live events, so events are
        reordered by sequence and duplicates dropped; a gap that stays open for
        ``GAP_S`` (history the worker no longer keeps) is skipped.
        """
        for sink in self.sinks:
            _call_optional(sink, "open")
        original = conn
        order = _Reorder(self.clock)
        idle = 0.0
        reconnected = False
        try:
            if accepted.duplicate:
                # A repeated submit: ask for everything this connection missed.
                await self._attach(conn, job_id, 0)
            while True:
                await self._maybe_stop(conn, job_id)
                try:
                    event = await conn.next_event(timeout_s=self.timeouts.tick_s)
                except RequestTimeout:
                    idle += self.timeouts.tick_s
                    ready = order.expire()
                    if not ready and idle >= self.timeouts.idle_s:
                        idle = 0.0
                        await self._attach(conn, job_id, order.delivered)
                except ConnectionLost as exc:
                    if reconnected:
                        raise _Stop(_lost_following(checked, job_id, accepted, exc)) from None
                    reconnected = True
                    try:
                        conn = await self._open(token)
                    except _Stop:
                        raise _Stop(_lost_following(checked, job_id, accepted, exc)) from None
                    self.connection = conn
                    await self._attach(conn, job_id, order.delivered)
                    continue
                else:
                    idle = 0.0
                    if _event_job(event) != job_id:
                        continue
                    ready = order.add(event)
                for ready_event in ready:
                    result = self._deliver(ready_event, checked, job_id, accepted)
                    if result is not None:
                        return result
        except ConnectionLost as exc:
            return _lost_following(checked, job_id, accepted, exc)
        finally:
            for sink in self.sinks:
                _call_optional(sink, "close")
            if conn is not original:
                await conn.close()

    def _deliver(
        self, event: JobEvent, checked: _Checked, job_id: str, accepted: AcceptedView
    ) -> FlowResult | None:
        for sink in self.sinks:
            try:
                sink.handle(event)
            except Exception:
                log.exception("progress sink %r failed", sink)
        if isinstance(event, JobCompleted):
            done = event.complete
            completion = CompletionView(done.run_dir, tuple(done.outputs),
                                        done.duration_seconds, done.stopped_early)
            how = "stopped early" if done.stopped_early else "finished"
            return _success(checked, job_id, accepted, f"Training {how}.", "done",
                            completion=completion)
        if isinstance(event, JobFailedEvent):
            return _failed(checked, job_id, accepted, event.failed)
        return None

    async def _attach(self, conn: WorkerConnection, job_id: str, after: int) -> None:
        try:
            await conn.attach(job_id, after, timeout_s=self.timeouts.control_s)
        except RequestTimeout as exc:
            raise ConnectionLost(f"the worker stopped answering: {exc}") from None
        except RemoteError as exc:
            log.warning("attach to %s failed: %s", job_id, exc.message)

    async def _maybe_stop(self, conn: WorkerConnection, job_id: str) -> None:
        if self._stop_sent:
            return
        wanted = self._stop_requested or any(
            bool(_call_optional(sink, "stop_requested")) for sink in self.sinks
        )
        if not wanted:
            return
        self._stop_sent = True
        try:
            await conn.control(
                job_id, job_pb2.CONTROL_ACTION_STOP, timeout_s=self.timeouts.control_s
            )
        except (RequestTimeout, RemoteError) as exc:
            log.warning("stop request for %s failed: %s", job_id, exc)


class _Reorder:
    """Releases job events in sequence order (1, 2, ...), each once."""

    #: Seconds a gap in the numbering may stay open before it is skipped.
    GAP_S = 2.0
    #: Events held back at most while waiting for a gap to fill.
    MAX_HELD = 50_000

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.delivered = 0
        self._held: dict[int, JobEvent] = {}
        self._gap_since: float | None = None

    def add(self, event: JobEvent) -> list[JobEvent]:
        seq = _sequence_of(event)
        if seq == 0:  # unnumbered (an old worker): pass through
            return [event]
        if seq > self.delivered and seq not in self._held:
            self._held[seq] = event
        return self._release()

    def expire(self) -> list[JobEvent]:
        return self._release()

    def _release(self) -> list[JobEvent]:
        out: list[JobEvent] = []
        while self.delivered + 1 in self._held:
            self.delivered += 1
            out.append(self._held.pop(self.delivered))
        if not self._held:
            self._gap_since = None
            return out
        now = self.clock()
        if self._gap_since is None:
            self._gap_since = now
        if now - self._gap_since > self.GAP_S or len(self._held) > self.MAX_HELD:
            log.warning("progress %d..%d never arrived; skipping ahead", self.delivered + 1,
                        min(self._held) - 1)
            self.delivered = min(self._held) - 1
            self._gap_since = None
            out.extend(self._release())
        return out


# ----------------------------------------------------------------------------- helpers


def _draft_spec(
    labels_path: str | None,
    config: ConfigSource | None,
    config_content: str | None,
    spec: TrainJobSpec | None,
    path_mappings: Mapping[str, str] | None,
    prefix_mappings: Mapping[str, str] | None,
    overrides: Mapping[str, Any],
) -> TrainJobSpec:
    """Step 1: the spec to check and submit, with the config as a YAML string."""
    given = [x for x in (config, config_content) if x is not None]
    if len(given) > 1:
        raise _Stop(_error("config", "Give the training config once (config or config_content)."))
    try:
        content: str | None = None
        if config is not None:
            content = config_to_yaml(config)
        elif config_content is not None:
            content = check_config_content(config_content)
        elif spec is not None and spec.config_content is not None:
            content = check_config_content(spec.config_content)
        if content is None and spec is None:
            raise ConfigError("no training config was given")
        base = spec or TrainJobSpec(config_content=content, labels_path=labels_path or "")
        fields = dict(overrides)
        unknown = set(fields) - set(_OVERRIDES)
        if unknown:
            raise TypeError(f"unknown TrainJobSpec override(s): {', '.join(sorted(unknown))}")
        draft = TrainJobSpec(
            config_content=content if content is not None else base.config_content,
            config_paths=list(base.config_paths),
            labels_path=labels_path or base.labels_path,
            path_mappings={**base.path_mappings, **(path_mappings or {})},
            prefix_mappings={**base.prefix_mappings, **(prefix_mappings or {})},
            **{name: fields.get(name, getattr(base, name)) for name in _OVERRIDES},
        )
    except ConfigError as exc:
        raise _Stop(_error("config", f"Invalid training config: {exc}")) from None
    except ValueError as exc:
        raise _Stop(_error("config", f"Invalid job: {exc}")) from None
    problems = draft.validate()
    if problems:
        lines = "\n".join(f"- {v.field}: {v.message}" for v in problems)
        raise _Stop(_error("config", f"Invalid job:\n{lines}"))
    return draft


_OVERRIDES = (
    "val_labels_path",
    "max_epochs",
    "batch_size",
    "learning_rate",
    "run_name",
    "resume_ckpt_path",
)


def _final_spec(draft: TrainJobSpec, checked: _Checked) -> Any:
    """The submitted spec: the worker's labels path and the mappings that passed."""
    view = checked.view
    final = TrainJobSpec(
        config_content=draft.config_content,
        config_paths=draft.config_paths,
        labels_path=view.labels.worker_path or draft.labels_path,
        path_mappings=_video_mappings(checked),
        prefix_mappings=checked.prefix_mappings,
        **{name: getattr(draft, name) for name in _OVERRIDES},
    )
    return final.to_proto()


def _mappings_of(checked: _Checked) -> tuple[dict[str, str], dict[str, str]]:
    return _video_mappings(checked), checked.prefix_mappings


def _video_mappings(checked: _Checked) -> dict[str, str]:
    """Exact mappings minus the labels file's own (that one became labels_path)."""
    labels = checked.view.labels.original_path
    return {k: v for k, v in checked.path_mappings.items() if k != labels}


def _error(
    stage: str,
    message: str,
    *details: str,
    view: CheckView | None = None,
    job_id: str = "",
    mappings: tuple[Mapping[str, str], Mapping[str, str]] | None = None,
) -> FlowResult:
    paths, prefixes = mappings if mappings is not None else (
        (dict(view.path_mappings), dict(view.prefix_mappings)) if view is not None else ({}, {})
    )
    return FlowResult(
        FlowStatus.ERROR,
        message,
        stage=stage,
        job_id=job_id,
        check=view,
        path_mappings=paths,
        prefix_mappings=prefixes,
        details=tuple(d for d in details if d),
    )


def _missing_error(view: CheckView, why: str) -> FlowResult:
    missing = view.missing_paths()
    lines = "\n".join(f"- {p}" for p in missing)
    message = f"{len(missing)} path(s) {why}:\n{lines}"
    if view.hint:
        message += f"\n{view.hint}"
    return _error("resolve", message, view=view)


def _success(
    checked: _Checked,
    job_id: str,
    accepted: AcceptedView,
    message: str,
    stage: str,
    completion: CompletionView | None = None,
) -> FlowResult:
    view = checked.view
    return FlowResult(
        FlowStatus.SUCCESS,
        message,
        stage=stage,
        job_id=job_id,
        labels_path=view.labels.worker_path or view.labels.original_path,
        path_mappings=_video_mappings(checked),
        prefix_mappings=checked.prefix_mappings,
        check_token=view.check_token,
        check=view,
        accepted=accepted,
        completion=completion,
    )


def _failed(
    checked: _Checked, job_id: str, accepted: AcceptedView, failed: progress_pb2.JobFailed
) -> FlowResult:
    failure = FailureView(
        _code_name(progress_pb2.FailureCode, "FAILURE_CODE_", failed.code),
        failed.message,
        failed.exit_code if failed.HasField("exit_code") else None,
        tuple(failed.log_tail),
        failed.duration_seconds,
    )
    exit_text = f" (exit code {failure.exit_code})" if failure.exit_code is not None else ""
    tail = "\n".join(failure.log_tail[-20:])
    message = f"Training failed: {failed.message}{exit_text}"
    base = _success(checked, job_id, accepted, message, "progress")
    return FlowResult(
        FlowStatus.ERROR,
        message,
        stage="progress",
        job_id=job_id,
        labels_path=base.labels_path,
        path_mappings=base.path_mappings,
        prefix_mappings=base.prefix_mappings,
        check_token=base.check_token,
        check=base.check,
        accepted=accepted,
        failure=failure,
        details=(tail,) if tail else (),
    )


def _lost_following(
    checked: _Checked, job_id: str, accepted: AcceptedView, exc: BaseException
) -> FlowResult:
    base = _success(checked, job_id, accepted, CONNECTION_LOST, "progress")
    return FlowResult(
        FlowStatus.ERROR,
        CONNECTION_LOST,
        stage="progress",
        job_id=job_id,
        labels_path=base.labels_path,
        path_mappings=base.path_mappings,
        prefix_mappings=base.prefix_mappings,
        check_token=base.check_token,
        check=base.check,
        accepted=accepted,
        details=(
            _describe(exc),
            f"Job {job_id} was accepted and keeps running on the worker; retrying with the "
            "same job id re-attaches to it.",
        ),
    )


def _code_name(enum: Any, prefix: str, value: int) -> str:
    try:
        return str(enum.Name(value)).removeprefix(prefix).lower()
    except ValueError:
        return "unspecified"


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _event_job(event: JobEvent) -> str:
    if isinstance(event, ProgressReceived):
        return event.progress.job_id
    if isinstance(event, LogReceived):
        return event.log.job_id
    if isinstance(event, JobCompleted):
        return event.complete.job_id
    return event.failed.job_id


def _sequence_of(event: JobEvent) -> int:
    if isinstance(event, ProgressReceived):
        return event.progress.sequence
    if isinstance(event, LogReceived):
        return event.log.sequence
    if isinstance(event, JobCompleted):
        return event.complete.sequence
    return event.failed.sequence


def _call_optional(obj: object, name: str) -> Any:
    method = getattr(obj, name, None)
    if method is None:
        return None
    try:
        return method()
    except Exception:
        log.exception("%r.%s() failed", obj, name)
        return None


async def _maybe_await(value: T | Awaitable[T]) -> T:
    if inspect.isawaitable(value):
        return await value
    return value
