"""What an operator sets for one :class:`~sleap_rtc.worker.service.WorkerService`.

:class:`WorkerConfig` is built from ``worker.toml`` by the runtime (or directly
by tests and the demo); :func:`session_verifier` adapts a claims-returning token
check to the sans-IO session's ``token -> subject`` verifier.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sleap_rtc.auth.tokens import Claims, TokenError
from sleap_rtc.config.worker import SlurmSettings
from sleap_rtc.worker.session import TokenRefused, Verifier
from sleap_rtc.worker.trainer import RunLimits
from sleap_rtc.worker.trainplan import DEFAULT_TRAINER_COMMAND
from sleap_rtc_proto.limits import MAX_CONFIG_BYTES, MAX_FRAME_BYTES, MAX_MESSAGE_BYTES

#: Checks a client's token and returns its claims (e.g.
#: ``functools.partial(TokenVerifier.verify, room=...)``); raises TokenError.
TokenCheck = Callable[[str], Claims]


def session_verifier(check: TokenCheck) -> Verifier:
    """The sans-IO session's verifier (token -> subject) for a claims-returning ``check``."""

    def verify(token: str) -> str:
        try:
            return check(token).subject
        except TokenError as exc:
            raise TokenRefused(exc.reason, exc.message) from None

    return verify


@dataclass(kw_only=True)
class WorkerConfig:
    """Operator settings of one worker.

    Attributes:
        mounts: allowed roots; every path a client names must resolve inside one.
        state_dir: worker-owned folder outside the mounts (temp configs live in
            ``state_dir/configs``, mode 0700, files 0600).
        verifier: checks each client's Hello token (e.g.
            ``functools.partial(TokenVerifier.verify, room=...)``). Required;
            ``None`` explicitly turns authentication off (local development).
        runs_dir: folder inside a mount for run outputs; default
            ``<first mount>/sleap-rtc-runs``.
        trainer_command: command prefix; the worker appends ``--config`` etc.
        trainer_env: extra environment for the trainer.
        max_concurrent_jobs: running jobs at once; past it, Error BUSY.
        require_check_token: refuse submits without a passing path check.
        worker_id: peer id reported in HelloAck.
        token_secret: HMAC key for check tokens; default: random per start.
        max_frame_bytes, max_message_bytes, max_config_bytes: receive limits.
        run_limits: trainer timeouts and log batching.
        history_limit: progress/log messages kept per job for JobAttach.
        build_index: index file names under the mounts for suggestions.
        disclose_mounts: tell clients the mount roots.
        send_timeout_s: a send that takes longer closes the connection.
        max_outbox_frames: frames queued for a slow connection before it is closed.
        max_outbox_bytes: bytes queued for a slow connection before it is closed.
        max_preauth_bytes: bytes all connections together may send before Hello
            (each connection's first 64 KiB not counted); past it, the
            connection that would exceed it is closed.
        max_path_checks: path checks in flight per connection.
        shutdown_grace_s: how long close() waits for trainers to end.
        job_retention_s: how long the job store remembers an ended job (for
            idempotency and attach, across restarts); None keeps every job.
        confinement: ``"auto"`` (confine the trainer with Landlock when the
            kernel offers it), ``"require"`` (refuse to start without it) or
            ``"off"``; see :mod:`.launcher`.
        allow_reporting: let jobs turn on reporting services (wandb).
        backend: ``"local"`` (the trainer runs here, a subprocess) or ``"slurm"``
            (each job is a Slurm batch job; see :mod:`.slurmrun`).
        slurm: the ``[slurm]`` settings, for the Slurm backend.
        slurm_env: environment for the Slurm commands (``SLURM_CONF``...); default
            the worker's own.
    """

    mounts: Sequence[str | Path]
    state_dir: Path
    verifier: TokenCheck | None
    runs_dir: Path | None = None
    trainer_command: Sequence[str] = DEFAULT_TRAINER_COMMAND
    trainer_env: Mapping[str, str] = field(default_factory=dict)
    max_concurrent_jobs: int = 1
    require_check_token: bool = True
    worker_id: str = "worker"
    token_secret: bytes | None = None
    max_frame_bytes: int = MAX_FRAME_BYTES
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_config_bytes: int = MAX_CONFIG_BYTES
    run_limits: RunLimits = field(default_factory=RunLimits)
    history_limit: int = 10_000
    build_index: bool = True
    disclose_mounts: bool = True
    send_timeout_s: float = 30.0
    max_outbox_frames: int = 20_000
    max_outbox_bytes: int = 64 * 1024 * 1024
    max_preauth_bytes: int = 64 * 1024 * 1024
    max_path_checks: int = 4
    shutdown_grace_s: float = 15.0
    job_retention_s: float | None = 30 * 86400.0
    confinement: str = "auto"
    allow_reporting: bool = False
    backend: str = "local"
    slurm: SlurmSettings = field(default_factory=SlurmSettings)
    slurm_env: Mapping[str, str] | None = None
