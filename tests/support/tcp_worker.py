#!/usr/bin/env python3
"""A real WorkerService in its own process, reachable over loopback TCP (tests only).

``tcp_worker.py MNT STATE PORT_FILE TRAINER_JSON [EXTRA_JSON]``: starts the
service on the state folder (EXTRA_JSON: more WorkerConfig fields, e.g. the
Slurm backend with ``"slurm": {...SlurmSettings fields}``), serves each TCP
connection as one link (frames length-prefixed with 4 bytes, big endian) and
writes the port to PORT_FILE once it listens. The test kills this process with
SIGKILL and starts it again, so the transport is a stand-in but the worker, its
job store and its trainers are real.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

from sleap_rtc.config.worker import SlurmSettings
from sleap_rtc.transport.link import LinkClosed
from sleap_rtc.worker.service import WorkerService
from sleap_rtc.worker.serviceconfig import WorkerConfig
from sleap_rtc.worker.trainer import RunLimits


class StreamLink:
    """A Link over an asyncio stream pair."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def send(self, frame: bytes) -> None:
        if self._closed:
            raise LinkClosed("closed")
        try:
            self.writer.write(len(frame).to_bytes(4, "big") + frame)
            await self.writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            self._closed = True
            raise LinkClosed(str(exc)) from None

    async def recv(self) -> bytes:
        try:
            size = int.from_bytes(await self.reader.readexactly(4), "big")
            return await self.reader.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self._closed = True
            raise LinkClosed(str(exc)) from None

    async def close(self) -> None:
        self._closed = True
        self.writer.close()


async def main(
    mnt: Path, state: Path, port_file: Path, trainer: list[str], more: dict[str, Any]
) -> None:
    # The stand-in trainer lives in tests/support, which a confined trainer may not read.
    fields = {f.name for f in dataclasses.fields(WorkerConfig)}
    extra: dict[str, Any] = {"confinement": "off"} if "confinement" in fields else {}
    if "slurm" in more:
        slurm = dict(more.pop("slurm"))
        if slurm.get("bin_dir"):
            slurm["bin_dir"] = Path(slurm["bin_dir"])
        extra["slurm"] = SlurmSettings(**slurm)
    extra.update(more)
    service = WorkerService(
        WorkerConfig(
            **extra,  # type: ignore[arg-type]
            mounts=[mnt],
            state_dir=state,
            verifier=None,
            trainer_command=trainer,
            build_index=False,
            token_secret=b"k" * 32,
            run_limits=RunLimits(no_progress_timeout_s=120, term_grace_s=2),
        )
    )
    await service.start()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await service.serve(StreamLink(reader, writer), peer_id="tcp")

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(port))
    tmp.rename(port_file)
    async with server:
        await asyncio.sleep(600)  # bounded: the test kills it long before


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    asyncio.run(
        main(
            Path(sys.argv[1]),
            Path(sys.argv[2]),
            Path(sys.argv[3]),
            json.loads(sys.argv[4]),
            json.loads(sys.argv[5]) if len(sys.argv) > 5 else {},
        )
    )
