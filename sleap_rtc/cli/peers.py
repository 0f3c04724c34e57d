"""Glue between settings and the network: the worker's serving loop, the client's connector.

The CLI and the demo both use these; the sessions never see them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import platform
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sleap_rtc.cli.exits import CliError, ExitCode

if TYPE_CHECKING:
    import asyncio

    from sleap_rtc.auth.tokens import Claims, TokenVerifier
    from sleap_rtc.capture.recorder import CaptureWriter
    from sleap_rtc.config.client import ClientSettings
    from sleap_rtc.config.worker import WorkerSettings
    from sleap_rtc.signaling.client import PeerInfo, SignalingClient, SignalingError
    from sleap_rtc.transport.link import Link
    from sleap_rtc.worker.service import WorkerService

log = logging.getLogger(__name__)

#: The seed's message when the worker cannot be reached (the flow fails closed).
UNREACHABLE_WORKER = "Could not connect to worker. Check that the worker is running."


def signaling_failure(exc: SignalingError, settings_server: str, room: str) -> CliError:
    """A SignalingError as the one line a user needs, with the right exit code."""
    if exc.is_auth:
        return CliError(
            f"Login required: the signaling server refused the token for room {room!r} "
            f"({exc.reason}). Run `sleap-rtc login --server {settings_server} --room {room}`.",
            ExitCode.LOGIN_REQUIRED,
        )
    if exc.code in ("unreachable", "timeout", "closed"):
        return CliError(f"{exc.reason}", ExitCode.UNREACHABLE)
    if exc.code in ("unknown_room",):
        return CliError(f"room {room!r}: {exc.reason}", ExitCode.UNREACHABLE)
    return CliError(f"signaling server refused: {exc.reason} [{exc.code}]", ExitCode.FAILED)


async def _client_signaling(settings: ClientSettings, token: str) -> SignalingClient:
    from sleap_rtc.signaling.client import SignalingClient, SignalingError

    try:
        sig = await SignalingClient.connect(settings.server, timeout=settings.connect_timeout_s)
    except SignalingError as exc:
        raise signaling_failure(exc, settings.server, settings.room) from None
    try:
        await sig.register(room_id=settings.room, role="client", token=token)
    except SignalingError as exc:
        await sig.close()
        raise signaling_failure(exc, settings.server, settings.room) from None
    return sig


async def list_workers(settings: ClientSettings, token: str) -> list[PeerInfo]:
    """The workers registered in the settings' room."""
    from sleap_rtc.signaling.client import SignalingError

    sig = await _client_signaling(settings, token)
    try:
        return await sig.discover(role="worker")
    except SignalingError as exc:
        raise signaling_failure(exc, settings.server, settings.room) from None
    finally:
        await sig.close()


async def find_worker(settings: ClientSettings, token: str) -> PeerInfo:
    """The worker the settings name (peer id or name), or the only/first available one.

    Raises:
        CliError: exit 4 with the seed's message when no such worker is in the room.
    """
    workers = await list_workers(settings, token)
    wanted = settings.worker
    if wanted:
        matches = [w for w in workers if w.peer_id == wanted] or [
            w for w in workers if w.name == wanted
        ]
        if not matches:
            names = ", ".join(sorted(w.name for w in workers)) or "none"
            raise CliError(
                f"{UNREACHABLE_WORKER} (no worker {wanted!r} in room {settings.room!r}; "
                f"workers there: {names})",
                ExitCode.UNREACHABLE,
            )
        return matches[0]
    if not workers:
        raise CliError(
            f"{UNREACHABLE_WORKER} (no worker is registered in room {settings.room!r} "
            f"on {settings.server})",
            ExitCode.UNREACHABLE,
        )
    available = [w for w in workers if w.status in ("", "available")]
    return (available or workers)[0]


def connector(
    settings: ClientSettings, token: str, worker: PeerInfo, *, capture: CaptureWriter | None = None
) -> Callable[[], Awaitable[Link]]:
    """A ``connect()`` for the client flow: each call opens a fresh WebRTC link."""
    from sleap_rtc.signaling.client import SignalingError
    from sleap_rtc.transport.channel import ConnectError
    from sleap_rtc.transport.link import LinkClosed
    from sleap_rtc.transport.webrtc import make_connector

    opener = make_connector(
        settings.server,
        room_id=settings.room,
        token=token,
        worker_id=worker.peer_id,
        loopback=settings.loopback,
        timeout=settings.connect_timeout_s,
    )

    async def connect() -> Link:
        try:
            link: Link = await opener()
        except SignalingError as exc:
            if exc.is_auth:
                raise signaling_failure(exc, settings.server, settings.room) from None
            raise ConnectionError(f"{UNREACHABLE_WORKER} ({exc.reason})") from None
        except (ConnectError, LinkClosed, OSError) as exc:
            raise ConnectionError(f"{UNREACHABLE_WORKER} ({exc})") from None
        if capture is not None:
            link = wrap_capture(
                link, capture, local_role="client", local_peer="client", remote_peer=worker.peer_id
            )
        return link

    return connect


def open_capture(path: Path | None) -> CaptureWriter | None:
    """A capture writer for ``path`` (``--capture``), else ``$SLEAP_RTC_CAPTURE``, else None."""
    from sleap_rtc.capture.recorder import CaptureWriter, capture_from_env

    if path is None:
        return capture_from_env()
    try:
        writer = CaptureWriter(path)
    except OSError as exc:
        raise CliError(f"cannot write the capture {path}: {exc}", ExitCode.USAGE) from None
    return writer if writer.active else None


def wrap_capture(
    link: Link, writer: CaptureWriter, *, local_role: str, local_peer: str, remote_peer: str
) -> Link:
    """``link`` recorded into ``writer`` (one MCAP connection per link)."""
    import uuid

    wrapped: Link = writer.wrap(
        link,
        connection_id=uuid.uuid4().hex[:12],
        local_peer=local_peer,
        remote_peer=remote_peer,
        local_role=local_role,
    )
    return wrapped


# ----------------------------------------------------------------------------- worker


@dataclass
class WorkerRuntime:
    """What :func:`run_worker` keeps while serving (tests and the demo read it)."""

    peer_id: str = ""
    connections: int = 0


def worker_metadata(
    settings: WorkerSettings, *, status: str = "available", active_jobs: int = 0
) -> dict[str, Any]:
    """What clients of the room see about this worker in discovery."""
    from sleap_rtc import __version__

    versions = {"sleap-rtc": __version__, "python": platform.python_version()}
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        versions["sleap-nn"] = version("sleap-nn")
    return {
        "tags": ["sleap-rtc", "train"],
        "properties": {
            "name": settings.name,
            "status": status,
            "gpu": _gpu_name(),
            "mounts": [m.label for m in settings.mounts],
            "versions": versions,
            "max_concurrency": settings.concurrency,
            "active_jobs": active_jobs,
        },
    }


@functools.cache
def _gpu_name() -> str:
    """The first NVIDIA GPU's name, or "cpu"; never imports torch (slow)."""
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "cpu"
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "cpu"
    name = out.stdout.strip().splitlines()
    return name[0] if out.returncode == 0 and name else "cpu"


class _Keys:
    """The room's token-signing public keys, refreshed at each (re)registration."""

    def __init__(self, room: str, cache: Path | None) -> None:
        self.room = room
        self.cache = cache
        self.verifier: TokenVerifier | None = None

    def load_file(self, path: Path) -> None:
        import json

        from sleap_rtc.auth.tokens import TokenVerifier

        try:
            self.verifier = TokenVerifier.from_jwks(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot use jwks_file {path}: {exc}", ExitCode.USAGE) from None

    def update(self, jwks: dict[str, Any]) -> None:
        import json

        from sleap_rtc.auth.tokens import TokenVerifier, write_private

        self.verifier = TokenVerifier.from_jwks(jwks)
        if self.cache is not None:
            with contextlib.suppress(OSError):
                write_private(self.cache, json.dumps(jwks).encode())

    def load_cache(self) -> None:
        import json

        from sleap_rtc.auth.tokens import TokenVerifier

        if self.cache is None or not self.cache.exists():
            return
        with contextlib.suppress(OSError, ValueError):
            self.verifier = TokenVerifier.from_jwks(json.loads(self.cache.read_text()))

    def verify(self, token: str) -> Claims:
        """The worker's own check of a client's token (signature, expiry, audience, room)."""
        from sleap_rtc.auth.tokens import TokenError

        if self.verifier is None:
            raise TokenError("unknown_key", "the worker has no public keys to verify tokens yet")
        return self.verifier.verify(token, room=self.room)


def build_service(
    settings: WorkerSettings, verifier: Callable[[str], Claims] | None
) -> WorkerService:
    """The worker service for these settings (the sessions, checks and jobs)."""
    from sleap_rtc.worker.service import WorkerConfig, WorkerService

    config = WorkerConfig(
        mounts=[m.path for m in settings.mounts],
        state_dir=settings.state_dir,
        verifier=verifier,
        trainer_command=list(settings.trainer_command),
        max_concurrent_jobs=settings.concurrency,
        max_config_bytes=settings.max_config_bytes,
        worker_id=settings.name,
    )
    return WorkerService(config)


async def run_worker(
    settings: WorkerSettings,
    credential: str,
    *,
    capture: Path | None = None,
    ready_file: Path | None = None,
    stop: asyncio.Event | None = None,
    say: Callable[[str], None] | None = None,
    runtime: WorkerRuntime | None = None,
) -> int:
    """Register in the room, answer offers, serve each link, until stopped.

    The first signaling connection must succeed (exit 4 / 5 otherwise); later
    drops are retried with backoff while jobs keep running. SIGINT/SIGTERM (or
    ``stop``) end it cleanly: running jobs are stopped and temp configs removed.
    """
    import asyncio
    import signal

    from sleap_rtc.cli.common import write_ready_file
    from sleap_rtc.cli.status import StatusReporter
    from sleap_rtc.signaling.client import SignalingClient, SignalingError
    from sleap_rtc.transport.answerer import serve_links
    from sleap_rtc.transport.channel import DataChannelLink

    out = say or _say
    state = runtime or WorkerRuntime()
    keys = _Keys(settings.room, settings.state_dir / "jwks.json")
    if settings.jwks_file is not None:
        keys.load_file(settings.jwks_file)
    else:
        keys.load_cache()
    try:
        service = build_service(settings, keys.verify)
        await service.start()
    except ValueError as exc:
        raise CliError(f"cannot start the worker: {exc}", ExitCode.USAGE) from None
    writer = open_capture(capture)
    stopping = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if stop is None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stopping.set)
                installed.append(sig)

    async def handle(link: DataChannelLink) -> None:
        state.connections += 1
        served: Link = link
        if writer is not None:
            served = wrap_capture(
                link,
                writer,
                local_role="worker",
                local_peer=state.peer_id,
                remote_peer=link.peer_id,
            )
        await service.serve(served, peer_id=link.peer_id)

    # Busy while every job slot is taken, available otherwise (see cli/status.py).
    status = StatusReporter(
        service,
        settings.concurrency,
        lambda shown, active: worker_metadata(settings, status=shown, active_jobs=active),
    )

    async def session() -> None:
        sig = await SignalingClient.connect(settings.signaling_url, timeout=10.0)
        try:
            reg = await sig.register(
                room_id=settings.room,
                role="worker",
                worker_key=credential,
                metadata=status.registration_metadata(),
            )
            if settings.jwks_file is None:
                keys.update(await sig.jwks())
            state.peer_id = reg.peer_id
            out(
                f"worker {settings.name!r} registered in room {settings.room!r} at "
                f"{settings.signaling_url} as {reg.peer_id}; mounts: "
                + ", ".join(f"{m.label}={m.path}" for m in settings.mounts)
            )
            write_ready_file(ready_file, reg.peer_id)
            status_task = asyncio.ensure_future(status.run(sig))
            try:
                await serve_links(
                    sig,
                    handle,
                    loopback=settings.loopback,
                    ice_servers=list(settings.ice_servers) or None,
                )
            finally:
                status_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await status_task
        finally:
            await sig.close()

    first = True
    backoff = 1.0
    code = ExitCode.OK
    try:
        while not stopping.is_set():
            task = asyncio.ensure_future(session())
            stopper = asyncio.ensure_future(stopping.wait())
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                break
            error = task.exception()
            if error is None:
                out("lost the signaling server; reconnecting (jobs keep running)")
                first = False
                backoff = 1.0
                continue
            if isinstance(error, SignalingError) and error.is_auth:
                raise CliError(
                    f"the signaling server refused the worker credential for room "
                    f"{settings.room!r}: {error.reason}",
                    ExitCode.LOGIN_REQUIRED,
                )
            if not isinstance(error, SignalingError | OSError):
                raise error
            if first:
                raise CliError(str(error), ExitCode.UNREACHABLE)
            out(f"signaling server unreachable ({error}); retrying in {backoff:.0f} s")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await stopping.wait()
            backoff = min(backoff * 2, 30.0)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await service.close()
        if writer is not None:
            await writer.aclose()
        out("worker stopped")
    return int(code)


def _say(text: str) -> None:
    print(text, flush=True)
