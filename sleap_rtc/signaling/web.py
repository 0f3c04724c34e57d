"""The signaling server's HTTP side and its login desk.

What a browser or a verifier needs, served by the websockets server's
``process_request`` before any websocket upgrade:

- ``GET /.well-known/jwks.json``: the public keys tokens are verified with;
- ``GET /login``: the login form (room, state and a loopback ``redirect_uri``);
- ``GET /login/submit``: checks the room's login passphrase, issues a token and
  redirects to the client's loopback callback with the token and the state;
- ``GET /healthz``.

:class:`LoginDesk` issues tokens from a room's login passphrase, for the form
and for the websocket ``login`` request (the page's script and headless
logins), and throttles failed attempts per (room, source address): wrong
passphrases from one address lock only that address out of that room. Tokens only ever go to a
loopback callback.
"""

from __future__ import annotations

import html
import json
import logging
import time
import urllib.parse
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from sleap_rtc.auth.tokens import DEFAULT_TTL_S, TokenIssuer
from sleap_rtc.signaling import protocol as P
from sleap_rtc.signaling.protocol import (
    HEALTH_PATH,
    JWKS_PATH,
    LOGIN_PATH,
    LOGIN_SUBMIT_PATH,
    ErrorCode,
    MessageError,
)
from sleap_rtc.signaling.rooms import RoomConfig

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_TEXT = "text/plain; charset=utf-8"


class LoginDesk:
    """Issues login tokens for the rooms of one server.

    Args:
        rooms: The server's rooms (read at each login, so later changes count).
        issuer: Signs the tokens.
        token_ttl_s: Lifetime of the tokens it issues.
        max_failures: Failed logins per (room, source address) within ``window_s``
            before that source is refused for that room.
        window_s: The throttling window.
        max_sources: (room, source) pairs remembered at most (oldest forgotten).
    """

    def __init__(
        self,
        rooms: Mapping[str, RoomConfig],
        issuer: TokenIssuer,
        *,
        token_ttl_s: float = DEFAULT_TTL_S,
        max_failures: int = 10,
        window_s: float = 60.0,
        max_sources: int = 10_000,
    ) -> None:
        self.rooms = rooms
        self.issuer = issuer
        self.token_ttl_s = token_ttl_s
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_sources = max_sources
        self._failures: dict[tuple[str, str], list[float]] = {}

    def issue(self, room_id: str, user: str, secret: str, *, source: str = "") -> str:
        """A token for ``user`` in ``room_id`` if ``secret`` is the room's login secret.

        Raises:
            MessageError: bad user name, throttled (too many failures), or refused.
        """
        if not P.ID_PATTERN.match(user):
            raise MessageError(ErrorCode.BAD_FIELD, "user name: 1-64 letters, digits or _.:@-")
        now = time.monotonic()
        key = (room_id, source)
        window = [t for t in self._failures.pop(key, []) if now - t < self.window_s]
        if window:
            self._failures[key] = window  # re-inserted: the dict stays oldest-first
        if len(window) >= self.max_failures:
            wait = self.window_s - (now - window[0])
            raise MessageError(
                ErrorCode.RATE_LIMITED,
                f"too many failed logins for this room from your address; "
                f"try again in {max(1, round(wait))} s",
            )
        room = self.rooms.get(room_id)
        if room is None or not room.check_login_secret(secret):
            window.append(now)
            self._failures[key] = window
            while len(self._failures) > self.max_sources:
                del self._failures[next(iter(self._failures))]
            raise MessageError(ErrorCode.BAD_CREDENTIALS, "wrong room or passphrase")
        log.info("issued a token for %s in room %s", user, room_id)
        return self.issuer.issue(user, room_id, ttl_s=self.token_ttl_s)

    def login_message(self, msg: dict[str, Any], *, source: str = "") -> dict[str, Any]:
        """The websocket ``login`` request: the login page's script, or a headless login."""
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
            error = check_login_params(params)
            if error:
                raise MessageError(ErrorCode.BAD_FIELD, error)
        token = self.issue(room_id, user, secret, source=source)
        if msg.get("redirect_uri") is not None:
            redirect = add_query(str(msg["redirect_uri"]), {"token": token, "state": msg["state"]})
        return {
            "type": "token",
            "token": token,
            "room_id": room_id,
            "subject": user,
            "redirect": redirect,
        }

    def page(
        self, query: Mapping[str, str], *, message: str = "", status: HTTPStatus = HTTPStatus.OK
    ) -> Response:
        """The login form for ``query`` (room, state, redirect_uri), with ``message`` shown."""
        error = check_login_params(query)
        if error:
            return response(HTTPStatus.BAD_REQUEST, error + "\n", _TEXT)
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
        return response(status, body, "text/html; charset=utf-8")

    def submit(self, query: Mapping[str, str], *, source: str = "") -> Response:
        """The plain form's submit: a redirect to the callback, or the form with the reason."""
        error = check_login_params(query)
        if error:
            return response(HTTPStatus.BAD_REQUEST, error + "\n", _TEXT)
        try:
            token = self.issue(
                query["room"],
                query.get("user", "").strip(),
                query.get("secret", ""),
                source=source,
            )
        except MessageError as exc:
            status = {
                ErrorCode.RATE_LIMITED: HTTPStatus.TOO_MANY_REQUESTS,
                ErrorCode.BAD_FIELD: HTTPStatus.BAD_REQUEST,
            }.get(exc.code, HTTPStatus.UNAUTHORIZED)
            return self.page(query, message=exc.reason, status=status)
        target = add_query(query["redirect_uri"], {"token": token, "state": query["state"]})
        resp = response(HTTPStatus.FOUND, "login complete; redirecting\n", _TEXT)
        resp.headers["Location"] = target
        return resp


def http_response(
    request: Request, *, jwks: Callable[[], dict[str, Any]], desk: LoginDesk, source: str = ""
) -> Response | None:
    """The answer to a plain HTTP request; None lets a websocket upgrade through."""
    parsed = urllib.parse.urlsplit(request.path)
    path = parsed.path.rstrip("/") or "/"
    query = dict(urllib.parse.parse_qsl(parsed.query))
    if path == JWKS_PATH:
        return response(HTTPStatus.OK, json.dumps(jwks()), "application/json")
    if path == HEALTH_PATH:
        return response(HTTPStatus.OK, "ok\n", _TEXT)
    if path == LOGIN_PATH:
        return desk.page(query)
    if path == LOGIN_SUBMIT_PATH:
        return desk.submit(query, source=source)
    if "upgrade" not in request.headers.get("Connection", "").lower():
        return response(HTTPStatus.NOT_FOUND, "not found\n", _TEXT)
    return None


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


def check_login_params(query: Mapping[str, str]) -> str:
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


def add_query(url: str, params: Mapping[str, str]) -> str:
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query) + list(params.items())
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def response(status: HTTPStatus, body: str, content_type: str) -> Response:
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
