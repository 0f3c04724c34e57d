"""``inspect filter``: keep some messages, write them to a smaller MCAP capture.

Kept frames are copied unchanged (with their log times, channels, channel
metadata and the schema they were recorded with), so the output is a capture
like any other. A kept fragmented message keeps all of its fragments.
Records of a plain-text legacy capture go onto the raw channel.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from sleap_rtc.capture import format as fmt

if TYPE_CHECKING:
    from sleap_rtc.capture.read.mcaprecords import ChannelRecord, SchemaRecord
    from sleap_rtc.capture.read.reader import CaptureReader
from sleap_rtc.inspect.common import (
    add_filter_arguments,
    add_input_arguments,
    make_predicate,
    open_reader,
    report_problems,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser)
    add_filter_arguments(parser)
    parser.add_argument(
        "--output", "-o", required=True, metavar="OUT.mcap", help="capture to write"
    )


class _Copier:
    def __init__(self, path: Path) -> None:
        from mcap.writer import CompressionType, Writer

        self._file = open(path, "wb")  # noqa: SIM115 - closed in finish()
        self.writer = Writer(self._file, compression=CompressionType.ZSTD)
        self.writer.start(profile="", library=f"sleap-rtc inspect filter ({fmt.FORMAT_VERSION})")
        self._schemas: dict[tuple[str, str, bytes], int] = {}
        self._channels: dict[tuple[object, ...], int] = {}
        self.count = 0

    def schema(self, record: SchemaRecord | None) -> int:
        if record is None:
            return 0
        key = (record.name, record.encoding, record.data)
        sid = self._schemas.get(key)
        if sid is None:
            sid = self._schemas[key] = self.writer.register_schema(
                record.name, record.encoding, record.data
            )
        return sid

    def channel(self, record: ChannelRecord, schema: SchemaRecord | None) -> int:
        sid = self.schema(schema)
        key = (record.topic, record.message_encoding, sid, tuple(sorted(record.metadata.items())))
        cid = self._channels.get(key)
        if cid is None:
            cid = self._channels[key] = self.writer.register_channel(
                record.topic, record.message_encoding, sid, dict(record.metadata)
            )
        return cid

    def add(self, cid: int, log_time: int, publish_time: int, sequence: int, data: bytes) -> None:
        self.writer.add_message(cid, log_time, data, publish_time, sequence)
        self.count += 1

    def finish(self) -> None:
        try:
            self.writer.finish()  # type: ignore[no-untyped-call]
        finally:
            self._file.close()


def filter_capture(
    reader: CaptureReader, args: argparse.Namespace, output: Path
) -> tuple[int, int]:
    """Copy the selected records' frames to ``output``; (records kept, records read)."""
    from sleap_rtc.capture.read.mcaprecords import ChannelRecord

    keep = make_predicate(args)
    tmp = output.with_name(f".{output.name}.partial")
    copier = _Copier(tmp)
    kept = read = 0
    text_channel = ChannelRecord(
        0, 0, fmt.RAW_TOPIC, fmt.RAW_ENCODING, {"source": "legacy text capture"}
    )
    try:
        for rec in reader.records():
            read += 1
            if keep is not None and not keep(rec):
                continue
            kept += 1
            if rec.frames:
                for (cid, seq, log_time, publish_time, data), channel, schema in rec.frames:
                    del cid
                    copier.add(copier.channel(channel, schema), log_time, publish_time, seq, data)
            elif rec.raw is not None:
                head = fmt.raw_header(
                    rec.direction, rec.reason or "legacy text frame", source=rec.source
                )
                copier.add(
                    copier.channel(text_channel, None), rec.time_ns, rec.time_ns, 0, head + rec.raw
                )
        # Metadata last: a file's records are only all known once it was read.
        seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        for info in reader.files:
            for name, values in info.metadata:
                key = (name, tuple(sorted(values.items())))
                if key not in seen:
                    seen.add(key)
                    copier.writer.add_metadata(name, values)
        copier.writer.add_metadata(
            "sleap_rtc.filter",
            {"inputs": " ".join(reader.paths), "kept": str(kept), "read": str(read)},
        )
        copier.finish()
        os.replace(tmp, output)
    except BaseException:
        with contextlib.suppress(Exception):
            copier.finish()
        tmp.unlink(missing_ok=True)
        raise
    return kept, read


def copy_to_output(args: argparse.Namespace) -> tuple[CaptureReader, int, int] | None:
    """Copy the kept messages of ``args.captures`` to ``args.output``: (reader, kept, read).

    None (after saying why) when the output would overwrite an input.

    Raises:
        CaptureError: the output cannot be written.
    """
    output = Path(args.output)
    if output.resolve() in {Path(p).resolve() for p in args.captures}:
        print("error: the output would overwrite an input capture", file=sys.stderr)
        return None
    reader = open_reader(args, keep_frames=True)
    try:
        kept, read = filter_capture(reader, args, output)
    except OSError as exc:
        from sleap_rtc.capture.read.mcapio import CaptureError

        raise CaptureError(f"cannot write {output}: {exc.strerror or exc}") from None
    return reader, kept, read


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stream = sys.stdout if out is None else out
    copied = copy_to_output(args)
    if copied is None:
        return 2
    reader, kept, read = copied
    stream.write(f"kept {kept} of {read} messages -> {args.output}\n")
    return report_problems(reader)
