"""Step 1 and the submit: the spec to check, the spec to submit, a fresh job id.

The checked spec carries the caller's mappings; the submitted one carries the
worker's labels path and exactly the mappings of the last passing check (minus
the labels file's own), which the check token is bound to.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from sleap_rtc.client.results import Checked, FlowEnded, error_result
from sleap_rtc.client.training_config import (
    ConfigSource,
    TrainingConfigError,
    check_config_content,
    config_to_yaml,
)
from sleap_rtc.jobs.spec import TrainJobSpec
from sleap_rtc_proto.v1 import spec_pb2

#: TrainJobSpec fields a caller may set besides the config, labels and mappings.
OVERRIDES = (
    "val_labels_path",
    "max_epochs",
    "batch_size",
    "learning_rate",
    "run_name",
    "resume_ckpt_path",
)


def new_job_id() -> str:
    """A fresh job id that satisfies the ``job_id.format`` rule (``job-<uuid4 hex>``)."""
    return f"job-{uuid.uuid4().hex}"


def draft_spec(
    labels_path: str | None,
    config: ConfigSource | None,
    config_content: str | None,
    spec: TrainJobSpec | None,
    path_mappings: Mapping[str, str] | None,
    prefix_mappings: Mapping[str, str] | None,
    overrides: Mapping[str, Any],
) -> TrainJobSpec:
    """Step 1: the spec to check and submit, with the config as a YAML string.

    Raises:
        FlowEnded: the config or a field is unusable (stage ``config``).
    """
    given = [x for x in (config, config_content) if x is not None]
    if len(given) > 1:
        raise FlowEnded(
            error_result("config", "Give the training config once (config or config_content).")
        )
    try:
        content: str | None = None
        if config is not None:
            content = config_to_yaml(config)
        elif config_content is not None:
            content = check_config_content(config_content)
        elif spec is not None and spec.config_content is not None:
            content = check_config_content(spec.config_content)
        if content is None and spec is None:
            raise TrainingConfigError("no training config was given")
        base = spec or TrainJobSpec(config_content=content, labels_path=labels_path or "")
        fields = dict(overrides)
        unknown = set(fields) - set(OVERRIDES)
        if unknown:
            raise TypeError(f"unknown TrainJobSpec override(s): {', '.join(sorted(unknown))}")
        draft = TrainJobSpec(
            config_content=content if content is not None else base.config_content,
            config_paths=list(base.config_paths),
            labels_path=labels_path or base.labels_path,
            path_mappings={**base.path_mappings, **(path_mappings or {})},
            prefix_mappings={**base.prefix_mappings, **(prefix_mappings or {})},
            **{name: fields.get(name, getattr(base, name)) for name in OVERRIDES},
        )
    except TrainingConfigError as exc:
        raise FlowEnded(error_result("config", f"Invalid training config: {exc}")) from None
    except ValueError as exc:
        raise FlowEnded(error_result("config", f"Invalid job: {exc}")) from None
    problems = draft.validate()
    if problems:
        lines = "\n".join(f"- {v.field}: {v.message}" for v in problems)
        raise FlowEnded(error_result("config", f"Invalid job:\n{lines}"))
    return draft


def final_spec(draft: TrainJobSpec, checked: Checked) -> spec_pb2.TrainJobSpec:
    """The submitted spec: the worker's labels path, and the mappings of the passing
    check exactly (the labels file's own mapping left out: it became ``labels_path``)."""
    final = TrainJobSpec(
        config_content=draft.config_content,
        config_paths=draft.config_paths,
        labels_path=checked.worker_labels_path(),
        path_mappings=checked.video_mappings(),
        prefix_mappings=dict(checked.prefix_mappings),
        **{name: getattr(draft, name) for name in OVERRIDES},
    )
    return final.to_proto()
