"""worker/connection.py: the outbox is capped in bytes as well as frames."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from sleap_rtc.worker.connection import Connection


class StuckLink:
    """A link whose reader never reads: every send waits for ever (a test stand-in)."""

    closed = False

    async def send(self, frame: bytes) -> None:
        await asyncio.Event().wait()

    async def recv(self) -> bytes:
        await asyncio.Event().wait()
        raise AssertionError

    async def close(self) -> None:
        self.closed = True


class Frames:
    """A session stand-in that hands out the frames it is given."""

    session_id = "s"

    def __init__(self) -> None:
        self.queued: list[bytes] = []

    def data_to_send(self) -> list[bytes]:
        out, self.queued = self.queued, []
        return out


def test_big_frames_close_a_slow_reader_long_before_the_frame_cap() -> None:
    async def main() -> tuple[bool, int, int]:
        session = Frames()
        conn = Connection(
            StuckLink(),
            "peer",
            session,  # type: ignore[arg-type]
            max_outbox_frames=20_000,
            max_outbox_bytes=10 * 1024 * 1024,
        )
        frames = 0
        for _ in range(1000):  # bounded
            session.queued.append(b"x" * 256 * 1024)
            conn.flush()
            frames += 1
            if conn.dead:
                break
        await asyncio.sleep(0)
        return conn.dead, frames, conn.outbox_bytes

    dead, frames, queued = asyncio.run(main())
    assert dead
    assert frames <= 41  # 10 MiB of 256 KiB frames, not 20,000 frames
    assert queued <= 10 * 1024 * 1024


def test_bytes_are_given_back_as_frames_go_out() -> None:
    class Quick(StuckLink):
        async def send(self, frame: bytes) -> None:
            await asyncio.sleep(0)

    async def main() -> Any:
        session = Frames()
        conn = Connection(Quick(), "peer", session, max_outbox_bytes=1024 * 1024)  # type: ignore[arg-type]
        writer = asyncio.create_task(conn._writer())
        try:
            for _ in range(100):  # 100 x 64 KiB through a 1 MiB cap: never full
                session.queued.append(b"y" * 64 * 1024)
                conn.flush()
                await asyncio.sleep(0.001)
            for _ in range(100):
                if conn.outbox.empty():
                    break
                await asyncio.sleep(0.01)
            return conn.dead, conn.outbox_bytes
        finally:
            writer.cancel()

    dead, queued = asyncio.run(main())
    assert not dead and queued == 0


# --- what connections may send before Hello, worker-wide -----------------------------------


def test_unauthenticated_connections_share_one_byte_budget(tmp_path: Path) -> None:
    """Four connections each start a 4 MiB fragmented message before Hello (the issue saw
    four add 444 MiB): with a 1 MiB worker-wide budget the ones past it are closed, a
    normal client still says Hello, and the budget is given back."""
    from support.client import RawClient

    from sleap_rtc.transport.link import memory_link_pair
    from sleap_rtc.worker.service import WorkerService
    from sleap_rtc.worker.serviceconfig import WorkerConfig
    from sleap_rtc_proto.codec import encode
    from sleap_rtc_proto.v1 import envelope_pb2

    (tmp_path / "mnt").mkdir()
    total, chunk = 4 * 1024 * 1024, 200_000

    def piece(n: int, i: int) -> bytes:
        body = envelope_pb2.Fragment(
            fragmented_message_id=n,
            index=i,
            count=-(-total // chunk),
            total_bytes=total,
            data=b"q" * chunk,
        )
        return encode(body, message_id=n + 1 + i)

    async def main() -> tuple[list[bool], int, int]:
        service = WorkerService(
            WorkerConfig(
                mounts=[tmp_path / "mnt"],
                state_dir=tmp_path / "s",
                verifier=None,
                build_index=False,
                max_preauth_bytes=1024 * 1024,
            )
        )
        await service.start()
        serving: list[asyncio.Task[None]] = []
        try:
            ends, workers = [], []
            for _ in range(4):
                client_end, worker_end = memory_link_pair()
                serving.append(asyncio.create_task(service.serve(worker_end)))
                ends.append(client_end)
                workers.append(worker_end)
            for end in ends:
                for i in range(3):  # 600 KB each, nothing else
                    with contextlib.suppress(Exception):
                        await end.send(piece(1, i))
                await asyncio.sleep(0.05)
            closed = [end.closed for end in workers]  # the worker closed its end
            used = service._preauth_budget.used
            client_end, worker_end = memory_link_pair()
            serving.append(asyncio.create_task(service.serve(worker_end)))
            ack = await RawClient(client_end).hello()
            assert ack.WhichOneof("body") == "hello_ack", ack
            for end in ends:
                await end.close()
            await asyncio.sleep(0.1)
            return closed, used, service._preauth_budget.used
        finally:
            await service.close()
            for task in serving:
                task.cancel()
            await asyncio.gather(*serving, return_exceptions=True)

    closed, used, after = asyncio.run(main())
    assert closed.count(True) >= 2, closed  # 1 MiB holds at most two of them
    assert closed[0] is False
    assert used <= 1024 * 1024
    assert after == 0
