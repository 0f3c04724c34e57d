"""No trainer without its worker: process identity, the death signal, and the start-up sweep.

A trainer must never run unsupervised. Three mechanisms, strongest first:

- :func:`die_with_worker` (Linux): the trainer is started with
  ``PR_SET_PDEATHSIG = SIGKILL``, so the kernel kills it the moment the
  worker process dies, however it dies (kill -9 included). The bound on an
  orphan trainer is then the kernel's signal delivery, well under a second
  (``tests/test_restart.py`` measures it against a real kill -9).
- The job store records each trainer's identity (pid plus the process start
  time from ``/proc/<pid>/stat``, which a reused pid does not share) before
  anything is announced. On start-up, :func:`sweep` stops every recorded
  trainer that is somehow still alive (a platform without the death signal,
  children that escaped it) and marks its job failed with the reason.
- :class:`StateLock`: one worker per state folder (an exclusive ``flock``),
  so two workers cannot both think they own a job.

Adoption of a live trainer after a restart is not attempted: the trainer's
output pipes die with the worker, so the run cannot be followed completely;
its job ends with a JobFailed that says what happened.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "StateLock",
    "StateLocked",
    "die_with_worker",
    "group_alive",
    "process_start_ticks",
    "stop_group",
]

_PR_SET_PDEATHSIG = 1
_libc: ctypes.CDLL | None = None
if sys.platform.startswith("linux"):
    with contextlib.suppress(OSError):
        _libc = ctypes.CDLL(None, use_errno=True)


def process_start_ticks(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot; None if it is gone
    (or /proc is not available)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    # fields[0] is the state (field 3); the start time is field 22.
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _members(pgid: int, not_before: int) -> list[int]:
    """Live processes of group ``pgid`` that started at or after ``not_before``."""
    out: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for name in entries:
        if not name.isdigit():
            continue
        try:
            text = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2 :].split()
        if len(fields) < 20 or fields[0] in ("Z", "X"):
            continue
        if int(fields[2]) == pgid and int(fields[19]) >= not_before:
            out.append(int(name))
    return out


def group_alive(pgid: int, start_ticks: int) -> list[int]:
    """The live members of the trainer's process group (the trainer leads it, so the
    group id is its pid) that are not a later process reusing the id. A start time
    of 0 means unknown: nothing is claimed."""
    if start_ticks <= 0:
        return []
    leader = process_start_ticks(pgid)
    if leader is not None and leader != start_ticks:
        return []  # the id was reused (Linux keeps a group's id while the group lives)
    return _members(pgid, start_ticks)


def stop_group(
    pgid: int,
    start_ticks: int,
    *,
    grace_s: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Stop what is left of a trainer's process group: SIGTERM, then SIGKILL after
    ``grace_s``. Returns how it went (for the job's failure message); blocking."""
    members = group_alive(pgid, start_ticks)
    if not members:
        return "none left"
    for pid in members:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not group_alive(pgid, start_ticks):
            return "stopped with SIGTERM"
        sleep(0.05)
    for pid in group_alive(pgid, start_ticks):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while group_alive(pgid, start_ticks) and time.monotonic() < deadline:
        sleep(0.05)
    left = group_alive(pgid, start_ticks)
    return f"could not be stopped (pids {left})" if left else "killed with SIGKILL"


def die_with_worker() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child die with SIGKILL when this process dies;
    None where the platform has no such signal (then only :func:`stop_group` at the
    next start-up bounds an orphan)."""
    libc = _libc
    if libc is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the worker died before the signal was armed
            os._exit(1)

    return preexec


class StateLocked(RuntimeError):
    """Another worker process uses this state folder."""


#: State folders this process holds the lock of, and how many holders share each.
_HELD: dict[str, list[int]] = {}


class StateLock:
    """An exclusive ``flock`` on ``state_dir/worker.lock`` for the life of a worker.

    Another *process* is refused. A second service of the same process may share
    the folder (the demo joins an in-memory service to the worker it registered):
    :meth:`acquire` then returns False, and that service must not sweep the jobs
    (the first holder swept them at its start, and its trainers are running)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "worker.lock"
        self._fd: int | None = None
        self._shared = False

    def acquire(self) -> bool:
        """Take the lock; True for the first holder in this process, False when this
        process already held it. Raises :class:`StateLocked` for another process."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = str(self.path.resolve())
        if key in _HELD:
            _HELD[key][1] += 1
            self._shared = True
            return False
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            finally:
                os.close(fd)
            raise StateLocked(
                f"another worker (pid {holder or '?'}) is using the state folder "
                f"{self.path.parent}; one state folder serves one worker"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[key] = [fd, 1]
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is None and not self._shared:
            return
        key = str(self.path.resolve())
        held = _HELD.get(key)
        self._fd = None
        self._shared = False
        if held is None:
            return
        held[1] -= 1
        if held[1] <= 0:
            del _HELD[key]
            with contextlib.suppress(OSError):
                os.close(held[0])
