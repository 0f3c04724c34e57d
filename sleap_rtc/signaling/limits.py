"""The signaling server's limits: per-connection sizes, rates and timers, and the rate bucket."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sleap_rtc.signaling import protocol as P


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
