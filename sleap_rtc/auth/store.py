"""Where a user's token lives: the per-user config dir (0600), or a headless source.

Lookup order of :func:`resolve_token` (first hit wins):

1. an explicit token file (``--token-file`` on the command line);
2. ``SLEAP_RTC_TOKEN`` (the token itself; for CI and scripts);
3. ``SLEAP_RTC_TOKEN_FILE`` (a path to a file holding the token);
4. the token saved by ``sleap-rtc login`` for the server (``tokens.json`` in the
   per-user config dir, e.g. ``~/.config/sleap-rtc/tokens.json``, mode 0600).

A token file holds the bare token (whitespace ignored) or the JSON record
``login`` writes. Files readable by others are used, with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import platformdirs

from sleap_rtc.auth.tokens import unverified_expiry, write_private

log = logging.getLogger(__name__)

APP_NAME = "sleap-rtc"
TOKEN_ENV = "SLEAP_RTC_TOKEN"
TOKEN_FILE_ENV = "SLEAP_RTC_TOKEN_FILE"
STORE_FILE = "tokens.json"


def config_dir() -> Path:
    """The per-user config directory of sleap-rtc."""
    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))


@dataclass(frozen=True)
class StoredToken:
    """A token saved by ``sleap-rtc login``."""

    server: str
    room: str
    token: str
    subject: str = ""
    expires_at: float | None = None


class TokenStore:
    """Tokens saved per signaling server, in one JSON file readable by the owner only."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or config_dir() / STORE_FILE

    def _read(self) -> dict[str, dict[str, object]]:
        if not self.path.exists():
            return {}
        _warn_if_shared(self.path)
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable token store %s: %s", self.path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def save(self, token: str, *, server: str, room: str, subject: str = "") -> StoredToken:
        """Save ``token`` for ``server`` (replacing an older one), mode 0600."""
        record = StoredToken(
            server=normalize_server(server),
            room=room,
            token=token,
            subject=subject,
            expires_at=unverified_expiry(token),
        )
        data = self._read()
        data[record.server] = asdict(record)
        write_private(self.path, json.dumps(data, indent=2).encode())
        return record

    def load(self, server: str | None = None) -> StoredToken | None:
        """The token saved for ``server``; without a server, the only/most recent one."""
        data = self._read()
        if server is not None:
            entry = data.get(normalize_server(server))
        elif data:
            entry = list(data.values())[-1]
        else:
            entry = None
        if not isinstance(entry, Mapping) or not isinstance(entry.get("token"), str):
            return None
        exp = entry.get("expires_at")
        return StoredToken(
            server=str(entry.get("server", "")),
            room=str(entry.get("room", "")),
            token=str(entry["token"]),
            subject=str(entry.get("subject", "")),
            expires_at=float(exp) if isinstance(exp, int | float) else None,
        )

    def remove(self, server: str) -> bool:
        """Forget the token of ``server``; True if there was one."""
        data = self._read()
        if data.pop(normalize_server(server), None) is None:
            return False
        write_private(self.path, json.dumps(data, indent=2).encode())
        return True


def normalize_server(url: str) -> str:
    """One key per server whatever scheme/trailing slash the user typed."""
    url = url.strip().rstrip("/")
    for old, new in (("http://", "ws://"), ("https://", "wss://")):
        if url.startswith(old):
            url = new + url[len(old) :]
    return url


def read_token_file(path: Path) -> str:
    """The token in ``path``: a bare token, or a JSON record with a ``token`` field."""
    _warn_if_shared(path)
    text = path.read_text().strip()
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            raise ValueError(f"{path} holds neither a token nor a JSON token record") from None
        token = obj.get("token") if isinstance(obj, dict) else None
        if not isinstance(token, str):
            raise ValueError(f"{path} has no 'token' field")
        return token.strip()
    if not text:
        raise ValueError(f"{path} is empty")
    return text


def write_token_file(path: Path, token: str) -> None:
    """Write a bare token to ``path`` with mode 0600 (for headless machines)."""
    write_private(path, (token.strip() + "\n").encode())


def resolve_token(
    *,
    token_file: Path | None = None,
    server: str | None = None,
    env: Mapping[str, str] | None = None,
    store: TokenStore | None = None,
) -> str | None:
    """The token to use, from the first source that has one (see the module docstring)."""
    environ = os.environ if env is None else env
    if token_file is not None:
        return read_token_file(Path(token_file))
    direct = environ.get(TOKEN_ENV, "").strip()
    if direct:
        return direct
    file_env = environ.get(TOKEN_FILE_ENV, "").strip()
    if file_env:
        return read_token_file(Path(file_env).expanduser())
    record = (store or TokenStore()).load(server)
    return record.token if record else None


def _warn_if_shared(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s is readable by other users; run: chmod 600 %s", path, path)
