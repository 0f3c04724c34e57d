"""``sleap-rtc check``: ask a worker whether a labels file and its videos are visible there."""

from __future__ import annotations

import argparse
import json
from typing import Any

from sleap_rtc.cli.exits import ExitCode

DESCRIPTION = """\
Path check only: connect to a worker of the room, ask it whether the labels file
and every video it references are visible on its mounts, and print what was found,
what is missing, and the worker's suggestions. Submits nothing.
Saved prefix rules are applied first, exactly as `train` applies them (unless
--no-saved-mappings), so check and train resolve the same way.
Exit code 0 when everything was found, 1 when something is missing.
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "check",
        help="check that a labels file and its videos are visible on a worker",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "labels", metavar="LABELS.slp", help="labels file (its path on the worker, or yours)"
    )
    from sleap_rtc.cli.clientflow import add_mapping_options
    from sleap_rtc.cli.common import add_client_options

    add_mapping_options(parser)
    add_client_options(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from sleap_rtc.cli.common import client_settings, client_token
    from sleap_rtc.cli.common import run as run_async

    settings = client_settings(args)
    token = client_token(settings)
    return run_async(_check(args, settings, token))


async def _check(args: argparse.Namespace, settings: Any, token: str) -> int:
    from sleap_rtc.cli.clientflow import build_flow, exit_code, fail, pairs
    from sleap_rtc.cli.common import say
    from sleap_rtc.client.display import plain_console
    from sleap_rtc.client.resolve import SavedRulesResolver, TerminalResolver
    from sleap_rtc.client.wiring import find_worker

    worker = await find_worker(settings, token)
    use_saved = not args.no_saved_mappings
    flow = build_flow(
        settings,
        token,
        worker,
        use_saved=use_saved,
        resolver=SavedRulesResolver() if use_saved else None,
    )
    result = await flow.check(
        args.labels, path_mappings=pairs(args.map), prefix_mappings=pairs(args.prefix)
    )
    view = result.check
    if args.json:
        say(json.dumps(_as_json(result), indent=2))
        return int(exit_code(result) if view is None or result.ok else ExitCode.FAILED)
    if view is not None:
        TerminalResolver(console=plain_console()).show(view)
        if not view.labels.ok and view.labels.suggestions:
            best = view.labels.suggestions[0]
            say(
                f"suggestion: {view.labels.original_path} -> {best.worker_path} "
                f"(score {best.score:.2f})"
            )
        for video in view.missing:
            if video.suggestions:
                best = video.suggestions[0]
                score = f"score {best.score:.2f}"
                say(f"suggestion: {video.original_path} -> {best.worker_path} ({score})")
        for rule in view.prefix_proposals:
            say(
                f"prefix rule: {rule.original_prefix} -> {rule.worker_prefix} "
                f"(resolves {len(rule.resolves)} video(s))"
            )
    if result.ok:
        say("All paths were found on the worker.")
        return int(ExitCode.OK)
    if view is not None and result.stage == "resolve":
        return int(ExitCode.FAILED)
    raise fail(result)


def _as_json(result: Any) -> dict[str, Any]:
    view = result.check
    out: dict[str, Any] = {
        "ok": result.ok,
        "message": result.message,
        "stage": result.stage,
        "labels_path": result.labels_path,
    }
    out["path_mappings"] = dict(result.path_mappings)
    out["prefix_mappings"] = dict(result.prefix_mappings)
    if view is not None:
        out["labels"] = {
            "original_path": view.labels.original_path,
            "worker_path": view.labels.worker_path,
            "status": view.labels.status,
            "detail": view.labels.detail,
            "suggestions": [_suggestion(s) for s in view.labels.suggestions],
        }
        out["videos"] = [
            {
                "index": v.index,
                "original_path": v.original_path,
                "worker_path": v.worker_path,
                "status": v.status,
                "detail": v.detail,
                "suggestions": [_suggestion(s) for s in v.suggestions],
            }
            for v in view.videos
        ]
        out["prefix_proposals"] = [
            {
                "original_prefix": p.original_prefix,
                "worker_prefix": p.worker_prefix,
                "resolves": list(p.resolves),
                "evidence": p.evidence,
            }
            for p in view.prefix_proposals
        ]
        out["applied_prefix_mappings"] = dict(view.prefix_mappings)
        out["applied_path_mappings"] = dict(view.path_mappings)
        out["refused_mappings"] = [
            {"kind": r.kind, "original": r.original, "worker": r.worker, "reason": r.reason}
            for r in view.refused
        ]
        out["notes"] = list(view.notes)
        out["hint"] = view.hint
    return out


def _suggestion(s: Any) -> dict[str, Any]:
    return {
        "worker_path": s.worker_path,
        "reason": s.reason,
        "score": s.score,
        "explanation": s.explanation,
    }
