"""``cat --json --jobs N``: decode the chunks of one finished capture in N processes.

Each worker process reads whole chunks (from the summary's chunk index) and
turns them into JSON lines with the fast path; raw-channel frames it finishes
itself, and any protobuf message the fast path does not take (fragments, say)
it sends back as captured so that the main process, which sees the messages
in file order, reassembles and decodes it. Lines come out in file order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from sleap_rtc.capture.read.frames import Channel, make_channel, raw_record
from sleap_rtc.capture.read.mcapio import McapScan, Problem, RawMessage
from sleap_rtc.capture.read.mcaprecords import ChunkPlan
from sleap_rtc.capture.tojson.jsonlines import LineMaker, json_block, line_maker

_WORKER: dict[str, Any] = {}


def _worker_init(
    path: str, plan: ChunkPlan, fallback: bool, extras: dict[tuple[str, str], dict[int, str]]
) -> None:
    _WORKER.clear()
    _WORKER.update(
        path=path, plan=plan, fallback=fallback, channels={}, fast={}, scan=None, extras=extras
    )


def _worker_channel(cid: int) -> Channel | None:
    channels: dict[int, Channel | None] = _WORKER["channels"]
    if cid not in channels:
        plan: ChunkPlan = _WORKER["plan"]
        record = plan.channels.get(cid)
        channels[cid] = (
            None if record is None else make_channel(record, plan.schemas, _WORKER["fallback"])[0]
        )
    return channels[cid]


def _worker_fast(cid: int) -> LineMaker | None:
    ch = _worker_channel(cid)
    if ch is None or ch.kind != "protobuf" or ch.schema is None:
        return None
    side = _WORKER["extras"].get((ch.connection, ch.direction))
    return line_maker(ch.schema, ch.direction, ch.connection, side)


def _worker_slow(msg: RawMessage) -> list[Any]:
    ch = _worker_channel(msg[0])
    if ch is not None and ch.kind == "raw":
        return [raw_record(msg, ch, None).json_line()]
    return [msg]  # for the main process


def _worker_lines(span: list[tuple[int, int]]) -> tuple[list[Any], list[Problem]]:
    """JSON lines of some chunks; messages that need the main process come back raw."""
    scan = _WORKER["scan"]
    if scan is None:
        scan = _WORKER["scan"] = McapScan(_WORKER["path"])
    out: list[Any] = []
    for offset, length in span:
        data = scan.read_chunk_data(offset, length)
        if data is not None and scan.salvaged is not None:
            # A damaged chunk: its messages go to the main process, marked.
            note = scan.salvaged
            out.extend((note, msg) for msg in scan.block_messages(data, offset + 9))
        elif data is not None:
            json_block(scan, data, offset + 9, _WORKER["fast"], _worker_fast, _worker_slow, out)
    problems, scan.problems = scan.problems, []
    # Runs of lines go back as one string each: one pickled object, not thousands.
    joined: list[Any] = []
    run: list[str] = []
    for item in out:
        if isinstance(item, str):
            run.append(item)
            continue
        if run:
            joined.append("\n".join(run))
            run = []
        joined.append(item)
    if run:
        joined.append("\n".join(run))
    return joined, problems


def parallel_json(
    path: str,
    plan: ChunkPlan,
    jobs: int,
    fallback: bool,
    finish: Callable[[RawMessage, str | None], list[str]],
    problems: list[Problem],
    extras: dict[tuple[str, str], dict[int, str]] | None = None,
) -> Iterator[list[str]]:
    """Batches of JSON lines of one complete file, in file order.

    An item of a batch may hold several lines, joined by newlines.

    ``finish`` turns a message the workers sent back into its line(s), in the
    main process (with ``extras``), with the note of the damaged chunk it was salvaged from (or
    None); the workers' problems are appended to ``problems``.
    """
    import multiprocessing

    per = max(1, min(4, len(plan.chunks) // (jobs * 8)))
    spans = [plan.chunks[i : i + per] for i in range(0, len(plan.chunks), per)]
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    initargs = (path, plan, fallback, extras or {})
    with ctx.Pool(jobs, initializer=_worker_init, initargs=initargs) as pool:
        for items, found in pool.imap(_worker_lines, spans):
            problems.extend(found)
            for item in items:
                if isinstance(item, str):
                    yield [item]
                elif len(item) == 2:
                    yield finish(item[1], item[0])
                else:
                    yield finish(item, None)
