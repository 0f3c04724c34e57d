"""``sleap-rtc worker``: run a GPU worker that trains jobs from clients of its room."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sleap_rtc.cli.exits import CliError, ExitCode

if TYPE_CHECKING:
    from sleap_rtc.config.worker import WorkerSettings

DESCRIPTION = """\
Run a worker: register in a room of a signaling server with the room's worker key,
answer clients' WebRTC offers, check paths against the allowed mounts, and run
training jobs (sleap-nn by default). Settings come from worker.toml (see
docs/worker.example.toml; --config or the per-user file); flags override it.

Example:
  sleap-rtc worker --server ws://lab-signal:8765 --room lab \\
      --credential-file ~/.config/sleap-rtc/lab.key --mount lab=/mnt/lab-share
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "worker",
        help="run a training worker",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, metavar="FILE", help="worker config (TOML)")
    parser.add_argument("--server", metavar="URL", help="signaling server (ws://host:port)")
    parser.add_argument("--room", metavar="ROOM", help="room to serve")
    parser.add_argument(
        "--name", metavar="NAME", help="worker name shown to clients (default: host name)"
    )
    parser.add_argument(
        "--credential-file",
        type=Path,
        metavar="FILE",
        help="file holding the room's worker key (or set SLEAP_RTC_WORKER_CREDENTIAL)",
    )
    parser.add_argument(
        "--mount",
        action="append",
        default=[],
        metavar="[LABEL=]PATH",
        help="allowed folder (repeatable); replaces the config file's mounts",
    )
    parser.add_argument("--concurrency", type=int, metavar="N", help="jobs run at once (default 1)")
    parser.add_argument(
        "--trainer-command",
        metavar="CMD",
        help="trainer program and leading arguments (default: 'sleap-nn train')",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="job store, pinned keys and temp configs (default: per-user state; run "
        "folders go to <first mount>/sleap-rtc-runs)",
    )
    parser.add_argument(
        "--loopback",
        action="store_true",
        default=None,
        help="use loopback ICE candidates (clients on this host only: tests, demos)",
    )
    parser.add_argument(
        "--capture",
        type=Path,
        metavar="FILE",
        help="record every datachannel message to an MCAP file",
    )
    parser.add_argument(
        "--ready-file",
        type=Path,
        metavar="FILE",
        help="write the worker's peer id to FILE once registered",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the settings, print them, and exit",
    )
    parser.set_defaults(func=run)
    return parser


def settings_from_args(args: argparse.Namespace) -> WorkerSettings:
    from sleap_rtc.config import worker

    settings = worker.load(args.config)
    settings = worker.with_overrides(
        settings,
        signaling_url=args.server,
        room=args.room,
        name=args.name,
        credential_file=args.credential_file,
        mounts=args.mount,
        concurrency=args.concurrency,
        trainer_command=args.trainer_command,
        state_dir=args.state_dir,
        loopback=args.loopback,
    )
    settings.validate()
    return settings


def run(args: argparse.Namespace) -> int:
    from sleap_rtc.cli.common import run as run_async
    from sleap_rtc.cli.common import say

    settings = settings_from_args(args)
    credential = settings.read_credential()
    if args.check_config:
        say(describe(settings))
        return int(ExitCode.OK)
    if not credential:
        raise CliError(
            "no worker credential: pass --credential-file FILE (the room's worker_key), "
            "set SLEAP_RTC_WORKER_CREDENTIAL, or set credential_file in worker.toml",
            ExitCode.USAGE,
        )
    from sleap_rtc.cli.common import write_ready_file
    from sleap_rtc.worker.runtime import run_worker

    def registered(peer_id: str) -> None:
        write_ready_file(args.ready_file, peer_id)

    # A worker started before its signaling server (a reboot, a service order) waits for it.
    run_async(
        run_worker(
            settings,
            credential,
            capture=args.capture,
            on_registered=registered,
            wait_for_server=True,
        )
    )
    return int(ExitCode.OK)


def describe(settings: WorkerSettings) -> str:
    runs = settings.mounts[0].path / "sleap-rtc-runs" if settings.mounts else "-"
    lines = [
        f"config file:     {settings.source or '(none)'}",
        f"name:            {settings.name}",
        f"signaling:       {settings.signaling_url}",
        f"room:            {settings.room}",
        f"credential file: {settings.credential_file or '(env or none)'}",
        f"concurrency:     {settings.concurrency}",
        f"trainer command: {' '.join(settings.trainer_command)}",
        f"state dir:       {settings.state_dir}",
        f"run folders:     {runs}",
        f"loopback:        {settings.loopback}",
    ]
    lines += [f"mount:           {m.label} = {m.path}" for m in settings.mounts]
    return "\n".join(lines)
