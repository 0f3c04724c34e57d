"""Step 1 of the flow: the training config (sleap-nn YAML) as a YAML string, built in memory.

>>> config_to_yaml({"trainer_config": {"max_epochs": 5}})
'trainer_config:\\n  max_epochs: 5\\n'
>>> try:
...     check_config_content("- a list")
... except TrainingConfigError as exc:
...     print(exc)
the training config must be a mapping of sections (e.g. trainer_config: ...), not a list
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

#: What :func:`config_to_yaml` accepts: a mapping, an OmegaConf DictConfig, or a YAML file path.
ConfigSource = Mapping[str, Any] | DictConfig | str | os.PathLike[str]


class TrainingConfigError(ValueError):
    """The training config is unusable; the message names why (and the line)."""


def config_to_yaml(source: ConfigSource) -> str:
    """Serialize ``source`` to a YAML string (``OmegaConf.to_yaml``), nothing on disk.

    A ``str`` or path-like is a YAML *file* to read; pass YAML text to
    :func:`check_config_content` instead.

    Raises:
        TrainingConfigError: not a mapping, unreadable file, invalid YAML.
    """
    if isinstance(source, DictConfig):
        cfg = source
    elif isinstance(source, ListConfig):
        raise TrainingConfigError(_not_mapping("a list"))
    elif isinstance(source, str | os.PathLike):
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TrainingConfigError(
                f"cannot read the training config {str(path)!r}: {exc}"
            ) from None
        check_config_content(text)
        cfg = _create(yaml.safe_load(text))
    elif isinstance(source, Mapping):
        cfg = _create(source)
    else:
        raise TrainingConfigError(_not_mapping(f"a {type(source).__name__}"))
    try:
        text = OmegaConf.to_yaml(cfg)
    except OmegaConfBaseException as exc:
        raise TrainingConfigError(f"the training config cannot be serialized: {exc}") from None
    return check_config_content(text)


def check_config_content(text: str) -> str:
    """Check that ``text`` is YAML holding a non-empty mapping; return it unchanged.

    Raises:
        TrainingConfigError: invalid YAML (the message names the line), or not a mapping.
    """
    if not text.strip():
        raise TrainingConfigError("the training config is empty")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise TrainingConfigError(
            f"the training config is not valid YAML{where}: {problem}"
        ) from None
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"a {type(data).__name__}"
        raise TrainingConfigError(_not_mapping(kind))
    return text


def _create(data: Any) -> DictConfig:
    if not isinstance(data, Mapping):
        kind = "a list" if isinstance(data, list) else f"a {type(data).__name__}"
        raise TrainingConfigError(_not_mapping(kind))
    try:
        cfg = OmegaConf.create(dict(data))
    except (OmegaConfBaseException, ValueError, TypeError) as exc:
        raise TrainingConfigError(
            f"the training config is not a valid OmegaConf mapping: {exc}"
        ) from None
    assert isinstance(cfg, DictConfig)
    return cfg


def _not_mapping(kind: str) -> str:
    return (
        "the training config must be a mapping of sections (e.g. trainer_config: ...), "
        f"not {kind}"
    )
