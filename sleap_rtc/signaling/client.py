"""A small signaling client used by both the client and the worker.

Every request carries a ``request_id`` and waits, with a timeout, for the reply
with that id; an ``error`` reply raises :class:`SignalingError` with the
server's code and reason (never swallowed). Offers, answers and candidates
relayed by the server wait in an inbox until :meth:`SignalingClient.next_relayed`
takes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from sleap_rtc.signaling import protocol as P

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
#: Seconds the closing handshake may take before the connection is dropped.
CLOSE_TIMEOUT_S = 3.0
#: Relayed messages kept while nobody takes them; the oldest are dropped past this.
INBOX_LIMIT = 256


class SignalingError(ConnectionError):
    """The signaling server refused a request, or could not be reached / timed out.

    ``code`` is the server's stable error code (see ``protocol.ErrorCode``) or one
    of ``unreachable``, ``timeout``, ``closed``; ``reason`` is the human text.
    """

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{reason} [{code}]")
        self.code = code
        self.reason = reason

    @property
    def is_auth(self) -> bool:
        """True when the credentials were refused (log in again / fix the key)."""
        return self.code in P.AUTH_CODES


@dataclass(frozen=True)
class PeerInfo:
    """A peer as listed by discovery."""

    peer_id: str
    role: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    connected_at: float = 0.0

    @property
    def properties(self) -> Mapping[str, Any]:
        props = self.metadata.get("properties", {})
        return props if isinstance(props, Mapping) else {}

    @property
    def name(self) -> str:
        return str(self.properties.get("name") or self.peer_id)

    @property
    def status(self) -> str:
        return str(self.properties.get("status") or "")

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> PeerInfo:
        meta = obj.get("metadata")
        return cls(
            peer_id=str(obj.get("peer_id", "")),
            role=str(obj.get("role", "")),
            metadata=meta if isinstance(meta, Mapping) else {},
            connected_at=float(obj.get("connected_at") or 0.0),
        )


@dataclass(frozen=True)
class Registration:
    """The server's answer to ``register``."""

    peer_id: str
    room_id: str
    role: str
    peers: list[PeerInfo]
    ice_servers: list[dict[str, Any]]


@dataclass(frozen=True)
class Relayed:
    """An offer, answer or candidate relayed from another peer of the room."""

    type: str
    sender: str
    sdp: str = ""
    session: str = ""
    candidate: Any = None


class SignalingClient:
    """One websocket connection to a signaling server; create with :meth:`connect`."""

    def __init__(self, ws: ClientConnection, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self._ws = ws
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._inbox: list[Relayed] = []
        self._cond = asyncio.Condition()
        self._closed_reason: str | None = None
        self.registration: Registration | None = None
        self._reader = asyncio.create_task(self._read_loop(), name="signaling-reader")

    @classmethod
    async def connect(cls, url: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> SignalingClient:
        """Open a connection to ``url`` (ws:// or wss://) within ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                ws = await connect(url, open_timeout=timeout, max_size=P.MAX_MESSAGE_BYTES * 4)
        except TimeoutError:
            raise SignalingError(
                "timeout", f"signaling server {url} did not answer within {timeout:g} s"
            ) from None
        except (OSError, InvalidHandshake, InvalidURI) as exc:
            raise SignalingError(
                "unreachable", f"cannot reach the signaling server at {url}: {exc}"
            ) from None
        return cls(ws, timeout=timeout)

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    @property
    def peer_id(self) -> str | None:
        return self.registration.peer_id if self.registration else None

    @property
    def ice_servers(self) -> list[dict[str, Any]]:
        """ICE servers the signaling server handed out at registration (may be empty)."""
        return self.registration.ice_servers if self.registration else []

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
        self._shutdown("connection closed by this side")

    async def __aenter__(self) -> SignalingClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- requests --------------------------------------------------------

    async def request(
        self, msg: Mapping[str, Any], expect: str, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """Send ``msg`` and wait for the reply of type ``expect`` (or raise its error)."""
        if self._closed_reason is not None:
            raise SignalingError("closed", f"signaling connection is closed: {self._closed_reason}")
        rid = f"r{next(self._ids)}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        wait = self.timeout if timeout is None else timeout
        try:
            try:
                await self._ws.send(P.dumps({**msg, "request_id": rid}))
            except ConnectionClosed as exc:
                raise SignalingError("closed", f"signaling connection closed: {exc}") from None
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can return a reply that
                # arrived together with a cancellation and swallow the cancellation.
                async with asyncio.timeout(wait):
                    reply = await fut
            except TimeoutError:
                raise SignalingError(
                    "timeout", f"no answer to {msg.get('type')!r} within {wait:g} s"
                ) from None
        finally:
            self._pending.pop(rid, None)
        if reply.get("type") == "error":
            raise SignalingError(str(reply.get("code") or "error"), str(reply.get("reason") or ""))
        if reply.get("type") != expect:
            raise SignalingError(
                "bad_reply", f"expected {expect!r} but the server sent {reply.get('type')!r}"
            )
        return reply

    async def register(
        self,
        *,
        room_id: str,
        role: str,
        peer_id: str | None = None,
        token: str | None = None,
        worker_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Registration:
        """Join ``room_id`` as ``role`` ("client" with a token, "worker" with a key)."""
        msg: dict[str, Any] = {"type": "register", "room_id": room_id, "role": role}
        if peer_id:
            msg["peer_id"] = peer_id
        if token:
            msg["jwt"] = token
        if worker_key:
            msg["worker_key"] = worker_key
        if metadata is not None:
            msg["metadata"] = dict(metadata)
        reply = await self.request(msg, "registered_auth", timeout=timeout)
        self.registration = Registration(
            peer_id=str(reply["peer_id"]),
            room_id=str(reply["room_id"]),
            role=str(reply.get("role") or role),
            peers=[PeerInfo.from_json(p) for p in reply.get("peer_list") or []],
            ice_servers=list(reply.get("ice_servers") or []),
        )
        return self.registration

    async def discover(
        self, *, role: str = "worker", tags: list[str] | None = None, timeout: float | None = None
    ) -> list[PeerInfo]:
        """The peers of this connection's room (workers by default)."""
        filters: dict[str, Any] = {"role": role}
        if tags:
            filters["tags"] = tags
        reply = await self.request(
            {"type": "discover_peers", "filters": filters}, "peer_list", timeout=timeout
        )
        return [PeerInfo.from_json(p) for p in reply.get("peers") or []]

    async def update_metadata(
        self, metadata: Mapping[str, Any], *, timeout: float | None = None
    ) -> None:
        """Replace this peer's metadata (e.g. status busy/available)."""
        await self.request(
            {"type": "update_metadata", "metadata": dict(metadata)},
            "metadata_updated",
            timeout=timeout,
        )

    async def jwks(self, *, timeout: float | None = None) -> dict[str, Any]:
        """The server's public keys (a JWKS)."""
        reply = await self.request({"type": "jwks"}, "jwks", timeout=timeout)
        return {"keys": reply.get("keys", [])}

    async def login(
        self, *, room_id: str, user: str, secret: str, timeout: float | None = None
    ) -> str:
        """A token for ``user`` in ``room_id`` from the room's login passphrase (headless login)."""
        reply = await self.request(
            {"type": "login", "room_id": room_id, "user": user, "secret": secret},
            "token",
            timeout=timeout,
        )
        token = reply.get("token")
        if not isinstance(token, str) or not token:
            raise SignalingError("bad_reply", "the server sent no token")
        return token

    async def relay(
        self,
        kind: str,
        target: str,
        *,
        sdp: str | None = None,
        session: str = "",
        candidate: Any = None,
        timeout: float | None = None,
    ) -> None:
        """Send an offer/answer/candidate to ``target``; raises if the server refuses."""
        msg: dict[str, Any] = {"type": kind, "target": target}
        if sdp is not None:
            msg["sdp"] = sdp
            msg["sdp_type"] = kind
        if candidate is not None:
            msg["candidate"] = candidate
        if session:
            msg["session"] = session
        await self.request(msg, "relayed", timeout=timeout)

    async def next_relayed(
        self,
        kind: str | None = None,
        *,
        sender: str | None = None,
        session: str | None = None,
        timeout: float | None = None,
    ) -> Relayed:
        """Take the next relayed message matching the filters; wait up to ``timeout``.

        ``timeout=None`` uses the client's default; pass ``float('inf')`` to wait
        until the connection closes.
        """

        def match(m: Relayed) -> bool:
            return (
                (kind is None or m.type == kind)
                and (sender is None or m.sender == sender)
                and (session is None or m.session == session)
            )

        wait = self.timeout if timeout is None else timeout
        async with self._cond:
            try:
                async with asyncio.timeout(None if wait == float("inf") else wait):
                    while True:
                        for i, m in enumerate(self._inbox):
                            if match(m):
                                return self._inbox.pop(i)
                        if self._closed_reason is not None:
                            raise SignalingError(
                                "closed", f"signaling connection closed: {self._closed_reason}"
                            )
                        await self._cond.wait()
            except TimeoutError:
                what = kind or "message"
                src = f" from {sender}" if sender else ""
                raise SignalingError("timeout", f"no {what}{src} within {wait:g} s") from None

    # -- reader ----------------------------------------------------------

    async def _read_loop(self) -> None:
        reason = "connection closed by the server"
        try:
            async for raw in self._ws:
                try:
                    msg = json.loads(raw)
                except ValueError:
                    log.warning("signaling: ignoring a non-JSON message from the server")
                    continue
                if isinstance(msg, dict):
                    await self._on_message(msg)
        except ConnectionClosed as exc:
            reason = f"connection closed ({exc.rcvd.code if exc.rcvd else 'no close frame'})"
        except asyncio.CancelledError:
            reason = "connection closed by this side"
            raise
        finally:
            self._shutdown(reason)
            async with self._cond:
                self._cond.notify_all()

    async def _on_message(self, msg: dict[str, Any]) -> None:
        rid = msg.get("request_id")
        if isinstance(rid, str) and rid in self._pending:
            fut = self._pending[rid]
            if not fut.done():
                fut.set_result(msg)
            return
        kind = msg.get("type")
        if kind in P.RELAY_TYPES:
            item = Relayed(
                type=str(kind),
                sender=str(msg.get("sender", "")),
                sdp=str(msg.get("sdp") or ""),
                session=str(msg.get("session") or ""),
                candidate=msg.get("candidate"),
            )
            async with self._cond:
                self._inbox.append(item)
                if len(self._inbox) > INBOX_LIMIT:
                    dropped = self._inbox.pop(0)
                    log.warning(
                        "signaling: inbox full, dropped a %s from %s", dropped.type, dropped.sender
                    )
                self._cond.notify_all()
        elif kind == "error":
            log.warning("signaling server error: %s [%s]", msg.get("reason"), msg.get("code"))
        elif kind == "ping":
            with contextlib.suppress(ConnectionClosed):
                await self._ws.send(P.dumps({"type": "pong"}))

    def _shutdown(self, reason: str) -> None:
        if self._closed_reason is None:
            self._closed_reason = reason
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(
                    SignalingError("closed", f"signaling connection closed: {reason}")
                )
