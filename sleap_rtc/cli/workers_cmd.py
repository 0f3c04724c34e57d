"""``sleap-rtc workers``: list the workers of a room."""

from __future__ import annotations

import argparse
import json
from typing import Any

from sleap_rtc.cli.exits import ExitCode


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "workers",
        help="list the workers of a room",
        description="List the workers registered in a room: name, status, GPU, mounts, versions.",
    )
    from sleap_rtc.cli.common import add_client_options

    add_client_options(parser, worker=False)
    parser.add_argument(
        "--json",
        action="store_true",
        help="print a JSON array with one object per worker: peer_id, name, status, "
        "metadata (its properties: gpu, mounts, versions, confinement, ...), connected_at",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from sleap_rtc.cli.common import client_settings, client_token, say
    from sleap_rtc.cli.common import run as run_async
    from sleap_rtc.client.wiring import list_workers

    settings = client_settings(args)
    token = client_token(settings)
    peers = run_async(list_workers(settings, token))
    if args.json:
        say(json.dumps([_as_json(p) for p in peers], indent=2, sort_keys=True))
        return int(ExitCode.OK)
    if not peers:
        say(f"no workers in room {settings.room!r} on {settings.server}")
        return int(ExitCode.OK)
    from rich.table import Table

    from sleap_rtc.client.display import plain_console

    table = Table(title=f"workers in room {settings.room!r}")
    for column in ("name", "peer id", "status", "gpu", "mounts", "versions"):
        table.add_column(column)
    for peer in peers:
        props = peer.properties
        mounts = props.get("mounts") or []
        versions = props.get("versions") or {}
        table.add_row(
            peer.name,
            peer.peer_id,
            peer.status or "-",
            str(props.get("gpu") or "-"),
            ", ".join(str(m) for m in mounts) if isinstance(mounts, list) else str(mounts),
            ", ".join(f"{k} {v}" for k, v in versions.items())
            if isinstance(versions, dict)
            else "-",
        )
    plain_console().print(table)
    return int(ExitCode.OK)


def _as_json(peer: Any) -> dict[str, Any]:
    return {
        "peer_id": peer.peer_id,
        "name": peer.name,
        "status": peer.status,
        "metadata": dict(peer.metadata),
        "connected_at": peer.connected_at,
    }
