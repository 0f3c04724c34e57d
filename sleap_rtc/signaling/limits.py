"""The signaling server's limits: per-connection sizes, rates and timers, and the rate bucket."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
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
    #: A connection that has not registered by then is closed (short: an unregistered
    #: socket holds a slot nobody authenticated).
    register_timeout_s: float = 5.0
    #: Relaying to a peer that does not take the message within this is an error.
    relay_timeout_s: float = 5.0
    #: Failed login attempts per (room, source address) within ``login_window_s``
    #: before that source is refused for that room (others are not affected).
    max_login_failures: int = 10
    login_window_s: float = 60.0
    #: (room, source) pairs whose failures are remembered; the oldest are forgotten.
    max_login_sources: int = 10_000
    #: All websockets at once.
    max_connections: int = 1000
    #: Websockets not registered yet, at once: the rest of ``max_connections`` is kept
    #: for registered peers, so unauthenticated sockets can never crowd them out.
    max_unregistered: int = 200
    #: Unregistered websockets at once from one source address.
    max_unregistered_per_source: int = 16


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


class Unregistered:
    """Sockets that have not registered yet, by source address, oldest first (sans-IO).

    :meth:`admit` makes room for one more from a source and returns the sockets to
    close (1013, with the reason) for it: the source's oldest at its per-source
    cap, the busiest source's oldest at the total cap, or (when the server holds
    ``max_connections``) any unregistered one. Registered peers are never chosen.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._by_source: dict[str, OrderedDict[Hashable, str]] = {}
        #: Sockets closed to make room (for logs and tests).
        self.evicted = 0

    def __len__(self) -> int:
        return sum(len(keys) for keys in self._by_source.values())

    def add(self, key: Hashable, source: str) -> None:
        self._by_source.setdefault(source, OrderedDict())[key] = source

    def remove(self, key: Hashable, source: str) -> None:
        keys = self._by_source.get(source)
        if keys is not None:
            keys.pop(key, None)
            if not keys:
                del self._by_source[source]

    def _oldest(self, source: str) -> Hashable:
        key = next(iter(self._by_source[source]))
        self.remove(key, source)
        self.evicted += 1
        return key

    def _busiest(self) -> str:
        return max(self._by_source, key=lambda s: len(self._by_source[s]))

    def admit(self, source: str, connections: int, evict: Callable[[Hashable, str], None]) -> bool:
        """Room for one more unregistered socket from ``source`` while ``connections``
        are open; ``evict(key, reason)`` closes each socket chosen to make room.
        False when the server is full of registered peers."""
        lim = self.limits
        if len(self._by_source.get(source, ())) >= lim.max_unregistered_per_source:
            evict(self._oldest(source), "too many unregistered connections from your address")
            connections -= 1
        if len(self) >= lim.max_unregistered:
            evict(self._oldest(self._busiest()), "too many unregistered connections")
            connections -= 1
        if connections >= lim.max_connections:
            if not self._by_source:
                return False
            evict(self._oldest(self._busiest()), "server is full")
        return True
