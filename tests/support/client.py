"""A raw protocol client for tests: speaks Envelopes over a Link, nothing else."""

from __future__ import annotations

import asyncio
import time

from google.protobuf.message import Message

from sleap_rtc.transport.link import Link
from sleap_rtc_proto.bodies import JOB_EVENTS
from sleap_rtc_proto.codec import Envelope, body_of
from sleap_rtc_proto.stream import MessageStream
from sleap_rtc_proto.v1 import handshake_pb2, job_pb2, progress_pb2
from sleap_rtc_proto.versions import SUPPORTED, Version


class RawClient:
    """Sends bodies and collects every Envelope that comes back."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.stream = MessageStream()
        self.inbox: list[Envelope] = []

    async def send(self, body: Message) -> int:
        message_id, frames = self.stream.send(body)
        for frame in frames:
            await self.link.send(frame)
        return message_id

    async def send_raw(self, frame: bytes) -> None:
        await self.link.send(frame)

    async def next(self, timeout: float = 10.0) -> Envelope:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message from the worker")
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel.
            async with asyncio.timeout(left):
                frame = await self.link.recv()
            envelope = self.stream.receive(frame, time.monotonic())
            if envelope is not None:
                self.inbox.append(envelope)
                return envelope

    async def answer(self, message_id: int, timeout: float = 10.0) -> Envelope:
        """The reply to ``message_id`` (earlier unrelated messages stay in ``inbox``)."""
        for envelope in self.inbox:
            if envelope.correlation_id == message_id:
                return envelope
        while True:
            envelope = await self.next(timeout)
            if envelope.correlation_id == message_id:
                return envelope

    async def request(self, body: Message, timeout: float = 10.0) -> Envelope:
        return await self.answer(await self.send(body), timeout)

    async def hello(
        self,
        token: str = "",
        *,
        features: tuple[str, ...] = ("fragments", "attach"),
        max_version: Version = SUPPORTED.max,
    ) -> Envelope:
        self.stream.version = max_version  # a peer speaks its own highest version first
        return await self.request(
            handshake_pb2.Hello(
                min_version=SUPPORTED.min.to_proto(),
                max_version=max_version.to_proto(),
                software="test-client",
                token=token,
                client_name="pytest",
                features=list(features),
            )
        )

    def job_messages(self, job_id: str) -> list[Message]:
        """Every numbered job message received so far, by sequence (duplicates dropped)."""
        seen: dict[int, Message] = {}
        for envelope in self.inbox:
            if envelope.WhichOneof("body") not in JOB_EVENTS:
                continue
            body = body_of(envelope)
            items = list(body.items) if isinstance(body, progress_pb2.JobProgressBatch) else [body]
            for item in items:
                if isinstance(item, Message) and getattr(item, "job_id", None) == job_id:
                    seen.setdefault(getattr(item, "sequence", 0), item)
        return [seen[k] for k in sorted(seen)]

    async def until_job_end(self, job_id: str, timeout: float = 30.0) -> Message:
        deadline = time.monotonic() + timeout
        while True:
            for message in self.job_messages(job_id):
                if isinstance(message, job_pb2.JobStatus):
                    continue
                if message.DESCRIPTOR.name in ("JobComplete", "JobFailed"):
                    return message
            await self.next(max(0.01, deadline - time.monotonic()))
