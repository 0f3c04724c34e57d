"""Message shapes of the signaling socket: JSON objects with a ``type``, validated.

The shapes follow the existing sleap-rtc signaling service where they fit, so a
hosted service can replace the embedded one later:

- ``register`` {peer_id?, room_id, role, jwt | worker_key, metadata} ->
  ``registered_auth`` {room_id, token, peer_id, peer_list, ice_servers}
- ``discover_peers`` {filters: {role, room_id, tags}} -> ``peer_list`` {peers, count}
- ``offer`` / ``answer`` / ``candidate`` {target, sdp | candidate} -> relayed to the
  target as {type, sender, target, sdp}; the sender gets ``relayed`` {target}
- ``update_metadata`` {metadata} -> ``metadata_updated`` {peer_id, metadata}
- ``jwks`` -> ``jwks`` {keys}; ``ping`` -> ``pong``
- ``login`` {room_id, user, secret, redirect_uri?, state?} -> ``token`` {token,
  room_id, subject, redirect}: the login page's script and headless logins
- anything refused -> ``error`` {code, reason, request_type}

The server's HTTP side (same host and port) answers on the paths below
(:data:`JWKS_PATH`, :data:`LOGIN_PATH`, ...): the browser login and verifiers
find them here, without importing the server.

Every request may carry a ``request_id`` (any short string); the server echoes
it in the reply or error so a client can match answers without guessing. The
sender of a relayed message is always the registered id of the connection it
arrived on, never a field of the message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final

#: Largest signaling message the server handles (bigger ones get an error).
MAX_MESSAGE_BYTES: Final = 64 * 1024
#: Roles a peer can register with.
ROLES: Final = ("client", "worker")
#: Peer ids, room ids: short, printable, no separators that could confuse a log.
ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,63}$")
MAX_TAGS: Final = 32
MAX_TAG_CHARS: Final = 64
MAX_REQUEST_ID_CHARS: Final = 64
#: Worker status values with a meaning to clients; other strings pass through.
STATUS_AVAILABLE: Final = "available"
STATUS_BUSY: Final = "busy"

#: Request types the server understands.
REQUEST_TYPES: Final = frozenset(
    {
        "register",
        "discover_peers",
        "offer",
        "answer",
        "candidate",
        "update_metadata",
        "jwks",
        "login",
        "ping",
    }
)
#: Types relayed from one peer to another.
RELAY_TYPES: Final = frozenset({"offer", "answer", "candidate"})

#: HTTP: the public keys tokens are verified with (a JWKS).
JWKS_PATH: Final = "/.well-known/jwks.json"
#: HTTP: the login form (query: room, state, a loopback redirect_uri).
LOGIN_PATH: Final = "/login"
#: HTTP: where the login form is sent (passphrase check, token, redirect).
LOGIN_SUBMIT_PATH: Final = "/login/submit"
#: HTTP: liveness.
HEALTH_PATH: Final = "/healthz"


class ErrorCode:
    """Stable ``code`` values of ``error`` messages (``reason`` is the human text)."""

    BAD_JSON: Final = "bad_json"
    BAD_MESSAGE: Final = "bad_message"
    TOO_LARGE: Final = "too_large"
    UNKNOWN_TYPE: Final = "unknown_type"
    MISSING_FIELD: Final = "missing_field"
    BAD_FIELD: Final = "bad_field"
    RATE_LIMITED: Final = "rate_limited"
    NOT_REGISTERED: Final = "not_registered"
    ALREADY_REGISTERED: Final = "already_registered"
    PEER_ID_TAKEN: Final = "peer_id_taken"
    UNKNOWN_ROOM: Final = "unknown_room"
    MISSING_CREDENTIALS: Final = "missing_credentials"
    BAD_CREDENTIALS: Final = "bad_credentials"
    BAD_TOKEN: Final = "bad_token"
    FORBIDDEN: Final = "forbidden"
    UNKNOWN_PEER: Final = "unknown_peer"
    INTERNAL: Final = "internal"


#: Codes that mean "your credentials are not good enough" (log in again / fix the key).
AUTH_CODES: Final = frozenset(
    {ErrorCode.MISSING_CREDENTIALS, ErrorCode.BAD_CREDENTIALS, ErrorCode.BAD_TOKEN}
)


class MessageError(Exception):
    """A message the server refuses; becomes an ``error`` reply."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def error_message(
    code: str, reason: str, *, request_type: str | None = None, request_id: str | None = None
) -> dict[str, Any]:
    """The ``error`` reply for a refused message."""
    msg: dict[str, Any] = {"type": "error", "code": code, "reason": reason}
    if request_type is not None:
        msg["request_type"] = request_type
    if request_id is not None:
        msg["request_id"] = request_id
    return msg


def parse_message(raw: str | bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """Decode one socket message into a JSON object with a known ``type``.

    Raises:
        MessageError: too large, not UTF-8 JSON, not an object, no/unknown type.
    """
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise MessageError(
            ErrorCode.TOO_LARGE, f"message of {size} bytes is over the limit of {max_bytes} bytes"
        )
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageError(ErrorCode.BAD_JSON, f"message is not JSON: {exc}") from None
    except RecursionError:  # e.g. [[[[...]]]] 30,000 deep: refused, not an internal error
        raise MessageError(ErrorCode.BAD_JSON, "message is nested too deeply") from None
    if not isinstance(obj, dict):
        raise MessageError(ErrorCode.BAD_MESSAGE, "message must be a JSON object")
    kind = obj.get("type")
    if not isinstance(kind, str) or not kind:
        raise MessageError(ErrorCode.MISSING_FIELD, "message has no 'type'")
    if kind not in REQUEST_TYPES:
        raise MessageError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind[:40]!r}")
    rid = obj.get("request_id")
    if rid is not None and (not isinstance(rid, str) or len(rid) > MAX_REQUEST_ID_CHARS):
        raise MessageError(ErrorCode.BAD_FIELD, "'request_id' must be a short string")
    return obj


def request_id_of(raw: str | bytes) -> str | None:
    """Best effort: the request id of a message that failed validation (for the error)."""
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if isinstance(obj, dict):
        rid = obj.get("request_id")
        if isinstance(rid, str) and len(rid) <= MAX_REQUEST_ID_CHARS:
            return rid
    return None


def require_str(msg: Mapping[str, Any], name: str, *, max_chars: int = 256) -> str:
    """A required non-empty string field."""
    value = msg.get(name)
    if value is None or value == "":
        raise MessageError(ErrorCode.MISSING_FIELD, f"'{name}' is required")
    if not isinstance(value, str) or len(value) > max_chars:
        raise MessageError(
            ErrorCode.BAD_FIELD, f"'{name}' must be a string of at most {max_chars} chars"
        )
    return value


def optional_str(msg: Mapping[str, Any], name: str, *, max_chars: int = 256) -> str | None:
    """An optional string field (absent or empty -> None)."""
    if msg.get(name) in (None, ""):
        return None
    return require_str(msg, name, max_chars=max_chars)


def require_id(msg: Mapping[str, Any], name: str) -> str:
    """A required peer or room id."""
    value = require_str(msg, name, max_chars=64)
    if not ID_PATTERN.match(value):
        raise MessageError(
            ErrorCode.BAD_FIELD,
            f"'{name}' must be 1-64 letters, digits or _.:@- and start with a letter or digit",
        )
    return value


def validate_metadata(value: object) -> dict[str, Any]:
    """Peer metadata: {tags: [str], properties: {str: JSON}}; absent -> empty."""
    if value is None:
        return {"tags": [], "properties": {}}
    if not isinstance(value, dict):
        raise MessageError(ErrorCode.BAD_FIELD, "'metadata' must be an object")
    tags = value.get("tags", [])
    if not isinstance(tags, list) or len(tags) > MAX_TAGS:
        raise MessageError(ErrorCode.BAD_FIELD, f"'metadata.tags' must be a list of <= {MAX_TAGS}")
    for tag in tags:
        if not isinstance(tag, str) or not tag or len(tag) > MAX_TAG_CHARS:
            raise MessageError(ErrorCode.BAD_FIELD, "'metadata.tags' entries must be short strings")
    props = value.get("properties", {})
    if not isinstance(props, dict):
        raise MessageError(ErrorCode.BAD_FIELD, "'metadata.properties' must be an object")
    status = props.get("status")
    if status is not None and (not isinstance(status, str) or len(status) > 32):
        raise MessageError(
            ErrorCode.BAD_FIELD, "'metadata.properties.status' must be a short string"
        )
    return {"tags": list(tags), "properties": dict(props)}


def worker_metadata(
    *,
    name: str,
    status: str = STATUS_AVAILABLE,
    gpu: str | None = None,
    versions: Mapping[str, str] | None = None,
    mounts: list[str] | None = None,
    tags: list[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The metadata a worker registers with: name, status, GPU, versions, mount labels."""
    props: dict[str, Any] = {
        "name": name,
        "status": status,
        "gpu": gpu,
        "versions": dict(versions or {}),
        "mounts": list(mounts or []),
    }
    props.update(extra)
    return {"tags": list(tags or []), "properties": props}


def dumps(msg: Mapping[str, Any]) -> str:
    """Compact JSON for the socket."""
    return json.dumps(msg, separators=(",", ":"))
