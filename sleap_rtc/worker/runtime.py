"""The worker's runtime: register in the room, answer offers, serve each link.

:func:`run_worker` is what ``sleap-rtc worker`` and the demo run: it keeps a
signaling registration (re-registering with backoff after a drop, while jobs
keep running), answers each client's WebRTC offer and hands the link to
:meth:`WorkerService.serve <sleap_rtc.worker.service.WorkerService.serve>`,
optionally recording it (``capture``). The busy/available status the room sees
comes from :mod:`sleap_rtc.worker.status`.

Failures a user must fix are typed (:class:`WorkerSetupError`,
:class:`WorkerCredentialRefused`, :class:`RegistrationFailed`); the CLI maps
them to exit codes (``sleap_rtc/cli/exits.py``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

    from sleap_rtc.auth.tokens import Claims, TokenVerifier
    from sleap_rtc.capture.write.recorder import CaptureWriter
    from sleap_rtc.config.worker import WorkerSettings
    from sleap_rtc.transport.link import Link
    from sleap_rtc.worker.service import WorkerService

log = logging.getLogger(__name__)


class WorkerRuntimeError(Exception):
    """A failure of the worker's runtime that the user must fix; ``message`` is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class WorkerSetupError(WorkerRuntimeError):
    """The worker cannot start with these settings (keys file, service settings, capture)."""


class WorkerCredentialRefused(WorkerRuntimeError):
    """The signaling server refused the worker credential (the room's worker key)."""


class RegistrationFailed(WorkerRuntimeError):
    """The first registration with the signaling server failed (unreachable, refused)."""


@dataclass
class WorkerRuntime:
    """What :func:`run_worker` keeps while serving (tests and the demo read it)."""

    peer_id: str = ""
    connections: int = 0


def worker_metadata(
    settings: WorkerSettings,
    *,
    status: str = "available",
    active_jobs: int = 0,
    confinement: str = "",
    backend: str = "",
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
            # How the trainer is confined, e.g. "Landlock ABI 7 (files, TCP ports, ...)",
            # or "NOT confined: ..." (empty: not reported).
            "confinement": confinement,
            # Where trainings run: "local (...)" or "slurm (partition ...)" (empty: not
            # reported).
            "backend": backend,
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
    """The room's token-signing public keys, pinned on first use.

    Without a ``jwks_file`` the worker takes the keys from the signaling server
    at its first registration, writes them to ``state_dir/jwks.json`` (the pin)
    and prints their fingerprint. At every later registration the server's keys
    must be the pinned ones: a different set is refused (the pinned keys stay in
    use and the worker says so), because over plain ``ws://`` anyone in the
    path could hand out keys. Rotation, documented: stop the worker, delete
    ``state_dir/jwks.json`` (or put the new JWKS there, or set ``jwks_file``),
    start it again; it prints the new fingerprint. ``max_lifetime_s`` refuses
    tokens that live longer, however validly signed.
    """

    def __init__(
        self,
        room: str,
        cache: Path | None,
        *,
        max_lifetime_s: float | None = None,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.room = room
        self.cache = cache
        self.max_lifetime_s = max_lifetime_s
        self.say = say or (lambda text: None)
        self.verifier: TokenVerifier | None = None
        self.pinned: dict[str, Any] | None = None
        self.refused = 0

    def load_file(self, path: Path) -> None:
        import json

        from sleap_rtc.auth.tokens import TokenVerifier

        try:
            self.verifier = TokenVerifier.from_jwks(
                json.loads(path.read_text(encoding="utf-8")), max_lifetime_s=self.max_lifetime_s
            )
        except (OSError, ValueError) as exc:
            raise WorkerSetupError(f"cannot use jwks_file {path}: {exc}") from None

    def update(self, jwks: dict[str, Any]) -> bool:
        """The server's keys at a registration: pinned on first use, then they must
        match the pin. Returns False when a change was refused."""
        import json

        from sleap_rtc.auth.tokens import TokenVerifier, jwks_fingerprint, write_private

        new = jwks_fingerprint(jwks)
        if self.pinned is not None:
            old = jwks_fingerprint(self.pinned)
            if new == old:
                return True
            self.refused += 1
            where = self.cache if self.cache is not None else "the pin"
            self.say(
                f"REFUSED the signing keys the signaling server now presents ({new}); "
                f"tokens are still checked against the pinned keys ({old}). If the room's "
                f"keys were rotated, stop the worker, delete {where} and start it again."
            )
            return False
        try:
            verifier = TokenVerifier.from_jwks(jwks, max_lifetime_s=self.max_lifetime_s)
        except ValueError as exc:
            self.say(f"the signaling server's signing keys are not usable: {exc}")
            return False
        self.verifier = verifier
        self.pinned = dict(jwks)
        if self.cache is not None:
            with contextlib.suppress(OSError):
                write_private(self.cache, json.dumps(jwks).encode())
        self.say(
            f"pinned the room's token-signing keys {new} (first use); a later change is "
            f"refused until {self.cache or 'the pin'} is deleted"
        )
        return True

    def load_cache(self) -> None:
        import json

        from sleap_rtc.auth.tokens import TokenVerifier, jwks_fingerprint

        if self.cache is None or not self.cache.exists():
            return
        with contextlib.suppress(OSError, ValueError):
            jwks = json.loads(self.cache.read_text())
            self.verifier = TokenVerifier.from_jwks(jwks, max_lifetime_s=self.max_lifetime_s)
            self.pinned = jwks
            self.say(f"token-signing keys pinned in {self.cache}: {jwks_fingerprint(jwks)}")

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
    from sleap_rtc.worker.service import WorkerService
    from sleap_rtc.worker.serviceconfig import WorkerConfig

    config = WorkerConfig(
        mounts=[m.path for m in settings.mounts],
        state_dir=settings.state_dir,
        verifier=verifier,
        trainer_command=list(settings.trainer_command),
        max_concurrent_jobs=settings.concurrency,
        max_config_bytes=settings.max_config_bytes,
        worker_id=settings.name,
        confinement=settings.confinement,
        allow_reporting=settings.allow_reporting,
        job_retention_s=settings.job_retention_days * 86400.0 or None,
        backend=settings.backend,
        slurm=settings.slurm,
    )
    return WorkerService(config)


def _open_capture(path: Path | None) -> CaptureWriter | None:
    """A capture writer for ``path``, else ``$SLEAP_RTC_CAPTURE``, else None."""
    from sleap_rtc.capture.write import recorder

    try:
        return recorder.open_capture(path)
    except OSError as exc:
        raise WorkerSetupError(f"cannot write the capture {path}: {exc}") from None


async def run_worker(
    settings: WorkerSettings,
    credential: str,
    *,
    capture: Path | None = None,
    on_registered: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
    say: Callable[[str], None] | None = None,
    runtime: WorkerRuntime | None = None,
    wait_for_server: bool = False,
) -> None:
    """Register in the room, answer offers, serve each link, until stopped.

    A signaling server lost later is retried with backoff (1 s doubling to
    30 s), saying so, while jobs keep running. One that cannot be reached at
    start raises :class:`RegistrationFailed`, or with ``wait_for_server`` (the
    ``sleap-rtc worker`` command) is waited for with the same backoff, saying
    so. SIGINT/SIGTERM (or ``stop``) end it cleanly: running jobs are stopped
    and temp configs removed.

    Args:
        capture: Record every link into this MCAP file (None: ``$SLEAP_RTC_CAPTURE``).
        on_registered: Called with the worker's peer id after each registration.
        stop: Ends the worker when set (None: SIGINT/SIGTERM do).
        say: Where the one-line status messages go (stdout by default).
        runtime: Filled in while serving (peer id, connections).
        wait_for_server: Retry an unreachable server at start instead of raising.

    Raises:
        WorkerSetupError: bad ``jwks_file``, settings the service refuses, an
            unwritable capture.
        WorkerCredentialRefused: the signaling server refused the credential.
        RegistrationFailed: the first registration failed (with
            ``wait_for_server``: only when the server refused it).
    """
    import asyncio
    import signal
    import uuid

    from sleap_rtc.signaling.client import SignalingClient, SignalingError
    from sleap_rtc.transport.answerer import serve_links
    from sleap_rtc.transport.channel import DataChannelLink
    from sleap_rtc.worker.relayhub import RelayHubError
    from sleap_rtc.worker.status import StatusReporter

    out = say or _say
    state = runtime or WorkerRuntime()
    keys = _Keys(
        settings.room,
        settings.state_dir / "jwks.json",
        max_lifetime_s=settings.max_token_lifetime_hours * 3600.0,
        say=out,
    )
    if settings.jwks_file is not None:
        keys.load_file(settings.jwks_file)
    else:
        keys.load_cache()
    try:
        service = build_service(settings, keys.verify)
        await service.start()
    except (ValueError, RelayHubError) as exc:
        raise WorkerSetupError(f"cannot start the worker: {exc}") from None
    service.announce = out  # per-job lines: accepted, started, finished, failed
    confinement = service.confinement_summary()
    out(f"trainer confinement: {confinement}")
    backend = service.runner.describe()
    out(f"trainer backend: {backend}")
    writer = _open_capture(capture)
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
            served = writer.wrap(
                link,
                connection_id=uuid.uuid4().hex[:12],
                local_peer=state.peer_id,
                remote_peer=link.peer_id,
                local_role="worker",
            )
        await service.serve(served, peer_id=link.peer_id)

    # Busy while every job slot is taken, available otherwise (see worker/status.py).
    status = StatusReporter(
        service,
        settings.concurrency,
        lambda shown, active: worker_metadata(
            settings,
            status=shown,
            active_jobs=active,
            confinement=confinement,
            backend=backend,
        ),
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
            if on_registered is not None:
                on_registered(reg.peer_id)
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
                raise WorkerCredentialRefused(
                    f"the signaling server refused the worker credential for room "
                    f"{settings.room!r}: {error.reason}"
                )
            if not isinstance(error, SignalingError | OSError):
                raise error
            unreachable = not isinstance(error, SignalingError) or error.code in (
                "unreachable",
                "timeout",
                "closed",
            )
            if first and not (unreachable and wait_for_server):
                raise RegistrationFailed(str(error))
            if first:
                # Started before the server (a reboot, a service order): wait for it.
                out(
                    f"signaling server {settings.signaling_url} not reachable yet ({error}); "
                    f"waiting for it, retrying in {backoff:.0f} s (Ctrl-C to give up)"
                )
            else:
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


def _say(text: str) -> None:
    print(text, flush=True)
