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
  redirects to the client's loopback callback), ``GET /healthz``.

Bad input never stops the server: a garbage, oversize, non-JSON, unknown or
incomplete message gets an ``error`` {code, reason} and the connection stays
usable; a connection that keeps flooding past its rate limit is closed. The
sender of a relayed message is the registered id of its connection, never a
field it sent.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import secrets
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from sleap_rtc.auth.tokens import DEFAULT_TTL_S, TokenError, TokenIssuer, TokenVerifier
from sleap_rtc.signaling import protocol as P
from sleap_rtc.signaling.protocol import ErrorCode, MessageError
from sleap_rtc.signaling.rooms import PeerEntry, Registry, RoomConfig, load_rooms, save_rooms

log = logging.getLogger(__name__)

KEY_FILE = "signing_key.pem"
ROOMS_FILE = "rooms.toml"
JWKS_PATH = "/.well-known/jwks.json"
LOGIN_PATH = "/login"
LOGIN_SUBMIT_PATH = "/login/submit"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
#: (sender role, target role) pairs each relayed type may travel between.
_RELAY_ROLES: dict[str, frozenset[tuple[str, str]]] = {
    "offer": frozenset({("client", "worker")}),
    "answer": frozenset({("worker", "client")}),
    "candidate": frozenset({("client", "worker"), ("worker", "client")}),
}


@dataclass(frozen=True)
class Limits:
    """Per-connection limits and timers of the server."""

    #: Largest message handled; bigger ones (up to ``hard_max_bytes``) get an error.
    max_message_bytes: int = P.MAX_MESSAGE_BYTES
    #: Messages over this close the connection (websocket close 1009).
    hard_max_bytes: int = 1024 * 1024
    #: Sustained messages per second per connection, and the burst allowed.
    rate_per_s: float = 20.0
    burst: int = 40
    #: Rate-limited messages tolerated before the connection is closed (1008).
    max_rate_violations: int = 100
    #: Websocket ping interval and pong timeout: a peer silent past both is dropped.
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0
    #: How long a closing handshake may take before the TCP connection is dropped.
    close_timeout_s: float = 2.0
    #: A connection that has not registered by then is closed.
    register_timeout_s: float = 15.0
    #: Relaying to a peer that does not take the message within this is an error.
    relay_timeout_s: float = 5.0
    #: Failed login attempts per room within ``login_window_s`` before refusing.
    max_login_failures: int = 10
    login_window_s: float = 60.0
    max_connections: int = 1000


class TokenBucket:
    """A token bucket: ``take()`` is False when the caller is over its rate."""

    def __init__(self, rate: float, burst: int, *, now: float | None = None) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic() if now is None else now

    def take(self, now: float | None = None) -> bool:
        t = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (t - self.stamp) * self.rate)
        self.stamp = t
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(eq=False)
class _Conn:
    ws: ServerConnection
    bucket: TokenBucket
    peer: PeerEntry | None = None
    violations: int = 0
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


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
        self._login_failures: dict[str, list[float]] = {}
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

    async def _handle(self, ws: ServerConnection) -> None:
        lim = self.limits
        if len(self._all) >= lim.max_connections:
            await ws.close(1013, "server is full")
            return
        conn = _Conn(ws, TokenBucket(lim.rate_per_s, lim.burst))
        self._all.add(conn)
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
                await asyncio.wait_for(conn.ws.send(P.dumps(msg)), self.limits.relay_timeout_s)
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
            return self._login_message(msg)
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
                await asyncio.wait_for(conn.ws.send(P.dumps(out)), self.limits.relay_timeout_s)
        except (ConnectionClosed, TimeoutError):
            raise MessageError(
                ErrorCode.UNKNOWN_PEER, f"peer {target_id!r} did not take the message"
            ) from None
        return {"type": "relayed", "relay_type": kind, "target": target_id}

    # -- HTTP side -------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        parsed = urllib.parse.urlsplit(request.path)
        path = parsed.path.rstrip("/") or "/"
        query = dict(urllib.parse.parse_qsl(parsed.query))
        if path == JWKS_PATH:
            return _response(HTTPStatus.OK, json.dumps(self.jwks()), "application/json")
        if path == "/healthz":
            return _response(HTTPStatus.OK, "ok\n", "text/plain; charset=utf-8")
        if path == LOGIN_PATH:
            return self._login_page(query, message="")
        if path == LOGIN_SUBMIT_PATH:
            return self._login_submit(query)
        if "upgrade" not in request.headers.get("Connection", "").lower():
            return _response(HTTPStatus.NOT_FOUND, "not found\n", "text/plain; charset=utf-8")
        return None

    def _login_page(
        self, query: Mapping[str, str], *, message: str, status: HTTPStatus = HTTPStatus.OK
    ) -> Response:
        error = _check_login_params(query)
        if error:
            return _response(HTTPStatus.BAD_REQUEST, error + "\n", "text/plain; charset=utf-8")
        esc = {
            k: html.escape(query.get(k, ""), quote=True) for k in ("room", "state", "redirect_uri")
        }
        note = html.escape(message)
        body = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>sleap-rtc login</title></head>
<body><h1>sleap-rtc login</h1>
<p>Room <b>{esc["room"]}</b>. Ask the server's operator for the room's login passphrase.</p>
<p id="msg" class="err">{note}</p>
<form id="login" method="get" action="{LOGIN_SUBMIT_PATH}">
<input type="hidden" name="room" value="{esc["room"]}">
<input type="hidden" name="state" value="{esc["state"]}">
<input type="hidden" name="redirect_uri" value="{esc["redirect_uri"]}">
<label>User name <input name="user" autocomplete="username" required></label><br>
<label>Passphrase <input name="secret" type="password" autocomplete="current-password" required>
</label><br>
<button type="submit">Log in</button>
</form>
<script>{LOGIN_SCRIPT}</script>
</body></html>
"""
        return _response(status, body, "text/html; charset=utf-8")

    def _issue_login_token(self, room_id: str, user: str, secret: str) -> str:
        """A token for ``user`` in ``room_id`` if ``secret`` is the room's login secret.

        Raises:
            MessageError: bad user name, throttled (too many failures), or refused.
        """
        if not P.ID_PATTERN.match(user):
            raise MessageError(ErrorCode.BAD_FIELD, "user name: 1-64 letters, digits or _.:@-")
        now = time.monotonic()
        window = [
            t for t in self._login_failures.get(room_id, []) if now - t < self.limits.login_window_s
        ]
        self._login_failures[room_id] = window
        if len(window) >= self.limits.max_login_failures:
            raise MessageError(
                ErrorCode.RATE_LIMITED, "too many failed logins for this room; wait a minute"
            )
        room = self.rooms.get(room_id)
        if room is None or not room.check_login_secret(secret):
            window.append(now)
            raise MessageError(ErrorCode.BAD_CREDENTIALS, "wrong room or passphrase")
        log.info("issued a token for %s in room %s", user, room_id)
        return self.issuer.issue(user, room_id, ttl_s=self.token_ttl_s)

    def _login_message(self, msg: dict[str, Any]) -> dict[str, Any]:
        """The ``login`` request: the login page's script, or a headless login."""
        room_id = P.require_id(msg, "room_id")
        user = P.require_str(msg, "user", max_chars=64)
        secret = P.require_str(msg, "secret", max_chars=1024)
        redirect: str | None = None
        if msg.get("redirect_uri") is not None:
            params = {
                "room": room_id,
                "state": str(msg.get("state") or ""),
                "redirect_uri": str(msg["redirect_uri"]),
            }
            error = _check_login_params(params)
            if error:
                raise MessageError(ErrorCode.BAD_FIELD, error)
        token = self._issue_login_token(room_id, user, secret)
        if msg.get("redirect_uri") is not None:
            redirect = _add_query(str(msg["redirect_uri"]), {"token": token, "state": msg["state"]})
        return {
            "type": "token",
            "token": token,
            "room_id": room_id,
            "subject": user,
            "redirect": redirect,
        }

    def _login_submit(self, query: Mapping[str, str]) -> Response:
        error = _check_login_params(query)
        if error:
            return _response(HTTPStatus.BAD_REQUEST, error + "\n", "text/plain; charset=utf-8")
        try:
            token = self._issue_login_token(
                query["room"], query.get("user", "").strip(), query.get("secret", "")
            )
        except MessageError as exc:
            status = {
                ErrorCode.RATE_LIMITED: HTTPStatus.TOO_MANY_REQUESTS,
                ErrorCode.BAD_FIELD: HTTPStatus.BAD_REQUEST,
            }.get(exc.code, HTTPStatus.UNAUTHORIZED)
            return self._login_page(query, message=exc.reason, status=status)
        target = _add_query(query["redirect_uri"], {"token": token, "state": query["state"]})
        resp = _response(
            HTTPStatus.FOUND, "login complete; redirecting\n", "text/plain; charset=utf-8"
        )
        resp.headers["Location"] = target
        return resp


#: The login page's script: sends the form over the websocket (``login``) so the
#: passphrase never appears in a URL; without script, the plain GET form is used.
LOGIN_SCRIPT = """
(function () {
  var form = document.getElementById("login");
  var msg = document.getElementById("msg");
  if (!form || typeof WebSocket === "undefined") { return; }
  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    var ws = new WebSocket(scheme + window.location.host + "/");
    var done = false;
    ws.onopen = function () {
      ws.send(JSON.stringify({
        type: "login", request_id: "login",
        room_id: form.elements.room.value, user: form.elements.user.value,
        secret: form.elements.secret.value, state: form.elements.state.value,
        redirect_uri: form.elements.redirect_uri.value
      }));
    };
    ws.onmessage = function (event) {
      done = true;
      var reply = JSON.parse(event.data);
      ws.close();
      if (reply.type === "token" && reply.redirect) {
        window.location.replace(reply.redirect);
      } else {
        msg.textContent = reply.reason || "Login failed.";
      }
    };
    ws.onerror = function () { if (!done) { done = true; form.submit(); } };
  });
})();
"""


def _check_login_params(query: Mapping[str, str]) -> str:
    """'' when room/state/redirect_uri are acceptable, else the problem."""
    room = query.get("room", "")
    if not P.ID_PATTERN.match(room):
        return "missing or invalid 'room'"
    state = query.get("state", "")
    if not state or len(state) > 256:
        return "missing or invalid 'state'"
    uri = query.get("redirect_uri", "")
    try:
        parts = urllib.parse.urlsplit(uri)
        port = parts.port
    except ValueError:
        return "invalid 'redirect_uri'"
    # Only loopback callbacks: a token must never be sent to another host.
    if parts.scheme != "http" or parts.hostname not in LOOPBACK_HOSTS or port is None:
        return "'redirect_uri' must be http://127.0.0.1:<port>/... (a loopback callback)"
    return ""


def _add_query(url: str, params: Mapping[str, str]) -> str:
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query) + list(params.items())
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _response(status: HTTPStatus, body: str, content_type: str) -> Response:
    data = body.encode()
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(data))),
            ("Cache-Control", "no-store"),
            ("Connection", "close"),
        ]
    )
    return Response(status.value, status.phrase, headers, data)


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
