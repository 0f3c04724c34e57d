"""``reattach``: following a job by id on a new connection; how opening it fails."""

from __future__ import annotations

import asyncio
import time

import pytest

from sleap_rtc.client.reattach import ReattachLoginRequired, ReattachUnreachable, reattach
from sleap_rtc.client.results import COULD_NOT_CONNECT, LOGIN_REQUIRED
from sleap_rtc.client.timeouts import FlowTimeouts
from sleap_rtc.transport.link import Link


def _follow(connect: object, timeouts: FlowTimeouts) -> object:
    return asyncio.run(
        reattach(
            token="t",
            job_id="j",
            sinks=[],
            connect=connect,  # type: ignore[arg-type]
            stop_requested=lambda: False,
            timeouts=timeouts,
        )
    )


def test_a_connect_that_hangs_is_bounded_by_connect_s() -> None:
    async def hangs() -> Link:
        await asyncio.sleep(30)
        raise AssertionError("unreachable")

    started = time.monotonic()
    with pytest.raises(ReattachUnreachable) as info:
        _follow(hangs, FlowTimeouts(connect_s=0.2))
    assert time.monotonic() - started < 5
    assert str(info.value).startswith(COULD_NOT_CONNECT)
    assert "no connection within 0.2 s" in str(info.value)


def test_a_signaling_server_refusing_the_token_means_log_in_again() -> None:
    class Refused(Exception):
        is_auth = True

    async def refuses() -> Link:
        raise Refused("token expired")

    with pytest.raises(ReattachLoginRequired) as info:
        _follow(refuses, FlowTimeouts())
    assert str(info.value).startswith(LOGIN_REQUIRED) and "token expired" in str(info.value)
