"""Opt-in loopback ICE candidates for aiortc (tests, the local demo, loopback-only hosts).

aioice gathers host candidates from ``aioice.ice.get_host_addresses``, which
skips ``127.0.0.1`` (and ``::1``). On a host whose only interface is loopback
no candidate is gathered and the datachannel never opens; on any host, two
peers on the same machine would rather not depend on the LAN address.

:func:`loopback_candidates` is a context manager. Inside it, candidate
gathering started *from the current asyncio context* (``setLocalDescription``
gathers synchronously in the caller's task) uses ``127.0.0.1`` only. It works
by wrapping ``get_host_addresses`` once per process with a function that
consults a :class:`contextvars.ContextVar`; outside the context (any other
task, any other connection) the wrapper calls the original unchanged, so the
patch is inert unless asked for. Nothing else in aioice or aiortc is touched.

Only peers on the same host can connect over loopback candidates; both sides
must use the option (a remote peer cannot reach 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator

import aioice.ice

LOOPBACK_ADDRESS = "127.0.0.1"

_loopback: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "sleap_rtc_loopback_ice", default=False
)
_lock = threading.Lock()
_original: Callable[[bool, bool], list[str]] | None = None


def _host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    if _loopback.get():
        return [LOOPBACK_ADDRESS]
    assert _original is not None
    return _original(use_ipv4, use_ipv6)


def install() -> None:
    """Wrap ``aioice.ice.get_host_addresses`` (idempotent, inert until used)."""
    global _original
    with _lock:
        if _original is None:
            _original = aioice.ice.get_host_addresses
            aioice.ice.get_host_addresses = _host_addresses


def installed() -> bool:
    return aioice.ice.get_host_addresses is _host_addresses


@contextlib.contextmanager
def loopback_candidates(enabled: bool = True) -> Iterator[None]:
    """Within this block, ICE gathering in this context uses 127.0.0.1 only."""
    if not enabled:
        yield
        return
    install()
    token = _loopback.set(True)
    try:
        yield
    finally:
        _loopback.reset(token)
