"""``sleap-rtc demo``: the whole flow on this machine, in one command."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DESCRIPTION = """\
Start a local signaling server and a worker with a temporary "lab share", write a
small real SLEAP dataset whose video is referenced by a laptop path the worker does
not have, then run the client: path check (missing, with a suggestion), accept the
suggestion, submit, and train a tiny model with sleap-nn on the CPU while progress
streams here. Takes about a minute; everything is removed afterwards unless --keep.
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="run the whole flow locally (signaling, worker, client, tiny training)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder (dataset, run)"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        metavar="DIR",
        help="use DIR instead of a new temporary folder (kept)",
    )
    parser.add_argument(
        "--fake-trainer",
        action="store_true",
        help="for development: use the test suite's stand-in trainer instead of sleap-nn "
        "(seconds, no torch; needs a source checkout, where tests/support/ exists)",
    )
    parser.add_argument(
        "--trainer-command", metavar="CMD", help="trainer program and leading arguments"
    )
    parser.add_argument("--epochs", type=int, default=2, metavar="N", help="epochs (default 2)")
    parser.add_argument(
        "--frames",
        type=int,
        default=24,
        metavar="N",
        help="frames in the synthetic video (default 24)",
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="join client and worker in memory instead of WebRTC (debugging)",
    )
    parser.add_argument(
        "--capture",
        type=Path,
        metavar="FILE",
        help="record the client's datachannel traffic (MCAP)",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import shlex

    from sleap_rtc.cli.clientflow import exit_code, fail
    from sleap_rtc.cli.common import run as run_async
    from sleap_rtc.cli.exits import CliError, ExitCode
    from sleap_rtc.demo import DemoOptions, run_demo

    if args.epochs < 1:
        raise CliError("--epochs must be at least 1", ExitCode.USAGE)
    if not 4 <= args.frames <= 1000:
        raise CliError("--frames must be 4-1000", ExitCode.USAGE)
    options = DemoOptions(
        keep=args.keep or args.workdir is not None,
        fake_trainer=args.fake_trainer,
        trainer_command=shlex.split(args.trainer_command) if args.trainer_command else None,
        workdir=args.workdir,
        max_epochs=args.epochs,
        frames=args.frames,
        capture=args.capture,
        memory=args.memory,
    )
    result = run_async(run_demo(options))
    if not result.ok:
        raise fail(result)
    return int(exit_code(result))
