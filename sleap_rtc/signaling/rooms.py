"""Rooms: who may join them (configuration) and who is in them (registry).

A room is the unit of isolation. The operator configures each room with a
worker key (the shared secret workers register with) and a login secret (the
passphrase users type on the login page to get a token for the room). A peer
only ever sees and reaches peers of its own room.

Room file (TOML)::

    [rooms.lab]
    worker_key = "..."      # workers: sleap-rtc worker --worker-key ...
    login_secret = "..."    # users: typed on the login page
"""

from __future__ import annotations

import hmac
import secrets
import time
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sleap_rtc.auth.tokens import write_private
from sleap_rtc.signaling.protocol import ID_PATTERN


@dataclass(frozen=True)
class RoomConfig:
    """Secrets of one room. ``login_secret`` None: no browser login for this room."""

    worker_key: str
    login_secret: str | None = None

    def __post_init__(self) -> None:
        if len(self.worker_key) < 8:
            raise ValueError("a room's worker_key must be at least 8 characters")

    def check_worker_key(self, key: str) -> bool:
        return hmac.compare_digest(self.worker_key.encode(), key.encode())

    def check_login_secret(self, secret: str) -> bool:
        if not self.login_secret:
            return False
        return hmac.compare_digest(self.login_secret.encode(), secret.encode())

    @classmethod
    def generate(cls) -> RoomConfig:
        """A room with fresh random secrets (the demo's default)."""
        return cls(worker_key=secrets.token_urlsafe(24), login_secret=secrets.token_urlsafe(12))


def load_rooms(path: Path) -> dict[str, RoomConfig]:
    """Read a room file (TOML, see the module docstring)."""
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    return rooms_from_mapping(data.get("rooms", {}))


def rooms_from_mapping(data: Mapping[str, Any]) -> dict[str, RoomConfig]:
    rooms: dict[str, RoomConfig] = {}
    for name, entry in data.items():
        if not ID_PATTERN.match(name):
            raise ValueError(f"room name {name!r} is not a valid id")
        if not isinstance(entry, Mapping) or not isinstance(entry.get("worker_key"), str):
            raise ValueError(f"room {name!r} needs a worker_key string")
        login = entry.get("login_secret")
        rooms[name] = RoomConfig(
            worker_key=entry["worker_key"], login_secret=str(login) if login else None
        )
    return rooms


def save_rooms(path: Path, rooms: Mapping[str, RoomConfig]) -> None:
    """Write a room file readable by the owner only."""
    lines = []
    for name, room in rooms.items():
        lines.append(f"[rooms.{_toml_key(name)}]")
        lines.append(f"worker_key = {_toml_str(room.worker_key)}")
        if room.login_secret:
            lines.append(f"login_secret = {_toml_str(room.login_secret)}")
        lines.append("")
    write_private(path, "\n".join(lines).encode())


def _toml_key(name: str) -> str:
    return name if name.replace("-", "").replace("_", "").isalnum() else _toml_str(name)


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class PeerEntry:
    """A registered peer (one live websocket connection)."""

    peer_id: str
    room_id: str
    role: str
    metadata: dict[str, Any]
    connected_at: float = field(default_factory=time.time)
    subject: str | None = None

    def public(self) -> dict[str, Any]:
        """What other peers of the room see in ``peer_list``."""
        return {
            "peer_id": self.peer_id,
            "role": self.role,
            "metadata": self.metadata,
            "connected_at": self.connected_at,
        }


class Registry:
    """Registered peers by id; every lookup is scoped to a room."""

    def __init__(self) -> None:
        self._peers: dict[str, PeerEntry] = {}

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._peers

    def add(self, entry: PeerEntry) -> None:
        if entry.peer_id in self._peers:
            raise KeyError(entry.peer_id)
        self._peers[entry.peer_id] = entry

    def remove(self, peer_id: str) -> PeerEntry | None:
        return self._peers.pop(peer_id, None)

    def get_in_room(self, peer_id: str, room_id: str) -> PeerEntry | None:
        """The peer if it exists *and* is in ``room_id``; other rooms look like absence."""
        entry = self._peers.get(peer_id)
        if entry is None or entry.room_id != room_id:
            return None
        return entry

    def in_room(
        self, room_id: str, *, role: str | None = None, tags: list[str] | None = None
    ) -> Iterator[PeerEntry]:
        for entry in self._peers.values():
            if entry.room_id != room_id:
                continue
            if role is not None and entry.role != role:
                continue
            if tags and not set(tags) <= set(entry.metadata.get("tags", [])):
                continue
            yield entry
