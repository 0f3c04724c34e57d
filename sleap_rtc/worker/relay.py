"""The Slurm relay: runs one job's trainer on the compute node and carries it to the worker.

``python -m sleap_rtc.worker.relay RELAY_FOLDER`` (the batch script ``exec``s it).

It claims ``started`` in the folder (a second start of the same job, e.g. a
requeue, exits with status 3 at once and runs nothing; so does a folder the
worker marked ``abandoned``), reads ``relay.json``
(:class:`~.relaywire.RelaySpec`), connects a CURVE DEALER out to the worker's
:class:`~.relayhub.RelayHub`, removes the secret key from the spec on disk
(before the trainer starts; the trainer may read the shared run folder) -- or
takes it from ``SLEAP_RTC_RELAY_SECRET`` when the spec holds none (a worker
that keeps the secret off the shared storage passes it in the batch job's
environment), and
runs the trainer with :class:`~.trainer.TrainerRun` and a confined
:class:`~.launcher.LaunchPolicy` exactly as the worker would locally, with a
sink that forwards progress and output. Control: SIGINT (``scancel --batch
--signal=INT``) or the worker's ``stop`` -> stop after the current batch (the
checkpoint is kept); SIGTERM (``scancel``, the time limit) or ``cancel`` -> the
trainer is terminated. At the end it writes ``result.json``, sends the result,
waits a bounded time for the worker's acknowledgement and exits with the
trainer's status (:func:`exit_status`). Bad input is one line on
stderr and exit status 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from sleap_rtc.worker import confine
from sleap_rtc.worker.jobrecord import RunResult
from sleap_rtc.worker.jobstore import TrainerIdentity
from sleap_rtc.worker.launcher import LaunchPolicy, Mode
from sleap_rtc.worker.relayhub import (
    FAILED_HANDSHAKES,
    HEARTBEAT_IVL_MS,
    HEARTBEAT_TIMEOUT_MS,
    send_now,
)
from sleap_rtc.worker.relayqueue import Outbox
from sleap_rtc.worker.relaywire import (
    ABANDONED_FILE,
    SECRET_ENV,
    STARTED_FILE,
    Command,
    RelaySpec,
    RelaySpecError,
    RelayWireError,
    decode,
    encode,
    forget_secret,
    read_spec,
    write_result,
)
from sleap_rtc.worker.trainer import TrainerRun
from sleap_rtc.worker.zmqprogress import ProgressUpdate
from sleap_rtc_proto.v1 import progress_pb2

#: Exit status for bad input (usage, a missing or garbled spec, no CURVE).
EXIT_BAD_INPUT = 2
#: Exit status of a second start of the same job (nothing was run).
EXIT_ALREADY_STARTED = 3
RECONNECT_IVL_MS = 250
RECONNECT_IVL_MAX_MS = 5_000
SNDHWM = 10_000
#: How long the sender waits before trying again when the socket cannot take more.
RETRY_S = 0.02
CANCEL_MESSAGE = "the batch job was cancelled (SIGTERM: scancel or Slurm's time limit)"


def exit_status(result: RunResult) -> int:
    """The relay's exit status for a result: 0 for a completed (or stopped-early) run,
    the trainer's status otherwise (128 + signal when a signal killed it; 1 if unknown)."""
    if result.completed:
        return 0
    code = result.exit_code
    if code is None or code == 0:
        return 1
    if code < 0:
        return min(128 - code, 255)
    return min(code, 255)


def _say(line: str) -> None:
    print(f"sleap-rtc relay: {line}", file=sys.stderr, flush=True)


def claim(folder: Path) -> None:
    """Create ``started`` with O_EXCL (exactly once per folder).

    Raises:
        FileExistsError: the job was started before.
        OSError: the folder cannot be written.
    """
    fd = os.open(folder / STARTED_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(f"{socket.gethostname()} {os.getpid()} {time.time():.3f}\n")


class Relay:
    """One relay run (asyncio): the DEALER, the outbox, the trainer and the signals."""

    def __init__(
        self,
        folder: Path,
        spec: RelaySpec,
        context: zmq.asyncio.Context,
        *,
        secret_on_disk: bool = True,
    ) -> None:
        self.folder = folder
        self.spec = spec
        #: The spec file holds the key (the worker passes it in the environment, and
        #: then there is nothing on disk to rewrite).
        self._secret_on_disk = secret_on_disk
        self.context = context
        self.outbox = Outbox(spec.job_id)
        self.node = socket.gethostname()
        self.trainer_pid: int | None = None
        self._wake = asyncio.Event()
        self._acked = asyncio.Event()
        self._hello = False
        self._result_seq: int | None = None
        self._dealer: zmq.asyncio.Socket | None = None
        self.run: TrainerRun | None = None
        self._warned: set[str] = set()

    # --- the sink TrainerRun feeds ---------------------------------------------

    def progress(self, update: ProgressUpdate) -> None:
        self.outbox.add_progress(update)
        self._wake.set()

    def log(self, stream: int, lines: list[str]) -> None:
        self.outbox.add_log(stream, lines)
        self._wake.set()
        print("\n".join(lines), flush=True)  # the batch job's output file keeps them too

    def note(self, line: str) -> None:
        self.log(progress_pb2.LOG_STREAM_WORKER, [f"relay: {line}"])

    # --- the socket -------------------------------------------------------------

    def connect(self) -> zmq.asyncio.Socket:
        """The DEALER with this job's keys, connecting to the hub; the secret then
        leaves the spec on disk."""
        dealer = self.context.socket(zmq.DEALER)
        for option, value in (
            (zmq.LINGER, 1_000),
            (zmq.IMMEDIATE, 1),  # nothing queues on a connection that is not up
            (zmq.SNDHWM, SNDHWM),
            (zmq.RECONNECT_IVL, RECONNECT_IVL_MS),
            (zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS),
            (zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS),
            (zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS),
        ):
            dealer.setsockopt(option, value)
        dealer.curve_serverkey = self.spec.server_key.encode("ascii")
        dealer.curve_publickey = self.spec.client_public.encode("ascii")
        dealer.curve_secretkey = self.spec.client_secret.encode("ascii")
        self._monitor = dealer.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | FAILED_HANDSHAKES
        )
        dealer.connect(self.spec.endpoint)
        self._dealer = dealer
        if self._secret_on_disk:  # the socket has the keys: the trainer may read this folder
            forget_secret(self.folder)
        self.spec = dataclasses.replace(self.spec, client_secret="")
        return dealer

    async def _watch(self) -> None:
        while True:
            event = parse_monitor_message(await self._monitor.recv_multipart())
            kind = event["event"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.outbox.rewind()  # resend everything not acknowledged, after a Hello
                self._hello = True
                self._wake.set()
                self._warned.discard("down")
            elif kind == zmq.EVENT_DISCONNECTED:
                self._warn("down", f"lost the connection to the worker at {self.spec.endpoint}")
            else:
                self._warn(
                    "auth", f"the worker refused the handshake ({zmq.Event(kind).name}); retrying"
                )

    def _warn(self, key: str, line: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            _say(line)

    async def _sender(self, dealer: zmq.asyncio.Socket) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                if self._hello:
                    hello = self.outbox.hello(self.node, os.getpid(), self.trainer_pid)
                    if not send_now(dealer, encode(hello)):
                        await self._retry_later()
                        continue
                    self._hello = False
                msg = self.outbox.next_to_send()
                if msg is None:
                    break
                if send_now(dealer, encode(msg)):
                    self.outbox.mark_sent(msg)
                else:  # not connected, or the worker is slow: wait, then retry
                    await self._retry_later()

    async def _retry_later(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), RETRY_S)
        self._wake.clear()

    async def _receiver(self, dealer: zmq.asyncio.Socket) -> None:
        while True:
            frames = await dealer.recv_multipart()
            try:
                msg = decode(frames)
            except RelayWireError as exc:
                self._warn("bad", f"ignored a message from the worker: {exc}")
                continue
            if not isinstance(msg, Command) or msg.job_id not in ("", self.spec.job_id):
                continue
            if msg.action in ("ack", "resend"):
                self.outbox.ack(msg.upto)
                if msg.action == "resend":  # the worker saw a hole: send again from it
                    self.outbox.rewind()
                    self._wake.set()
                if self._result_seq is not None and self.outbox.acked >= self._result_seq:
                    self._acked.set()
            elif msg.action == "stop":
                self.stop("the worker asked to stop early")
            elif msg.action == "cancel":
                self.cancel("job cancelled by the client")

    # --- control ----------------------------------------------------------------

    def stop(self, why: str) -> None:
        self.note(f"{why}: stopping after the current batch")
        if self.run is not None:
            self.run.stop()

    def cancel(self, why: str) -> None:
        self.note(f"{why}: terminating the trainer")
        if self._result_seq is not None:
            self._acked.set()  # the run is over: stop waiting for the worker
        elif self.run is not None:
            self.run.cancel(progress_pb2.FAILURE_CODE_CANCELLED, why)

    def _started(self, identity: TrainerIdentity) -> None:
        self.trainer_pid = identity.pid
        self._hello = True
        self._wake.set()

    # --- the run ----------------------------------------------------------------

    async def main(self) -> int:
        spec = self.spec
        loop = asyncio.get_running_loop()
        dealer = self.connect()
        tasks = [
            asyncio.create_task(self._watch()),
            asyncio.create_task(self._sender(dealer)),
            asyncio.create_task(self._receiver(dealer)),
        ]
        base = os.environ.get("SLURM_TMPDIR") or None
        temp = Path(tempfile.mkdtemp(prefix="sleap-rtc-relay-", dir=base))
        try:
            policy = LaunchPolicy(
                mode=Mode(spec.confinement),
                availability=confine.probe(),
                temp_root=temp,
                mounts=spec.mounts,
                allow_reporting=spec.allow_reporting,
                extra_env=dict(spec.trainer_env),
            )
            self.run = TrainerRun(
                spec.trainer_command,
                spec.plan,
                self,
                context=self.context,
                limits=spec.limits,
                sandbox=policy,
                on_started=self._started,
            )
            loop.add_signal_handler(signal.SIGINT, self.stop, "SIGINT")
            loop.add_signal_handler(signal.SIGTERM, self.cancel, CANCEL_MESSAGE)
            self.note(f"running job {spec.job_id} on {self.node} (pid {os.getpid()})")
            result = await self.run.run()
            return await self._finish(result)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=5.0)
            self._monitor.close(linger=0)
            dealer.close(linger=0)
            shutil.rmtree(temp, ignore_errors=True)

    async def _finish(self, result: RunResult) -> int:
        """Result file first (it survives a worker that is down), then the message."""
        try:
            write_result(self.folder, result)
        except OSError as exc:
            _say(f"could not write the result file: {exc}")
        self._result_seq = self.outbox.add_result(result).seq
        self._wake.set()
        try:
            async with asyncio.timeout(self.spec.result_wait_s):
                await self._acked.wait()
        except TimeoutError:
            _say(
                f"the worker did not acknowledge the result within {self.spec.result_wait_s:g} s;"
                " it is in the result file"
            )
        status = exit_status(result)
        _say(f"trainer finished ({'ok' if result.completed else result.message}); exit {status}")
        return status


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        _say("usage: python -m sleap_rtc.worker.relay RELAY_FOLDER")
        return EXIT_BAD_INPUT
    folder = Path(args[0])
    try:
        claim(folder)
    except FileExistsError:
        _say(
            f"{folder / STARTED_FILE} exists: this job was started before "
            "(a requeue or a second copy); running nothing"
        )
        return EXIT_ALREADY_STARTED
    except OSError as exc:
        _say(f"cannot claim {folder / STARTED_FILE}: {exc.strerror or exc}")
        return EXIT_BAD_INPUT
    if (folder / ABANDONED_FILE).exists():
        _say(f"{folder / ABANDONED_FILE} exists: the worker gave this job up; running nothing")
        return EXIT_ALREADY_STARTED
    try:
        spec = read_spec(folder)
    except RelaySpecError as exc:
        _say(str(exc))
        return EXIT_BAD_INPUT
    secret = os.environ.pop(SECRET_ENV, "")  # the trainer's scrubbed environment lacks it
    on_disk = bool(spec.client_secret)
    if not spec.client_secret and len(secret) == 40:
        spec = dataclasses.replace(spec, client_secret=secret)
    if not spec.client_secret:
        _say(
            f"{folder} holds no client key (taken by an earlier start?) and {SECRET_ENV} "
            "is not set; running nothing"
        )
        return EXIT_BAD_INPUT
    if not zmq.has("curve"):
        _say(f"this libzmq ({zmq.zmq_version()}) has no CURVE security; cannot reach the worker")
        return EXIT_BAD_INPUT

    async def run() -> int:
        context = zmq.asyncio.Context()
        try:
            return await Relay(folder, spec, context, secret_on_disk=on_disk).main()
        finally:
            context.destroy(linger=0)

    try:
        return asyncio.run(run())
    except (zmq.ZMQError, RelaySpecError, OSError) as exc:
        _say(f"failed: {exc}")
        return 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(1)
