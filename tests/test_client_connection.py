"""WorkerConnection (the asyncio adapter around ClientSession): deadlines, lost links, events."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sleap_rtc.client.connection import ConnectionLost, RequestTimeout, WorkerConnection
from sleap_rtc.client.session import ClientSession
from sleap_rtc.transport.link import memory_link_pair
from sleap_rtc_proto.stream import MessageStream
from sleap_rtc_proto.v1 import handshake_pb2, paths_pb2, progress_pb2
from sleap_rtc_proto.versions import SUPPORTED


class Worker:
    """The worker's side, scripted with a real MessageStream."""

    def __init__(self) -> None:
        self.stream = MessageStream()

    def read(self, frames: list[bytes]) -> list[Any]:
        out = [self.stream.receive(f, 0.0) for f in frames]
        return [e for e in out if e is not None]

    def send(self, body: Any, correlation_id: int = 0) -> list[bytes]:
        return self.stream.send(body, correlation_id=correlation_id)[1]


def ack() -> handshake_pb2.HelloAck:
    return handshake_pb2.HelloAck(
        chosen_version=SUPPORTED.max.to_proto(), worker_id="w1", features=["attach"]
    )


def _adapter_pair() -> tuple[Any, Any, Worker]:
    client_end, worker_end = memory_link_pair()
    return WorkerConnection(client_end, ClientSession(default_timeout_s=0.3)), worker_end, Worker()


async def _answer_hello(worker_end: Any, worker: Worker) -> None:
    [hello] = worker.read([await worker_end.recv()])
    for frame in worker.send(ack(), hello.message_id):
        await worker_end.send(frame)


def test_adapter_timeout_then_late_answer_is_ignored() -> None:
    async def main() -> None:
        conn, worker_end, worker = _adapter_pair()
        async with conn:
            hello = asyncio.create_task(conn.hello())
            await _answer_hello(worker_end, worker)
            await hello
            check = asyncio.create_task(conn.check_paths("/l.slp"))
            [req] = worker.read([await worker_end.recv()])
            with pytest.raises(RequestTimeout):
                await check
            for frame in worker.send(paths_pb2.PathCheckResult(), req.message_id):
                await worker_end.send(frame)
            await asyncio.sleep(0.05)
            assert conn.violations[-1].reason == "late"
            assert conn.session.pending == {}

    asyncio.run(asyncio.wait_for(main(), 10))


def test_adapter_link_closed_mid_request_and_events_iterator() -> None:
    async def main() -> None:
        conn, worker_end, worker = _adapter_pair()
        hello = asyncio.create_task(conn.hello())
        await _answer_hello(worker_end, worker)
        await hello
        for body in (
            progress_pb2.JobProgress(job_id="other", sequence=1),
            progress_pb2.JobProgress(job_id="j", sequence=1),
            progress_pb2.JobLog(job_id="j", sequence=2, lines=["x"]),
            progress_pb2.JobComplete(job_id="j", sequence=3),
        ):
            for frame in worker.send(body):
                await worker_end.send(frame)
        got = [type(e).__name__ async for e in conn.events("j", idle_timeout_s=2)]
        assert got == ["ProgressReceived", "LogReceived", "JobCompleted"]
        check = asyncio.create_task(conn.check_paths("/l.slp", timeout_s=5))
        await worker_end.recv()
        await worker_end.close()
        with pytest.raises(ConnectionLost):
            await check
        with pytest.raises(ConnectionLost):
            await conn.next_event(timeout_s=1)
        with pytest.raises(ConnectionLost):
            await conn.attach("j")
        await conn.close()

    asyncio.run(asyncio.wait_for(main(), 10))


def test_list_directory_sends_the_request_and_returns_the_page() -> None:
    from sleap_rtc.client.connection import RemoteError
    from sleap_rtc_proto.errors import SessionMisuse
    from sleap_rtc_proto.v1 import error_pb2

    async def answer_hello(worker_end: Any, worker: Worker, features: list[str]) -> None:
        [hello] = worker.read([await worker_end.recv()])
        assert "browse" in hello.hello.features
        body = ack()
        del body.features[:]
        body.features.extend(features)
        for frame in worker.send(body, hello.message_id):
            await worker_end.send(frame)

    async def main() -> None:
        conn, worker_end, worker = _adapter_pair()
        async with conn:
            hello = asyncio.create_task(conn.hello())
            await answer_hello(worker_end, worker, ["browse"])
            await hello
            call = asyncio.create_task(conn.list_directory("/mnt/a", page_token="3", page_size=2))
            [req] = worker.read([await worker_end.recv()])
            assert req.directory_list_request == paths_pb2.DirectoryListRequest(
                path="/mnt/a", page_token="3", page_size=2
            )
            page = paths_pb2.DirectoryList(
                path="/mnt/a",
                entries=[paths_pb2.DirectoryEntry(name="x.slp", path="/mnt/a/x.slp", kind=1)],
                total=4,
                next_page_token="5",
            )
            for frame in worker.send(page, req.message_id):
                await worker_end.send(frame)
            assert await call == page
            call = asyncio.create_task(conn.list_directory("/etc"))
            [req] = worker.read([await worker_end.recv()])
            refusal = error_pb2.Error(code=error_pb2.ERROR_CODE_FORBIDDEN, message="'/etc' lies")
            for frame in worker.send(refusal, req.message_id):
                await worker_end.send(frame)
            with pytest.raises(RemoteError, match="/etc"):
                await call
        old, worker_end, worker = _adapter_pair()
        async with old:
            hello = asyncio.create_task(old.hello())
            await answer_hello(worker_end, worker, ["attach"])
            await hello
            with pytest.raises(SessionMisuse, match="browse"):
                await old.list_directory()
            assert old.session.pending == {}

    asyncio.run(asyncio.wait_for(main(), 10))
