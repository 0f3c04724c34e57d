"""Landlock through ctypes: probing, and a ruleset applied in a child process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sleap_rtc.worker import confine

FOUND = confine.probe()
needs_landlock = pytest.mark.skipif(not FOUND.available, reason=FOUND.describe())


def test_probe_never_raises_and_describes_itself() -> None:
    assert FOUND.abi >= 0
    text = FOUND.describe()
    assert ("Landlock ABI" in text) if FOUND.available else ("unavailable" in text)


def test_unavailable_reads_as_such() -> None:
    none = confine.Availability(0, "ENOSYS")
    assert not none.available and not none.network
    assert none.describe() == "Landlock unavailable: ENOSYS"
    assert confine.Availability(3).describe() == "Landlock ABI 3 (files)"
    assert not confine.Availability(3).network and confine.Availability(4).network


def test_rights_grow_with_the_abi() -> None:
    assert confine.fs_rights(1) == (1 << 13) - 1
    assert confine.fs_rights(3) & confine.TRUNCATE
    assert not confine.fs_rights(4) & confine.IOCTL_DEV
    assert confine.fs_rights(5) & confine.IOCTL_DEV


CHILD = r"""
import os, socket, sys
from sleap_rtc.worker import confine
allowed, port = sys.argv[1], int(sys.argv[2])
rules = confine.Rules()
rules.allow([sys.prefix, sys.base_prefix, "/usr", "/lib", "/lib64"], confine.READ_EXEC)
rules.allow([allowed], confine.READ)
rules.allow([os.path.join(allowed, "file.txt")], confine.READ_WRITE)  # a file: file rights only
rules.allow(["/nonexistent/folder"], confine.READ)
rules.connect_ports.append(port)
print("skipped", confine.restrict(rules))
def attempt(name, action):
    try:
        action()
        print(name, "ok")
    except OSError as exc:
        print(name, exc.errno)
attempt("read-allowed", lambda: open(os.path.join(allowed, "file.txt")).read())
attempt("read-outside", lambda: open(sys.argv[3]).read())
attempt("listdir-outside", lambda: os.listdir(os.path.dirname(sys.argv[3])))
attempt("bind", lambda: socket.socket().bind(("127.0.0.1", 0)))
attempt("connect-other", lambda: socket.create_connection(("127.0.0.1", port + 1), timeout=1))
attempt("kill-parent", lambda: os.kill(os.getppid(), 0))
"""


@needs_landlock
def test_a_confined_child_reads_only_what_it_was_given(tmp_path: Path) -> None:
    (tmp_path / "allowed").mkdir()
    (tmp_path / "allowed" / "file.txt").write_text("ok")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("secret")
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "allowed"), "45999",
         str(tmp_path / "outside" / "secret.txt")],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    assert lines["skipped"] == "['/nonexistent/folder']"
    assert lines["read-allowed"] == "ok"
    assert lines["read-outside"] == "13"  # EACCES
    assert lines["listdir-outside"] == "13"
    if FOUND.network:
        assert lines["bind"] == "13"
        assert lines["connect-other"] == "13"
    if FOUND.abi >= 6:
        assert lines["kill-parent"] == "1"  # EPERM: signals outside its domain are scoped


SOCKETS = r"""
import socket, sys
from sleap_rtc.worker import confine
confine.restrict_sockets()
def attempt(name, action):
    try:
        action()
        print(name, "ok")
    except OSError as exc:
        print(name, exc.errno)
attempt("unix", lambda: socket.socket(socket.AF_UNIX).connect(sys.argv[1]))
attempt("udp", lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC))
attempt("listen", lambda: socket.socket().listen(1))
attempt("tcp", lambda: socket.socket().close())
attempt("socketpair", lambda: [s.close() for s in socket.socketpair()])
"""


@pytest.mark.skipif(not confine.socket_filter_supported(), reason="no socket filter here")
def test_the_socket_filter_closes_what_landlock_leaves_open(tmp_path: Path) -> None:
    import socket

    path = str(tmp_path / "s.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)
    try:
        out = subprocess.run(
            [sys.executable, "-c", SOCKETS, path],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
    finally:
        server.close()
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    assert lines == {"unix": "13", "udp": "13", "listen": "13", "tcp": "ok", "socketpair": "ok"}
