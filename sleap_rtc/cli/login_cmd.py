"""``sleap-rtc login``: get a token for a room (browser, or headless from a file)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sleap_rtc.cli.exits import CliError, ExitCode

DESCRIPTION = """\
Log in to a room of a signaling server. By default this opens the server's login
page in a browser (the answer comes back to a one-time callback on 127.0.0.1) and
saves the token, readable by you only. Without a browser:
  --user NAME         asks the server for a token with the room's login
                      passphrase (prompted, or one line on stdin when piped)
  --token-file FILE   checks a token someone gave you ('-': stdin) against the
                      server's public keys and saves it
or skip login and set SLEAP_RTC_TOKEN / pass --token-file to each command.
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "login",
        help="log in to a room (browser or headless token)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, metavar="FILE", help="client config file")
    parser.add_argument("--server", metavar="URL", help="signaling server (ws://host:port)")
    parser.add_argument("--room", metavar="ROOM", help="room to log in to")
    parser.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="headless: verify the token in FILE ('-': stdin) and save it",
    )
    parser.add_argument(
        "--user",
        metavar="NAME",
        help="headless: log in as NAME with the room's login passphrase (prompted, or "
        "read from stdin)",
    )
    parser.add_argument(
        "--no-browser", action="store_true", help="print the login URL instead of opening a browser"
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, metavar="S", help="seconds to wait for the browser"
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--status", action="store_true", help="show the saved token and exit")
    what.add_argument("--logout", action="store_true", help="forget the saved token and exit")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from sleap_rtc.cli.common import client_settings, say, token_store

    settings = client_settings(args)
    store = token_store()
    if args.status:
        return _status(store, settings.server)
    if args.logout:
        removed = store.remove(settings.server)
        say(
            f"forgot the token for {settings.server}"
            if removed
            else f"no token saved for {settings.server}"
        )
        return int(ExitCode.OK)
    from sleap_rtc.cli.common import run as run_async

    if args.token_file is not None and args.user is not None:
        raise CliError("give either --user or --token-file, not both", ExitCode.USAGE)
    if args.token_file is not None:
        return run_async(_headless(args.token_file, settings.server, settings.room, store))
    if args.user is not None:
        secret = _read_passphrase(settings.room)
        return run_async(_passphrase(args.user, secret, settings.server, settings.room, store))
    return run_async(_browser(settings.server, settings.room, store, args))


def _status(store: Any, server: str) -> int:
    import time

    from sleap_rtc.cli.common import say

    record = store.load(server)
    if record is None:
        say(f"not logged in to {server}")
        return int(ExitCode.LOGIN_REQUIRED)
    expires = "unknown"
    expired = False
    if record.expires_at is not None:
        expires = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.expires_at))
        expired = record.expires_at < time.time()
    say(f"server:  {record.server}")
    say(f"room:    {record.room}")
    say(f"user:    {record.subject or '-'}")
    say(f"expires: {expires}{' (EXPIRED)' if expired else ''}")
    return int(ExitCode.LOGIN_REQUIRED if expired else ExitCode.OK)


async def _headless(path: Path, server: str, room: str, store: Any) -> int:
    from sleap_rtc.auth.store import read_token_file
    from sleap_rtc.auth.tokens import TokenError, TokenVerifier
    from sleap_rtc.cli.common import say
    from sleap_rtc.client.login import LoginError, fetch_jwks

    try:
        token = sys.stdin.read().strip() if str(path) == "-" else read_token_file(path)
    except FileNotFoundError:
        raise CliError(f"token file {path} does not exist", ExitCode.USAGE) from None
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read the token: {exc}", ExitCode.USAGE) from None
    try:
        jwks = await fetch_jwks(server)
    except LoginError as exc:
        raise CliError(exc.message, ExitCode.UNREACHABLE) from None
    try:
        claims = TokenVerifier.from_jwks(jwks).verify(token, room=room)
    except TokenError as exc:
        raise CliError(
            f"Login required: the token is not valid here: {exc.message}", ExitCode.LOGIN_REQUIRED
        ) from None
    store.save(token, server=server, room=room, subject=claims.subject)
    say(f"logged in to room {room!r} at {server} as {claims.subject} (token saved to {store.path})")
    return int(ExitCode.OK)


def _read_passphrase(room: str) -> str:
    """The room's login passphrase: a prompt on a terminal, else one line of stdin."""
    if sys.stdin.isatty():
        import getpass

        secret = getpass.getpass(f"login passphrase for room {room!r}: ")
    else:
        secret = sys.stdin.readline()
    secret = secret.strip()
    if not secret:
        raise CliError("no login passphrase given (one line on stdin)", ExitCode.USAGE)
    return secret


async def _passphrase(user: str, secret: str, server: str, room: str, store: Any) -> int:
    from sleap_rtc.cli.common import say
    from sleap_rtc.client.login import LoginError, login_with_passphrase

    try:
        record = await login_with_passphrase(
            server, room=room, user=user, secret=secret, store=store
        )
    except LoginError as exc:
        code = ExitCode.UNREACHABLE if exc.reason == "unreachable" else ExitCode.LOGIN_REQUIRED
        raise CliError(f"Login failed: {exc.message}", code) from None
    say(
        f"logged in to room {record.room!r} at {record.server} as {record.subject or user} "
        f"(token saved to {store.path})"
    )
    return int(ExitCode.OK)


async def _browser(server: str, room: str, store: Any, args: argparse.Namespace) -> int:
    from sleap_rtc.cli.common import say
    from sleap_rtc.client.login import LoginError, login

    def show(url: str) -> None:
        say(f"Log in at: {url}")

    def no_browser(url: str) -> bool:
        return False

    try:
        record = await login(
            server,
            room=room,
            open_browser=no_browser if args.no_browser else _open_browser,
            show_url=show,
            timeout=args.timeout,
            store=store,
        )
    except LoginError as exc:
        code = ExitCode.UNREACHABLE if exc.reason == "unreachable" else ExitCode.LOGIN_REQUIRED
        if exc.reason == "timeout":
            raise CliError(f"Login required. Please try again. ({exc.message})", code) from None
        raise CliError(f"Login failed: {exc.message}", code) from None
    say(f"logged in to room {record.room!r} at {record.server} as {record.subject or '?'}")
    return int(ExitCode.OK)


def _open_browser(url: str) -> bool:
    import webbrowser

    return webbrowser.open(url)
