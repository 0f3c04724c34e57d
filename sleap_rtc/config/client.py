"""The client's settings: ``client.toml`` plus command-line overrides.

Example::

    # ~/.config/sleap-rtc/client.toml
    server = "ws://lab-signal.example.org:8765"   # signaling server
    room = "lab"                                 # room to work in
    worker = "gpu-box-1"                         # default worker (name or peer id)
    mappings_file = "~/.local/state/sleap-rtc/mappings.json"  # saved path mappings
    token_file = "~/lab-token"   # headless: read the token from this file (else what `login` saved)
    connect_timeout_s = 15
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sleap_rtc.config import (
    DEFAULT_ROOM,
    DEFAULT_SIGNAL_URL,
    ConfigFileError,
    Table,
    config_dir,
    read_toml,
    state_dir,
)

FILE_NAME = "client.toml"


class ClientConfigError(ConfigFileError):
    """A ``client.toml`` (or client flag) that cannot be used; the message names file and key."""


@dataclass(frozen=True)
class ClientSettings:
    """Where the client connects and where it keeps its state."""

    server: str = DEFAULT_SIGNAL_URL
    room: str = DEFAULT_ROOM
    worker: str | None = None
    mappings_file: Path = field(default_factory=lambda: state_dir() / "mappings.json")
    token_file: Path | None = None
    connect_timeout_s: float = 15.0
    loopback: bool = False
    #: The file these settings were read from (None: defaults and flags only).
    source: Path | None = None


def default_path() -> Path:
    return config_dir() / FILE_NAME


def load(path: Path | None = None) -> ClientSettings:
    """Read ``path`` (which must exist) or the default file (when it exists)."""
    if path is None:
        candidate = default_path()
        if not candidate.exists():
            return ClientSettings()
        path = candidate
    return parse(read_toml(path, ClientConfigError), path)


def parse(data: dict[str, Any], source: Path | None) -> ClientSettings:
    top = Table(data, source, error=ClientConfigError)
    defaults = ClientSettings()
    server = top.nonempty("server", defaults.server)
    if not server.startswith(("ws://", "wss://")):
        raise top.error("server", f"must start with ws:// or wss:// (got {server!r})")
    timeout = top.raw("connect_timeout_s")
    if timeout is None:
        timeout_s = defaults.connect_timeout_s
    elif isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise top.error("connect_timeout_s", f"must be a positive number (got {timeout!r})")
    else:
        timeout_s = float(timeout)
    settings = ClientSettings(
        server=server,
        room=top.nonempty("room", defaults.room),
        worker=top.string("worker"),
        mappings_file=top.path("mappings_file") or defaults.mappings_file,
        token_file=top.path("token_file"),
        connect_timeout_s=timeout_s,
        loopback=top.boolean("loopback", defaults.loopback),
        source=source,
    )
    top.finish()
    return settings


def with_overrides(settings: ClientSettings, **flags: Any) -> ClientSettings:
    """Apply command-line flags; a flag left at None keeps the file's value."""
    changes = {k: v for k, v in flags.items() if v is not None}
    server = changes.get("server")
    if server is not None and not str(server).startswith(("ws://", "wss://")):
        raise ClientConfigError(
            None, "--server", f"must start with ws:// or wss:// (got {server!r})"
        )
    unknown = set(changes) - set(ClientSettings.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown client settings {sorted(unknown)}")
    return replace(settings, **changes)
