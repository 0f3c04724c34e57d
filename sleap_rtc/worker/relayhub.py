"""The worker's relay endpoint: one CURVE-authenticated ROUTER the Slurm relays connect out to.

Each Slurm job gets its own CURVE key pair (:meth:`RelayHub.new_keys`); the
worker registers the job's public key (:meth:`RelayHub.register`) before the
relay starts. pyzmq's ZAP authenticator lets only registered keys complete the
handshake, and a message is delivered only when the key that authenticated the
connection (the frame's ``User-Id``) is the one registered for the job id the
message names: a relay can speak for its own job only. Duplicates after a
reconnection (or a worker restart: ``after_seq``) are dropped by
:class:`~.relayqueue.Inbox`; delivered sequences are acknowledged in batches.

The hub's own key pair lives in ``key_dir`` (0700; the file 0600), made on the
first start and reused afterwards, so relays of a worker that restarted
reconnect by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import zmq
import zmq.asyncio
from zmq.auth.base import Authenticator
from zmq.utils.monitor import parse_monitor_message

from sleap_rtc.worker.relayqueue import Inbox
from sleap_rtc.worker.relaywire import (
    MAX_FRAME,
    Command,
    Hello,
    RelayMessage,
    RelayWireError,
    decode,
    encode,
)

__all__ = ["KEY_FILE", "RelayHub", "RelayHubError", "send_now"]

log = logging.getLogger(__name__)

#: The hub's key pair inside ``key_dir``.
KEY_FILE = "relay_hub_curve.json"
#: The ZAP domain of the hub's socket.
ZAP_DOMAIN = "sleap-rtc-relay"
#: How often acknowledgements and liveness are looked at (seconds).
TICK_S = 0.05
#: Heartbeats: a silent peer is dropped after this long (ms); the relay reconnects.
HEARTBEAT_IVL_MS = 5_000
HEARTBEAT_TIMEOUT_MS = 15_000
FAILED_HANDSHAKES = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


class RelayHubError(RuntimeError):
    """The hub cannot start (port taken, no CURVE in libzmq, unreadable key file)."""


def send_now(sock: zmq.asyncio.Socket, frames: list[bytes]) -> bool:
    """Send ``frames`` at once or not at all (False: EAGAIN or another ZMQ error).

    Through the asyncio socket itself, not a shadow of it: its own path wakes the
    ``recv`` waiting on the same socket (a send through a plain shadow can consume the
    edge-triggered readiness that recv waits for, and the recv then sleeps for ever).
    """
    done = cast("asyncio.Future[object]", sock.send_multipart(frames, flags=zmq.NOBLOCK))
    if not done.done():  # pragma: no cover - only when other sends are queued
        done.cancel()
        return False
    error = done.exception()
    if error is None:
        return True
    if isinstance(error, zmq.ZMQError):
        return False
    raise error


def _require_curve() -> None:
    if not zmq.has("curve"):
        raise RelayHubError(
            f"this libzmq ({zmq.zmq_version()}) was built without CURVE security; "
            "the Slurm relay needs it (pip's pyzmq wheels include it)"
        )


def load_keys(key_dir: Path) -> tuple[str, str]:
    """The hub's (public, secret) z85 keys from ``key_dir``, made on first use."""
    _require_curve()
    path = key_dir / KEY_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        public, secret = (k.decode("ascii") for k in zmq.curve_keypair())
        tmp = key_dir / f".{KEY_FILE}.tmp"
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump({"public": public, "secret": secret}, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        return public, secret
    except (OSError, ValueError) as exc:
        raise RelayHubError(f"cannot read the relay hub's key file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise RelayHubError(f"the relay hub's key file {path} must hold a JSON object")
    pub, sec = data.get("public"), data.get("secret")
    if not (isinstance(pub, str) and isinstance(sec, str) and len(pub) == len(sec) == 40):
        raise RelayHubError(f"the relay hub's key file {path} does not hold z85 CURVE keys")
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return pub, sec


@dataclass
class _Job:
    public: str
    on_message: Callable[[RelayMessage], None]
    inbox: Inbox
    route: bytes | None = None
    heard: float | None = None


@dataclass
class _Keys:
    """The ZAP credentials provider: only registered client keys pass the handshake."""

    allowed: dict[str, str] = field(default_factory=dict)  # public key -> job id

    def callback(self, domain: str, key: bytes) -> bool:
        return key.decode("ascii", "replace") in self.allowed


class _Zap(Authenticator):
    """pyzmq's ZAP authenticator, its requests read by an asyncio REP socket of the
    hub's context (``handle_zap_message`` does the checking; the REP always can
    reply at once). pyzmq's own AsyncioAuthenticator polls a plain socket, and we saw
    it miss every request after earlier contexts of the same event loop were
    destroyed; a socket's own recv does not."""

    async def serve(self) -> None:
        while True:
            await self.handle_zap_message(await self._requests.recv_multipart())

    def start(self) -> None:
        sock: zmq.asyncio.Socket = self.context.socket(zmq.REP)
        sock.linger = 1
        try:
            sock.bind("inproc://zeromq.zap.01")
        except zmq.ZMQError:
            sock.close(linger=0)
            raise
        self._requests = sock
        self.zap_socket = sock  # the replies go out on it


class RelayHub:
    """The worker side of the relays (asyncio adapter around one ROUTER socket).

    Args:
        context: the worker's ZMQ context (the hub starts its ZAP handler on it).
        listen: ``host:port`` to bind.
        advertise: ``host:port`` the relays connect to (:attr:`endpoint`).
        key_dir: holds the hub's key pair (:data:`KEY_FILE`).

    Raises:
        RelayHubError: libzmq has no CURVE, or the key file is unreadable.
    """

    def __init__(
        self, context: zmq.asyncio.Context, *, listen: str, advertise: str, key_dir: Path
    ) -> None:
        self.context = context
        self.listen = listen
        self.endpoint = f"tcp://{advertise}"
        self.server_key, self._server_secret = load_keys(key_dir)
        self.rejected = 0
        self._keys = _Keys()
        self._jobs: dict[str, _Job] = {}
        self._router: zmq.asyncio.Socket | None = None
        self._monitor: zmq.asyncio.Socket | None = None
        self._auth: _Zap | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # --- life cycle --------------------------------------------------------

    async def start(self, retry_s: float = 2.0) -> None:
        """Start the ZAP handler, then bind (retried for ``retry_s`` while a closed
        socket of this process still holds the address).

        Raises:
            RelayHubError: the port is taken, the address is bad, or another ZAP
                handler runs on this context.
        """
        deadline = time.monotonic() + retry_s
        auth = _Zap(self.context, log=log.getChild("zap"))
        while True:
            try:
                auth.start()
                break
            except zmq.ZMQError as exc:
                auth.stop()
                if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                    raise RelayHubError(
                        f"cannot start the relay hub's authenticator: {exc} "
                        "(another ZAP handler on this ZMQ context?)"
                    ) from None
                await asyncio.sleep(0.05)
        auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=self._keys)
        self._auth = auth
        self._tasks = [asyncio.create_task(auth.serve())]
        router = self.context.socket(zmq.ROUTER)
        for option, value in (
            (zmq.LINGER, 0),
            (zmq.ROUTER_MANDATORY, 1),
            (zmq.MAXMSGSIZE, MAX_FRAME + 4096),
            (zmq.HANDSHAKE_IVL, 10_000),
            (zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS),
            (zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS),
        ):
            router.setsockopt(option, value)
        router.curve_server = True
        router.curve_secretkey = self._server_secret.encode("ascii")
        router.zap_domain = ZAP_DOMAIN.encode("ascii")
        self._router = router
        self._monitor = router.get_monitor_socket(FAILED_HANDSHAKES)
        while True:
            try:
                router.bind(f"tcp://{self.listen}")
                break
            except zmq.ZMQError as exc:
                if exc.errno == errno.EADDRINUSE and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                    continue
                await self.close()
                why = "the port is in use" if exc.errno == errno.EADDRINUSE else str(exc)
                raise RelayHubError(f"cannot listen for relays on {self.listen}: {why}") from None
        self._tasks += [
            asyncio.create_task(self._receive()),
            asyncio.create_task(self._watch_handshakes()),
            asyncio.create_task(self._ticker()),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5.0)
        self._tasks = []
        if self._router is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._router.disable_monitor()
            self._router.close(linger=0)
            self._router = None
        if self._monitor is not None:
            self._monitor.close(linger=0)
            self._monitor = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    # --- jobs ---------------------------------------------------------------

    @staticmethod
    def new_keys() -> tuple[str, str]:
        """A fresh (public, secret) z85 CURVE key pair for one job."""
        _require_curve()
        public, secret = zmq.curve_keypair()
        return public.decode("ascii"), secret.decode("ascii")

    def register(
        self,
        job_id: str,
        client_public: str,
        on_message: Callable[[RelayMessage], None],
        *,
        after_seq: int = 0,
    ) -> None:
        """Let the relay holding ``client_public``'s secret in, speaking for ``job_id``
        only; ``on_message`` gets each of its messages once (after ``after_seq``)."""
        old = self._jobs.pop(job_id, None)
        if old is not None:
            self._keys.allowed.pop(old.public, None)
        if self._keys.allowed.get(client_public, job_id) != job_id:
            raise ValueError("that client key is registered for another job already")
        self._jobs[job_id] = _Job(client_public, on_message, Inbox(after_seq))
        self._keys.allowed[client_public] = job_id

    def unregister(self, job_id: str) -> None:
        job = self._jobs.pop(job_id, None)
        if job is not None:
            self._keys.allowed.pop(job.public, None)

    def send(self, job_id: str, action: str) -> bool:
        """Send ``stop`` or ``cancel`` to the job's relay; False when none is connected."""
        if action not in ("stop", "cancel"):
            raise ValueError(f"unknown relay action {action!r}")
        job = self._jobs.get(job_id)
        return job is not None and self._send(job, Command(action, 0, job_id))

    def last_heard(self, job_id: str) -> float | None:
        """``time.monotonic()`` of the last message from the job's relay (None: never)."""
        job = self._jobs.get(job_id)
        return None if job is None else job.heard

    def last_seq(self, job_id: str) -> int:
        """The relay sequence delivered last (persist it to pass as ``after_seq``)."""
        job = self._jobs.get(job_id)
        return 0 if job is None else job.inbox.last

    # --- the socket ---------------------------------------------------------

    def _send(self, job: _Job, command: Command) -> bool:
        if job.route is None or self._router is None:
            return False
        # EHOSTUNREACH: that connection is gone; EAGAIN: its queue is full.
        return send_now(self._router, [job.route, *encode(command)])

    def _refuse(self, reason: str) -> None:
        self.rejected += 1
        if self.rejected <= 20 or self.rejected % 1000 == 0:
            log.warning("relay hub: refused %s (%d refused so far)", reason, self.rejected)

    async def _receive(self) -> None:
        assert self._router is not None
        while True:
            frames = await self._router.recv_multipart(copy=False)
            self._handle(frames, time.monotonic())

    def _handle(self, frames: list[zmq.Frame], now: float) -> None:
        if len(frames) < 2:
            return self._refuse("an empty message")
        try:
            user = frames[1].get("User-Id")
        except zmq.ZMQError:
            user = None
        try:
            msg = decode([f.bytes for f in frames[1:]])
        except RelayWireError as exc:
            return self._refuse(f"an undecodable message: {exc}")
        if isinstance(msg, Command):
            return self._refuse("a command sent to the worker")
        job = self._jobs.get(msg.job_id)
        if job is None:
            return self._refuse(f"a message for the unregistered job {msg.job_id[:64]!r}")
        if user != job.public:
            return self._refuse(f"a message for job {msg.job_id[:64]!r} from another job's key")
        job.route = frames[0].bytes
        job.heard = now
        skipped = job.inbox.skipped
        if job.inbox.accept(msg, now):
            if job.inbox.skipped != skipped:
                log.warning(
                    "relay hub: job %s: the relay had messages up to %d acknowledged by an "
                    "earlier worker life; %d of them are not known here",
                    msg.job_id,
                    job.inbox.last,
                    job.inbox.skipped - skipped,
                )
            if isinstance(msg, Hello):  # its seq: the stream's position (see Hello)
                msg = dataclasses.replace(msg, seq=job.inbox.last)
            try:
                job.on_message(msg)
            except Exception:  # the job's handler failing must not stop the hub
                log.exception("relay hub: the handler of job %s failed", msg.job_id)
        self._ack(job, now)

    def _ack(self, job: _Job, now: float) -> None:
        resend = job.inbox.take_resend(now)
        if resend is not None:
            self._send(job, Command("resend", resend, ""))
        upto = job.inbox.take_ack(now)
        if upto is not None and not self._send(job, Command("ack", upto, "")):
            job.inbox.retry_ack()

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            for job in list(self._jobs.values()):
                self._ack(job, now)

    async def _watch_handshakes(self) -> None:
        assert self._monitor is not None
        while True:
            event = parse_monitor_message(await self._monitor.recv_multipart())
            if event["event"] & FAILED_HANDSHAKES:
                self._refuse(f"a handshake ({zmq.Event(event['event']).name})")
