"""Helpers for the relay tests: a hub on 127.0.0.1, a job's relay folder, a real relay process.

The relay runs as ``python -m sleap_rtc.worker.relay FOLDER`` (what the batch script
``exec``s) with a stand-in trainer from this folder; nothing is faked on the relay's side.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sleap_rtc.worker.relayhub import RelayHub
from sleap_rtc.worker.relaywire import Hello, Log, Progress, RelayMessage, RelaySpec, Result
from sleap_rtc.worker.trainer import RunLimits
from sleap_rtc.worker.trainplan import TrainPlan

HERE = Path(__file__).resolve().parent
FAKE = HERE / "fake_sleap_nn.py"
PACED = HERE / "paced_trainer.py"
PEEK = HERE / "peek_trainer.py"
REPO = HERE.parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Collector:
    """A job's ``on_message``: everything the hub delivered, in order."""

    messages: list[RelayMessage] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, msg: RelayMessage) -> None:
        self.messages.append(msg)
        self.changed.set()

    def of(self, kind: type) -> list[Any]:
        return [m for m in self.messages if isinstance(m, kind)]

    def seqs(self) -> list[int]:
        return [m.seq for m in self.messages if not isinstance(m, Hello)]

    def lines(self) -> list[str]:
        return [line for m in self.of(Log) for line in m.lines]

    def events(self) -> list[int]:
        return [m.update.event for m in self.of(Progress)]

    def result(self) -> Result | None:
        found = self.of(Result)
        return found[-1] if found else None

    async def wait_for(self, test: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not test():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out; got {len(self.messages)} messages")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 0.2))


def job_folder(
    root: Path,
    hub: RelayHub,
    job_id: str = "job-1",
    *,
    fake: dict[str, Any] | None = None,
    peek: dict[str, Any] | None = None,
    command: tuple[str, ...] | None = None,
    confinement: str = "auto",
    limits: RunLimits | None = None,
    result_wait_s: float = 30.0,
    register: Callable[[RelayMessage], None] | None = None,
    keys: tuple[str, str] | None = None,
) -> tuple[Path, RelaySpec]:
    """A job's relay folder under ``root/shared`` (the mount), its spec written; the
    job's key registered with ``hub`` when ``register`` is given."""
    from sleap_rtc.worker.relaywire import write_spec

    shared = root / "shared"
    folder = shared / "jobs" / job_id / "relay"
    ckpt = shared / "runs" / job_id
    (ckpt / "run").mkdir(parents=True, exist_ok=True)  # the worker makes the run folder
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "config.yaml"
    config.write_text(json.dumps({"model_config": {}, "fake": fake or {}, "peek": peek or {}}))
    public, secret = keys or hub.new_keys()
    spec = RelaySpec(
        job_id=job_id,
        endpoint=hub.endpoint,
        server_key=hub.server_key,
        client_public=public,
        client_secret=secret,
        trainer_command=command or (sys.executable, str(FAKE), "train"),
        plan=TrainPlan(
            config_file=config, labels_path="/data/labels.slp", ckpt_dir=ckpt, run_name="run"
        ),
        confinement=confinement,
        mounts=(str(shared),),
        limits=limits or RunLimits(no_progress_timeout_s=60.0, log_flush_s=0.05),
        result_wait_s=result_wait_s,
    )
    write_spec(folder, spec)
    if register is not None:
        hub.register(job_id, public, register)
    return folder, spec


@dataclass
class RelayProcess:
    """A relay process whose output is read as it comes (none is lost on a timeout)."""

    proc: asyncio.subprocess.Process
    out: bytearray = field(default_factory=bytearray)
    err: bytearray = field(default_factory=bytearray)
    readers: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode


async def _pump(stream: asyncio.StreamReader | None, into: bytearray) -> None:
    assert stream is not None
    while chunk := await stream.read(65536):
        into.extend(chunk)


async def start_relay(folder: Path, **env: str) -> RelayProcess:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sleap_rtc.worker.relay",
        str(folder),
        cwd=str(REPO),
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    relay = RelayProcess(proc)
    relay.readers = [
        asyncio.create_task(_pump(proc.stdout, relay.out)),
        asyncio.create_task(_pump(proc.stderr, relay.err)),
    ]
    return relay


async def finish(relay: RelayProcess, timeout: float = 60.0) -> tuple[int, str, str]:
    """Wait for the relay (killing it after ``timeout``): (status, stdout, stderr)."""
    try:
        await asyncio.wait_for(relay.proc.wait(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(relay.pid, signal.SIGKILL)
        await relay.proc.wait()
        await asyncio.wait(relay.readers, timeout=5)
        raise AssertionError(
            f"the relay did not exit in {timeout} s: {relay.err.decode()[-3000:]}"
        ) from None
    await asyncio.wait(relay.readers, timeout=5)
    assert relay.proc.returncode is not None
    return relay.proc.returncode, relay.out.decode(), relay.err.decode()


def async_test(fn: Callable[[Any, Path], Any], timeout: float = 120.0) -> Callable[[Path], None]:
    """``async def test_x(ctx, tmp_path)`` as a plain pytest test: a fresh event loop and
    ZMQ context each, a bound on the whole test (there is no pytest-asyncio here)."""
    import zmq.asyncio

    def test(tmp_path: Path) -> None:
        async def go() -> None:
            ctx = zmq.asyncio.Context()
            try:
                await asyncio.wait_for(fn(ctx, tmp_path), timeout)
            finally:
                ctx.destroy(linger=0)

        asyncio.run(go())

    test.__name__ = fn.__name__
    test.__doc__ = fn.__doc__
    return test
