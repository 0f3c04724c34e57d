"""Re-attach to a job by id (``train --job-id`` after a dropped connection): typed outcomes.

:func:`reattach` connects, says Hello and asks the worker for the job
(JobAttach). A job the worker does not know gives None (the caller then checks
and submits it under that id). A job it knows is followed to its end by the
same :class:`~sleap_rtc.client.following.ProgressFollower` the flow uses (the
liveness probe, one reconnect, sequence order), and the outcome comes back as
a :class:`~sleap_rtc.client.results.FlowResult`. Failing to connect, a refused
login or a refused attach raise the typed errors below; a CLI maps them to
exit codes and prints their one-line messages.

After a worker restart the job may have ended while nobody watched (its
trainer dies with its worker); the attach then replays the JobFailed that
says so, and the result is that failure: it is never started twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sleap_rtc.client.connection import (
    ConnectionLost,
    OpenFailed,
    RemoteError,
    RequestTimeout,
    WorkerConnection,
    open_connection,
)
from sleap_rtc.client.following import ProgressFollower, ProgressSink
from sleap_rtc.client.results import (
    COULD_NOT_CONNECT,
    LOGIN_REQUIRED,
    AcceptedView,
    FlowEnded,
    FlowResult,
    error_result,
)
from sleap_rtc.client.session import ClientSession
from sleap_rtc.client.timeouts import FlowTimeouts
from sleap_rtc_proto.v1 import error_pb2, job_pb2

__all__ = [
    "ReattachError",
    "ReattachLoginRequired",
    "ReattachRefused",
    "ReattachUnreachable",
    "reattach",
]


_DEFAULT_TIMEOUTS = FlowTimeouts()


class ReattachError(Exception):
    """Re-attaching failed before any job event; ``message`` is one line for the user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ReattachUnreachable(ReattachError):
    """No connection to the worker (connect failed, Hello unanswered, link lost)."""


class ReattachLoginRequired(ReattachError):
    """The worker refused the token."""


class ReattachRefused(ReattachError):
    """The worker answered the attach with an error other than NOT_FOUND (e.g. FORBIDDEN)."""


async def _open(
    connect: Callable[[], Awaitable[Any]], token: str, client_name: str, timeouts: FlowTimeouts
) -> WorkerConnection:
    try:
        return await open_connection(
            connect,
            ClientSession(token=token, client_name=client_name),
            connect_s=timeouts.connect_s,
            hello_s=timeouts.hello_s,
        )
    except OpenFailed as exc:
        if exc.login:
            raise ReattachLoginRequired(f"{LOGIN_REQUIRED} ({exc.message})") from None
        raise ReattachUnreachable(f"{COULD_NOT_CONNECT} ({exc.message})") from None


async def reattach(
    *,
    token: str,
    job_id: str,
    sinks: Sequence[ProgressSink],
    connect: Callable[[], Awaitable[Any]],
    stop_requested: Callable[[], bool],
    client_name: str = "sleap-rtc",
    timeouts: FlowTimeouts = _DEFAULT_TIMEOUTS,
    on_attached: Callable[[job_pb2.JobStatus], None] | None = None,
) -> FlowResult | None:
    """Follow ``job_id`` if the worker knows it; None when it does not.

    ``on_attached`` gets the job's JobStatus once the worker answered the attach
    (before its replay is delivered).

    Raises:
        ReattachUnreachable / ReattachLoginRequired / ReattachRefused: see above.
    """
    conn = await _open(connect, token, client_name, timeouts)
    try:
        try:
            status = await conn.attach(job_id, 0, timeout_s=timeouts.control_s)
        except RemoteError as exc:
            if exc.code == error_pb2.ERROR_CODE_NOT_FOUND:
                return None
            raise ReattachRefused(f"cannot attach to {job_id}: {exc.message}") from None
        except (ConnectionLost, RequestTimeout) as exc:
            raise ReattachUnreachable(f"{COULD_NOT_CONNECT} ({exc})") from None
        if on_attached is not None:
            on_attached(status)

        async def reopen() -> WorkerConnection:
            try:
                return await _open(connect, token, client_name, timeouts)
            except ReattachError as exc:
                raise FlowEnded(error_result("connect", COULD_NOT_CONNECT, exc.message)) from None

        follower = ProgressFollower(
            sinks=sinks,
            timeouts=timeouts,
            reopen=reopen,
            stop_wanted=stop_requested,
            clock=conn.clock,
        )
        accepted = AcceptedView(job_id, status.run_dir, (), duplicate=True)
        return await follower.follow(conn, job_id, accepted, None, attach=False)
    finally:
        await conn.close()
