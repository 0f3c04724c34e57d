"""Pieces several commands share: client options, settings, running a coroutine.

Only standard-library imports at module level (``sleap-rtc --help`` must stay fast).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sleap_rtc.cli.exits import CliError, ExitCode

if TYPE_CHECKING:
    from sleap_rtc.config.client import ClientSettings

T = TypeVar("T")

#: Environment variable with a token (headless: CI, scripts).
TOKEN_ENV = "SLEAP_RTC_TOKEN"


def add_client_options(parser: argparse.ArgumentParser, *, worker: bool = True) -> None:
    """Options of every command that talks to a signaling server as a client."""
    group = parser.add_argument_group("connection (override client.toml)")
    group.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="client config file (default: per-user client.toml)",
    )
    group.add_argument("--server", metavar="URL", help="signaling server (ws://host:port)")
    group.add_argument("--room", metavar="ROOM", help="room to work in")
    if worker:
        group.add_argument(
            "--worker",
            metavar="NAME",
            help="worker name or peer id (default: the first available one in the room)",
        )
    group.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help=f"read the login token from FILE (headless; or set {TOKEN_ENV})",
    )
    group.add_argument(
        "--timeout", type=float, metavar="S", help="seconds to wait for the worker (default 15)"
    )
    group.add_argument(
        "--loopback",
        action="store_true",
        default=None,
        help="use loopback ICE candidates (client and worker on this host)",
    )


def client_settings(args: argparse.Namespace) -> ClientSettings:
    """client.toml (``--config`` or the default file) with the flags on top."""
    from sleap_rtc.config import client

    settings = client.load(getattr(args, "config", None))
    return client.with_overrides(
        settings,
        server=getattr(args, "server", None),
        room=getattr(args, "room", None),
        worker=getattr(args, "worker", None),
        token_file=getattr(args, "token_file", None),
        connect_timeout_s=getattr(args, "timeout", None),
        loopback=getattr(args, "loopback", None),
    )


def token_store() -> Any:
    """The token store ``sleap-rtc login`` writes (in the config folder)."""
    from sleap_rtc.auth.store import STORE_FILE, TokenStore
    from sleap_rtc.config import config_dir

    return TokenStore(config_dir() / STORE_FILE)


def client_token(settings: ClientSettings) -> str:
    """The client's token: ``--token-file``/``token_file``, then ``SLEAP_RTC_TOKEN``,
    ``SLEAP_RTC_TOKEN_FILE``, then what ``sleap-rtc login`` stored for the server.
    Missing or expired: exit 5 with what to do."""
    import time

    from sleap_rtc.auth.store import resolve_token
    from sleap_rtc.auth.tokens import unverified_expiry

    try:
        token = resolve_token(
            token_file=settings.token_file, server=settings.server, store=token_store()
        )
    except FileNotFoundError as exc:
        raise CliError(
            f"token file {exc.filename} does not exist", ExitCode.LOGIN_REQUIRED
        ) from None
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read the token: {exc}", ExitCode.LOGIN_REQUIRED) from None
    if not token:
        raise CliError(
            f"Login required: no token for {settings.server}. Run `sleap-rtc login "
            f"--server {settings.server} --room {settings.room}` (or pass --token-file).",
            ExitCode.LOGIN_REQUIRED,
        )
    expiry = unverified_expiry(token)
    if expiry is not None and expiry < time.time():
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(expiry))
        raise CliError(
            f"Login required: the token expired at {when}. Run `sleap-rtc login` again.",
            ExitCode.LOGIN_REQUIRED,
        )
    return token


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to the end; SIGTERM cancels it like Ctrl-C does."""

    async def main() -> T:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        installed = False
        if task is not None and sys.platform != "win32":
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signal.SIGTERM, task.cancel)
                installed = True
        try:
            return await coro
        finally:
            if installed:
                loop.remove_signal_handler(signal.SIGTERM)

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None


async def wait_for_stop(*stop: Callable[[], Awaitable[None]]) -> None:
    """Wait until SIGINT/SIGTERM, then run the ``stop`` callbacks in order."""
    loop = asyncio.get_running_loop()
    event = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, event.set)
    try:
        await event.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        for callback in stop:
            with contextlib.suppress(Exception):
                await callback()


def say(text: str = "") -> None:
    """A line on stdout, flushed (scripts and tests read it as it comes)."""
    print(text, flush=True)


def write_ready_file(path: Path | None, text: str) -> None:
    """Write ``text`` to ``path`` atomically (tests wait for it to appear)."""
    if path is None:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)
