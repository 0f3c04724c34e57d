"""``sleap-rtc inspect``: read datachannel captures (info, cat, merge, filter, recover, ...).

Each verb is a small module in :mod:`sleap_rtc.inspect` with
``add_arguments(parser)`` and ``run(args) -> int``. Exit codes: 0 ok, 1 a
capture that cannot be read, is damaged or lost messages (the messages say what
and where; whatever could be read is still shown), 2 usage.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

DESCRIPTION = """\
Inspect a datachannel capture made with --capture FILE.mcap (or $SLEAP_RTC_CAPTURE).
Captures carry their protobuf schema, so old captures decode without old code.
Plain-text captures of the legacy TYPE::json frames are read too.

  info      versions, peers, time span, message counts
  cat       one line per message (--json for JSON lines)
  merge     the client's and the worker's captures of one connection as one view
  filter    keep some messages, write a smaller MCAP
  recover   copy what can be read of a damaged capture to a clean MCAP
  stats     counts and bytes per type and direction; request -> answer latency
  timeline  sequence diagram of the conversation (SVG or HTML)
"""

_VERBS: dict[str, str] = {
    "info": "versions, peers, time span and counts of a capture",
    "cat": "print one line per message (or --json lines)",
    "merge": "merge the client's and the worker's captures of one connection into one view",
    "filter": "write the selected messages to a smaller MCAP capture",
    "recover": "write what can be read of a damaged capture to a clean MCAP file",
    "stats": "counts, bytes and request -> answer latency percentiles",
    "timeline": "draw the conversation as an SVG or HTML sequence diagram",
}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``inspect`` and its verbs on the ``sleap-rtc`` subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "inspect",
        help="inspect datachannel captures (info, cat, merge, filter, recover, stats, timeline)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = parser.add_subparsers(dest="inspect_verb", metavar="VERB", required=True)
    for name, help_text in _VERBS.items():
        module = importlib.import_module(f"sleap_rtc.inspect.{name}")
        sub = verbs.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        sub.set_defaults(func=_handler(module.run))
    return parser


def _handler(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def handle(args: argparse.Namespace) -> int:
        from sleap_rtc.capture.read.mcapio import CaptureError

        try:
            return run(args)
        except CaptureError as exc:
            _fail(str(exc))
            return 1
        except BrokenPipeError:  # `inspect cat ... | head`
            sys.stderr.close()
            return 0

    return handle


def _fail(message: str) -> None:
    try:
        from sleap_rtc.cli.exits import CliError, ExitCode
    except ImportError:  # pragma: no cover - the CLI package is optional here
        print(f"sleap-rtc inspect: error: {message}", file=sys.stderr)
        return
    raise CliError(message, ExitCode.FAILED)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sleap_rtc.cli.inspect_cmd VERB ...`` (tests; the CLI uses :func:`add_parser`)."""
    parser = argparse.ArgumentParser(prog="sleap-rtc")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_parser(subparsers)
    args = parser.parse_args(["inspect", *(argv if argv is not None else sys.argv[1:])])
    try:
        return int(args.func(args))
    except Exception as exc:  # CliError from the handler
        message = getattr(exc, "message", None)
        if message is None:
            raise
        print(f"sleap-rtc inspect: error: {message}", file=sys.stderr)
        return int(getattr(exc, "code", 1))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
