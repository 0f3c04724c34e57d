"""Shared helpers for the signaling, WebRTC and login tests: a loopback server, bounded runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection

from sleap_rtc.signaling.limits import Limits
from sleap_rtc.signaling.rooms import RoomConfig
from sleap_rtc.signaling.server import SignalingServer, serve_signaling

T = TypeVar("T")

WORKER_KEY = "lab-worker-key-1"
OTHER_KEY = "other-worker-key-2"
LOGIN_SECRET = "open sesame"
ROOMS = {
    "lab": RoomConfig(worker_key=WORKER_KEY, login_secret=LOGIN_SECRET),
    "other": RoomConfig(worker_key=OTHER_KEY, login_secret="other secret"),
}


def run(coro: Awaitable[T], timeout: float = 30.0) -> T:
    """Run a test coroutine with a hard bound, so nothing hangs."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


@contextlib.asynccontextmanager
async def signaling_server(tmp_path: Path, **limits: Any) -> AsyncIterator[SignalingServer]:
    server = await serve_signaling(
        "127.0.0.1", 0, state_dir=tmp_path / "signal", rooms=ROOMS, limits=Limits(**limits)
    )
    try:
        yield server
    finally:
        await server.close()


async def send_json(ws: ClientConnection, msg: dict[str, Any]) -> None:
    await ws.send(json.dumps(msg))


async def recv_json(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), timeout)
    obj = json.loads(raw)
    assert isinstance(obj, dict)
    return obj


async def ask(ws: ClientConnection, msg: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    await send_json(ws, msg)
    return await recv_json(ws, timeout)
