"""The worker's busy/available status in discovery (worker/status.py) against the real server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from rtc_helpers import WORKER_KEY, run, signaling_server

from sleap_rtc.signaling.client import SignalingClient
from sleap_rtc.signaling.protocol import worker_metadata
from sleap_rtc.worker.status import StatusReporter


class FakeRegistry:
    def __init__(self) -> None:
        self.active = 0

    def active_count(self) -> int:
        return self.active


class FakeService:
    def __init__(self) -> None:
        self.registry = FakeRegistry()


def metadata(status: str, active: int) -> dict[str, Any]:
    meta = worker_metadata(name="gpu", status=status)
    meta["properties"]["active_jobs"] = active
    return meta


def test_status_follows_the_jobs_and_reregistration_keeps_it(tmp_path: Path) -> None:
    async def main() -> None:
        service = FakeService()
        reporter = StatusReporter(service, 1, metadata, poll_s=0.01)
        async with (
            signaling_server(tmp_path) as server,
            await SignalingClient.connect(server.url) as worker,
            await SignalingClient.connect(server.url) as client,
        ):
            await worker.register(
                room_id="lab",
                role="worker",
                worker_key=WORKER_KEY,
                peer_id="w1",
                metadata=reporter.registration_metadata(),
            )
            await client.register(
                room_id="lab", role="client", token=server.issuer.issue("a", "lab")
            )

            async def shown() -> tuple[str, int]:
                (peer,) = await client.discover()
                return peer.status, int(peer.properties["active_jobs"])

            assert await shown() == ("available", 0)
            assert not await reporter.report_once(worker)  # nothing changed
            service.registry.active = 1  # a job started: the only slot is taken
            assert await reporter.report_once(worker)
            assert await shown() == ("busy", 1)
            service.registry.active = 0  # it ended
            assert await reporter.report_once(worker)
            assert await shown() == ("available", 0)
            # The polling loop does the same on its own.
            running = asyncio.ensure_future(reporter.run(worker))
            try:
                service.registry.active = 1
                async with asyncio.timeout(10):
                    while await shown() != ("busy", 1):
                        await asyncio.sleep(0.01)
            finally:
                running.cancel()
            # Re-registering (a new signaling connection) starts from the current status.
            await worker.close()
            async with asyncio.timeout(10):  # the server has dropped the old connection
                while await client.discover():
                    await asyncio.sleep(0.01)
            async with await SignalingClient.connect(server.url) as again:
                await again.register(
                    room_id="lab",
                    role="worker",
                    worker_key=WORKER_KEY,
                    peer_id="w1",
                    metadata=reporter.registration_metadata(),
                )
                assert await shown() == ("busy", 1)

    run(main())


def test_busy_only_when_every_slot_is_taken() -> None:
    service = FakeService()
    reporter = StatusReporter(service, 2, metadata)
    assert reporter.current() == ("available", 0)
    service.registry.active = 1
    assert reporter.current() == ("available", 1)
    service.registry.active = 2
    assert reporter.current() == ("busy", 2)
