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

The parts live in small modules, re-exported here: :mod:`~sleap_rtc.client.auth`
(step 2), :mod:`~sleap_rtc.client.draft` (step 1 and the submitted spec),
:mod:`~sleap_rtc.client.results` (messages and outcomes),
:mod:`~sleap_rtc.client.following` (step 6: progress, liveness probes,
reattach) and :mod:`~sleap_rtc.client.timeouts`.

Example::

    flow = PresubmissionFlow(connect=connect, auth=auth, resolver=TerminalResolver())
    result = await flow.run(config={"trainer_config": {...}}, labels_path="/data/fly.slp")
    if result.status is FlowStatus.ERROR:
        print(result.message)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from sleap_rtc.client.auth import AuthCheck, LoginRequired
from sleap_rtc.client.callbacks import maybe_await
from sleap_rtc.client.connection import (
    ConnectionLost,
    OpenFailed,
    RemoteError,
    RequestTimeout,
    WorkerConnection,
    open_connection,
)
from sleap_rtc.client.draft import draft_spec, final_spec, new_job_id
from sleap_rtc.client.following import ProgressFollower, ProgressSink, answer_or_lost
from sleap_rtc.client.pathrequest import file_facts, path_check_request
from sleap_rtc.client.resolve import PrefixStore, ResolutionFailed, Resolver, prefixes_learned
from sleap_rtc.client.results import (
    CONNECTION_LOST,
    COULD_NOT_CONNECT,
    LOGIN_REQUIRED,
    NO_ANSWER,
    AcceptedView,
    Checked,
    FlowEnded,
    FlowResult,
    FlowStatus,
    SchedulerView,
    checked_result,
    describe,
    error_result,
    missing_result,
    rejected_result,
    success_result,
)
from sleap_rtc.client.session import ClientSession
from sleap_rtc.client.timeouts import FlowTimeouts
from sleap_rtc.client.training_config import ConfigSource
from sleap_rtc.client.views import CheckView, Resolution
from sleap_rtc.jobs.spec import TrainJobSpec
from sleap_rtc.transport.link import Link
from sleap_rtc_proto.bodies import Feature
from sleap_rtc_proto.rules import is_valid_job_id
from sleap_rtc_proto.v1 import error_pb2, job_pb2, paths_pb2, spec_pb2

log = logging.getLogger(__name__)

__all__ = [
    "PresubmissionFlow",
]

#: The limits a flow uses unless given others.
DEFAULT_TIMEOUTS = FlowTimeouts()
#: Video statuses that need no mapping.
_PASSING = (paths_pb2.PATH_STATUS_FOUND, paths_pb2.PATH_STATUS_EMBEDDED)


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
        timeouts: per-step limits, including the liveness probe while following.
        max_rounds: resolution rounds before giving up.
        software / components / client_name: sent in Hello.
        clock: monotonic seconds for request deadlines and link silence.
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
        timeouts: FlowTimeouts = DEFAULT_TIMEOUTS,
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

        ``retry_job_id`` retries after "Connection lost": the flow first asks
        the worker for that job (JobAttach). A job the worker has is followed
        as it is (no second check or submit, so mappings that changed since,
        e.g. new saved prefix rules, cannot make it a conflicting submit); only
        a job the worker does not know is checked and submitted under that id.
        """
        try:
            draft = draft_spec(
                labels_path, config, config_content, spec, path_mappings, prefix_mappings,
                overrides,
            )
            job_id = retry_job_id or new_job_id()
            if not is_valid_job_id(job_id):
                return error_result("config", f"Invalid job id {job_id!r}.")
            token = await self._token()
            conn = await self._open(token)
        except FlowEnded as ended:
            return ended.result
        self.connection = conn
        try:
            if retry_job_id:
                status = await self._existing(conn, job_id)
                if status is not None:
                    accepted = AcceptedView(job_id, status.run_dir, (), duplicate=True)
                    return await self._accepted(conn, token, job_id, accepted, None, replayed=True)
            checked = await self._check(conn, draft.labels_path, draft.path_mappings,
                                        draft.prefix_mappings)
            spec_msg = final_spec(draft, checked)
            accepted = await self._submit(conn, job_id, spec_msg, checked)
            return await self._accepted(conn, token, job_id, accepted, checked, replayed=False)
        except FlowEnded as ended:
            return ended.result
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
        except FlowEnded as ended:
            return ended.result
        try:
            checked = await self._check(conn, labels_path, dict(path_mappings or {}),
                                        dict(prefix_mappings or {}))
            return checked_result(checked)
        except FlowEnded as ended:
            return ended.result
        finally:
            await conn.close()

    # ------------------------------------------------------------------ steps

    async def _token(self) -> str:
        if self.auth is None:
            return ""
        try:
            return await self.auth.token()
        except LoginRequired as exc:
            raise FlowEnded(error_result("auth", LOGIN_REQUIRED, str(exc))) from None

    async def _open(self, token: str) -> WorkerConnection:
        """Connect and say Hello; any failure is 'Could not connect', nothing sent after."""
        session = ClientSession(
            token=token,
            software=self.software,
            components=self.components,
            client_name=self.client_name,
        )
        try:
            return await open_connection(
                self.connect,
                session,
                connect_s=self.timeouts.connect_s,
                hello_s=self.timeouts.hello_s,
                clock=self.clock,
            )
        except OpenFailed as exc:
            if exc.login:
                raise FlowEnded(error_result("auth", LOGIN_REQUIRED, exc.message)) from None
            raise FlowEnded(error_result("connect", COULD_NOT_CONNECT, exc.message)) from None

    async def _existing(self, conn: WorkerConnection, job_id: str) -> job_pb2.JobStatus | None:
        """A retry's first question: does the worker already have ``job_id``?

        Returns its JobStatus (the worker then replays the job's progress on
        this connection), or None when the worker does not know it (or cannot
        attach), so it is checked and submitted.
        """
        ack = conn.session.hello_ack
        if ack is None or Feature.ATTACH not in ack.features:
            return None  # a worker without attach: a repeated submit is still safe
        try:
            return await conn.attach(job_id, 0, timeout_s=self.timeouts.control_s)
        except RemoteError as exc:
            if exc.code != error_pb2.ERROR_CODE_NOT_FOUND:
                log.warning("attach to %s before retrying failed: %s", job_id, exc.message)
            return None
        except (ConnectionLost, RequestTimeout) as exc:
            raise FlowEnded(error_result(
                "submit", CONNECTION_LOST, describe(exc),
                "Retrying with the same job id is safe: it never starts twice.", job_id=job_id,
            )) from None

    async def _check(
        self,
        conn: WorkerConnection,
        labels_path: str,
        path_mappings: Mapping[str, str],
        prefix_mappings: Mapping[str, str],
    ) -> Checked:
        """Check, resolve, re-check, until every path is found (or cancel / give up).

        The returned :class:`Checked` holds exactly the mappings of the passing
        request: the submit carries those (its check token is bound to them).
        """
        mappings = dict(path_mappings)
        prefixes = dict(prefix_mappings)
        ack = conn.session.hello_ack
        worker_id = (ack.worker_id if ack is not None else "") or self.worker_id
        saved = self.store.load(worker_id) if self.store is not None else {}
        features = tuple(ack.features) if ack is not None else ()
        facts: list[paths_pb2.ClientFile] = []
        chosen = Resolution()
        view: CheckView | None = None
        for attempt in range(1, self.max_rounds + 2):
            result = await self._ask_check(conn, labels_path, mappings, prefixes, facts, view)
            if not facts and str(Feature.CLIENT_FILE_FACTS) in features and result.videos:
                # 1.2: the client's sizes rank same-name-and-size matches first: ask once more
                facts = file_facts(v.original_path for v in result.videos
                                   if v.status not in _PASSING)
                if facts:
                    result = await self._ask_check(conn, labels_path, mappings, prefixes,
                                                   facts, view)
            view = CheckView.from_result(
                result,
                path_mappings=mappings,
                prefix_mappings=prefixes,
                saved_prefixes=saved,
                mounts=conn.session.mounts,
                attempt=attempt,
                worker_id=worker_id,
            )
            if self.store is not None and view.dropped_saved:  # saved rules this worker refuses
                self.store.forget(view.dropped_saved, worker_id)
            if view.refused:  # drop what the worker refused; never resend it
                for refused in view.refused:
                    (mappings if refused.kind == "exact" else prefixes).pop(refused.original, None)
                    saved.pop(refused.original, None)
                chosen = Resolution(
                    {k: v for k, v in chosen.path_mappings.items() if k in mappings},
                    {k: v for k, v in chosen.prefix_mappings.items() if k in prefixes},
                )
                if self.store is not None:
                    self.store.forget([r.original for r in view.refused if r.kind == "prefix"],
                                      worker_id)
            if view.passed:
                if self.store is not None:
                    learned = {**prefixes_learned(chosen.path_mappings, view.mounts),
                               **chosen.prefix_mappings}
                    self.store.remember(learned, worker_id)
                return Checked(view, labels_path, dict(mappings), dict(prefixes))
            if self.resolver is None or attempt > self.max_rounds:
                why = (
                    f"still missing after {self.max_rounds} resolution round(s)"
                    if self.resolver is not None
                    else "missing on the worker"
                )
                raise FlowEnded(missing_result(view, why))
            resolution = await self._resolve(view, mappings, prefixes, conn)
            mappings.update(resolution.path_mappings)
            prefixes.update(resolution.prefix_mappings)
            chosen = Resolution(
                {**chosen.path_mappings, **resolution.path_mappings},
                {**chosen.prefix_mappings, **resolution.prefix_mappings},
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def _ask_check(
        self,
        conn: WorkerConnection,
        labels_path: str,
        mappings: Mapping[str, str],
        prefixes: Mapping[str, str],
        facts: Sequence[paths_pb2.ClientFile],
        view: CheckView | None,
    ) -> paths_pb2.PathCheckResult:
        """One PathCheckRequest (the session sends file facts only where agreed);
        failures end the flow."""
        request = path_check_request(labels_path, path_mappings=mappings,
                                     prefix_mappings=prefixes, facts=facts)
        try:
            result = await answer_or_lost(
                conn, conn.request(request, timeout_s=self.timeouts.check_s), self.timeouts
            )
        except ConnectionLost as exc:
            raise FlowEnded(error_result("check", CONNECTION_LOST, describe(exc),
                                         view=view)) from None
        except RequestTimeout as exc:
            raise FlowEnded(error_result("check", NO_ANSWER, describe(exc),
                                         view=view)) from None
        except RemoteError as exc:
            raise FlowEnded(error_result(
                "check", f"The worker could not check the paths: {exc.message}", view=view
            )) from None
        assert isinstance(result, paths_pb2.PathCheckResult)  # the session matched the answer
        return result

    async def _resolve(
        self,
        view: CheckView,
        mappings: dict[str, str],
        prefixes: dict[str, str],
        conn: WorkerConnection | None = None,
    ) -> Resolution:
        """Step 4: the resolution callback; cancel, failure or nothing mapped end the flow."""
        assert self.resolver is not None
        try:
            asked = maybe_await(self.resolver(view))
            # The worker is probed while the user resolves: a dead one ends the flow now.
            resolution = await (asked if conn is None else answer_or_lost(conn, asked,
                                                                         self.timeouts))
        except ConnectionLost as exc:
            raise FlowEnded(error_result("resolve", CONNECTION_LOST, describe(exc), view=view,
                                         mappings=(mappings, prefixes))) from None
        except ResolutionFailed as exc:
            raise FlowEnded(error_result("resolve", exc.message, view=view,
                                         mappings=(mappings, prefixes))) from None
        except Exception as exc:  # a broken UI callback must not leave a half-done flow
            log.exception("path resolution callback failed")
            raise FlowEnded(error_result("resolve", f"Path resolution failed: {describe(exc)}",
                                         view=view, mappings=(mappings, prefixes))) from None
        if resolution is None:
            raise FlowEnded(FlowResult(FlowStatus.CANCELLED, "", stage="resolve", check=view,
                                       path_mappings=dict(mappings),
                                       prefix_mappings=dict(prefixes)))
        if resolution.empty:
            raise FlowEnded(missing_result(view, "missing on the worker (nothing was mapped)"))
        return resolution

    async def _submit(
        self, conn: WorkerConnection, job_id: str, spec: spec_pb2.TrainJobSpec, checked: Checked
    ) -> AcceptedView:
        try:
            answer = await answer_or_lost(conn, conn.submit(
                job_id, spec, check_token=checked.view.check_token, timeout_s=self.timeouts.submit_s
            ), self.timeouts)
        except (ConnectionLost, RequestTimeout) as exc:
            raise FlowEnded(error_result(
                "submit", CONNECTION_LOST, describe(exc),
                "Retrying with the same job id is safe: it never starts twice.",
                job_id=job_id, checked=checked,
            )) from None
        except RemoteError as exc:
            busy = exc.code == error_pb2.ERROR_CODE_BUSY
            message = (f"The worker is busy: {exc.message}" if busy
                       else f"The worker refused the job: {exc.message}")
            raise FlowEnded(error_result("submit", message, job_id=job_id,
                                         checked=checked)) from None
        if isinstance(answer, job_pb2.JobRejected):
            raise FlowEnded(rejected_result(checked, job_id, answer))
        return AcceptedView(answer.job_id or job_id, answer.run_dir, tuple(answer.warnings),
                            answer.duplicate, SchedulerView.of(answer))

    async def _accepted(
        self,
        conn: WorkerConnection,
        token: str,
        job_id: str,
        accepted: AcceptedView,
        checked: Checked | None,
        *,
        replayed: bool,
    ) -> FlowResult:
        """After acceptance: tell the caller, then follow the job (step 6) if asked.

        ``replayed``: the worker already replays the job on this connection (a
        retry that attached); otherwise a duplicate acceptance attaches first.
        """
        if self.on_accepted is not None:
            try:
                await maybe_await(self.on_accepted(accepted))
            except Exception:
                log.exception("on_accepted callback failed")
        if not self.follow_progress:
            return success_result(checked, job_id, accepted, f"Job {job_id} accepted.", "submit")
        follower = ProgressFollower(
            sinks=self.sinks,
            timeouts=self.timeouts,
            reopen=lambda: self._reopen(token),
            stop_wanted=lambda: self._stop_requested,
            clock=self.clock,
        )
        return await follower.follow(conn, job_id, accepted, checked,
                                     attach=accepted.duplicate and not replayed)

    async def _reopen(self, token: str) -> WorkerConnection:
        conn = await self._open(token)
        self.connection = conn
        return conn
