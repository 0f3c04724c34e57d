"""Decoded protobuf messages to json_format's dict, or straight to its JSON text.

:func:`to_dict` turns a message into the same dict as
``json_format.MessageToDict(preserving_proto_field_name=True)`` (a converter
compiled once per message type, several times faster) and adds the fields the
schema does not know under ``"@unknown"``: field number, wire type and the
bytes in hex, never dropped. :func:`compile_json` writes the same as JSON text.
"""

from __future__ import annotations

import base64
import json
import keyword
import math
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.internal import type_checkers
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from sleap_rtc.capture.read.rawproto import UNKNOWN_KEY, unknown_entry

Converter = Callable[[Any], dict[str, Any]]
JsonConverter = Callable[[Any], str]


_INT64 = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_SFIXED64,
}


def _nonfinite(v: float) -> Any:
    if v != v:
        return "NaN"
    return "-Infinity" if v < 0 else "Infinity"


def _shortest(v: float) -> Any:
    if v - v != 0:
        return _nonfinite(v)
    return type_checkers.ToShortestFloat(v)


def _value_expr(
    fd: FieldDescriptor, var: str, env: dict[str, Any], cache: dict[str, Converter]
) -> str:
    """A Python expression converting the value ``var`` of ``fd`` (json_format's rules)."""
    t = fd.type
    if t in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
        sub = fd.message_type
        assert sub is not None
        if sub.full_name.startswith("google.protobuf."):
            return f"_wkt({var})"
        if sub.full_name not in cache:
            compile_converter(sub, cache)
        return f"_cache[{sub.full_name!r}]({var})"
    if t == FieldDescriptor.TYPE_ENUM:
        assert fd.enum_type is not None
        if fd.enum_type.full_name == "google.protobuf.NullValue":
            return "None"
        key = f"_enum_{len(env)}"
        env[key] = {v.number: v.name for v in fd.enum_type.values}
        return f"{key}.get({var}, {var})"
    if t in _INT64:
        return f"str({var})"
    if t == FieldDescriptor.TYPE_BYTES:
        return f"_b64({var})"
    if t == FieldDescriptor.TYPE_DOUBLE:
        return f"({var} if {var} - {var} == 0 else _nonfinite({var}))"
    if t == FieldDescriptor.TYPE_FLOAT:
        return f"_shortest({var})"
    return var


def compile_converter(descriptor: Descriptor, cache: dict[str, Converter]) -> Converter:
    """A function message -> dict for messages of ``descriptor`` (cached by full name).

    The function is generated source, one statement per field in field-number
    order, so it produces json_format's dict without its per-field dispatch.
    """
    existing = cache.get(descriptor.full_name)
    if existing is not None:
        return existing
    env: dict[str, Any] = {
        "_cache": cache,
        "_b64": lambda v: base64.b64encode(v).decode("ascii"),
        "_nonfinite": _nonfinite,
        "_shortest": _shortest,
        "_wkt": lambda m: json_format.MessageToDict(m, preserving_proto_field_name=True),
        "_UFS": UnknownFieldSet,
        "_entry": unknown_entry,
        "_negzero": lambda v: v == 0 and math.copysign(1.0, v) < 0,
    }
    # Placeholder so recursive types find an entry while their converter is generated.
    cache[descriptor.full_name] = lambda m: cache[descriptor.full_name](m)
    lines = ["def convert(m):", "    out = {}"]
    for fd in sorted(descriptor.fields, key=lambda f: f.number):
        name = fd.name
        key = repr(name)
        attr = (
            f"m.{name}"
            if name.isidentifier() and not keyword.iskeyword(name)
            else f"getattr(m, {name!r})"
        )
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            key_fd = fd.message_type.fields_by_name["key"]
            val_fd = fd.message_type.fields_by_name["value"]
            if key_fd.type == FieldDescriptor.TYPE_BOOL:
                kexpr = '("true" if k else "false")'
            elif key_fd.type == FieldDescriptor.TYPE_STRING:
                kexpr = "k"
            else:
                kexpr = "str(k)"
            vexpr = _value_expr(val_fd, "x", env, cache)
            # `for k in v: v[k]` is several times faster than .items() on protobuf maps.
            lines += [
                f"    v = {attr}",
                "    if v:",
                "        d = {}",
                "        for k in v:",
                "            x = v[k]",
                f"            d[{kexpr}] = {vexpr}",
                f"        out[{key}] = d",
            ]
        elif fd.is_repeated:
            vexpr = _value_expr(fd, "x", env, cache)
            conv = "list(v)" if vexpr == "x" else f"[{vexpr} for x in v]"
            lines += [f"    v = {attr}", "    if v:", f"        out[{key}] = {conv}"]
        elif fd.has_presence and fd.message_type is None:
            vexpr = _value_expr(fd, "v", env, cache)
            lines += [
                f"    v = {attr}",
                f"    if v or m.HasField({name!r}):",
                f"        out[{key}] = {vexpr}",
            ]
        elif fd.has_presence:
            vexpr = _value_expr(fd, "v", env, cache)
            lines += [
                f"    if m.HasField({name!r}):",
                f"        v = {attr}",
                f"        out[{key}] = {vexpr}",
            ]
        else:
            vexpr = _value_expr(fd, "v", env, cache)
            test = (
                "v or _negzero(v)"
                if fd.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT)
                else "v"
            )
            lines += [f"    v = {attr}", f"    if {test}:", f"        out[{key}] = {vexpr}"]
    lines += [
        "    u = _UFS(m)",
        "    if len(u):",
        f"        out[{UNKNOWN_KEY!r}] = [_entry(f) for f in u]",
        "    return out",
    ]
    exec(compile("\n".join(lines), f"<converter {descriptor.full_name}>", "exec"), env)
    convert: Converter = env["convert"]
    cache[descriptor.full_name] = convert
    return convert


_enc = json.encoder.encode_basestring  # C-accelerated JSON string quoting


def json_double(v: float) -> str:
    if v - v == 0:
        return repr(v)
    return '"NaN"' if v != v else ('"-Infinity"' if v < 0 else '"Infinity"')


def json_float(v: float) -> str:
    return json_double(v) if v - v != 0 else repr(type_checkers.ToShortestFloat(v))


def _json_expr(
    fd: FieldDescriptor, var: str, env: dict[str, Any], cache: dict[str, JsonConverter]
) -> str:
    """A Python expression giving the JSON text of the value ``var`` of ``fd``."""
    t = fd.type
    if t in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
        sub = fd.message_type
        assert sub is not None
        if sub.full_name.startswith("google.protobuf."):
            return f"_dump(_wkt({var}))"
        if sub.full_name not in cache:
            compile_json(sub, cache)
        return f"_cache[{sub.full_name!r}]({var})"
    if t == FieldDescriptor.TYPE_ENUM:
        assert fd.enum_type is not None
        if fd.enum_type.full_name == "google.protobuf.NullValue":
            return "'null'"
        key = f"_enum_{len(env)}"
        env[key] = {v.number: _enc(v.name) for v in fd.enum_type.values}
        return f"({key}.get({var}) or str({var}))"
    if t in _INT64:
        return f"('\"' + str({var}) + '\"')"
    if t == FieldDescriptor.TYPE_BYTES:
        return f"('\"' + _b64({var}) + '\"')"
    if t == FieldDescriptor.TYPE_DOUBLE:
        return f"(repr({var}) if {var} - {var} == 0 else _json_double({var}))"
    if t == FieldDescriptor.TYPE_FLOAT:
        return f"_json_float({var})"
    if t == FieldDescriptor.TYPE_BOOL:
        return f"('true' if {var} else 'false')"
    if t == FieldDescriptor.TYPE_STRING:
        return f"_enc({var})"
    return f"str({var})"


def compile_json(descriptor: Descriptor, cache: dict[str, JsonConverter]) -> JsonConverter:
    """A function message -> JSON text, equal to ``json.dumps(to_dict(message))`` once parsed.

    Generated like :func:`compile_converter`, but it writes the JSON text
    directly (no dict, no encoder): the fast path of ``inspect cat --json``.
    """
    existing = cache.get(descriptor.full_name)
    if existing is not None:
        return existing
    env: dict[str, Any] = {
        "_cache": cache,
        "_enc": _enc,
        "_b64": lambda v: base64.b64encode(v).decode("ascii"),
        "_json_double": json_double,
        "_json_float": json_float,
        "_dump": json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode,
        "_wkt": lambda m: json_format.MessageToDict(m, preserving_proto_field_name=True),
        "_UFS": UnknownFieldSet,
        "_entry": unknown_entry,
        "_negzero": lambda v: v == 0 and math.copysign(1.0, v) < 0,
    }
    cache[descriptor.full_name] = lambda m: cache[descriptor.full_name](m)
    lines = ["def convert(m):", "    p = []", "    a = p.append"]
    for fd in sorted(descriptor.fields, key=lambda f: f.number):
        name = fd.name
        head = repr(_enc(name) + ":")
        attr = (
            f"m.{name}"
            if name.isidentifier() and not keyword.iskeyword(name)
            else f"getattr(m, {name!r})"
        )
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            key_fd = fd.message_type.fields_by_name["key"]
            val_fd = fd.message_type.fields_by_name["value"]
            if key_fd.type == FieldDescriptor.TYPE_BOOL:
                kexpr = "('\"true\"' if k else '\"false\"')"
            elif key_fd.type == FieldDescriptor.TYPE_STRING:
                kexpr = "_enc(k)"
            else:
                kexpr = "('\"' + str(k) + '\"')"
            vexpr = _json_expr(val_fd, "x", env, cache)
            lines += [
                f"    v = {attr}",
                "    if v:",
                "        q = []",
                "        for k in v:",
                "            x = v[k]",
                f"            q.append({kexpr} + ':' + {vexpr})",
                f"        a({head} + '{{' + ','.join(q) + '}}')",
            ]
        elif fd.is_repeated:
            vexpr = _json_expr(fd, "x", env, cache)
            lines += [
                f"    v = {attr}",
                "    if v:",
                f"        a({head} + '[' + ','.join([{vexpr} for x in v]) + ']')",
            ]
        elif fd.has_presence and fd.message_type is None:
            # Explicit presence scalar: a non-zero value is present; only zero needs HasField.
            vexpr = _json_expr(fd, "v", env, cache)
            lines += [
                f"    v = {attr}",
                f"    if v or m.HasField({name!r}):",
                f"        a({head} + {vexpr})",
            ]
        elif fd.has_presence:
            vexpr = _json_expr(fd, "v", env, cache)
            lines += [
                f"    if m.HasField({name!r}):",
                f"        v = {attr}",
                f"        a({head} + {vexpr})",
            ]
        else:
            vexpr = _json_expr(fd, "v", env, cache)
            test = (
                "v or _negzero(v)"
                if fd.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT)
                else "v"
            )
            lines += [f"    v = {attr}", f"    if {test}:", f"        a({head} + {vexpr})"]
    lines += [
        "    u = _UFS(m)",
        "    if len(u):",
        f"        a({_enc(UNKNOWN_KEY) + ':'!r} + _dump([_entry(f) for f in u]))",
        "    return '{' + ','.join(p) + '}'",
    ]
    exec(compile("\n".join(lines), f"<json {descriptor.full_name}>", "exec"), env)
    convert: JsonConverter = env["convert"]
    cache[descriptor.full_name] = convert
    return convert


def to_dict(message: Message, cache: dict[str, Converter] | None = None) -> dict[str, Any]:
    """``message`` as a JSON-ready dict (json_format's shape), unknown fields included."""
    cache = {} if cache is None else cache
    descriptor: Any = message.DESCRIPTOR
    conv = cache.get(descriptor.full_name) or compile_converter(descriptor, cache)
    return conv(message)
