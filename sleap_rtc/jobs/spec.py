"""TrainJobSpec: what to train, as the seed names it (a thin door to the protobuf).

The dataclass mirrors ``sleap_rtc_proto.v1.TrainJobSpec``. The training config
travels inline as ``config_content`` (a YAML string); ``config_paths`` (worker
paths of YAML files) is the legacy way and is optional when content is given.

>>> spec = TrainJobSpec(config_content="trainer_config:\\n  max_epochs: 5\\n",
...                     labels_path="/mnt/lab/fly.slp")
>>> TrainJobSpec.from_json(spec.to_json()) == spec
True
>>> spec.validate()
[]
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Optional

from sleap_rtc_proto.rules import Violation, validate_train_job_spec
from sleap_rtc_proto.v1 import job_pb2, spec_pb2

_OPTIONAL_STR = ("config_content", "val_labels_path", "run_name", "resume_ckpt_path")
_OPTIONAL_INT = ("max_epochs", "batch_size")


@dataclass
class TrainJobSpec:
    """One training job.

    Attributes:
        config_content: the training config as a YAML string (``OmegaConf.to_yaml``),
            sent over the datachannel. When set, ``config_paths`` is optional and
            ignored by the worker.
        config_paths: worker paths of YAML config files (legacy).
        labels_path: worker path of the training labels (``.slp``).
        path_mappings: original video path (client view) -> worker video path.
        val_labels_path: worker path of separate validation labels.
        max_epochs / batch_size / learning_rate / run_name: overrides of the config.
        resume_ckpt_path: worker path of a checkpoint to resume from.
        prefix_mappings: original path prefix -> worker path prefix.

    Raises:
        ValueError: neither ``config_paths`` nor ``config_content`` is given.
    """

    config_content: Optional[str] = None  # noqa: UP045 - the seed's spelling
    config_paths: list[str] = field(default_factory=list)
    labels_path: str = ""
    path_mappings: dict[str, str] = field(default_factory=dict)
    val_labels_path: Optional[str] = None  # noqa: UP045
    max_epochs: Optional[int] = None  # noqa: UP045
    batch_size: Optional[int] = None  # noqa: UP045
    learning_rate: Optional[float] = None  # noqa: UP045
    run_name: Optional[str] = None  # noqa: UP045
    resume_ckpt_path: Optional[str] = None  # noqa: UP045
    prefix_mappings: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.config_content is None and not self.config_paths:
            raise ValueError("TrainJobSpec needs config_content or config_paths")
        self.config_paths = list(self.config_paths)
        self.path_mappings = dict(self.path_mappings)
        self.prefix_mappings = dict(self.prefix_mappings)

    # ------------------------------------------------------------------ JSON

    def to_json(self) -> str:
        """The spec as a JSON object (unset optional fields omitted).

        >>> TrainJobSpec(config_paths=["/c.yaml"], labels_path="/l.slp").to_json()
        '{"config_paths": ["/c.yaml"], "labels_path": "/l.slp"}'
        """
        data = {k: v for k, v in asdict(self).items() if v is not None and v != {}}
        if not data.get("config_paths"):
            data.pop("config_paths", None)
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str | bytes) -> TrainJobSpec:
        """Parse :meth:`to_json` output, or a legacy spec.

        Unknown keys are ignored; the legacy ``"type": "train"`` is accepted.

        >>> legacy = '{"type": "train", "config_paths": ["/c.yaml"], "x": 1}'
        >>> TrainJobSpec.from_json(legacy).config_paths
        ['/c.yaml']

        Raises:
            ValueError: not a JSON object, another job type, a field of the
                wrong type, or no config at all. The message names the field.
        """
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"TrainJobSpec JSON is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError("TrainJobSpec JSON must be an object")
        kind = data.get("type", "train")
        if kind != "train":
            raise ValueError(f"not a training job spec (type {kind!r})")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        return cls(**_checked(values))

    # ------------------------------------------------------------------ protobuf

    def to_proto(self) -> spec_pb2.TrainJobSpec:
        """The wire message."""
        msg = spec_pb2.TrainJobSpec(
            config_paths=self.config_paths,
            labels_path=self.labels_path or "",
            path_mappings=self.path_mappings,
            prefix_mappings=self.prefix_mappings,
        )
        if self.config_content is not None:
            msg.config_content = self.config_content
        if self.val_labels_path is not None:
            msg.val_labels_path = self.val_labels_path
        if self.max_epochs is not None:
            msg.max_epochs = self.max_epochs
        if self.batch_size is not None:
            msg.batch_size = self.batch_size
        if self.learning_rate is not None:
            msg.learning_rate = self.learning_rate
        if self.run_name is not None:
            msg.run_name = self.run_name
        if self.resume_ckpt_path is not None:
            msg.resume_ckpt_path = self.resume_ckpt_path
        return msg

    @classmethod
    def from_proto(cls, msg: spec_pb2.TrainJobSpec) -> TrainJobSpec:
        """From the wire message (unset optional fields stay None)."""

        def opt(name: str) -> Any:
            return getattr(msg, name) if msg.HasField(name) else None  # type: ignore[arg-type]

        return cls(
            config_content=opt("config_content"),
            config_paths=list(msg.config_paths),
            labels_path=msg.labels_path,
            path_mappings=dict(msg.path_mappings),
            val_labels_path=opt("val_labels_path"),
            max_epochs=opt("max_epochs"),
            batch_size=opt("batch_size"),
            learning_rate=opt("learning_rate"),
            run_name=opt("run_name"),
            resume_ckpt_path=opt("resume_ckpt_path"),
            prefix_mappings=dict(msg.prefix_mappings),
        )

    # ------------------------------------------------------------------ rules

    def validate(self) -> list[Violation]:
        """Every rule violation (``sleap_rtc_proto.rules``); empty when valid.

        >>> [v.rule_id for v in TrainJobSpec(config_content="a: 1", labels_path="x.h5").validate()]
        ['spec.labels_path.slp']
        """
        out: list[Violation] = []
        spec = self
        for name in _OPTIONAL_INT:
            value = getattr(self, name)
            if value is not None and not 0 <= value < 2**32:
                out.append(
                    Violation(
                        f"spec.{name}",
                        f"spec.{name}.range",
                        job_pb2.VIOLATION_CODE_OUT_OF_RANGE,
                        f"{name} is {value}; it must be a positive whole number",
                    )
                )
                spec = (
                    replace(spec, max_epochs=None)
                    if name == "max_epochs"
                    else replace(spec, batch_size=None)
                )
        msg = spec.to_proto()
        return out + validate_train_job_spec(msg)


def _checked(values: dict[str, Any]) -> dict[str, Any]:
    """Type-check JSON values so a bad field is named, not crashed on later."""
    for name in _OPTIONAL_STR:
        if values.get(name) is not None and not isinstance(values[name], str):
            raise ValueError(f"TrainJobSpec.{name} must be a string")
    if "labels_path" in values and not isinstance(values["labels_path"], str):
        raise ValueError("TrainJobSpec.labels_path must be a string")
    if values.get("labels_path") is None:
        values.pop("labels_path", None)
    for name in _OPTIONAL_INT:
        value = values.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"TrainJobSpec.{name} must be an integer")
    lr = values.get("learning_rate")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, int | float)):
        raise ValueError("TrainJobSpec.learning_rate must be a number")
    if lr is not None and not math.isfinite(lr):
        raise ValueError("TrainJobSpec.learning_rate must be finite")
    paths = values.get("config_paths")
    if paths is None:
        values.pop("config_paths", None)
    elif not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise ValueError("TrainJobSpec.config_paths must be a list of strings")
    for name in ("path_mappings", "prefix_mappings"):
        mapping = values.get(name)
        if mapping is None:
            values.pop(name, None)
        elif not isinstance(mapping, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
        ):
            raise ValueError(f"TrainJobSpec.{name} must map strings to strings")
    return values
