"""Logging in, on the client side: browser login with a loopback callback, headless
login with a passphrase, and JWKS fetching (``sleap-rtc login`` and the API use it).

It talks to the signaling server as any client does (HTTP paths from
:mod:`sleap_rtc.signaling.protocol`, the websocket through
:class:`~sleap_rtc.signaling.client.SignalingClient`) and never imports the server.

The flow (the native-app pattern of RFC 8252, with the token in the redirect):

1. The client picks a random ``state`` and listens once on
   ``http://127.0.0.1:<free port>/callback``.
2. It opens the browser at the signaling server's ``/login`` page with the room,
   the state and that callback URL (the server accepts loopback callbacks only).
3. The user types a name and the room's passphrase; the server issues a token
   and redirects the browser to the callback with ``token`` and ``state``.
4. The client refuses a wrong or already-used state, verifies the token against
   the server's public keys (JWKS, fetched over HTTP), and stores it 0600.

:class:`JwksCache` fetches and caches a server's JWKS for verifiers (workers
verify each client's token themselves), refetching once when a token names an
unknown key (key rotation).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import urllib.parse
import urllib.request
import webbrowser
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sleap_rtc.auth.store import StoredToken, TokenStore
from sleap_rtc.auth.tokens import Claims, TokenError, TokenVerifier, write_private
from sleap_rtc.signaling.client import SignalingClient, SignalingError
from sleap_rtc.signaling.protocol import JWKS_PATH, LOGIN_PATH

log = logging.getLogger(__name__)

#: The path of the one-shot loopback listener the login page redirects to.
CALLBACK_PATH = "/callback"
DEFAULT_LOGIN_TIMEOUT_S = 300.0
MAX_REQUEST_BYTES = 16 * 1024


class LoginError(Exception):
    """The login did not produce a usable token; ``reason`` is a short code.

    Reasons: timeout, state_mismatch, denied, bad_token, unreachable.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def http_base(server_url: str) -> str:
    """The HTTP base URL of a signaling server given as ws://, wss://, http:// or https://."""
    parts = urllib.parse.urlsplit(server_url.strip())
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https"):
        raise ValueError(f"not a signaling server URL: {server_url!r}")
    return urllib.parse.urlunsplit((scheme, parts.netloc, "", "", ""))


def login_url(server_url: str, *, room: str, state: str, redirect_uri: str) -> str:
    """The server's login page for ``room``, coming back to ``redirect_uri``."""
    query = urllib.parse.urlencode({"room": room, "state": state, "redirect_uri": redirect_uri})
    return f"{http_base(server_url)}{LOGIN_PATH}?{query}"


def _get_json(url: str, timeout: float) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        data = json.loads(resp.read(1024 * 1024))
    if not isinstance(data, dict):
        raise ValueError(f"{url} did not return a JSON object")
    return data


async def fetch_jwks(server_url: str, *, timeout: float = 10.0) -> dict[str, Any]:
    """The server's public keys from ``/.well-known/jwks.json``.

    Raises:
        LoginError: ``unreachable`` when the server does not answer with a JWKS.
    """
    url = http_base(server_url) + JWKS_PATH
    try:
        async with asyncio.timeout(timeout + 1.0):
            data = await asyncio.to_thread(_get_json, url, timeout)
    except (OSError, ValueError, TimeoutError) as exc:
        raise LoginError("unreachable", f"cannot fetch public keys from {url}: {exc}") from None
    if not isinstance(data.get("keys"), list):
        raise LoginError("unreachable", f"{url} returned no 'keys'")
    return data


class JwksCache:
    """A server's JWKS, fetched on first use, kept ``ttl_s``, optionally cached on disk.

    The disk copy (``path``) lets a worker verify tokens across a restart while
    the signaling server is down; the public keys are not secret, but the file
    is still written owner-only.
    """

    def __init__(
        self,
        server_url: str,
        *,
        ttl_s: float = 3600.0,
        path: Path | None = None,
        fetch: Callable[[str], Any] | None = None,
        verifier_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.server_url = server_url
        self.ttl_s = ttl_s
        self.path = path
        self._fetch = fetch or fetch_jwks
        self._kwargs = dict(verifier_kwargs or {})
        self._jwks: dict[str, Any] | None = None
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def jwks(self, *, refresh: bool = False) -> dict[str, Any]:
        async with self._lock:
            fresh = self._jwks is not None and time.monotonic() - self._fetched_at < self.ttl_s
            if fresh and not refresh:
                assert self._jwks is not None
                return self._jwks
            try:
                data = await self._fetch(self.server_url)
            except LoginError:
                disk = self._read_disk()
                if disk is None and self._jwks is None:
                    raise
                log.warning("using cached public keys: %s is unreachable", self.server_url)
                data = disk if disk is not None else self._jwks
            else:
                if self.path is not None:
                    write_private(self.path, json.dumps(data).encode())
            assert data is not None
            self._jwks, self._fetched_at = data, time.monotonic()
            return data

    def _read_disk(self) -> dict[str, Any] | None:
        if self.path is None or not self.path.exists():
            return None
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    async def verifier(self, *, refresh: bool = False) -> TokenVerifier:
        return TokenVerifier.from_jwks(await self.jwks(refresh=refresh), **self._kwargs)

    async def verify(self, token: str, *, room: str | None = None) -> Claims:
        """Verify ``token``; on an unknown key, refetch the JWKS once and retry."""
        try:
            return (await self.verifier()).verify(token, room=room)
        except TokenError as exc:
            if exc.reason != "unknown_key":
                raise
        return (await self.verifier(refresh=True)).verify(token, room=room)


class CallbackListener:
    """A one-shot HTTP listener on 127.0.0.1 that waits for the login redirect.

    Requests to the callback with a wrong state, or a state already used, are
    refused (HTTP 400) and do not end the wait; the first request with the
    expected state and a token ends it, and the state cannot be used again.
    """

    def __init__(self, state: str, *, host: str = "127.0.0.1") -> None:
        self.state = state
        self.host = host
        self.port = 0
        self.refused: list[str] = []
        self._used: set[str] = set()
        self._result: asyncio.Future[str] | None = None
        self._server: asyncio.Server | None = None

    @property
    def redirect_uri(self) -> str:
        return f"http://{self.host}:{self.port}{CALLBACK_PATH}"

    async def start(self) -> None:
        self._result = asyncio.get_running_loop().create_future()
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def wait(self, timeout: float) -> str:
        """The token from the first valid callback; LoginError on timeout."""
        assert self._result is not None, "start() first"
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(self._result)
        except TimeoutError:
            raise LoginError("timeout", f"no login came back within {timeout:g} s") from None

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self._server.wait_closed()
        if self._result is not None and not self._result.done():
            self._result.cancel()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(10.0):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            if len(head) > MAX_REQUEST_BYTES:
                await _reply(writer, 431, "request too large")
                return
            status, text = self._on_request(head.split(b"\r\n", 1)[0].decode("latin-1"))
            await _reply(writer, status, text)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _on_request(self, request_line: str) -> tuple[int, str]:
        parts = request_line.split(" ")
        if len(parts) != 3 or parts[0] != "GET":
            return 405, "only GET"
        target = urllib.parse.urlsplit(parts[1])
        if target.path != CALLBACK_PATH:
            return 404, "not found"
        query = dict(urllib.parse.parse_qsl(target.query))
        state = query.get("state", "")
        if (
            not state
            or state in self._used
            or not secrets.compare_digest(state.encode(), self.state.encode())
        ):
            self.refused.append("replayed" if state in self._used else "state_mismatch")
            log.warning("login callback refused: wrong or replayed state")
            return 400, "Login refused: this login link is not the one sleap-rtc is waiting for."
        if "error" in query:
            self._used.add(state)
            self._finish_error(query.get("error", "denied"))
            return 400, "Login failed."
        token = query.get("token", "")
        if not token:
            return 400, "Login refused: no token."
        self._used.add(state)
        if self._result is not None and not self._result.done():
            self._result.set_result(token)
        return 200, "Login complete. You can close this tab and return to sleap-rtc."

    def _finish_error(self, error: str) -> None:
        if self._result is not None and not self._result.done():
            self._result.set_exception(
                LoginError("denied", f"the server refused the login: {error}")
            )


async def _reply(writer: asyncio.StreamWriter, status: int, text: str) -> None:
    body = text.encode()
    phrase = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}.get(
        status, "Error"
    )
    head = (
        f"HTTP/1.1 {status} {phrase}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + body)
    with contextlib.suppress(Exception):
        async with asyncio.timeout(5.0):
            await writer.drain()


async def login(
    server_url: str,
    *,
    room: str,
    open_browser: Callable[[str], object] = webbrowser.open,
    show_url: Callable[[str], None] | None = None,
    timeout: float = DEFAULT_LOGIN_TIMEOUT_S,
    store: TokenStore | None = None,
    state: str | None = None,
) -> StoredToken:
    """Log in to ``room`` at ``server_url`` through the browser and save the token.

    Args:
        server_url: The signaling server (ws://, wss://, http:// or https://).
        room: The room to get a token for.
        open_browser: Opens a URL (``webbrowser.open``; tests drive the URL instead).
            Called in a thread.
        show_url: Called with the login URL before the browser opens, so the user
            can open it by hand (e.g. over SSH).
        timeout: Seconds to wait for the user to finish.
        store: Where to save the token (the per-user store by default).
        state: The anti-forgery state (random by default; tests fix it).

    Raises:
        LoginError: timeout, refused login, unreachable server or a token that
            does not verify against the server's public keys.
    """
    listener = CallbackListener(state or secrets.token_urlsafe(32))
    await listener.start()
    try:
        url = login_url(
            server_url, room=room, state=listener.state, redirect_uri=listener.redirect_uri
        )
        if show_url is not None:
            show_url(url)
        try:
            async with asyncio.timeout(30.0):
                await asyncio.to_thread(open_browser, url)
        except Exception as exc:  # no browser: the user can still open the URL by hand
            log.warning("could not open a browser (%s); open the login URL by hand", exc)
        token = await listener.wait(timeout)
    finally:
        await listener.close()
    return await _verify_and_store(server_url, token, room=room, store=store)


async def login_with_passphrase(
    server_url: str,
    *,
    room: str,
    user: str,
    secret: str,
    store: TokenStore | None = None,
    timeout: float = 10.0,
) -> StoredToken:
    """Headless login: ask the server for a token with the room's passphrase, verify, store.

    For machines without a browser (``sleap-rtc login --user NAME`` reading the
    passphrase from a prompt or stdin). The token is verified against the
    server's JWKS before it is stored, exactly as after a browser login.

    Raises:
        LoginError: ``denied`` (wrong passphrase, throttled), ``unreachable`` or ``bad_token``.
    """
    try:
        async with await SignalingClient.connect(server_url, timeout=timeout) as sig:
            token = await sig.login(room_id=room, user=user, secret=secret)
    except SignalingError as exc:
        reason = "unreachable" if exc.code in ("unreachable", "timeout", "closed") else "denied"
        raise LoginError(reason, f"login refused: {exc.reason}") from None
    return await _verify_and_store(server_url, token, room=room, store=store)


async def _verify_and_store(
    server_url: str, token: str, *, room: str, store: TokenStore | None
) -> StoredToken:
    jwks = await fetch_jwks(server_url)
    try:
        claims = TokenVerifier.from_jwks(jwks).verify(token, room=room)
    except (TokenError, ValueError) as exc:
        raise LoginError("bad_token", f"the token from the login does not verify: {exc}") from None
    return (store or TokenStore()).save(token, server=server_url, room=room, subject=claims.subject)
