"""``inspect stats``: counts and bytes per body type and direction; answer latencies.

Requests and answers are paired by :class:`~sleap_rtc.inspect.pairing.Pairing`,
the same pairing ``cat`` shows.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TextIO

from sleap_rtc.capture import format as fmt
from sleap_rtc.inspect.common import (
    add_filter_arguments,
    add_input_arguments,
    open_reader,
    report_problems,
    selected,
)
from sleap_rtc.inspect.pairing import Pairing
from sleap_rtc_proto import bodies

if TYPE_CHECKING:
    from sleap_rtc.capture.read.record import Record

#: Body types that expect an answer (those never answered are counted).
REQUESTS = bodies.REQUESTS
PERCENTILES = (50, 90, 99)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser)
    add_filter_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * p // 100))
    return sorted_values[int(min(rank, len(sorted_values))) - 1]


def compute(records: Iterable[Record]) -> dict[str, Any]:
    """Counts, bytes and latencies of ``records`` as a JSON-ready dict."""
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    pairing = Pairing()
    latencies: dict[str, list[float]] = defaultdict(list)
    answers: dict[str, Counter[str]] = defaultdict(Counter)
    total = [0, 0]
    for rec in records:
        c = counts[(rec.body, rec.direction)]
        c[0] += 1
        c[1] += rec.size
        total[0] += 1
        total[1] += rec.size
        answer = pairing.see(rec)
        if answer is not None:
            latencies[answer.request].append(answer.latency_ms)
            answers[answer.request][rec.body] += 1
    unanswered: Counter[str] = Counter(pairing.unanswered())
    by_type = [
        {"body": body, "direction": direction, "count": n, "bytes": b}
        for (body, direction), (n, b) in sorted(counts.items(), key=lambda kv: (-kv[1][0], kv[0]))
    ]
    latency = {}
    for body, values in sorted(latencies.items()):
        values.sort()
        latency[body] = {
            "count": len(values),
            **{f"p{p}_ms": round(percentile(values, p), 3) for p in PERCENTILES},
            "max_ms": round(values[-1], 3),
            "answers": dict(answers[body]),
            "unanswered": unanswered.get(body, 0),
        }
    for body, n in unanswered.items():
        latency.setdefault(body, {"count": 0, "answers": {}, "unanswered": n})
    return {"messages": total[0], "bytes": total[1], "by_type": by_type, "latency": latency}


def _print_text(stats: dict[str, Any], out: TextIO) -> None:
    w = out.write
    w(f"{'body':<26}{'dir':<6}{'count':>10}{'bytes':>14}{'avg B':>9}\n")
    for row in stats["by_type"]:
        avg = row["bytes"] / row["count"] if row["count"] else 0
        w(
            f"{row['body']:<26}{fmt.ARROWS.get(row['direction'], '?'):<6}{row['count']:>10}"
            f"{row['bytes']:>14}{avg:>9.0f}\n"
        )
    w(f"{'total':<32}{stats['messages']:>10}{stats['bytes']:>14}\n")
    if stats["latency"]:
        w("\nrequest -> answer latency (ms, recorder clock)\n")
        w(f"{'request':<22}{'n':>7}{'p50':>10}{'p90':>10}{'p99':>10}{'max':>10}  answers\n")
        for body, row in stats["latency"].items():
            if row["count"]:
                ans = ", ".join(f"{k} {v}" for k, v in row["answers"].items())
                if row["unanswered"]:
                    ans += f", unanswered {row['unanswered']}"
                w(
                    f"{body:<22}{row['count']:>7}{row['p50_ms']:>10.3f}{row['p90_ms']:>10.3f}"
                    f"{row['p99_ms']:>10.3f}{row['max_ms']:>10.3f}  {ans}\n"
                )
            else:
                w(
                    f"{body:<22}{0:>7}{'-':>10}{'-':>10}{'-':>10}{'-':>10}"
                    f"  unanswered {row['unanswered']}\n"
                )


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stream = sys.stdout if out is None else out
    reader = open_reader(args)
    stats = compute(selected(reader, args))
    if args.json:
        stats["problems"] = [str(p) for p in reader.problems]
        stats["partial"] = reader.stopped_early
        stream.write(json.dumps(stats, indent=2) + "\n")
        return 1 if reader.damaged else 0
    _print_text(stats, stream)
    return report_problems(reader)
