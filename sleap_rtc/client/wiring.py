"""The client flow wired to the network: from ``client.toml`` settings to a working flow.

The one place where the client's settings, token and chosen worker become a
:class:`~sleap_rtc.client.flow.PresubmissionFlow`: the Python API
(:mod:`sleap_rtc.api`, and through it :mod:`sleap_rtc.gui.runners`), the demo
and the CLI all build their flow here. It holds

- the worker lookup in the room (:func:`list_workers`, :func:`find_worker`);
- the connector (:func:`connector`): a ``connect()`` that signs in to the
  signaling server, offers WebRTC to the worker and returns the
  :class:`~sleap_rtc.transport.link.Link`, optionally recorded into an MCAP
  capture (:func:`open_capture`, :func:`recording`);
- the translation of signaling and connection failures into the typed errors
  below, each with the one line a user needs. The CLI maps them to exit codes
  (``sleap_rtc/cli/exits.py``); the flow maps a failed ``connect()`` to its
  "Could not connect" result, and a refused token (``is_auth``) to "Login required".

The transport (aiortc, websockets) is imported when a connection is made.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sleap_rtc.client.results import COULD_NOT_CONNECT

if TYPE_CHECKING:
    from sleap_rtc.capture.write.recorder import CaptureWriter
    from sleap_rtc.client.auth import AuthCheck
    from sleap_rtc.client.flow import PresubmissionFlow
    from sleap_rtc.client.following import ProgressSink
    from sleap_rtc.client.resolve import PrefixStore, Resolver
    from sleap_rtc.client.results import AcceptedView
    from sleap_rtc.client.timeouts import FlowTimeouts
    from sleap_rtc.config.client import ClientSettings
    from sleap_rtc.signaling.client import PeerInfo, SignalingClient, SignalingError
    from sleap_rtc.transport.link import Link

log = logging.getLogger(__name__)

#: What the client flow calls to open a connection to the worker.
Connect = Callable[[], Awaitable["Link"]]

# ----------------------------------------------------------------------------- typed errors


class WiringError(Exception):
    """A client connection that could not be made; ``message`` is the one line to show."""

    #: True for a refused token (the flow then says "Login required").
    is_auth = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class LoginRefused(WiringError):
    """The signaling server refused the token for the room: log in again."""

    is_auth = True


class SignalingUnreachable(WiringError):
    """The signaling server could not be reached, timed out or closed the connection."""


class UnknownRoom(WiringError):
    """The signaling server has no such room."""


class SignalingRefused(WiringError):
    """The signaling server refused a request for another reason (the code is in the text)."""


class WorkerNotFound(WiringError):
    """No worker of that name or peer id, or no worker at all, is registered in the room."""


class WorkerUnreachable(WiringError):
    """The WebRTC link to the worker did not open."""


class CaptureUnwritable(WiringError):
    """The capture file asked for (``--capture``, ``capture=``) cannot be written."""


def signaling_failure(exc: SignalingError, settings: ClientSettings) -> WiringError:
    """A :class:`~sleap_rtc.signaling.client.SignalingError` as the typed error it means."""
    if exc.is_auth:
        return LoginRefused(
            f"Login required: the signaling server refused the token for room "
            f"{settings.room!r} ({exc.reason}). Run `sleap-rtc login --server "
            f"{settings.server} --room {settings.room}`."
        )
    if exc.code in ("unreachable", "timeout", "closed"):
        return SignalingUnreachable(f"{exc.reason}")
    if exc.code == "unknown_room":
        return UnknownRoom(f"room {settings.room!r}: {exc.reason}")
    return SignalingRefused(f"signaling server refused: {exc.reason} [{exc.code}]")


# ----------------------------------------------------------------------------- workers


async def _signed_in(settings: ClientSettings, token: str) -> SignalingClient:
    from sleap_rtc.signaling.client import SignalingClient, SignalingError

    try:
        sig = await SignalingClient.connect(settings.server, timeout=settings.connect_timeout_s)
    except SignalingError as exc:
        raise signaling_failure(exc, settings) from None
    try:
        await sig.register(room_id=settings.room, role="client", token=token)
    except SignalingError as exc:
        await sig.close()
        raise signaling_failure(exc, settings) from None
    return sig


async def list_workers(settings: ClientSettings, token: str) -> list[PeerInfo]:
    """The workers registered in the settings' room.

    Raises:
        WiringError: the signaling server is unreachable or refused (see the subclasses).
    """
    from sleap_rtc.signaling.client import SignalingError

    sig = await _signed_in(settings, token)
    try:
        return await sig.discover(role="worker")
    except SignalingError as exc:
        raise signaling_failure(exc, settings) from None
    finally:
        await sig.close()


async def find_worker(settings: ClientSettings, token: str) -> PeerInfo:
    """The worker the settings name (peer id or name), or the first available one.

    Raises:
        WorkerNotFound: no such worker (or none at all) in the room, with the seed's message.
        WiringError: the signaling server is unreachable or refused.
    """
    workers = await list_workers(settings, token)
    wanted = settings.worker
    if wanted:
        matches = [w for w in workers if w.peer_id == wanted] or [
            w for w in workers if w.name == wanted
        ]
        if not matches:
            names = ", ".join(sorted(w.name for w in workers)) or "none"
            raise WorkerNotFound(
                f"{COULD_NOT_CONNECT} (no worker {wanted!r} in room {settings.room!r}; "
                f"workers there: {names})"
            )
        return matches[0]
    if not workers:
        raise WorkerNotFound(
            f"{COULD_NOT_CONNECT} (no worker is registered in room {settings.room!r} "
            f"on {settings.server})"
        )
    available = [w for w in workers if w.status in ("", "available")]
    return (available or workers)[0]


# ----------------------------------------------------------------------------- connector


def connector(
    settings: ClientSettings,
    token: Callable[[], str],
    worker: PeerInfo | None = None,
    *,
    capture: CaptureWriter | None = None,
) -> Connect:
    """A ``connect()`` for the client flow: each call opens a fresh WebRTC link.

    Args:
        settings: server, room, loopback and timeout (``client.toml`` and flags).
        token: gives the token to sign in with, read at each connection.
        worker: the worker to connect to; None: :func:`find_worker` picks it at
            the first connection (by ``settings.worker``) and it is kept after.
        capture: record every link into this capture.

    The returned ``connect()`` raises :class:`LoginRefused` when the token is
    refused, :class:`WorkerUnreachable` when the link does not open, and the
    errors of :func:`find_worker`.
    """
    chosen: list[PeerInfo] = [worker] if worker is not None else []

    async def connect() -> Link:
        from sleap_rtc.signaling.client import SignalingError
        from sleap_rtc.transport.channel import ConnectError
        from sleap_rtc.transport.link import LinkClosed
        from sleap_rtc.transport.webrtc import make_connector

        if not chosen:
            chosen.append(await find_worker(settings, token()))
        target = chosen[0]
        opener = make_connector(
            settings.server,
            room_id=settings.room,
            token=token(),
            worker_id=target.peer_id,
            loopback=settings.loopback,
            timeout=settings.connect_timeout_s,
        )
        try:
            link: Link = await opener()
        except SignalingError as exc:
            if exc.is_auth:
                raise signaling_failure(exc, settings) from None
            raise WorkerUnreachable(f"{COULD_NOT_CONNECT} ({exc.reason})") from None
        except (ConnectError, LinkClosed, OSError) as exc:
            raise WorkerUnreachable(f"{COULD_NOT_CONNECT} ({exc})") from None
        if capture is not None:
            link = wrap_capture(link, capture, remote_peer=target.peer_id)
        return link

    return connect


# ----------------------------------------------------------------------------- capture


def open_capture(path: str | Path | None) -> CaptureWriter | None:
    """A capture writer for ``path``, else ``$SLEAP_RTC_CAPTURE``, else None.

    Raises:
        CaptureUnwritable: ``path`` cannot be created.
    """
    from sleap_rtc.capture.write import recorder

    try:
        return recorder.open_capture(path)
    except OSError as exc:
        raise CaptureUnwritable(f"cannot write the capture {path}: {exc}") from None


def wrap_capture(link: Link, writer: CaptureWriter, *, remote_peer: str) -> Link:
    """``link`` recorded into ``writer`` as the client's side (one MCAP connection per link)."""
    import uuid

    wrapped: Link = writer.wrap(
        link,
        connection_id=uuid.uuid4().hex[:12],
        local_peer="client",
        remote_peer=remote_peer,
        local_role="client",
    )
    return wrapped


def recording(connect: Connect, writer: CaptureWriter, *, remote_peer: str) -> Connect:
    """``connect`` with every link it opens recorded into ``writer``."""

    async def recorded() -> Link:
        return wrap_capture(await connect(), writer, remote_peer=remote_peer)

    return recorded


# ----------------------------------------------------------------------------- login and flow


def fixed_token(settings: ClientSettings, token: str) -> AuthCheck:
    """The login check for a token already in hand (the CLI, the demo): no login step."""
    from sleap_rtc.client.auth import AuthCheck

    return AuthCheck(get_token=lambda: token, login=lambda: None, room=settings.room)


def stored_login(
    settings: ClientSettings, token: str | None = None, *, login_timeout_s: float | None = None
) -> AuthCheck:
    """The login check for the API: ``token``, else the stored one, else the browser login.

    The browser login is given up after ``login_timeout_s`` (``FlowTimeouts.login_s``,
    120 s, by default): a refused or abandoned login then ends the flow with
    "Login required. Please try again." instead of waiting on.
    """
    from sleap_rtc.auth.store import resolve_token
    from sleap_rtc.client.auth import AuthCheck
    from sleap_rtc.client.timeouts import FlowTimeouts

    stored = (
        token
        if token is not None
        else resolve_token(token_file=settings.token_file, server=settings.server)
    )

    async def browser_login() -> str | None:
        from sleap_rtc.client.login import login

        record = await login(settings.server, room=settings.room, timeout=bound)
        return record.token

    bound = FlowTimeouts().login_s if login_timeout_s is None else login_timeout_s
    return AuthCheck(
        get_token=lambda: stored, login=browser_login, room=settings.room, login_timeout_s=bound
    )


def build_flow(
    settings: ClientSettings,
    auth: AuthCheck,
    *,
    client_name: str,
    worker: PeerInfo | None = None,
    worker_id: str | None = None,
    resolver: Resolver | None = None,
    sinks: Sequence[ProgressSink] = (),
    store: PrefixStore | None = None,
    use_saved: bool = True,
    capture: CaptureWriter | None = None,
    follow_progress: bool = True,
    on_accepted: Callable[[AcceptedView], Any] | None = None,
    timeouts: FlowTimeouts | None = None,
) -> PresubmissionFlow:
    """The presubmission flow for these settings, connecting over WebRTC.

    Args:
        auth: the login check (:func:`fixed_token` or :func:`stored_login`); the
            connector signs in with the token it last gave.
        client_name: sent in Hello (``sleap-rtc cli``, ``sleap-rtc api``).
        worker: the worker, when already looked up (:func:`find_worker`);
            None: looked up at the first connection.
        worker_id: the flow's worker id (default: ``worker``'s peer id, else
            ``settings.worker``).
        store: saved prefix rules (default: ``settings.mappings_file``, unless
            ``use_saved`` is False).
        capture: record every connection into this capture.
        timeouts: per-step limits (default: the connect step gets the settings'
            ``connect_timeout_s`` plus 5 s).
    """
    from sleap_rtc import __version__
    from sleap_rtc.client.flow import PresubmissionFlow
    from sleap_rtc.client.resolve import PrefixStore
    from sleap_rtc.client.timeouts import FlowTimeouts

    def current_token() -> str:
        return auth.current or auth.get_token() or ""

    if store is None and use_saved:
        store = PrefixStore(settings.mappings_file)
    if worker_id is None:
        worker_id = worker.peer_id if worker is not None else settings.worker or ""
    return PresubmissionFlow(
        connect=connector(settings, current_token, worker, capture=capture),
        auth=auth,
        resolver=resolver,
        sinks=sinks,
        store=store,
        worker_id=worker_id,
        follow_progress=follow_progress,
        on_accepted=on_accepted,
        timeouts=timeouts or FlowTimeouts(connect_s=settings.connect_timeout_s + 5.0),
        software=f"sleap-rtc {__version__}",
        client_name=client_name,
    )
