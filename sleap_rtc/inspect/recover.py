"""``inspect recover``: write what can still be read of a damaged capture to a clean file.

Like ``mcap recover``: every message that can be read (those of chunks whose
CRC does not match, and the readable start of a cut-off or corrupt chunk,
included) is copied unchanged, with its channel, schema and the capture's
metadata, into a new, indexed MCAP file. What was lost is listed, and the exit
status is 1 when anything was (the input was damaged), 0 for an intact input.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from sleap_rtc.inspect.common import add_input_arguments, report_problems
from sleap_rtc.inspect.filter import copy_to_output


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser)
    parser.add_argument(
        "--output", "-o", required=True, metavar="OUT.mcap", help="clean capture to write"
    )


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stream = sys.stdout if out is None else out
    copied = copy_to_output(args)
    if copied is None:
        return 2
    reader, kept, _read = copied
    output = args.output
    lost = sum(1 for p in reader.problems if p.fatal or p.lost)
    stream.write(
        f"recovered {kept} messages -> {output}"
        + (f" ({lost} damaged place(s) in the input, listed below)\n" if lost else "\n")
    )
    return report_problems(reader)
