"""``sleap-rtc train``: the whole presubmission flow, then progress until the job ends."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sleap_rtc.cli.exits import CliError, ExitCode

DESCRIPTION = """\
Train on a worker: build the job from a training config (YAML, sent inline), check
that the labels file and its videos are visible on the worker, help map the missing
ones (suggestions computed on the worker; --yes accepts the best ones without
asking), submit, and stream progress here until training ends.

Ctrl-C once asks the worker to stop early after the current batch: the job ends
"stopped early" with its checkpoint kept, exit 0. Ctrl-C twice leaves the job
running on the worker (re-attach with --job-id), exit 3.
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "train",
        help="check paths, submit a training job and follow its progress",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "labels", metavar="LABELS.slp", help="labels file (its path on the worker, or yours)"
    )
    parser.add_argument(
        "-t",
        "--training-config",
        type=Path,
        metavar="FILE.yaml",
        help="training config (sleap-nn YAML); its text is sent to the worker",
    )
    parser.add_argument(
        "--worker-config",
        action="append",
        default=[],
        metavar="PATH",
        help="a training config already on the worker (config_paths; repeatable)",
    )
    parser.add_argument(
        "-y",
        "--yes",
        action="store_true",
        help="accept the worker's best suggestion for each missing path without asking",
    )
    parser.add_argument(
        "--min-score",
        type=float,
        default=0.6,
        metavar="X",
        help="with --yes: lowest suggestion score accepted (default 0.6: same name and "
        "two matching parent folders, or better)",
    )
    parser.add_argument(
        "--job-id", metavar="ID", help="job id to use (re-running with the same id re-attaches)"
    )
    parser.add_argument("--detach", action="store_true", help="exit once the job is accepted")
    parser.add_argument(
        "--capture", type=Path, metavar="FILE", help="record datachannel traffic (MCAP)"
    )
    parser.add_argument(
        "--lossviewer",
        nargs=2,
        type=int,
        metavar=("PUB", "CTRL"),
        help="republish progress to SLEAP's LossViewer on these ZMQ ports",
    )
    parser.add_argument("--quiet", action="store_true", help="no per-batch progress lines")
    parser.add_argument("--logs", action="store_true", help="also print the trainer's output lines")
    over = parser.add_argument_group("overrides (TrainJobSpec)")
    over.add_argument("--max-epochs", type=int, metavar="N")
    over.add_argument("--batch-size", type=int, metavar="N")
    over.add_argument("--learning-rate", type=float, metavar="LR")
    over.add_argument("--run-name", metavar="NAME")
    over.add_argument("--val-labels", metavar="PATH", help="validation labels file")
    over.add_argument("--resume", metavar="CKPT", help="checkpoint to resume from")
    from sleap_rtc.cli.clientflow import add_mapping_options
    from sleap_rtc.cli.common import add_client_options

    add_mapping_options(parser)
    add_client_options(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from sleap_rtc.cli.common import client_settings, client_token
    from sleap_rtc.cli.common import run as run_async

    if args.training_config is None and not args.worker_config:
        raise CliError(
            "give the training config: --training-config FILE.yaml (or --worker-config PATH)",
            ExitCode.USAGE,
        )
    content: str | None = None
    if args.training_config is not None:
        try:
            content = args.training_config.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CliError(
                f"training config {args.training_config} does not exist", ExitCode.USAGE
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"cannot read {args.training_config}: {exc}", ExitCode.USAGE) from None
    if args.job_id is not None:
        from sleap_rtc_proto.rules import is_valid_job_id

        if not is_valid_job_id(args.job_id):
            raise CliError(f"--job-id {args.job_id!r} is not a valid job id", ExitCode.USAGE)
    settings = client_settings(args)
    token = client_token(settings)
    return run_async(_train(args, settings, token, content))


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    values = {
        "max_epochs": args.max_epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "run_name": args.run_name,
        "val_labels_path": args.val_labels,
        "resume_ckpt_path": args.resume,
    }
    return {k: v for k, v in values.items() if v is not None}


def make_resolver(yes: bool, min_score: float, say: Any) -> Any:
    """The terminal resolver, or with ``yes`` the auto policy that says what it took."""
    from sleap_rtc.client.display import plain_console
    from sleap_rtc.client.resolve import AutoResolver, TerminalResolver

    if not yes:
        return TerminalResolver(console=plain_console())
    auto = AutoResolver(threshold=min_score)

    def resolve(view: Any) -> Any:
        TerminalResolver(console=plain_console()).show(view)
        resolution = auto(view)
        for original, worker_path in resolution.path_mappings.items():
            say(f"Accepted the worker's suggestion: {original} -> {worker_path}")
        for original, worker_path in resolution.prefix_mappings.items():
            say(f"Applied the saved prefix rule: {original} -> {worker_path}")
        return resolution

    return resolve


def progress_sinks(
    *, quiet: bool, show_logs: bool, max_epochs: int | None, lossviewer: Any = None
) -> list[Any]:
    """The terminal display (and the LossViewer bridge when asked)."""
    from sleap_rtc.client.display import TerminalProgress

    sinks: list[Any] = [
        TerminalProgress(batch_every=0 if quiet else 1, show_logs=show_logs, max_epochs=max_epochs)
    ]
    if lossviewer is not None:
        from sleap_rtc.client.lossviewer import LossViewerBridge

        pub, ctrl = lossviewer
        sinks.append(LossViewerBridge(publish_port=pub, controller_port=ctrl))
    return sinks


async def _train(args: argparse.Namespace, settings: Any, token: str, content: str | None) -> int:
    import asyncio
    import contextlib
    import signal

    from sleap_rtc.cli.clientflow import build_flow, exit_code, fail, pairs
    from sleap_rtc.cli.common import say
    from sleap_rtc.client.wiring import find_worker, open_capture

    worker = await find_worker(settings, token)
    say(f"worker: {worker.name} ({worker.peer_id}) in room {settings.room!r}")

    def accepted(view: Any) -> None:
        extra = " (the worker already had it: re-attached)" if view.duplicate else ""
        say(f"job {view.job_id} accepted{extra}; run folder on the worker: {view.run_dir}")
        if view.scheduler is not None:
            say(f"queued: {view.scheduler}")
        for warning in view.warnings:
            say(f"warning: {warning}")

    writer = open_capture(args.capture)
    flow = build_flow(
        settings,
        token,
        worker,
        resolver=make_resolver(args.yes, args.min_score, say),
        sinks=progress_sinks(
            quiet=args.quiet,
            show_logs=args.logs,
            max_epochs=args.max_epochs,
            lossviewer=args.lossviewer,
        ),
        use_saved=not args.no_saved_mappings,
        capture=writer,
        on_accepted=accepted,
    )
    flow.follow_progress = not args.detach
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    interrupts = 0

    def on_interrupt() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            say("stopping early (Ctrl-C again to leave the job running on the worker)")
            flow.request_stop()
        elif task is not None:
            task.cancel()

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, on_interrupt)
    if args.job_id is not None and not args.detach:
        try:
            attached = await reattach(
                token, args.job_id, flow.sinks, flow.connect, lambda: interrupts > 0
            )
        except BaseException:
            loop.remove_signal_handler(signal.SIGINT)
            if writer is not None:
                await writer.aclose()
            raise
        if attached is not None:
            loop.remove_signal_handler(signal.SIGINT)
            if writer is not None:
                await writer.aclose()
            return attached
    kwargs: dict[str, Any] = dict(_overrides(args))
    if content is None:
        from sleap_rtc.jobs.spec import TrainJobSpec

        kwargs["spec"] = TrainJobSpec(
            config_paths=list(args.worker_config), labels_path=args.labels
        )
    else:
        kwargs["config_content"] = content
    try:
        result = await flow.run(
            labels_path=args.labels,
            path_mappings=pairs(args.map),
            prefix_mappings=pairs(args.prefix),
            retry_job_id=args.job_id,
            **kwargs,
        )
    except asyncio.CancelledError:
        raise CliError(
            "left the job running on the worker; re-attach with the same --job-id",
            ExitCode.CANCELLED,
        ) from None
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
        if writer is not None:
            await writer.aclose()
            say(f"capture written to {writer.path}")
    code = exit_code(result)
    if result.cancelled:
        say("cancelled: nothing was submitted")
        return int(code)
    if not result.ok:
        raise fail(result)
    if result.completion is None:
        say(f"job {result.job_id} accepted; it runs on the worker.")
        say(f"follow it: rerun this command with --job-id {result.job_id}")
    return int(code)


async def reattach(
    token: str,
    job_id: str,
    sinks: list[Any],
    connect: Callable[[], Awaitable[Any]],
    stop_requested: Callable[[], bool],
) -> int | None:
    """Follow ``job_id`` if the worker knows it; None when it does not.

    The flow lives in :func:`sleap_rtc.client.reattach.reattach`; here its outcome
    becomes an exit code (its typed errors map through ``exits.typed_exit``).
    """
    from sleap_rtc.cli.clientflow import CLIENT_NAME, exit_code, fail
    from sleap_rtc.cli.common import say
    from sleap_rtc.client.reattach import reattach as follow_job
    from sleap_rtc_proto.v1 import job_pb2

    def attached(status: job_pb2.JobStatus) -> None:
        state = job_pb2.JobState.Name(status.state).removeprefix("JOB_STATE_").lower()
        say(f"job {job_id} is {state} on the worker: re-attached; run folder: {status.run_dir}")

    result = await follow_job(
        token=token,
        job_id=job_id,
        sinks=sinks,
        connect=connect,
        stop_requested=stop_requested,
        client_name=CLIENT_NAME,
        on_attached=attached,
    )
    if result is None:
        return None
    if not result.ok:
        raise fail(result)
    return int(exit_code(result))
