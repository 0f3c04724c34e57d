"""What ``check`` and ``train`` share: options, the flow's wiring, results as exit codes."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sleap_rtc.cli.exits import CliError, ExitCode

if TYPE_CHECKING:
    from sleap_rtc.capture.recorder import CaptureWriter
    from sleap_rtc.client.flow import PresubmissionFlow
    from sleap_rtc.client.results import FlowResult
    from sleap_rtc.config.client import ClientSettings
    from sleap_rtc.signaling.client import PeerInfo


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


@dataclass
class Target:
    """A connection target: settings, token, the chosen worker."""

    settings: ClientSettings
    token: str
    worker: PeerInfo


async def find_target(settings: ClientSettings, token: str) -> Target:
    from sleap_rtc.cli.peers import find_worker

    worker = await find_worker(settings, token)
    return Target(settings, token, worker)


def build_flow(
    target: Target,
    *,
    resolver: Any = None,
    sinks: Sequence[Any] = (),
    use_saved: bool = True,
    capture: CaptureWriter | None = None,
    on_accepted: Any = None,
) -> PresubmissionFlow:
    from sleap_rtc import __version__
    from sleap_rtc.cli.peers import connector
    from sleap_rtc.client.auth import AuthCheck
    from sleap_rtc.client.flow import PresubmissionFlow
    from sleap_rtc.client.resolve import PrefixStore
    from sleap_rtc.client.timeouts import FlowTimeouts

    settings = target.settings
    token = target.token
    auth = AuthCheck(get_token=lambda: token, login=lambda: None, room=settings.room)
    timeouts = FlowTimeouts(connect_s=settings.connect_timeout_s + 5.0)
    return PresubmissionFlow(
        connect=connector(settings, token, target.worker, capture=capture),
        auth=auth,
        resolver=resolver,
        sinks=sinks,
        store=PrefixStore(settings.mappings_file) if use_saved else None,
        worker_id=target.worker.peer_id,
        on_accepted=on_accepted,
        timeouts=timeouts,
        software=f"sleap-rtc {__version__}",
        client_name="sleap-rtc cli",
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
    """A failed flow as one CliError: the message, then the details on following lines."""
    text = result.message
    details = [d for d in result.details if d]
    if details:
        text += "\n" + "\n".join(f"  {line}" for d in details for line in d.splitlines())
    return CliError(text, exit_code(result))
