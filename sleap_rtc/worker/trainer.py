"""Runs the trainer (``sleap-nn train`` by default) for one job, and translates what it says.

Pure parts live beside it and are re-exported here: :mod:`.trainplan`
(:class:`TrainPlan`, :func:`build_command`, :func:`hydra_quote`) and
:mod:`.zmqprogress` (:class:`ProgressTranslator`: sleap-nn's ZMQ JSON ->
:class:`ProgressUpdate`), plus :class:`LineSplitter` here. The adapter,
:class:`TrainerRun`, binds a fresh pair of ZMQ ports on 127.0.0.1 for each run
(a SUB the trainer's PUB connects to, a PUB its controller SUB connects to),
starts the trainer in its own process group, streams its output and events to a
:class:`RunSink`, and ends with a :class:`RunResult`.

sleap-nn facts this relies on (0.3.5): ``sleap-nn train --config PATH.yaml
[--video-path-map OLD NEW]... | [--prefix-map OLD NEW]... [overrides]``, at
most one kind of path-map option per run; ``++key=value`` sets a key whether
or not the YAML has it; ``trainer_config.zmq.publish_port`` /
``controller_port`` make the trainer *connect* to ``tcp://127.0.0.1:<port>``;
the controller obeys ``{"command": "stop"}`` after the current batch.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import os
import re
import shlex
import signal
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import zmq
import zmq.asyncio

from sleap_rtc.worker.jobrecord import RunResult
from sleap_rtc.worker.jobstore import TrainerIdentity
from sleap_rtc.worker.launcher import Launch, LaunchPolicy
from sleap_rtc.worker.orphans import die_with_worker, process_start_ticks
from sleap_rtc.worker.trainplan import (
    TrainPlan,
    build_command,
)
from sleap_rtc.worker.zmqprogress import (
    ProgressTranslator,
    ProgressUpdate,
)
from sleap_rtc_proto.v1 import progress_pb2

__all__ = [
    "LineSplitter",
    "RunLimits",
    "RunSink",
    "TrainerRun",
    "list_outputs",
]

#: Output files listed in JobComplete.outputs (top level of the run dir).
OUTPUT_SUFFIXES = (".ckpt", ".yaml", ".yml", ".json", ".csv", ".h5", ".slp")


class LineSplitter:
    """Bytes -> complete output lines (``\\n`` or ``\\r`` ends a line), UTF-8 tolerant."""

    def __init__(self, max_line_chars: int = 4000) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""
        self.max_line_chars = max_line_chars

    def feed(self, data: bytes, *, final: bool = False) -> list[str]:
        text = self._partial + self._decoder.decode(data, final=final)
        parts = re.split(r"\r\n|\r|\n", text)
        self._partial = "" if final else parts.pop()
        if len(self._partial) > self.max_line_chars:
            parts.append(self._partial)
            self._partial = ""
        return [p[: self.max_line_chars] for p in parts if p.strip()]


# --- the run -----------------------------------------------------------------


@dataclass(frozen=True)
class RunLimits:
    """Time limits and output batching of a run (seconds; None = no limit)."""

    no_progress_timeout_s: float | None = 1800.0
    max_run_s: float | None = None
    term_grace_s: float = 10.0
    log_flush_s: float = 0.2
    log_batch_lines: int = 100
    log_tail_lines: int = 50
    max_line_chars: int = 4000
    stop_resend_s: float = 1.0
    poll_s: float = 0.1


class RunSink(Protocol):
    """Receives a run's events as they happen (called on the event loop)."""

    def progress(self, update: ProgressUpdate) -> None: ...

    def log(self, stream: int, lines: list[str]) -> None: ...


def list_outputs(run_dir: Path) -> tuple[str, ...]:
    """Main output files at the top of ``run_dir`` (checkpoints, configs, metrics)."""
    try:
        entries = sorted(run_dir.iterdir())
    except OSError:
        return ()
    return tuple(str(p) for p in entries if p.is_file() and p.suffix in OUTPUT_SUFFIXES)


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class TrainerRun:
    """One trainer process and its two ZMQ sockets (asyncio adapter).

    Args:
        command: the trainer command prefix, e.g. ``("sleap-nn", "train")``.
        plan: what to run.
        sink: gets progress and output lines.
        context: the worker's ``zmq.asyncio.Context``.
        limits: timeouts and batching.
        env: extra environment variables for the trainer.
        sandbox: how to launch it confined (:class:`~.launcher.LaunchPolicy`:
            Landlock launcher, private temp, scrubbed environment); None runs
            the command directly with the worker's environment.
        on_started: called with the trainer's identity (pid, start time, ports)
            as soon as its process exists (the job store records it).
        on_exited: called with the exit status when the trainer process ended,
            before the result is worked out.

    The trainer dies with the worker (:func:`~.orphans.die_with_worker`, Linux).
    """

    def __init__(
        self,
        command: Sequence[str],
        plan: TrainPlan,
        sink: RunSink,
        *,
        context: zmq.asyncio.Context,
        limits: RunLimits = RunLimits(),
        env: Mapping[str, str] | None = None,
        on_started: Callable[[TrainerIdentity], None] | None = None,
        on_exited: Callable[[int | None], None] | None = None,
        sandbox: LaunchPolicy | None = None,
    ) -> None:
        self.sandbox = sandbox
        self.on_started = on_started
        self.on_exited = on_exited
        self.command = tuple(command)
        self.plan = plan
        self.sink = sink
        self.context = context
        self.limits = limits
        self.env = dict(env or {})
        self.publish_port = 0
        self.controller_port = 0
        self._launch: Launch | None = None
        self.pid: int | None = None
        self.stop_requested = False
        self._end_request: tuple[int, str] | None = None
        self._wake = asyncio.Event()
        self._pub: zmq.asyncio.Socket | None = None
        self._translator = ProgressTranslator()
        self._tail: deque[str] = deque(maxlen=limits.log_tail_lines)
        self._pending: dict[int, list[str]] = {}
        self._last_activity = 0.0

    # --- control ---------------------------------------------------------

    @property
    def log_tail(self) -> tuple[str, ...]:
        """The last lines the trainer printed (at most ``limits.log_tail_lines``)."""
        return tuple(self._tail)

    def stop(self) -> None:
        """Ask the trainer to stop after the current batch (sleap-nn's stop command)."""
        self.stop_requested = True
        self._send_stop()

    def cancel(
        self,
        code: int = progress_pb2.FAILURE_CODE_CANCELLED,
        message: str = "job cancelled by the client",
    ) -> None:
        """Terminate the trainer's process group (SIGTERM, then SIGKILL after a grace)."""
        if self._end_request is None:
            self._end_request = (code, message)
        self._wake.set()

    def _send_stop(self) -> None:
        if self._pub is not None and not self._pub.closed:
            with contextlib.suppress(zmq.ZMQError):
                self._pub.send_string(json.dumps({"command": "stop"}), flags=zmq.NOBLOCK)

    # --- output ----------------------------------------------------------

    def _lines(self, stream: int, lines: list[str]) -> None:
        if not lines:
            return
        self._last_activity = time.monotonic()
        self._tail.extend(lines)
        pending = self._pending.setdefault(stream, [])
        pending.extend(lines)
        if len(pending) >= self.limits.log_batch_lines:
            self._flush(stream)

    def _flush(self, stream: int | None = None) -> None:
        for key in [stream] if stream is not None else list(self._pending):
            lines = self._pending.pop(key, [])
            while lines:
                self.sink.log(key, lines[: self.limits.log_batch_lines])
                lines = lines[self.limits.log_batch_lines :]

    async def _read(self, reader: asyncio.StreamReader, stream: int) -> None:
        splitter = LineSplitter(self.limits.max_line_chars)
        while True:
            data = await reader.read(65536)
            if not data:
                self._lines(stream, splitter.feed(b"", final=True))
                return
            self._lines(stream, splitter.feed(data))

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(self.limits.log_flush_s)
            self._flush()

    async def _events(self, sub: zmq.asyncio.Socket) -> None:
        while True:
            raw = await sub.recv()
            self._event(raw)

    def _event(self, raw: bytes) -> None:
        self._last_activity = time.monotonic()
        update = self._translator.translate(raw)
        if update is not None:
            self._flush()  # keep output and progress in order
            self.sink.progress(update)

    # --- the run ---------------------------------------------------------

    async def run(self) -> RunResult:
        """Start the trainer, follow it to the end, and say how it ended. Never raises
        for trainer misbehaviour; cancelling the task kills the process group."""
        started = time.monotonic()
        sub = self.context.socket(zmq.SUB)
        pub = self.context.socket(zmq.PUB)
        tasks: list[asyncio.Task[None]] = []
        proc: asyncio.subprocess.Process | None = None
        try:
            for sock in (sub, pub):
                sock.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.RCVHWM, 0)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            self.publish_port = sub.bind_to_random_port("tcp://127.0.0.1")
            self.controller_port = pub.bind_to_random_port("tcp://127.0.0.1")
            self._pub = pub
            try:
                argv = build_command(
                    self.command,
                    self.plan,
                    publish_port=self.publish_port,
                    controller_port=self.controller_port,
                )
            except ValueError as exc:
                return self._result(
                    False, progress_pb2.FAILURE_CODE_INTERNAL, None, str(exc), started
                )
            self.sink.log(progress_pb2.LOG_STREAM_WORKER, [f"$ {shlex.join(argv)}"])
            env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
            if self.sandbox is not None:
                try:
                    launch = self.sandbox.prepare(
                        self.command,
                        argv,
                        run_dir=self.plan.run_dir,
                        config_file=self.plan.config_file,
                        manifest=self.plan.manifest,
                        publish_port=self.publish_port,
                        controller_port=self.controller_port,
                    )
                except OSError as exc:
                    return self._result(
                        False,
                        progress_pb2.FAILURE_CODE_INTERNAL,
                        None,
                        f"could not prepare the trainer's launch: {exc.strerror or exc}",
                        started,
                    )
                self._launch = launch
                argv, env = launch.argv, launch.env
                self.sink.log(progress_pb2.LOG_STREAM_WORKER, [f"trainer {launch.note}"])
            run_dir = self.plan.run_dir  # the job's own folder when it exists: stray files
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    cwd=str(run_dir if run_dir.is_dir() else self.plan.ckpt_dir),
                    env=env,
                    start_new_session=True,
                    preexec_fn=die_with_worker(),
                )
            except OSError as exc:
                return self._result(
                    False,
                    progress_pb2.FAILURE_CODE_TRAINER_NOT_FOUND,
                    None,
                    f"could not start the trainer {argv[0]!r}: {exc.strerror or exc}",
                    started,
                )
            self.pid = proc.pid
            if self.on_started is not None:
                self.on_started(
                    TrainerIdentity(
                        proc.pid,
                        process_start_ticks(proc.pid) or 0,
                        self.publish_port,
                        self.controller_port,
                    )
                )
            self._last_activity = time.monotonic()
            assert proc.stdout is not None and proc.stderr is not None
            readers = [
                asyncio.create_task(self._read(proc.stdout, progress_pb2.LOG_STREAM_STDOUT)),
                asyncio.create_task(self._read(proc.stderr, progress_pb2.LOG_STREAM_STDERR)),
            ]
            events = asyncio.create_task(self._events(sub))
            tasks = [*readers, events, asyncio.create_task(self._flusher())]
            code, message = await self._supervise(proc, started)
            if self.on_exited is not None:
                self.on_exited(proc.returncode)
            # The leader is gone: take stragglers of its group with it, then drain.
            _kill_group(proc.pid, signal.SIGKILL)
            await asyncio.wait(readers, timeout=5.0)
            events.cancel()
            await asyncio.wait({events}, timeout=5.0)
            await self._drain(sub, 0.3)
            self._flush()
            return self._classify(proc.returncode, code, message, started)
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=5.0)
            if proc is not None and proc.returncode is None:
                _kill_group(proc.pid, signal.SIGKILL)
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5.0):
                        await proc.wait()
            self._pub = None
            sub.close(linger=0)
            pub.close(linger=0)
            if self._launch is not None:
                self._launch.cleanup()  # the private temp folder, once the trainer is gone
                self._launch = None

    async def _supervise(self, proc: asyncio.subprocess.Process, started: float) -> tuple[int, str]:
        """Wait for the exit, enforcing limits and control. Returns (failure code, message)
        when the worker ended the run itself, else (0, "")."""
        limits = self.limits
        last_stop = 0.0
        waiter = asyncio.create_task(proc.wait())
        try:
            while not waiter.done():
                self._wake.clear()
                wake = asyncio.create_task(self._wake.wait())
                await asyncio.wait(
                    {waiter, wake}, timeout=limits.poll_s, return_when="FIRST_COMPLETED"
                )
                wake.cancel()
                now = time.monotonic()
                if waiter.done():
                    break
                reason: tuple[int, str] | None = self._end_request
                if (
                    reason is None
                    and limits.max_run_s is not None
                    and now - started > limits.max_run_s
                ):
                    reason = (
                        progress_pb2.FAILURE_CODE_TIMEOUT,
                        f"the trainer ran longer than the limit of {limits.max_run_s:g} s",
                    )
                if (
                    reason is None
                    and limits.no_progress_timeout_s is not None
                    and now - self._last_activity > limits.no_progress_timeout_s
                ):
                    reason = (
                        progress_pb2.FAILURE_CODE_TIMEOUT,
                        f"the trainer reported no progress and no output for "
                        f"{limits.no_progress_timeout_s:g} s",
                    )
                if reason is not None:
                    await self._terminate(proc, waiter)
                    return reason
                if self.stop_requested and now - last_stop >= limits.stop_resend_s:
                    self._send_stop()  # repeated: a stop sent before the SUB joined is lost
                    last_stop = now
            return 0, ""
        finally:
            if not waiter.done():
                waiter.cancel()

    async def _terminate(self, proc: asyncio.subprocess.Process, waiter: asyncio.Task[int]) -> None:
        _kill_group(proc.pid, signal.SIGTERM)
        await asyncio.wait({waiter}, timeout=self.limits.term_grace_s)
        if not waiter.done():
            _kill_group(proc.pid, signal.SIGKILL)
            await asyncio.wait({waiter}, timeout=10.0)

    async def _drain(self, sub: zmq.asyncio.Socket, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not await sub.poll(timeout=int(left * 1000) + 1):
                return
            with contextlib.suppress(zmq.Again):
                self._event(await sub.recv(flags=zmq.NOBLOCK))

    def _classify(
        self, returncode: int | None, code: int, message: str, started: float
    ) -> RunResult:
        if code:
            return self._result(False, code, returncode, message, started)
        if returncode != 0:
            how = (
                f"was killed by signal {-returncode}"
                if returncode is not None and returncode < 0
                else f"exited with status {returncode}"
            )
            last = self._tail[-1] if self._tail else "no output"
            return self._result(
                False,
                progress_pb2.FAILURE_CODE_TRAINER_EXITED,
                returncode,
                f"the trainer {how}; last output: {last}",
                started,
            )
        if not self._translator.seen_begin and not self._translator.seen_end:
            return self._result(
                False,
                progress_pb2.FAILURE_CODE_TRAINER_EXITED,
                0,
                "the trainer exited with status 0 but never reported training progress "
                "(no train_begin event); nothing was trained",
                started,
            )
        return self._result(True, 0, 0, "", started)

    def _result(
        self, completed: bool, code: int, exit_code: int | None, message: str, started: float
    ) -> RunResult:
        return RunResult(
            completed=completed,
            failure_code=code,
            exit_code=exit_code,
            message=message,
            stopped_early=completed and self.stop_requested,
            duration_s=time.monotonic() - started,
            log_tail=tuple(self._tail),
            outputs=list_outputs(self.plan.run_dir) if completed else (),
        )
