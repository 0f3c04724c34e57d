"""Tests for sleap_rtc.transport.link: the in-memory Link pair tests build on."""

from __future__ import annotations

import asyncio

import pytest

from sleap_rtc.transport.link import Link, LinkClosed, memory_link_pair


def test_memory_links_satisfy_the_link_protocol() -> None:
    client, worker = memory_link_pair()
    assert isinstance(client, Link) and isinstance(worker, Link)


def test_frames_cross_in_order_both_ways() -> None:
    async def scenario() -> None:
        client, worker = memory_link_pair()
        for i in range(5):
            await client.send(bytes([i]))
        await worker.send(b"back")
        assert [await worker.recv() for _ in range(5)] == [bytes([i]) for i in range(5)]
        assert await client.recv() == b"back"

    asyncio.run(asyncio.wait_for(scenario(), 5.0))


def test_close_wakes_the_peer_and_refuses_sends() -> None:
    async def scenario() -> None:
        client, worker = memory_link_pair()
        waiter = asyncio.create_task(worker.recv())
        await asyncio.sleep(0)
        await client.close()
        with pytest.raises(LinkClosed):
            await asyncio.wait_for(waiter, 1.0)
        assert client.closed and worker.closed
        with pytest.raises(LinkClosed):
            await client.send(b"x")
        with pytest.raises(LinkClosed):
            await worker.send(b"x")
        await client.close()  # idempotent

    asyncio.run(asyncio.wait_for(scenario(), 5.0))


def test_frames_sent_before_close_are_still_delivered() -> None:
    async def scenario() -> None:
        client, worker = memory_link_pair()
        await client.send(b"last words")
        await client.close()
        assert await worker.recv() == b"last words"
        with pytest.raises(LinkClosed):
            await worker.recv()

    asyncio.run(asyncio.wait_for(scenario(), 5.0))


def test_drop_hook_loses_frames_but_records_them() -> None:
    async def scenario() -> None:
        client, worker = memory_link_pair()
        client.drop = lambda frame: frame.startswith(b"drop")
        await client.send(b"drop me")
        await client.send(b"keep me")
        assert await asyncio.wait_for(worker.recv(), 1.0) == b"keep me"
        assert client.sent == [b"drop me", b"keep me"]

    asyncio.run(asyncio.wait_for(scenario(), 5.0))


def test_reorder_window_delivers_every_frame_in_another_order() -> None:
    async def scenario() -> None:
        client, worker = memory_link_pair()
        client.reorder_window = 8
        frames = [bytes([i]) for i in range(8)]
        for frame in frames:
            await client.send(frame)
        received = [await asyncio.wait_for(worker.recv(), 1.0) for _ in frames]
        assert sorted(received) == frames
        assert received != frames

    asyncio.run(asyncio.wait_for(scenario(), 5.0))
