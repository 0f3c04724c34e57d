"""The seed's "worker job handler" door: a JOB_SUBMIT with a spec -> the worker's answer.

A thin wrapper over :class:`sleap_rtc.worker.jobs.JobRegistry`; the real work
(private temp config, safe YAML, mounts, token, idempotency) happens there.
It accepts the spec as a protobuf ``TrainJobSpec``, a dict, or the legacy
JSON text (``{"type": "train", "config_content": ..., ...}``; unknown keys
are ignored, never fatal).

>>> import tempfile
>>> from pathlib import Path
>>> from sleap_rtc.worker.jobs import IntakeConfig, JobRegistry
>>> from sleap_rtc.worker.mounts import MountPolicy
>>> root = Path(tempfile.mkdtemp())
>>> (root / "mnt").mkdir()
>>> registry = JobRegistry(IntakeConfig(policy=MountPolicy([root / "mnt"]),
...     state_dir=root / "state", runs_dir=root / "mnt" / "runs", require_check_token=False))
>>> answer = handle_job_submit(registry, "job-1",
...     '{"type": "train", "config_content": "model_config: {}", "labels_path": "/nope.slp"}')
>>> type(answer).__name__, answer.violations[0].rule_id
('JobRejected', 'worker.path.mounts')
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format

from sleap_rtc.worker.jobs import JobRegistry, SubmitAnswer
from sleap_rtc_proto.v1 import job_pb2, spec_pb2


def spec_from_json(spec: str | bytes | Mapping[str, Any]) -> spec_pb2.TrainJobSpec:
    """A TrainJobSpec from the legacy JSON (text or dict); unknown keys are ignored.

    Raises:
        ValueError: not JSON, not an object, or a known field of the wrong type.
    """
    data = json.loads(spec) if isinstance(spec, str | bytes) else dict(spec)
    if not isinstance(data, dict):
        raise ValueError("a job spec must be a JSON object")
    data.pop("type", None)
    try:
        return json_format.ParseDict(data, spec_pb2.TrainJobSpec(), ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise ValueError(f"invalid job spec: {exc}") from None


def handle_job_submit(
    registry: JobRegistry,
    job_id: str,
    spec: spec_pb2.TrainJobSpec | str | bytes | Mapping[str, Any],
    *,
    check_token: str = "",
    owner: str = "",
) -> SubmitAnswer:
    """Validate and accept (or reject) one job; see :meth:`JobRegistry.submit`.

    A spec that is not even JSON is rejected with a ``spec`` violation. The
    caller starts the run of a newly accepted job (``WorkerService`` does).
    """
    if not isinstance(spec, spec_pb2.TrainJobSpec):
        try:
            spec = spec_from_json(spec)
        except ValueError as exc:
            return job_pb2.JobRejected(
                job_id=job_id,
                violations=[
                    job_pb2.FieldViolation(
                        field="spec",
                        rule_id="worker.spec.json",
                        code=job_pb2.VIOLATION_CODE_INVALID,
                        message=str(exc),
                    )
                ],
                message=f"job {job_id!r} rejected: {exc}",
            )
    submit = job_pb2.JobSubmit(job_id=job_id, spec=spec, check_token=check_token)
    return registry.submit(submit, owner=owner)
