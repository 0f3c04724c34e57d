"""Protobuf wire bytes straight to JSON text, compiled per message type from the schema.

The fast path of ``inspect cat --json``. For each message type of a capture's
schema, :func:`compile_wire_json` generates a function ``(buf, pos, end) ->
str | None`` that reads the wire format of one message in ``buf[pos:end]``
and writes the JSON that ``json.dumps(json_format.MessageToDict(m,
preserving_proto_field_name=True))`` gives once parsed, without building a
message object or a dict.

It accepts only the canonical subset of the wire format: fields in
field-number order, each singular field at most once, known fields and enum
values only, well-formed lengths. Anything else (unknown fields, out-of-order
or repeated singular fields, unknown enum values, groups, well-known types,
recursive types, invalid UTF-8, truncation) gives ``None``, and the caller
decodes that message the general way (upb, :mod:`sleap_rtc.capture.tojson.convert`),
which is authoritative. So the output is either json_format's or nothing.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from sleap_rtc.capture.tojson.convert import json_double, json_float

#: ``(buf, pos, end) -> JSON text``, or None to take the general path.
WireJson = Callable[[Any, int, int], "str | None"]

_enc = json.encoder.encode_basestring  # C-accelerated JSON string quoting
_U32 = struct.Struct("<I").unpack_from
_I32 = struct.Struct("<i").unpack_from
_U64 = struct.Struct("<Q").unpack_from
_I64 = struct.Struct("<q").unpack_from
_F32 = struct.Struct("<f").unpack_from
_F64 = struct.Struct("<d").unpack_from

_T = FieldDescriptor
_VARINT_TYPES = {
    _T.TYPE_INT32,
    _T.TYPE_INT64,
    _T.TYPE_UINT32,
    _T.TYPE_UINT64,
    _T.TYPE_SINT32,
    _T.TYPE_SINT64,
    _T.TYPE_BOOL,
    _T.TYPE_ENUM,
}
_I64_TYPES = {_T.TYPE_FIXED64, _T.TYPE_SFIXED64, _T.TYPE_DOUBLE}
_I32_TYPES = {_T.TYPE_FIXED32, _T.TYPE_SFIXED32, _T.TYPE_FLOAT}
#: 64-bit integers: JSON strings in json_format.
_QUOTED = {_T.TYPE_INT64, _T.TYPE_UINT64, _T.TYPE_SINT64, _T.TYPE_FIXED64, _T.TYPE_SFIXED64}


def varint(buf: Any, pos: int, first: int) -> tuple[int, int]:
    """The rest of a varint whose first byte (> 127) was ``first``: (value, next pos)."""
    b = buf[pos]
    if b < 0x80:
        return (first & 0x7F) | (b << 7), pos + 1
    result = (first & 0x7F) | ((b & 0x7F) << 7)
    b = buf[pos + 1]
    if b < 0x80:
        return result | (b << 14), pos + 2
    result |= (b & 0x7F) << 14
    pos += 2
    shift = 21
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            if result >> 64:
                raise ValueError("varint over 64 bits")
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _b64(data: Any) -> str:
    return '"' + base64.b64encode(data).decode("ascii") + '"'


def _is_wkt(fd: FieldDescriptor) -> bool:
    sub = fd.message_type
    return sub is not None and sub.full_name.startswith("google.protobuf.")


class _Gen:
    """Source generator for one message type's decoder."""

    def __init__(self, env: dict[str, Any]) -> None:
        self.env = env
        self.lines: list[str] = []

    def name(self, prefix: str, value: Any) -> str:
        key = f"_{prefix}{len(self.env)}"
        self.env[key] = value
        return key

    def emit(self, indent: int, *lines: str) -> None:
        self.lines.extend(" " * (4 * indent) + line for line in lines)

    @staticmethod
    def at(tag: int) -> str:
        """A test that the field key at ``pos`` is ``tag`` (compared byte by byte)."""
        key = _key_bytes(tag)
        tests = [f"d[pos{f' + {i}' if i else ''}] == {b}" for i, b in enumerate(key)]
        return "pos < end and " + " and ".join(tests)

    def read_len(self, i: int, skip: int) -> None:
        """The length prefix at ``pos + skip`` -> ``q`` at the data, ``pos`` after it."""
        self.emit(
            i,
            f"n = d[{_at(skip)}]",
            f"q = pos + {skip + 1}",
            "if n > 127:",
            "    n, q = _var(d, q, n)",
            "pos = q + n",
            "if pos > end:",
            "    return None",
        )

    def value(
        self, i: int, fd: FieldDescriptor, skip: int, subs: dict[str, str]
    ) -> tuple[str, str]:
        """Code reading one value at ``pos + skip`` (``pos`` left after it, ``v`` the value).

        Returns the JSON expression of the value, and the expression telling
        whether it is non-default ("" when it is always shown).
        """
        t = fd.type
        if t in _VARINT_TYPES:
            self.emit(
                i,
                f"v = d[{_at(skip)}]",
                f"pos += {skip + 1}",
                "if v > 127:",
                "    w = d[pos]",
                "    if w < 128:",
                "        v = (v & 127) | (w << 7)",
                "        pos += 1",
                "    elif d[pos + 1] < 128:",
                "        v = (v & 127) | ((w & 127) << 7) | (d[pos + 1] << 14)",
                "        pos += 2",
                "    else:",
                "        v, pos = _var(d, pos, v)",
            )
            if t in (_T.TYPE_INT32, _T.TYPE_ENUM):
                self.emit(i, "v &= 0xFFFFFFFF", "if v > 0x7FFFFFFF:", "    v -= 0x100000000")
            elif t in (_T.TYPE_UINT32, _T.TYPE_SINT32):
                self.emit(i, "v &= 0xFFFFFFFF")
            elif t == _T.TYPE_INT64:
                self.emit(i, "if v > 0x7FFFFFFFFFFFFFFF:", "    v -= 0x10000000000000000")
            if t in (_T.TYPE_SINT32, _T.TYPE_SINT64):
                self.emit(i, "v = (v >> 1) ^ -(v & 1)")
            if t == _T.TYPE_BOOL:
                return "('true' if v else 'false')", "v"
            if t == _T.TYPE_ENUM:  # known values only; anything else takes the general path
                assert fd.enum_type is not None
                names = self.name("e", {v.number: _enc(v.name) for v in fd.enum_type.values})
                self.emit(i, f"x = {names}.get(v)", "if x is None:", "    return None")
                return "x", "v"
            if t in _QUOTED:
                return "'\"' + str(v) + '\"'", "v"
            return "str(v)", "v"
        if t in _I64_TYPES:
            unpack = {_T.TYPE_DOUBLE: "_F64", _T.TYPE_FIXED64: "_U64"}.get(t, "_I64")
            self.emit(i, f"v = {unpack}(d, {_at(skip)})[0]", f"pos += {skip + 8}")
            if t == _T.TYPE_DOUBLE:
                return "(repr(v) if v - v == 0 else _jd(v))", "(v or _U64(d, pos - 8)[0])"
            return "'\"' + str(v) + '\"'", "v"
        if t in _I32_TYPES:
            unpack = {_T.TYPE_FLOAT: "_F32", _T.TYPE_FIXED32: "_U32"}.get(t, "_I32")
            self.emit(i, f"v = {unpack}(d, {_at(skip)})[0]", f"pos += {skip + 4}")
            if t == _T.TYPE_FLOAT:
                return "_jf(v)", "(v or _U32(d, pos - 4)[0])"
            return "str(v)", "v"
        self.read_len(i, skip)
        if t == _T.TYPE_STRING:
            self.emit(i, "v = d[q:pos].decode()")
            return "_enc(v)", "v"
        if t == _T.TYPE_BYTES:
            self.emit(i, "v = d[q:pos]")
            return "_b64(v)", "v"
        assert fd.message_type is not None
        self.emit(
            i,
            f"x = {subs[fd.message_type.full_name]}(d, q, pos)",
            "if x is None:",
            "    return None",
        )
        return "x", ""


def _at(skip: int) -> str:
    return f"pos + {skip}" if skip else "pos"


def _tag(number: int, wire: int) -> int:
    return number << 3 | wire


def _key_bytes(tag: int) -> bytes:
    """The varint bytes of a field key (the canonical, shortest encoding)."""
    out = bytearray()
    while tag > 0x7F:
        out.append(tag & 0x7F | 0x80)
        tag >>= 7
    out.append(tag)
    return bytes(out)


def _wire_type(fd: FieldDescriptor) -> int:
    if fd.type in _VARINT_TYPES:
        return 0
    if fd.type in _I64_TYPES:
        return 1
    if fd.type in _I32_TYPES:
        return 5
    return 2


def _supported(fd: FieldDescriptor, stack: tuple[str, ...]) -> bool:
    """Can a decoder handle this field? (If not, its presence means the general path.)"""
    if fd.type == _T.TYPE_GROUP or _is_wkt(fd):
        return False
    sub = fd.message_type
    if sub is not None and not sub.GetOptions().map_entry:
        return sub.full_name not in stack  # recursive types: general path
    if sub is not None:  # a map: check its value type
        return _supported(sub.fields_by_name["value"], stack)
    return True


def compile_wire_json(
    descriptor: Descriptor,
    cache: dict[str, WireJson],
    *,
    job_id: bool = False,
    stack: tuple[str, ...] = (),
) -> WireJson:
    """The wire -> JSON decoder of ``descriptor`` (cached by full name).

    With ``job_id``, the function returns ``(json, job_id)`` instead, the
    job id being the value of a string field ``job_id`` ("" if none).
    """
    key = descriptor.full_name + ("#job" if job_id else "")
    existing = cache.get(key)
    if existing is not None:
        return existing
    stack = (*stack, descriptor.full_name)
    env: dict[str, Any] = {
        "_var": varint,
        "_enc": _enc,
        "_b64": _b64,
        "_jd": json_double,
        "_jf": json_float,
        "_U32": _U32,
        "_I32": _I32,
        "_U64": _U64,
        "_I64": _I64,
        "_F32": _F32,
        "_F64": _F64,
    }
    g = _Gen(env)
    subs: dict[str, str] = {}
    fields = [
        fd for fd in sorted(descriptor.fields, key=lambda f: f.number) if _supported(fd, stack)
    ]
    for fd in fields:
        sub = fd.message_type
        if sub is None:
            continue
        if sub.GetOptions().map_entry:
            value = sub.fields_by_name["value"]
            if value.message_type is not None:
                inner = compile_wire_json(value.message_type, cache, stack=stack)
                subs[value.message_type.full_name] = g.name("m", inner)
            continue
        subs[sub.full_name] = g.name("m", compile_wire_json(sub, cache, stack=stack))
    job_field = descriptor.fields_by_name.get("job_id")
    has_job = job_id and job_field is not None and job_field.type == _T.TYPE_STRING
    g.emit(0, "def convert(d, pos, end):", "    o = []", "    a = o.append")
    if job_id:
        g.emit(1, "J = ''")
    # A oneof of several fields: only one may be on the wire (else the last one wins).
    oneofs = {
        fd.containing_oneof.name
        for fd in fields
        if fd.containing_oneof is not None and len(fd.containing_oneof.fields) > 1
    }
    for name in sorted(oneofs):
        g.emit(1, f"of_{name} = 0")
    for fd in fields:
        _field(g, fd, subs, has_job and fd.name == "job_id", oneofs)
    g.emit(1, "if pos != end:", "    return None  # a field out of order, unknown, or repeated")
    if job_id:
        g.emit(1, "return '{' + ','.join(o) + '}', J")
    else:
        g.emit(1, "return '{' + ','.join(o) + '}'")
    source = "\n".join(g.lines)
    exec(compile(source, f"<wirejson {descriptor.full_name}>", "exec"), env)
    convert: WireJson = env["convert"]
    cache[key] = convert
    return convert


def _field(
    g: _Gen, fd: FieldDescriptor, subs: dict[str, str], is_job: bool, oneofs: set[str]
) -> None:
    head = repr(_enc(fd.name) + ":")
    wire = _wire_type(fd)
    tag = _tag(fd.number, wire)
    skip = len(_key_bytes(tag))
    sub = fd.message_type
    if sub is not None and sub.GetOptions().map_entry:
        _map_field(g, fd, tag, head, subs)
        return
    if fd.is_repeated:
        g.emit(1, "r = []")
        packable = wire != 2
        packed = _tag(fd.number, 2)
        cond = f"({g.at(tag)})" + (f" or ({g.at(packed)})" if packable else "")
        g.emit(1, f"while {cond}:")
        if packable:  # proto3 packs repeated numbers; parsers take both forms
            g.emit(2, f"if d[pos] == {_key_bytes(packed)[0]}:")
            g.read_len(3, skip)
            g.emit(3, "e = pos", "pos = q", "while pos < e:")
            expr, _ = g.value(4, fd, 0, subs)
            g.emit(4, f"r.append({expr})")
            g.emit(3, "if pos != e:", "    return None")
            g.emit(2, "else:")
            expr, _ = g.value(3, fd, skip, subs)
            g.emit(3, f"r.append({expr})")
        else:
            expr, _ = g.value(2, fd, skip, subs)
            g.emit(2, f"r.append({expr})")
        g.emit(1, "if r:", f"    a({head} + '[' + ','.join(r) + ']')")
        return
    g.emit(1, f"if {g.at(tag)}:")
    oneof = fd.containing_oneof
    if oneof is not None and oneof.name in oneofs:
        g.emit(2, f"if of_{oneof.name}:", "    return None", f"of_{oneof.name} = 1")
    expr, nondefault = g.value(2, fd, skip, subs)
    if is_job:
        g.emit(2, "J = v")
    if fd.has_presence or not nondefault:
        g.emit(2, f"a({head} + {expr})")
    else:
        g.emit(2, f"if {nondefault}:", f"    a({head} + {expr})")


def _map_field(g: _Gen, fd: FieldDescriptor, tag: int, head: str, subs: dict[str, str]) -> None:
    """A map: entries in any number; a key twice takes the general path (last one wins)."""
    entry = fd.message_type
    assert entry is not None
    key_fd = entry.fields_by_name["key"]
    val_fd = entry.fields_by_name["value"]
    key_tag = _tag(1, _wire_type(key_fd))
    val_tag = _tag(2, _wire_type(val_fd))
    if key_fd.type == _T.TYPE_STRING:
        default_key = '""'
    elif key_fd.type == _T.TYPE_BOOL:
        default_key = '"false"'
    else:
        default_key = '"0"'
    g.emit(1, "r = {}", "c = 0", f"while {g.at(tag)}:")
    g.read_len(2, len(_key_bytes(tag)))
    g.emit(2, "e = end", "end = pos", "pos = q", f"k = {default_key!r}")
    g.emit(2, f"y = {_default_json(val_fd)!r}")
    g.emit(2, f"if {g.at(key_tag)}:")
    expr, _ = g.value(3, key_fd, 1, subs)
    if key_fd.type == _T.TYPE_STRING or key_fd.type in _QUOTED:
        g.emit(3, f"k = {expr}")
    else:
        g.emit(3, f"k = '\"' + {expr} + '\"'")  # JSON object keys are strings
    g.emit(2, f"if {g.at(val_tag)}:")
    expr, _ = g.value(3, val_fd, 1, subs)
    g.emit(3, f"y = {expr}")
    g.emit(2, "if pos != end or y is None:", "    return None")
    g.emit(2, "r[k] = k + ':' + y", "c += 1", "end = e")
    g.emit(1, "if c:", "    if len(r) != c:", "        return None")
    g.emit(2, f"a({head} + '{{' + ','.join(r.values()) + '}}')")


def _default_json(fd: FieldDescriptor) -> str | None:
    """JSON of a map value left out of its entry (None: take the general path)."""
    t = fd.type
    if t == _T.TYPE_STRING:
        return '""'
    if t == _T.TYPE_BYTES:
        return '""'
    if t == _T.TYPE_BOOL:
        return "false"
    if t == _T.TYPE_MESSAGE:
        return "{}"
    if t == _T.TYPE_ENUM:
        assert fd.enum_type is not None
        zero = fd.enum_type.values_by_number.get(0)
        return None if zero is None else _enc(zero.name)
    if t in _QUOTED:
        return '"0"'
    if t in (_T.TYPE_DOUBLE, _T.TYPE_FLOAT):
        return "0.0"
    return "0"
