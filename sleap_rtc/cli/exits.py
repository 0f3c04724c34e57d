"""Exit codes of every ``sleap-rtc`` command, in one place, and the error that carries one.

Scripts can rely on these numbers:

====  ==============  ==========================================================
code  name            meaning
====  ==============  ==========================================================
0     OK              done: job completed, or stopped early by Ctrl-C once on
                      ``train`` (the job ended with its checkpoint kept), all
                      paths found, server or worker stopped cleanly (Ctrl-C)
1     FAILED          the job was rejected or failed, paths are missing (``check``),
                      or an unexpected internal error
2     USAGE           bad arguments or a bad config file (nothing was attempted)
3     CANCELLED       the user cancelled: path resolution declined, Ctrl-C twice on
                      ``train`` (the job is left running on the worker), Ctrl-C in
                      any other client command
4     UNREACHABLE     cannot reach the signaling server or the worker, or the
                      connection was lost
5     LOGIN_REQUIRED  no valid token (missing, expired, forged, wrong room)
====  ==============  ==========================================================
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    CANCELLED = 3
    UNREACHABLE = 4
    LOGIN_REQUIRED = 5


class CliError(Exception):
    """A user-facing failure: printed as one line, no traceback, with an exit code."""

    def __init__(self, message: str, code: ExitCode = ExitCode.FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def typed_exit(exc: BaseException) -> CliError | None:
    """The library's typed errors (the wiring's, the worker runtime's, the demo's) as
    CliErrors with their exit codes; None for any other exception.

    Each of those errors carries its one-line message; the table below is the only
    place that decides which exit code it gets. Imported lazily: ``--help`` stays fast.
    """
    from sleap_rtc.client import reattach, wiring
    from sleap_rtc.demo import DemoFailed, DemoSetupError, DemoWorkerNotReady
    from sleap_rtc.worker import runtime

    table: tuple[tuple[type[Exception], ExitCode], ...] = (
        # client side: signaling, the worker lookup, the WebRTC link, the capture file
        (wiring.LoginRefused, ExitCode.LOGIN_REQUIRED),
        (wiring.SignalingUnreachable, ExitCode.UNREACHABLE),
        (wiring.UnknownRoom, ExitCode.UNREACHABLE),
        (wiring.WorkerNotFound, ExitCode.UNREACHABLE),
        (wiring.WorkerUnreachable, ExitCode.UNREACHABLE),
        (wiring.SignalingRefused, ExitCode.FAILED),
        (wiring.CaptureUnwritable, ExitCode.USAGE),
        # client side: re-attaching to a job by id (train --job-id)
        (reattach.ReattachUnreachable, ExitCode.UNREACHABLE),
        (reattach.ReattachLoginRequired, ExitCode.LOGIN_REQUIRED),
        (reattach.ReattachRefused, ExitCode.FAILED),
        # the worker's runtime
        (runtime.WorkerSetupError, ExitCode.USAGE),
        (runtime.WorkerCredentialRefused, ExitCode.LOGIN_REQUIRED),
        (runtime.RegistrationFailed, ExitCode.UNREACHABLE),
        # the demo
        (DemoSetupError, ExitCode.USAGE),
        (DemoWorkerNotReady, ExitCode.UNREACHABLE),
        (DemoFailed, ExitCode.FAILED),
    )
    for kind, code in table:
        if isinstance(exc, kind):
            return CliError(str(exc), code)
    return None
