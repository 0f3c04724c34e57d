"""``sleap-rtc``: the one entry point. Each command lives in ``sleap_rtc/cli/<cmd>_cmd.py``.

Command modules import only :mod:`argparse` at the top, so ``sleap-rtc --help``
stays fast; a command's heavy imports (aiortc, sleap-io, torch) happen when it
runs. Every command's handler returns an exit code from
:mod:`sleap_rtc.cli.exits`; user errors (a :class:`CliError`, or one of the
library's typed errors, mapped by :func:`~sleap_rtc.cli.exits.typed_exit`) are
printed as one line, never as a traceback (``--debug`` shows tracebacks of
unexpected errors).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from sleap_rtc.cli.exits import CliError, ExitCode, typed_exit

#: Command modules, in the order ``--help`` lists them.
COMMANDS = (
    "signal_cmd",
    "worker_cmd",
    "login_cmd",
    "workers_cmd",
    "check_cmd",
    "train_cmd",
    "demo_cmd",
    "inspect_cmd",
    "gui_cmd",
)

EPILOG = """\
exit codes: 0 ok (also `train` stopped early by one Ctrl-C: checkpoint kept);
1 failed, rejected or paths missing; 2 usage or config error; 3 cancelled
(resolution declined, Ctrl-C twice on `train`); 4 cannot reach the signaling
server or worker, or connection lost; 5 login required (no valid token).

Config files: worker.toml and client.toml in the per-user config folder
(SLEAP_RTC_CONFIG_DIR moves it; `sleap-rtc login` saves tokens there too);
saved path rules and server/worker state live in the state folder
(SLEAP_RTC_STATE_DIR moves it). Start with `sleap-rtc demo`.
"""


def build_parser() -> argparse.ArgumentParser:
    from sleap_rtc import __version__

    parser = argparse.ArgumentParser(
        prog="sleap-rtc",
        description="Remote training for SLEAP over WebRTC: signaling server, GPU worker, "
        "client (path check, submit, progress) and a one-command demo.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sleap-rtc {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"sleap_rtc.cli.{name}")
        except ImportError as exc:
            if name == "inspect_cmd":
                continue  # optional: the capture inspector
            raise RuntimeError(f"command module {name} cannot be imported: {exc}") from exc
        module.add_parser(subparsers)
    return parser


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if verbose < 2:
        # aiortc/aioice are chatty at INFO.
        for noisy in ("aioice", "aiortc", "websockets"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def _known_error(exc: BaseException) -> CliError | None:
    """Errors from the library that are the user's to fix, as one-line CliErrors."""
    from sleap_rtc.config import ConfigFileError

    if isinstance(exc, ConfigFileError):
        return CliError(str(exc), ExitCode.USAGE)
    from sleap_rtc.auth.tokens import TokenError

    if isinstance(exc, TokenError):
        return CliError(f"Login required: {exc}. Run `sleap-rtc login`.", ExitCode.LOGIN_REQUIRED)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code (the console script exits with it)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "func", None)
    if handler is None:
        parser.print_help()
        return int(ExitCode.USAGE)
    _setup_logging(args.verbose)
    prog = f"sleap-rtc {args.command}" if args.command else "sleap-rtc"
    try:
        code = handler(args)
    except CliError as exc:
        print(f"{prog}: error: {exc.message}", file=sys.stderr)
        return int(exc.code)
    except KeyboardInterrupt:
        print(f"{prog}: cancelled", file=sys.stderr)
        return int(ExitCode.CANCELLED)
    except Exception as exc:
        typed = typed_exit(exc)
        if typed is not None:  # a user-facing failure, like a CliError (even with --debug)
            print(f"{prog}: error: {typed.message}", file=sys.stderr)
            return int(typed.code)
        known = _known_error(exc)
        if known is not None:
            if args.debug:
                raise
            print(f"{prog}: error: {known.message}", file=sys.stderr)
            return int(known.code)
        if args.debug:
            raise
        print(
            f"{prog}: internal error: {type(exc).__name__}: {exc} (run with --debug for details)",
            file=sys.stderr,
        )
        return int(ExitCode.FAILED)
    return int(code or 0)


def entry() -> None:  # pragma: no cover - console script
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
