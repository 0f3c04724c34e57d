"""Check tokens: what binds a JobSubmit to the PATH_CHECK that passed.

A token is ``v1.<payload>.<mac>``: payload = base64url(zlib(canonical JSON of
``{"v", "labels", "src", "maps", "files", "iat"}``)), mac =
base64url(HMAC-SHA256(secret, domain + canonical JSON)). Stateless: any
process holding the secret can verify it; a restart does not invalidate it.

- ``labels``: the resolved worker path of the labels file;
- ``src``: the request's ``labels_path`` as the client wrote it;
- ``maps``: the request's mappings, ``{"exact": [[original, worker], ...],
  "prefix": [...]}`` sorted, *without* the exact mapping keyed by ``src``: a
  submit names the labels file by its worker path, so the client drops that
  mapping;
- ``files``: ``[[path, size, mtime_ns, dev, inode], ...]`` sorted, every file
  checked, by its resolved path; the device and inode are read when the token
  is issued (a size and mtime alone survive a swap for a same-sized copy);
- ``iat``: issue time (seconds).

A submit passes when it names the same labels file, carries the same video
mappings (the labels mapping may be left out or repeated), and every checked
file is unchanged (same device, inode, size and mtime, still inside the
mounts). The links on the way are bound by intake itself: it resolves every
video again from the submit's mappings and refuses unless it arrives at
exactly the token's files (:func:`token_files`), so a symlink re-pointed after
the check is refused even when its old target is untouched.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import zlib
from collections.abc import Mapping
from typing import Any

from sleap_rtc.worker.mounts import MountPolicy, PathRejected

__all__ = [
    "issue_check_token",
    "mapping_difference",
    "token_files",
    "verify_check_token",
    "video_mappings",
]

_DOMAIN = b"sleap-rtc/path-check-token/v1\x00"
_MAX_TOKEN_CHARS = 8 * 1024 * 1024
_MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
_MALFORMED = "check token is malformed; run the path check again"


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, canonical: bytes) -> bytes:
    return hmac.new(secret, _DOMAIN + canonical, hashlib.sha256).digest()


def video_mappings(exact: Mapping[str, str], labels_key: str) -> dict[str, str]:
    """``exact`` without the mapping keyed by ``labels_key`` (the request's labels path)."""
    return {k: v for k, v in exact.items() if k != labels_key}


def _quote(pair: tuple[str, str]) -> str:
    return f"{pair[0]!r} -> {pair[1]!r}"


def mapping_difference(
    kind: str, checked: Mapping[str, str], submitted: Mapping[str, str]
) -> str | None:
    """A human description of how ``submitted`` differs from ``checked``, or None.

    ``kind`` names the mappings in the message (``"video path"``, ``"prefix"``).
    """
    if dict(checked) == dict(submitted):
        return None
    notes = [
        *(
            f"{kind} mapping {_quote((k, submitted[k]))} was not part of the path check"
            for k in sorted(submitted.keys() - checked.keys())
        ),
        *(
            f"{kind} mapping {k!r} now points to {submitted[k]!r}; the check used {checked[k]!r}"
            for k in sorted(checked.keys() & submitted.keys())
            if checked[k] != submitted[k]
        ),
        *(
            f"{kind} mapping {_quote((k, checked[k]))} of the path check is missing"
            for k in sorted(checked.keys() - submitted.keys())
        ),
    ]
    more = f" (and {len(notes) - 1} more difference(s))" if len(notes) > 1 else ""
    return f"the submitted mappings differ from the checked ones: {notes[0]}{more}"


def issue_check_token(
    secret: bytes,
    labels_path: str,
    files: list[tuple[str, int, int]],
    *,
    now: float,
    path_mappings: Mapping[str, str] | None = None,
    prefix_mappings: Mapping[str, str] | None = None,
    labels_key: str = "",
) -> str:
    """Sign the resolved labels path, the checked files ``(path, size, mtime_ns)``
    and the request's mappings, less the exact one keyed by ``labels_key`` (the
    request's ``labels_path``)."""
    payload = {
        "v": 1,
        "labels": labels_path,
        "src": labels_key,
        "maps": {
            "exact": sorted(video_mappings(path_mappings or {}, labels_key).items()),
            "prefix": sorted((prefix_mappings or {}).items()),
        },
        "files": sorted(_identity(p, s, m) for p, s, m in files),
        "iat": int(now),
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return f"v1.{_b64e(zlib.compress(canonical, 6))}.{_b64e(_mac(secret, canonical))}"


def _identity(path: str, size: int, mtime_ns: int) -> list[Any]:
    """``[path, size, mtime_ns, dev, inode]``; dev and inode -1 when the file is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return [path, size, mtime_ns, -1, -1]
    return [path, size, mtime_ns, st.st_dev, st.st_ino]


def token_files(token: str) -> set[str] | None:
    """The resolved paths a token's check covered, or None when it cannot be read.

    Not a verification: call it only on a token :func:`verify_check_token` passed.
    """
    parts = token.split(".") if len(token) <= _MAX_TOKEN_CHARS else []
    if len(parts) != 3:
        return None
    try:
        inflater = zlib.decompressobj()
        data = json.loads(inflater.decompress(_b64d(parts[1]), _MAX_PAYLOAD_BYTES))
        return {str(entry[0]) for entry in data["files"]}
    except (ValueError, zlib.error, KeyError, TypeError, IndexError):
        return None


def _decode(secret: bytes, token: str) -> dict[str, Any] | str:
    """The genuine payload, or a reason."""
    parts = token.split(".") if len(token) <= _MAX_TOKEN_CHARS else []
    if len(parts) != 3 or parts[0] != "v1":
        return _MALFORMED
    try:
        inflater = zlib.decompressobj()
        canonical = inflater.decompress(_b64d(parts[1]), _MAX_PAYLOAD_BYTES)
        if inflater.unconsumed_tail or not inflater.eof:
            return _MALFORMED
        mac = _b64d(parts[2])
    except (ValueError, zlib.error):
        return _MALFORMED
    if not hmac.compare_digest(mac, _mac(secret, canonical)):
        return "check token is forged or from another worker; run the path check again"
    data = json.loads(canonical)
    return data if isinstance(data, dict) else _MALFORMED


def _check_mappings(
    data: dict[str, Any],
    policy: MountPolicy,
    path_mappings: Mapping[str, str],
    prefix_mappings: Mapping[str, str],
) -> str | None:
    maps = data.get("maps")
    if not isinstance(maps, dict):  # e.g. a token of an older worker with the same secret
        return _MALFORMED
    exact = dict(path_mappings)
    src = data.get("src") or ""
    if src in exact:  # the labels mapping repeated: harmless when it names the labels file
        try:
            if policy.resolve_str(exact[src]) == data.get("labels"):
                del exact[src]
        except PathRejected:
            pass
    checked_exact = {str(k): str(v) for k, v in maps.get("exact", [])}
    checked_prefix = {str(k): str(v) for k, v in maps.get("prefix", [])}
    return mapping_difference("video path", checked_exact, exact) or mapping_difference(
        "prefix", checked_prefix, dict(prefix_mappings)
    )


def verify_check_token(
    secret: bytes,
    policy: MountPolicy,
    token: str,
    *,
    labels_path: str,
    now: float,
    max_age_s: float | None = None,
    path_mappings: Mapping[str, str] | None = None,
    prefix_mappings: Mapping[str, str] | None = None,
) -> str | None:
    """None if ``token`` is genuine, for ``labels_path`` (resolved), with the same
    mappings (when ``path_mappings`` or ``prefix_mappings`` is given: the
    submit's) and every file unchanged (re-resolved through the policy and
    re-stat'ed); else a human reason."""
    data = _decode(secret, token)
    if isinstance(data, str):
        return data
    try:
        if max_age_s is not None and now - data["iat"] > max_age_s:
            return "check token expired; run the path check again"
        if path_mappings is not None or prefix_mappings is not None:
            reason = _check_mappings(data, policy, path_mappings or {}, prefix_mappings or {})
            if reason is not None:
                return reason
        try:
            real = policy.resolve_str(labels_path)
        except PathRejected as exc:
            return f"labels path rejected: {exc}"
        if real != data["labels"]:
            return f"labels path {labels_path} differs from the checked {data['labels']}"
        cache: dict[str, str] = {}
        for path, size, mtime_ns, dev, inode in data["files"]:
            try:
                real = policy.resolve_str(path, cache=cache)
                st = os.stat(real)
            except PathRejected:
                return f"file {path} now resolves outside the allowed mounts"
            except OSError:
                return f"file {path} is missing since the check; run the path check again"
            if real != path:
                return f"file {path} is now a link to {real}; run the path check again"
            if (st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino) != (
                size,
                mtime_ns,
                dev,
                inode,
            ) or not stat.S_ISREG(st.st_mode):
                return f"file {path} changed since the check; run the path check again"
    except (KeyError, TypeError, ValueError):  # genuine but not a shape we know
        return _MALFORMED
    return None
