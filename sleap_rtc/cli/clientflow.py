"""What ``check`` and ``train`` share: mapping options, the CLI's flow, results as exit codes.

The wiring itself (worker lookup, WebRTC connector, capture, typed errors) is
:mod:`sleap_rtc.client.wiring`; this module only adds the CLI's choices.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sleap_rtc.cli.exits import CliError, ExitCode

if TYPE_CHECKING:
    from sleap_rtc.capture.write.recorder import CaptureWriter
    from sleap_rtc.client.flow import PresubmissionFlow
    from sleap_rtc.client.following import ProgressSink
    from sleap_rtc.client.resolve import Resolver
    from sleap_rtc.client.results import AcceptedView, FlowResult
    from sleap_rtc.config.client import ClientSettings
    from sleap_rtc.signaling.client import PeerInfo

#: The client name the CLI sends in Hello.
CLIENT_NAME = "sleap-rtc cli"


def add_mapping_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("path mappings (client path -> worker path)")
    group.add_argument(
        "--map",
        nargs=2,
        action="append",
        default=[],
        metavar=("OLD", "NEW"),
        help="map one file path (repeatable)",
    )
    group.add_argument(
        "--prefix",
        nargs=2,
        action="append",
        default=[],
        metavar=("OLD", "NEW"),
        help="map a folder prefix (repeatable)",
    )
    group.add_argument(
        "--no-saved-mappings",
        action="store_true",
        help="neither use nor save the prefix rules remembered from earlier runs",
    )


def pairs(values: Sequence[Sequence[str]]) -> dict[str, str]:
    return {old: new for old, new in values}


def build_flow(
    settings: ClientSettings,
    token: str,
    worker: PeerInfo,
    *,
    resolver: Resolver | None = None,
    sinks: Sequence[ProgressSink] = (),
    use_saved: bool = True,
    capture: CaptureWriter | None = None,
    on_accepted: Callable[[AcceptedView], Any] | None = None,
) -> PresubmissionFlow:
    """The flow to ``worker`` with the token in hand (no login step: exit 5 instead)."""
    from sleap_rtc.client.wiring import build_flow as wired_flow
    from sleap_rtc.client.wiring import fixed_token

    return wired_flow(
        settings,
        fixed_token(settings, token),
        client_name=CLIENT_NAME,
        worker=worker,
        resolver=resolver,
        sinks=sinks,
        use_saved=use_saved,
        capture=capture,
        on_accepted=on_accepted,
    )


def exit_code(result: FlowResult) -> ExitCode:
    """A flow's outcome as the documented exit code."""
    from sleap_rtc.client.results import CONNECTION_LOST, FlowStatus

    if result.status is FlowStatus.SUCCESS:
        return ExitCode.OK
    if result.status is FlowStatus.CANCELLED:
        return ExitCode.CANCELLED
    if result.stage == "auth":
        return ExitCode.LOGIN_REQUIRED
    if result.stage == "connect" or result.message == CONNECTION_LOST:
        return ExitCode.UNREACHABLE
    if result.stage == "config":
        return ExitCode.USAGE
    return ExitCode.FAILED


def fail(result: FlowResult) -> CliError:
    """A failed flow as one CliError: the message, then the details on following lines.

    A job that failed while followed is said once: the progress display already
    printed the trainer's last lines on stdout, so the error (stderr) is one line,
    and it names the trainer's exit status once.
    """
    failure = result.failure
    if failure is not None:
        text = f"Training failed: {failure.message}"
        said = failure.exit_code is None or f"status {failure.exit_code}" in failure.message
        if not said:
            text += f" (trainer exit status {failure.exit_code})"
        return CliError(text, exit_code(result))
    text = result.message
    details = [d for d in result.details if d]
    if details:
        text += "\n" + "\n".join(f"  {line}" for d in details for line in d.splitlines())
    return CliError(text, exit_code(result))
