"""The embedded signaling server: rooms, worker registry, offer/answer relay, tokens.

One websockets server does two jobs:

- **Signaling** over the websocket (shapes in :mod:`sleap_rtc.signaling.protocol`):
  workers register with their room's worker key, clients with a JWT this server
  issued for the room; discovery lists the workers of the caller's room only;
  offers and answers are relayed between peers of the same room; heartbeats are
  websocket pings, and a peer that stops answering them is dropped.
- **HTTP** (``process_request``), for what a browser or a verifier needs:
  ``GET /.well-known/jwks.json`` (public keys), ``GET /login`` (the login form)
  and ``GET /login/submit`` (checks the room's login secret, issues a token and
  redirects to the client's loopback callback), ``GET /healthz``. That side and
  the login desk live in :mod:`sleap_rtc.signaling.web`; the limits in
  :mod:`sleap_rtc.signaling.limits`.

Nobody locks others out: a websocket must register within
``Limits.register_timeout_s``; unregistered websockets are capped per source
address and in total, below ``max_connections``, and when a cap is reached the
*oldest* unregistered socket of the source (or of the busiest source) is closed
(1013) to make room, so a flood of sockets that never register cannot keep a
real peer from connecting and registering, and registered peers are never
touched. Failed logins are throttled per (room, source address), so wrong
passphrases from one address do not lock a room for everyone.

Bad input never stops the server: a garbage, oversize, non-JSON, unknown or
incomplete message gets an ``error`` {code, reason} and the connection stays
usable; a connection that keeps flooding past its rate limit is closed. The
sender of a relayed message is the registered id of its connection, never a
field it sent.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from sleap_rtc.auth.tokens import DEFAULT_TTL_S, TokenError, TokenIssuer, TokenVerifier
from sleap_rtc.signaling import protocol as P
from sleap_rtc.signaling.limits import Limits, TokenBucket, Unregistered
from sleap_rtc.signaling.protocol import ErrorCode, MessageError
from sleap_rtc.signaling.rooms import PeerEntry, Registry, RoomConfig, load_rooms, save_rooms
from sleap_rtc.signaling.web import (
    LoginDesk,
    http_response,
)

__all__ = [
    "KEY_FILE",
    "ROOMS_FILE",
    "SignalingServer",
    "serve_signaling",
]

log = logging.getLogger(__name__)

KEY_FILE = "signing_key.pem"
ROOMS_FILE = "rooms.toml"
#: (sender role, target role) pairs each relayed type may travel between.
_RELAY_ROLES: dict[str, frozenset[tuple[str, str]]] = {
    "offer": frozenset({("client", "worker")}),
    "answer": frozenset({("worker", "client")}),
    "candidate": frozenset({("client", "worker"), ("worker", "client")}),
}


@dataclass(eq=False)
class _Conn:
    ws: ServerConnection
    bucket: TokenBucket
    peer: PeerEntry | None = None
    violations: int = 0
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    source: str = ""


def _source_of(ws: ServerConnection) -> str:
    address = getattr(ws, "remote_address", None)
    if isinstance(address, tuple) and address:
        return str(address[0])
    return str(address or "")


class SignalingServer:
    """A running signaling server; create it with :func:`serve_signaling`."""

    def __init__(
        self,
        *,
        rooms: Mapping[str, RoomConfig],
        issuer: TokenIssuer,
        ice_servers: Sequence[Mapping[str, Any]] = (),
        limits: Limits | None = None,
        token_ttl_s: float = DEFAULT_TTL_S,
    ) -> None:
        self.rooms = dict(rooms)
        self.issuer = issuer
        self.verifier = TokenVerifier.for_issuer(issuer)
        self.ice_servers = [dict(s) for s in ice_servers]
        self.limits = limits or Limits()
        self.token_ttl_s = token_ttl_s
        self.registry = Registry()
        self._conns: dict[str, _Conn] = {}
        self._all: set[_Conn] = set()
        #: Connections not registered yet, by source address, oldest first.
        self.unregistered = Unregistered(self.limits)
        self.login = LoginDesk(
            self.rooms,
            issuer,
            token_ttl_s=token_ttl_s,
            max_failures=self.limits.max_login_failures,
            window_s=self.limits.login_window_s,
            max_sources=self.limits.max_login_sources,
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: Server | None = None
        self.host = ""
        self.port = 0

    # -- lifecycle -------------------------------------------------------

    async def start(self, host: str, port: int) -> None:
        lim = self.limits
        self._server = await serve(
            self._handle,
            host,
            port,
            process_request=self._process_request,
            max_size=lim.hard_max_bytes,
            ping_interval=lim.ping_interval_s,
            ping_timeout=lim.ping_timeout_s,
            close_timeout=lim.close_timeout_s,
        )
        sock = self._server.sockets[0]
        self.host, self.port = sock.getsockname()[:2]

    @property
    def url(self) -> str:
        """The websocket URL clients and workers connect to."""
        return f"ws://{_url_host(self.host)}:{self.port}"

    @property
    def http_url(self) -> str:
        """Base URL of the HTTP side (login page, JWKS)."""
        return f"http://{_url_host(self.host)}:{self.port}"

    def jwks(self) -> dict[str, Any]:
        return self.issuer.jwks()

    async def close(self) -> None:
        """Stop accepting, close every connection, and wait until done."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    async def __aenter__(self) -> SignalingServer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- websocket side --------------------------------------------------

    def _evict(self, key: object, reason: str) -> None:
        """Close an unregistered connection to make room (see :class:`Unregistered`)."""
        assert isinstance(key, _Conn)
        self._all.discard(key)
        task = asyncio.ensure_future(key.ws.close(1013, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, ws: ServerConnection) -> None:
        lim = self.limits
        source = _source_of(ws)
        if not self.unregistered.admit(source, len(self._all), self._evict):
            await ws.close(1013, "server is full")
            return
        conn = _Conn(ws, TokenBucket(lim.rate_per_s, lim.burst), source=source)
        self._all.add(conn)
        self.unregistered.add(conn, source)
        timer = asyncio.get_running_loop().call_later(
            lim.register_timeout_s, self._register_timeout, conn
        )
        try:
            async for raw in ws:
                await self._on_message(conn, raw)
        except ConnectionClosed:
            pass
        finally:
            timer.cancel()
            self._all.discard(conn)
            self.unregistered.remove(conn, conn.source)
            if conn.peer is not None:
                self.registry.remove(conn.peer.peer_id)
                self._conns.pop(conn.peer.peer_id, None)
                log.info("peer %s left room %s", conn.peer.peer_id, conn.peer.room_id)

    def _register_timeout(self, conn: _Conn) -> None:
        if conn.peer is None:
            task = asyncio.ensure_future(conn.ws.close(1008, "register within the timeout"))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, conn: _Conn, msg: Mapping[str, Any]) -> None:
        try:
            async with conn.send_lock:
                async with asyncio.timeout(self.limits.relay_timeout_s):
                    await conn.ws.send(P.dumps(msg))
        except (ConnectionClosed, TimeoutError):
            pass

    async def _on_message(self, conn: _Conn, raw: str | bytes) -> None:
        if not conn.bucket.take():
            conn.violations += 1
            if conn.violations > self.limits.max_rate_violations:
                await conn.ws.close(1008, "rate limit exceeded")
                return
            await self._send(
                conn,
                P.error_message(
                    ErrorCode.RATE_LIMITED,
                    f"too many messages: at most {self.limits.rate_per_s:g}/s "
                    f"(burst {self.limits.burst}); message dropped",
                    request_id=P.request_id_of(raw) if len(raw) < 4096 else None,
                ),
            )
            return
        kind: str | None = None
        rid: str | None = None
        try:
            msg = P.parse_message(raw, max_bytes=self.limits.max_message_bytes)
            kind = msg["type"]
            rid = msg.get("request_id")
            reply = await self._dispatch(conn, kind, msg)
        except MessageError as exc:
            if rid is None and len(raw) <= self.limits.max_message_bytes:
                rid = P.request_id_of(raw)
            await self._send(
                conn, P.error_message(exc.code, exc.reason, request_type=kind, request_id=rid)
            )
            return
        except Exception:
            log.exception("signaling: internal error on %s", kind)
            await self._send(
                conn,
                P.error_message(
                    ErrorCode.INTERNAL, "internal server error", request_type=kind, request_id=rid
                ),
            )
            return
        if reply is not None:
            if rid is not None:
                reply["request_id"] = rid
            await self._send(conn, reply)

    async def _dispatch(self, conn: _Conn, kind: str, msg: dict[str, Any]) -> dict[str, Any] | None:
        if kind == "ping":
            return {"type": "pong", "time": time.time()}
        if kind == "jwks":
            return {"type": "jwks", **self.jwks()}
        if kind == "login":
            return self.login.login_message(msg, source=conn.source)
        if kind == "register":
            return self._register(conn, msg)
        peer = conn.peer
        if peer is None:
            raise MessageError(ErrorCode.NOT_REGISTERED, f"register before sending {kind!r}")
        if kind == "discover_peers":
            return self._discover(peer, msg)
        if kind in P.RELAY_TYPES:
            return await self._relay(peer, kind, msg)
        if kind == "update_metadata":
            peer.metadata = P.validate_metadata(msg.get("metadata"))
            return {"type": "metadata_updated", "peer_id": peer.peer_id, "metadata": peer.metadata}
        raise MessageError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind!r}")

    def _register(self, conn: _Conn, msg: dict[str, Any]) -> dict[str, Any]:
        if conn.peer is not None:
            raise MessageError(
                ErrorCode.ALREADY_REGISTERED, f"this connection is already {conn.peer.peer_id!r}"
            )
        room_id = P.require_id(msg, "room_id")
        role = P.require_str(msg, "role", max_chars=16)
        if role not in P.ROLES:
            raise MessageError(ErrorCode.BAD_FIELD, f"'role' must be one of {', '.join(P.ROLES)}")
        metadata = P.validate_metadata(msg.get("metadata"))
        peer_id = msg.get("peer_id") or f"{role}-{secrets.token_hex(4)}"
        if not isinstance(peer_id, str) or not P.ID_PATTERN.match(peer_id):
            raise MessageError(ErrorCode.BAD_FIELD, "'peer_id' must be a short id")
        room = self.rooms.get(room_id)
        subject: str | None = None
        if role == "worker":
            key = msg.get("worker_key") or msg.get("account_key") or msg.get("api_key")
            if not key:
                raise MessageError(
                    ErrorCode.MISSING_CREDENTIALS, "a worker registers with its room's worker key"
                )
            if room is None or not isinstance(key, str) or not room.check_worker_key(key):
                # Same answer for unknown room and wrong key: rooms are not enumerable.
                raise MessageError(
                    ErrorCode.BAD_CREDENTIALS, "worker key is not valid for this room"
                )
        else:
            token = msg.get("jwt") or msg.get("token")
            if not token:
                raise MessageError(
                    ErrorCode.MISSING_CREDENTIALS,
                    "a client registers with a token (sleap-rtc login)",
                )
            if not isinstance(token, str):
                raise MessageError(ErrorCode.BAD_TOKEN, "token must be a string")
            try:
                claims = self.verifier.verify(token, room=room_id)
            except TokenError as exc:
                raise MessageError(ErrorCode.BAD_TOKEN, f"{exc.reason}: {exc.message}") from None
            if room is None:
                raise MessageError(ErrorCode.UNKNOWN_ROOM, f"room {room_id!r} is not served here")
            subject = claims.subject
        if peer_id in self.registry:
            raise MessageError(
                ErrorCode.PEER_ID_TAKEN, f"peer id {peer_id!r} is already registered"
            )
        entry = PeerEntry(peer_id, room_id, role, metadata, subject=subject)
        self.registry.add(entry)
        self._conns[peer_id] = conn
        conn.peer = entry
        self.unregistered.remove(conn, conn.source)
        log.info("peer %s registered as %s in room %s", peer_id, role, room_id)
        peers = [
            p.public() for p in self.registry.in_room(room_id, role="worker") if p is not entry
        ]
        return {
            "type": "registered_auth",
            "room_id": room_id,
            "token": None,
            "peer_id": peer_id,
            "role": role,
            "peer_list": peers,
            "ice_servers": self.ice_servers,
        }

    def _discover(self, peer: PeerEntry, msg: dict[str, Any]) -> dict[str, Any]:
        filters = msg.get("filters") or {}
        if not isinstance(filters, dict):
            raise MessageError(ErrorCode.BAD_FIELD, "'filters' must be an object")
        room_filter = filters.get("room_id")
        if room_filter not in (None, "", peer.room_id):
            raise MessageError(ErrorCode.FORBIDDEN, "you can only discover peers in your own room")
        role = filters.get("role") or "worker"
        if role not in P.ROLES:
            raise MessageError(ErrorCode.BAD_FIELD, f"'filters.role' must be one of {P.ROLES}")
        if role == "client" and peer.role != "worker":
            raise MessageError(ErrorCode.FORBIDDEN, "only workers may list the clients of a room")
        tags = filters.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise MessageError(ErrorCode.BAD_FIELD, "'filters.tags' must be a list of strings")
        peers = [
            p.public()
            for p in self.registry.in_room(peer.room_id, role=role, tags=tags)
            if p.peer_id != peer.peer_id
        ]
        return {"type": "peer_list", "peers": peers, "count": len(peers)}

    async def _relay(self, peer: PeerEntry, kind: str, msg: dict[str, Any]) -> dict[str, Any]:
        target_id = P.require_str(msg, "target", max_chars=64)
        target = self.registry.get_in_room(target_id, peer.room_id)
        conn = self._conns.get(target_id) if target is not None else None
        if target is None or conn is None or target_id == peer.peer_id:
            raise MessageError(ErrorCode.UNKNOWN_PEER, f"no peer {target_id!r} in your room")
        # Offers go from clients to workers, answers back; a client that took a
        # worker's old id cannot receive offers meant for the worker.
        wanted = _RELAY_ROLES[kind]
        if (peer.role, target.role) not in wanted:
            if kind == "offer":
                raise MessageError(ErrorCode.UNKNOWN_PEER, f"no worker {target_id!r} in your room")
            raise MessageError(
                ErrorCode.FORBIDDEN, f"a {peer.role} cannot send {kind!r} to a {target.role}"
            )
        out: dict[str, Any] = {"type": kind, "sender": peer.peer_id, "target": target_id}
        if kind == "candidate":
            cand = msg.get("candidate")
            if not isinstance(cand, dict | str | None):
                raise MessageError(ErrorCode.BAD_FIELD, "'candidate' must be an object or string")
            out["candidate"] = cand
        else:
            out["sdp"] = P.require_str(msg, "sdp", max_chars=self.limits.max_message_bytes)
            sdp_type = msg.get("sdp_type")
            if sdp_type is not None:
                out["sdp_type"] = str(sdp_type)[:16]
        if isinstance(msg.get("session"), str):
            out["session"] = msg["session"][:64]
        try:
            async with conn.send_lock:
                async with asyncio.timeout(self.limits.relay_timeout_s):
                    await conn.ws.send(P.dumps(out))
        except (ConnectionClosed, TimeoutError):
            raise MessageError(
                ErrorCode.UNKNOWN_PEER, f"peer {target_id!r} did not take the message"
            ) from None
        return {"type": "relayed", "relay_type": kind, "target": target_id}

    # -- HTTP side -------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        return http_response(
            request, jwks=self.jwks, desk=self.login, source=_source_of(connection)
        )


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


async def serve_signaling(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    state_dir: Path,
    rooms: Mapping[str, RoomConfig] | None = None,
    rooms_file: Path | None = None,
    ice_servers: Sequence[Mapping[str, Any]] = (),
    limits: Limits | None = None,
    token_ttl_s: float = DEFAULT_TTL_S,
) -> SignalingServer:
    """Start the signaling server and return once it listens.

    Args:
        host: Address to bind (``127.0.0.1`` by default; ``0.0.0.0`` for a lab network).
        port: Port to bind; 0 picks a free one (see ``server.port``).
        state_dir: Holds the signing key (``signing_key.pem``, 0600) and, when no
            rooms are given, ``rooms.toml`` (created with one random ``default``
            room on first start).
        rooms: Room configuration; wins over ``rooms_file``.
        rooms_file: A room file (TOML) to read instead of ``state_dir/rooms.toml``.
        ice_servers: Handed to peers at registration (``[{urls, username?,
            credential?}]``); empty by default, so nobody contacts a public server.
        limits: Message size, rate, heartbeat and timeout limits.
        token_ttl_s: Lifetime of tokens issued by the login page.

    Returns:
        The running server: ``.port``, ``.url`` (ws://), ``.http_url``, ``.issuer``,
        ``await .close()``.
    """
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    if rooms is None:
        path = rooms_file or state_dir / ROOMS_FILE
        if path.exists():
            rooms = load_rooms(path)
        elif rooms_file is not None:
            raise FileNotFoundError(f"room file {rooms_file} does not exist")
        else:
            rooms = {"default": RoomConfig.generate()}
            save_rooms(path, rooms)
            log.warning("created room 'default' with new secrets in %s", path)
    if not rooms:
        raise ValueError("no rooms configured")
    issuer = TokenIssuer.load_or_create(state_dir / KEY_FILE)
    server = SignalingServer(
        rooms=rooms, issuer=issuer, ice_servers=ice_servers, limits=limits, token_ttl_s=token_ttl_s
    )
    await server.start(host, port)
    log.info("signaling server listening on %s", server.url)
    return server
