"""Step 2 of the flow: a valid JWT, or the login callback.

>>> check = AuthCheck(get_token=lambda: None, login=lambda: None)
>>> import asyncio
>>> try:
...     asyncio.run(check.token())
... except LoginRequired as exc:
...     print(exc)
login did not give a usable token: no stored token
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sleap_rtc.auth.tokens import DEFAULT_LEEWAY_S, TokenError, TokenVerifier, unverified_expiry
from sleap_rtc.client.callbacks import maybe_await

log = logging.getLogger(__name__)


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
        login_timeout_s: the most an (async) login may take; past it the login
            is given up and :meth:`token` raises LoginRequired. None: no bound.
    """

    get_token: Callable[[], str | None]
    login: Callable[[], str | Awaitable[str | None] | None]
    verifier: TokenVerifier | None = None
    room: str | None = None
    leeway_s: float = DEFAULT_LEEWAY_S
    clock: Callable[[], float] = time.time
    login_timeout_s: float | None = None
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
            async with asyncio.timeout(self.login_timeout_s):
                fresh = await maybe_await(self.login())
        except TimeoutError:
            raise LoginRequired(
                f"the login did not finish within {self.login_timeout_s:g} s"
            ) from None
        except Exception as exc:
            raise LoginRequired(f"login failed: {exc}") from exc
        problem = self._problem(fresh)
        if problem is not None:
            raise LoginRequired(f"login did not give a usable token: {problem}")
        assert fresh is not None
        self.current = fresh
        return fresh
