"""Exit codes of every ``sleap-rtc`` command, in one place, and the error that carries one.

Scripts can rely on these numbers:

====  ==============  ==========================================================
code  name            meaning
====  ==============  ==========================================================
0     OK              done: job completed, all paths found, server stopped cleanly
1     FAILED          the job was rejected or failed, paths are missing (``check``),
                      or an unexpected internal error
2     USAGE           bad arguments or a bad config file (nothing was attempted)
3     CANCELLED       the user cancelled (path resolution declined, Ctrl-C)
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
