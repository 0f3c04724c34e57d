"""Landlock, through ctypes: confine the calling thread to an allow-list of paths and ports.

Landlock (Linux 5.13+) lets an unprivileged process drop its own access to
the filesystem (ABI 1+), TCP bind/connect (ABI 4+), abstract Unix sockets and
signals to processes outside (ABI 6+). A ruleset binds only the calling
thread and what it ``exec``s later (thread sync needs ABI 8), so the worker
never confines itself: :mod:`.launcher` is a small process that applies the
ruleset and then ``exec``s the trainer.

:func:`probe` says whether the kernel offers Landlock and which ABI, with the
reason when it does not (ENOSYS: not built in or a sandbox such as gVisor;
EOPNOTSUPP: not enabled at boot; EPERM: a container's seccomp profile).
:func:`restrict` applies a :class:`Rules` to the calling thread; a path in it
that does not exist is skipped (e.g. ``/lib64`` on some systems).

>>> probe().abi >= 0
True
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

# Syscall numbers are the same on every architecture (the unified table).
_SYS_CREATE_RULESET = 444
_SYS_ADD_RULE = 445
_SYS_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1 << 0
_RULE_PATH_BENEATH = 1
_RULE_NET_PORT = 2
_PR_SET_NO_NEW_PRIVS = 38

# Filesystem rights, and the ABI that added each.
EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5
# Network rights (ABI 4) and scopes (ABI 6).
BIND_TCP = 1 << 0
CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1

_FILE_ONLY = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV


def fs_rights(abi: int) -> int:
    """Every filesystem right the kernel's ABI knows."""
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


#: Rights for a folder the trainer may only read.
READ = READ_FILE | READ_DIR
#: Rights for a folder the trainer reads and runs programs from.
READ_EXEC = READ | EXECUTE
#: Rights for a folder the trainer owns (run folder, private temp).
READ_WRITE = (
    READ
    | WRITE_FILE
    | REMOVE_DIR
    | REMOVE_FILE
    | MAKE_DIR
    | MAKE_REG
    | MAKE_SOCK
    | MAKE_FIFO
    | MAKE_SYM
    | REFER
    | TRUNCATE
)
#: Rights for a device file the trainer reads and writes (``/dev/null``, GPUs).
DEVICE = READ_FILE | WRITE_FILE | TRUNCATE | IOCTL_DEV


class ConfinementError(OSError):
    """Landlock is unavailable or a rule could not be applied."""


@dataclass(frozen=True)
class Availability:
    """What the kernel offers: ``abi`` 0 when Landlock is unavailable, with ``reason``."""

    abi: int
    reason: str = ""

    @property
    def available(self) -> bool:
        return self.abi > 0

    @property
    def network(self) -> bool:
        """TCP bind/connect rules (ABI 4+)."""
        return self.abi >= 4

    def describe(self) -> str:
        if not self.available:
            return f"Landlock unavailable: {self.reason}"
        parts = ["files"]
        if self.abi >= 4:
            parts.append("TCP ports")
        if self.abi >= 6:
            parts.append("signals and abstract sockets")
        return f"Landlock ABI {self.abi} ({', '.join(parts)})"


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # the kernel's struct is packed: 12 bytes
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPortAttr(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def probe() -> Availability:
    """Whether this kernel offers Landlock, and which ABI (never raises)."""
    if platform.system() != "Linux":
        return Availability(0, f"not Linux ({platform.system()})")
    try:
        libc = _libc()
        abi = libc.syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), _CREATE_RULESET_VERSION)
    except (OSError, AttributeError) as exc:
        return Availability(0, f"the syscall interface is not reachable: {exc}")
    if abi > 0:
        return Availability(int(abi))
    err = ctypes.get_errno()
    reasons = {
        errno.ENOSYS: "the kernel has no Landlock (not built in, or a sandbox such as gVisor)",
        errno.EOPNOTSUPP: "Landlock is built in but not enabled at boot (lsm= kernel option)",
        errno.EPERM: "the container's seccomp profile forbids Landlock",
    }
    return Availability(0, reasons.get(err, f"create_ruleset failed: {os.strerror(err)}"))


@dataclass
class Rules:
    """An allow-list: paths with rights, and TCP ports the trainer may connect to.

    Attributes:
        paths: ``(path, rights)``; a path that does not exist is skipped; on a
            file only file rights apply.
        connect_ports: TCP ports ``connect()`` may reach; binding any port is denied.
    """

    paths: list[tuple[str, int]] = field(default_factory=list)
    connect_ports: list[int] = field(default_factory=list)

    def allow(self, paths: Iterable[str], rights: int) -> None:
        self.paths.extend((p, rights) for p in paths)


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise ConfinementError(err, f"Landlock {what}: {os.strerror(err)}")
    return result


def restrict(rules: Rules, abi: int | None = None) -> list[str]:
    """Confine the calling thread (and what it ``exec``s) to ``rules``.

    Returns the paths skipped because they do not exist.

    Raises:
        ConfinementError: Landlock is unavailable or the kernel refused a rule.
    """
    if abi is None:
        found = probe()
        if not found.available:
            raise ConfinementError(errno.ENOSYS, found.describe())
        abi = found.abi
    libc = _libc()
    handled = fs_rights(abi)
    attr = _RulesetAttr(
        handled_access_fs=handled,
        handled_access_net=(BIND_TCP | CONNECT_TCP) if abi >= 4 else 0,
        scoped=(SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL) if abi >= 6 else 0,
    )
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else 16 if abi >= 4 else 8
    fd = _check(
        libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0),
        "create_ruleset",
    )
    skipped: list[str] = []
    try:
        for path, rights in rules.paths:
            try:
                pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except (FileNotFoundError, NotADirectoryError):
                skipped.append(path)
                continue
            try:
                allowed = rights & handled
                if not stat.S_ISDIR(os.fstat(pfd).st_mode):
                    allowed &= _FILE_ONLY
                beneath = _PathBeneathAttr(allowed_access=allowed, parent_fd=pfd)
                _check(
                    libc.syscall(_SYS_ADD_RULE, fd, _RULE_PATH_BENEATH, ctypes.byref(beneath), 0),
                    f"add_rule({path})",
                )
            finally:
                os.close(pfd)
        if abi >= 4:
            for port in rules.connect_ports:
                net = _NetPortAttr(allowed_access=CONNECT_TCP, port=int(port))
                _check(
                    libc.syscall(_SYS_ADD_RULE, fd, _RULE_NET_PORT, ctypes.byref(net), 0),
                    f"add_rule(port {port})",
                )
        _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        _check(libc.syscall(_SYS_RESTRICT_SELF, fd, 0), "restrict_self")
    finally:
        os.close(fd)
    return skipped


# --- the second layer: a seccomp filter for what Landlock ABI 7 leaves open --------------

_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
#: (socket, listen) syscall numbers per architecture.
_SOCKET_CALLS = {"x86_64": (41, 50), "aarch64": (198, 201)}
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_LD_ABS_W, _JEQ, _JGE, _RET, _AND = 0x20, 0x15, 0x35, 0x06, 0x54


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def socket_filter_supported() -> bool:
    """Whether :func:`restrict_sockets` knows this architecture."""
    return platform.system() == "Linux" and platform.machine() in _SOCKET_CALLS


def restrict_sockets() -> None:
    """Deny Unix-domain sockets, UDP and raw IP sockets, and ``listen()`` (EACCES).

    Closes what Landlock ABI 7 leaves open: connecting to a Unix socket by path,
    UDP ``sendto``, and ``listen()`` without ``bind()`` (which auto-binds a port).
    ``socketpair`` (DataLoader workers) and TCP ``connect`` stay allowed; Landlock
    limits TCP to the progress ports. A call from a foreign syscall ABI (i386,
    x32) is denied outright.

    Raises:
        ConfinementError: unsupported architecture, or the kernel refused the filter.
    """
    machine = platform.machine()
    if not socket_filter_supported():
        raise ConfinementError(errno.ENOSYS, f"no socket filter for {machine}")
    sys_socket, sys_listen = _SOCKET_CALLS[machine]
    deny = _RET_ERRNO | errno.EACCES
    # (code, jump-if-true label, jump-if-false label, k); labels resolve to offsets.
    program: list[tuple[int | str, int | str, int | str, int]] = [
        (_LD_ABS_W, 0, 0, 4),  # arch
        (_JEQ, 0, "deny", _AUDIT_ARCH[machine]),
        (_LD_ABS_W, 0, 0, 0),  # syscall number
        (_JGE, "deny", 0, 0x40000000),  # x32
        (_JEQ, "socket", 0, sys_socket),
        (_JEQ, "deny", 0, sys_listen),
        (_RET, 0, 0, _RET_ALLOW),
        ("socket", 0, 0, 0),  # label
        (_LD_ABS_W, 0, 0, 16),  # args[0]: domain
        (_JEQ, "deny", 0, 1),  # AF_UNIX
        (_JEQ, "inet", 0, 2),  # AF_INET
        (_JEQ, "inet", 0, 10),  # AF_INET6
        (_RET, 0, 0, _RET_ALLOW),
        ("inet", 0, 0, 0),  # label
        (_LD_ABS_W, 0, 0, 24),  # args[1]: type
        (_AND, 0, 0, 0xF),  # without SOCK_NONBLOCK / SOCK_CLOEXEC
        (_JEQ, "deny", 0, 2),  # SOCK_DGRAM
        (_JEQ, "deny", 0, 3),  # SOCK_RAW
        (_RET, 0, 0, _RET_ALLOW),
        ("deny", 0, 0, 0),  # label
        (_RET, 0, 0, deny),
    ]
    labels: dict[str, int] = {}
    code: list[tuple[int, int | str, int | str, int]] = []
    for op, jt, jf, k in program:
        if isinstance(op, str):
            labels[op] = len(code)
        else:
            code.append((op, jt, jf, k))

    def jump(target: str | int, at: int) -> int:
        return labels[target] - at - 1 if isinstance(target, str) else int(target)

    filters = (_SockFilter * len(code))(
        *(_SockFilter(int(c), jump(t, i), jump(f, i), k) for i, (c, t, f, k) in enumerate(code))
    )
    prog = _SockFprog(len(code), filters)
    libc = _libc()
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _check(
        libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0),
        "seccomp socket filter",
    )
