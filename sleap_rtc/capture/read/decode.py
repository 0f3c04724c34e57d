"""Decode captured frames with the schema inside the capture.

A protobuf schema record holds a FileDescriptorSet. :func:`load_schema` builds
a private descriptor pool from it and a message class with
``message_factory.GetMessageClass``; today's compiled bindings are never used
to decode. A :class:`LoadedSchema` caches, per message type, the converters to
json_format's dict and JSON text (:mod:`sleap_rtc.capture.tojson.convert`) and the
wire-to-JSON decoders of the fast path (:mod:`sleap_rtc.capture.tojson.wirejson`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from sleap_rtc.capture.tojson.convert import (
    Converter,
    JsonConverter,
    compile_converter,
    compile_json,
)
from sleap_rtc.capture.tojson.wirejson import WireJson, compile_wire_json

__all__ = [
    "FIRST_BODY_FIELD",
    "LoadedSchema",
    "SchemaProblem",
    "load_schema",
]

#: Envelope field numbers from this one on are bodies (see envelope.proto).
FIRST_BODY_FIELD = 10


class SchemaProblem(Exception):
    """A schema record that cannot be used to decode (encoding, bad descriptors)."""


@dataclass
class LoadedSchema:
    """A message class built from a capture's schema, with compiled converters."""

    name: str
    message_class: type[Message]
    descriptor: Descriptor
    converters: dict[str, Converter] = field(default_factory=dict)
    json_converters: dict[str, JsonConverter] = field(default_factory=dict)
    #: body field name -> does that body message have a ``job_id`` string field
    job_id_bodies: dict[str, bool] = field(default_factory=dict)
    #: numbers of the oneof "body" fields this schema knows
    body_numbers: frozenset[int] = frozenset()
    #: Envelope header fields this schema names beyond the four of v1.0 (a newer minor's)
    extra_header: frozenset[str] = frozenset()
    #: wire -> JSON decoders (:mod:`sleap_rtc.capture.tojson.wirejson`), by full name
    wire_decoders: dict[str, WireJson] = field(default_factory=dict)
    _wire_bodies: dict[int, tuple[str, WireJson]] | None = None
    _header_bodies: dict[int, str] | None = None
    _wire_checked: bool = False

    def wire_bodies(self) -> dict[int, tuple[str, WireJson]] | None:
        """Body field tag -> (body name, wire decoder giving ``(json, job_id)``).

        None when the Envelope header is not the one the fast path reads
        (version, message_id, correlation_id, sent_time_unix_nano, a ``body``
        oneof, nothing else): such captures are decoded the general way.
        Fragments are not in the table (they are reassembled first).
        """
        if not self._wire_checked:
            self._wire_checked = True
            self._wire_bodies = _wire_bodies(self.descriptor, self.wire_decoders)
        return self._wire_bodies

    def header_bodies(self) -> dict[int, str] | None:
        """Body field tag -> body name (fragment included), when the header is the standard one.

        None when the Envelope is not laid out the way :meth:`wire_bodies`
        needs: such captures are read the general way.
        """
        if self._header_bodies is None and _standard(self.descriptor):
            oneof = self.descriptor.oneofs_by_name["body"]
            self._header_bodies = {fd.number << 3 | 2: fd.name for fd in oneof.fields}
        return self._header_bodies

    def converter(self, descriptor: Descriptor) -> Converter:
        conv = self.converters.get(descriptor.full_name)
        if conv is None:
            conv = compile_converter(descriptor, self.converters)
        return conv

    def json_converter(self, descriptor: Descriptor) -> JsonConverter:
        conv = self.json_converters.get(descriptor.full_name)
        if conv is None:
            conv = compile_json(descriptor, self.json_converters)
        return conv

    def has_job_id(self, body: str, message: Message) -> bool:
        known = self.job_id_bodies.get(body)
        if known is None:
            f = message.DESCRIPTOR.fields_by_name.get("job_id")
            known = self.job_id_bodies[body] = (
                f is not None and f.type == FieldDescriptor.TYPE_STRING
            )
        return known


_HEADER = {
    "version": (1, FieldDescriptor.TYPE_MESSAGE),
    "message_id": (2, FieldDescriptor.TYPE_UINT64),
    "correlation_id": (3, FieldDescriptor.TYPE_UINT64),
    "sent_time_unix_nano": (4, FieldDescriptor.TYPE_FIXED64),
}
_VERSION = {"major": (1, FieldDescriptor.TYPE_UINT32), "minor": (2, FieldDescriptor.TYPE_UINT32)}


def _shape(descriptor: Descriptor, names: dict[str, tuple[int, int]]) -> bool:
    return all(
        (f := descriptor.fields_by_name.get(name)) is not None
        and (f.number, f.type) == spec
        and not f.is_repeated
        for name, spec in names.items()
    )


def _standard(descriptor: Descriptor) -> bool:
    """The v1.0 header (version, message_id, correlation_id, sent time), a body, nothing else."""
    oneof = descriptor.oneofs_by_name.get("body")
    if oneof is None or not _shape(descriptor, _HEADER):
        return False
    version = descriptor.fields_by_name["version"].message_type
    if version is None or len(version.fields) != 2 or not _shape(version, _VERSION):
        return False
    bodies = {f.name for f in oneof.fields}
    return {f.name for f in descriptor.fields} == bodies | set(_HEADER)


def _wire_bodies(
    descriptor: Descriptor, cache: dict[str, WireJson]
) -> dict[int, tuple[str, WireJson]] | None:
    if not _standard(descriptor):
        return None
    oneof = descriptor.oneofs_by_name["body"]
    table: dict[int, tuple[str, WireJson]] = {}
    for fd in oneof.fields:
        sub = fd.message_type
        if sub is None or fd.name == "fragment" or sub.full_name.startswith("google.protobuf."):
            continue
        table[fd.number << 3 | 2] = (fd.name, compile_wire_json(sub, cache, job_id=True))
    return table


_CACHE: dict[tuple[str, str, bytes], LoadedSchema] = {}


def load_schema(name: str, encoding: str, data: bytes) -> LoadedSchema:
    """The message class ``name`` of a protobuf FileDescriptorSet schema.

    Raises:
        SchemaProblem: not protobuf, not a FileDescriptorSet, inconsistent
            files, or ``name`` not in it.
    """
    key = (name, encoding, hashlib.sha256(data).digest())
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    if encoding != "protobuf":
        raise SchemaProblem(
            f"schema {name!r} has encoding {encoding!r}; only 'protobuf' can be decoded"
            if encoding
            else f"schema {name!r} has no encoding"
        )
    fds = descriptor_pb2.FileDescriptorSet()
    try:
        fds.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise SchemaProblem(f"schema {name!r} is not a FileDescriptorSet: {exc}") from None
    pool = descriptor_pool.DescriptorPool()
    pending = list(fds.file)
    # Files may come in any order: add those whose imports are in the pool.
    added: set[str] = set()
    while pending:
        progress = False
        for file in list(pending):
            if all(dep in added for dep in file.dependency):
                try:
                    pool.Add(file)
                except Exception as exc:
                    raise SchemaProblem(
                        f"schema {name!r}: file {file.name!r} is invalid: {exc}"
                    ) from None
                added.add(file.name)
                pending.remove(file)
                progress = True
        if not progress:
            missing = sorted(
                # A damaged name that is not UTF-8 comes back as bytes (proto2 strings).
                str(d)
                for d in {d for f in pending for d in f.dependency}
                - added
                - {f.name for f in pending}
            )
            raise SchemaProblem(
                f"schema {name!r}: imports missing from the FileDescriptorSet: "
                f"{', '.join(missing) or 'cycle'}"
            )
    try:
        descriptor = pool.FindMessageTypeByName(name)
        cls = message_factory.GetMessageClass(descriptor)
    except Exception as exc:
        raise SchemaProblem(
            f"schema {name!r}: message type not found in its FileDescriptorSet ({exc})"
        ) from None
    oneof = descriptor.oneofs_by_name.get("body")
    numbers = frozenset(f.number for f in oneof.fields) if oneof is not None else frozenset()
    bodies = {f.name for f in oneof.fields} if oneof is not None else set()
    extra = frozenset(
        f.name for f in descriptor.fields if f.name not in bodies and f.name not in _HEADER
    )
    loaded = LoadedSchema(name, cls, descriptor, body_numbers=numbers, extra_header=extra)
    _CACHE[key] = loaded
    return loaded
