"""``sleap-rtc signal``: run the embedded signaling server (rooms, relay, tokens)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sleap_rtc.cli.exits import CliError, ExitCode

DESCRIPTION = """\
Run the signaling server: workers register in rooms with the room's worker key,
clients with a token issued by this server (see `sleap-rtc login`), and offers and
answers are relayed within a room only. The signing key and the room file
(rooms.toml: worker_key and login_secret per room) live in --state-dir; on first
start a room 'default' with random secrets is created there.
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "signal",
        help="run the signaling server",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from sleap_rtc.config import DEFAULT_SIGNAL_PORT

    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_SIGNAL_PORT,
        help="port (default %(default)s; 0: any free port)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="signing key and rooms.toml (default: per-user state)",
    )
    parser.add_argument(
        "--rooms", type=Path, metavar="FILE", help="room file to use instead of DIR/rooms.toml"
    )
    parser.add_argument(
        "--token-ttl",
        type=float,
        metavar="S",
        default=12 * 3600,
        help="lifetime of issued tokens (s)",
    )
    parser.add_argument(
        "--ice-server",
        action="append",
        default=[],
        metavar="URL",
        help="ICE server handed to peers (repeatable; default none)",
    )
    parser.add_argument(
        "--show-secrets",
        action="store_true",
        help="print each room's worker key and login passphrase at start (local use)",
    )
    parser.add_argument(
        "--ready-file",
        type=Path,
        metavar="FILE",
        help="write the server URL to FILE once listening",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from sleap_rtc.cli.common import run as run_async

    if not 0 <= args.port <= 65535:
        raise CliError(f"--port must be 0-65535 (got {args.port})", ExitCode.USAGE)
    if args.rooms is not None and not args.rooms.is_file():
        raise CliError(f"room file {args.rooms} does not exist", ExitCode.USAGE)
    return run_async(_serve(args))


async def _serve(args: argparse.Namespace) -> int:
    from sleap_rtc.cli.common import say, wait_for_stop, write_ready_file
    from sleap_rtc.config import state_dir
    from sleap_rtc.signaling.server import ROOMS_FILE, serve_signaling

    folder = args.state_dir or state_dir() / "signal"
    try:
        server = await serve_signaling(
            args.host,
            args.port,
            state_dir=folder,
            rooms_file=args.rooms,
            ice_servers=[{"urls": url} for url in args.ice_server],
            token_ttl_s=args.token_ttl,
        )
    except OSError as exc:
        raise CliError(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc} "
            "(choose another --port)",
            ExitCode.FAILED,
        ) from None
    except ValueError as exc:
        raise CliError(f"bad room configuration: {exc}", ExitCode.USAGE) from None
    rooms = ", ".join(sorted(server.rooms))
    say(f"signaling server listening on {server.url}")
    say(f"rooms: {rooms} (secrets in {args.rooms or folder / ROOMS_FILE})")
    say(f"login page: {server.http_url}/login")
    say(f"public keys: {server.http_url}/.well-known/jwks.json")
    if args.show_secrets:
        for name, room in sorted(server.rooms.items()):
            say(f"room {name}: worker key {room.worker_key}  login passphrase {room.login_secret}")
    write_ready_file(args.ready_file, server.url)
    await wait_for_stop(server.close)
    say("signaling server stopped")
    return int(ExitCode.OK)
