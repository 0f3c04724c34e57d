#!/usr/bin/env python3
"""A stand-in trainer that reports what it could open (for the confinement tests).

``peek_trainer.py train --config CFG.yaml [...]``; the config's ``peek:`` section
lists ``read`` (files to read), ``write`` (files to create), ``connect`` (TCP
ports on 127.0.0.1), ``unix`` (socket paths), ``udp`` (ports), ``listen`` (any
entry: listen without bind), ``env`` (variables to print). One line per attempt:
``PEEK <what> <target> ok`` or ``PEEK <what> <target> <errno name>``.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from pathlib import Path

import yaml


def attempt(what: str, target: object, action) -> None:  # type: ignore[no-untyped-def]
    try:
        action()
    except OSError as exc:
        print(f"PEEK {what} {target} {errno.errorcode.get(exc.errno or 0, exc)}", flush=True)
    else:
        print(f"PEEK {what} {target} ok", flush=True)


def main() -> int:
    args = sys.argv[1:]
    config = Path(args[args.index("--config") + 1])
    peek = (yaml.safe_load(config.read_text()) or {}).get("peek") or {}
    for path in peek.get("read", []):
        attempt("read", path, lambda p=path: Path(p).read_bytes())
    for path in peek.get("write", []):
        attempt("write", path, lambda p=path: Path(p).write_text("x"))
    for port in peek.get("connect", []):

        def connect(p: int = int(port)) -> None:
            with socket.create_connection(("127.0.0.1", p), timeout=2):
                pass

        attempt("connect", port, connect)
    for path in peek.get("unix", []):

        def unix(p: str = str(path)) -> None:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(p)

        attempt("unix", path, unix)
    for port in peek.get("udp", []):

        def udp(p: int = int(port)) -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"x", ("127.0.0.1", p))

        attempt("udp", port, udp)
    for _ in peek.get("listen", []):

        def listen() -> None:
            with socket.socket() as s:
                s.listen(1)  # without bind: the kernel would pick a port on 0.0.0.0

        attempt("listen", 1, listen)
    for name in peek.get("env", []):
        print(f"PEEK env {name} {os.environ.get(name, '<unset>')}", flush=True)
    print(f"PEEK cwd {os.getcwd()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
