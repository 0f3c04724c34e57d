"""Config files for the worker and the client (TOML), and where they live.

Both files are optional; command-line flags override what they say. The
default locations are the usual per-user places (``platformdirs``):
``~/.config/sleap-rtc/worker.toml`` and ``~/.config/sleap-rtc/client.toml`` on
Linux. ``SLEAP_RTC_CONFIG_DIR`` moves the config folder (tests and scripts use
it to stay away from the user's own files); ``sleap-rtc login`` saves its tokens
there too (``tokens.json``). ``SLEAP_RTC_STATE_DIR`` moves the state folder
(``~/.local/state/sleap-rtc`` on Linux): the client's saved path rules
(``mappings.json``), the signaling server's keys and rooms (``signal/``) and the
worker's job store (``worker/``). A worker's run folders are not there: they go
to ``<first mount>/sleap-rtc-runs``.

Every validation problem raises a :class:`ConfigFileError`, whose message names
the file and the key: :class:`~sleap_rtc.config.client.ClientConfigError` for
``client.toml``, :class:`~sleap_rtc.config.worker.WorkerConfigError` for
``worker.toml``. (The training config, sleap-nn YAML, is another matter:
:class:`~sleap_rtc.client.training_config.TrainingConfigError`.)
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

APP_NAME = "sleap-rtc"
#: Environment variable that moves the per-user config folder.
CONFIG_DIR_ENV = "SLEAP_RTC_CONFIG_DIR"
#: Environment variable that moves the per-user state folder (saved path rules, the
#: signaling server's keys and rooms, the worker's job store; not run folders, not tokens).
STATE_DIR_ENV = "SLEAP_RTC_STATE_DIR"
#: Port of the embedded signaling server unless told otherwise.
DEFAULT_SIGNAL_PORT = 8765
DEFAULT_SIGNAL_URL = f"ws://127.0.0.1:{DEFAULT_SIGNAL_PORT}"
DEFAULT_ROOM = "default"


class ConfigFileError(ValueError):
    """A settings file (TOML) that cannot be used; the message names the file and the key.

    The base of :class:`~sleap_rtc.config.client.ClientConfigError` and
    :class:`~sleap_rtc.config.worker.WorkerConfigError`; catch it for either.
    """

    def __init__(self, source: Path | str | None, key: str, message: str) -> None:
        where = str(source) if source else "<flags>"
        text = f"{where}: {key}: {message}" if key else f"{where}: {message}"
        super().__init__(text)
        self.source = source
        self.key = key


def config_dir() -> Path:
    """The per-user config folder (``SLEAP_RTC_CONFIG_DIR`` wins)."""
    env = os.environ.get(CONFIG_DIR_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))


def state_dir() -> Path:
    """The per-user state folder (``SLEAP_RTC_STATE_DIR`` wins)."""
    env = os.environ.get(STATE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_state_dir(APP_NAME, appauthor=False))


def read_toml(path: Path, error: type[ConfigFileError] = ConfigFileError) -> dict[str, Any]:
    """Parse ``path`` as TOML; problems raise ``error`` (a :class:`ConfigFileError`)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(path, "", "file not found") from None
    except OSError as exc:
        raise error(path, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise error(path, "", "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(path, "", f"invalid TOML: {exc}") from None


class Table:
    """Typed reads from one TOML table, each error naming the key and the file.

    Keys never read are reported by :meth:`finish` (typos are errors, not
    silently ignored settings).
    """

    def __init__(
        self,
        data: Mapping[str, Any],
        source: Path | None,
        prefix: str = "",
        *,
        error: type[ConfigFileError] = ConfigFileError,
    ) -> None:
        self._data = data
        self._source = source
        self._prefix = prefix
        self._error = error
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self._prefix}{name}"

    def error(self, name: str, message: str) -> ConfigFileError:
        return self._error(self._source, self.key(name), message)

    def _get(self, name: str) -> Any:
        self._seen.add(name)
        return self._data.get(name)

    def string(self, name: str, default: str | None = None) -> str | None:
        value = self._get(name)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(name, f"must be a string (got {value!r})")
        return value

    def nonempty(self, name: str, default: str) -> str:
        value = self.string(name, default)
        if not value or not value.strip():
            raise self.error(name, "must not be empty")
        return value

    def integer(self, name: str, default: int, *, minimum: int | None = None) -> int:
        value = self._get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"must be an integer (got {value!r})")
        if minimum is not None and value < minimum:
            raise self.error(name, f"must be at least {minimum} (got {value})")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self._get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(name, f"must be true or false (got {value!r})")
        return value

    def path(self, name: str, default: Path | None = None) -> Path | None:
        """A file path; ``~`` is expanded, relative paths are taken from the file's folder."""
        value = self.string(name)
        if value is None:
            return default
        if not value.strip():
            raise self.error(name, "must not be empty")
        return resolve_path(value, self._source)

    def strings(self, name: str, default: list[str] | None = None) -> list[str] | None:
        value = self._get(name)
        if value is None:
            return default
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(name, f"must be a list of strings (got {value!r})")
        return list(value)

    def table(self, name: str) -> Table:
        value = self._get(name)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.error(name, f"must be a table (got {value!r})")
        return Table(value, self._source, prefix=f"{self.key(name)}.", error=self._error)

    def tables(self, name: str) -> list[Table]:
        """An array of tables (``[[name]]``)."""
        value = self._get(name)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.error(name, "must be an array of tables ([[" + self.key(name) + "]])")
        return [
            Table(v, self._source, prefix=f"{self.key(name)}[{i}].", error=self._error)
            for i, v in enumerate(value)
        ]

    def raw(self, name: str) -> Any:
        return self._get(name)

    def finish(self) -> None:
        """Raise on the first key that was never read."""
        for name in self._data:
            if name not in self._seen:
                raise self.error(name, "unknown key (check the spelling)")


def resolve_path(value: str, source: Path | None) -> Path:
    """Expand ``~``; a relative path is relative to the config file's folder."""
    path = Path(value).expanduser()
    if not path.is_absolute() and source is not None:
        path = source.parent / path
    return path
