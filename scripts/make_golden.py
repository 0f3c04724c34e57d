"""Write the golden vectors: one canonical Envelope per body type, as binary + JSON.

Usage: python scripts/make_golden.py [--force]

Vectors live in tests/golden/v<major>.<minor>/<body>[--<variant>].{binpb,json};
tests assert that every committed binary decodes to the same content as its
JSON, forever. Existing vectors are never overwritten (a changed vector would
hide a compatibility break) unless --force is given; new vectors are added.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from google.protobuf import json_format

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sleap_rtc_proto.bodies import BODIES  # noqa: E402
from sleap_rtc_proto.codec import Envelope, make_envelope  # noqa: E402
from sleap_rtc_proto.v1 import (  # noqa: E402
    envelope_pb2,
    error_pb2,
    handshake_pb2,
    job_pb2,
    paths_pb2,
    progress_pb2,
    spec_pb2,
    version_pb2,
)
from sleap_rtc_proto.versions import CURRENT  # noqa: E402

GOLDEN = ROOT / "tests" / "golden" / f"v{CURRENT.major}.{CURRENT.minor}"
SENT = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z

CONFIG_YAML = """\
data_config:
  train_labels_path:
  - /mnt/lab/projects/mice/labels.v003.slp
  validation_fraction: 0.1
  preprocessing:
    scale: 1.0
model_config:
  backbone_config:
    unet:
      filters: 32
      max_stride: 16
  head_configs:
    single_instance:
      confmaps:
        sigma: 2.5
trainer_config:
  max_epochs: 200
  run_name: mice_single
"""


def to_json(envelope: Envelope) -> str:
    """Canonical JSON: proto field names, sorted keys, enum names, ASCII."""
    return (
        json_format.MessageToJson(
            envelope, preserving_proto_field_name=True, sort_keys=True, indent=2, ensure_ascii=True
        )
        + "\n"
    )


def _spec(**overrides: object) -> spec_pb2.TrainJobSpec:
    spec = spec_pb2.TrainJobSpec(
        config_content=CONFIG_YAML,
        labels_path="/mnt/lab/projects/mice/labels.v003.slp",
        path_mappings={
            "C:\\Users\\ana\\videos\\day1.mp4": "/mnt/lab/videos/day1.mp4",
            "/Users/ana/videos/day2.mp4": "/mnt/lab/videos/day2.mp4",
        },
        prefix_mappings={"D:\\data": "/mnt/lab/data"},
        val_labels_path="/mnt/lab/projects/mice/val.slp",
        max_epochs=50,
        batch_size=4,
        learning_rate=0.0001,
        run_name="mice_single_v2",
        resume_ckpt_path="/mnt/lab/runs/mice_single/best.ckpt",
    )
    for key, value in overrides.items():
        if value is None:
            spec.ClearField(key)  # type: ignore[arg-type]
        else:
            setattr(spec, key, value)
    return spec


def _bodies() -> dict[str, tuple[object, int]]:
    """name -> (body, correlation_id)."""
    limits = handshake_pb2.Limits(
        max_frame_bytes=262_144,
        max_message_bytes=16_777_216,
        max_config_bytes=1_048_576,
        max_concurrent_jobs=1,
    )
    paths_only = _spec(config_content=None)
    paths_only.config_paths.append("/mnt/lab/configs/single_instance.yaml")
    progress = progress_pb2.JobProgress(
        job_id="job-0001", sequence=7, event=progress_pb2.PROGRESS_EVENT_EPOCH_END, epoch=3
    )
    progress.metrics["train/loss"] = 0.0123
    progress.metrics["val/loss"] = 0.0151
    violation = job_pb2.FieldViolation(
        field="spec.labels_path",
        rule_id="spec.labels_path.slp",
        code=job_pb2.VIOLATION_CODE_INVALID,
        message="labels_path '/mnt/lab/labels.h5' is not a SLEAP labels file (.slp)",
        path="/mnt/lab/labels.h5",
        line=0,
    )
    bodies: dict[str, tuple[object, int]] = {
        "hello": (
            handshake_pb2.Hello(
                min_version=version_pb2.ProtocolVersion(major=1, minor=0),
                max_version=version_pb2.ProtocolVersion(major=1, minor=0),
                software="sleap-rtc 0.1.0",
                components={"sleap": "1.6.6", "python": "3.11.9"},
                features=["fragments", "attach"],
                limits=limits,
                token="eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbmEifQ.c2lnbmF0dXJl",
                client_name="ana@labo-Müller",
            ),
            0,
        ),
        "hello_ack": (
            handshake_pb2.HelloAck(
                chosen_version=version_pb2.ProtocolVersion(major=1, minor=0),
                min_version=version_pb2.ProtocolVersion(major=1, minor=0),
                max_version=version_pb2.ProtocolVersion(major=1, minor=0),
                software="sleap-rtc 0.1.0",
                components={"sleap-nn": "0.3.5"},
                features=["fragments"],
                limits=limits,
                worker_id="worker-gpu1",
                session_id="s-5f2c",
                subject="ana",
                mounts=["/mnt/lab"],
            ),
            1,
        ),
        "error": (
            error_pb2.Error(
                code=error_pb2.ERROR_CODE_TOO_LARGE,
                message="message of 300000 bytes exceeds the limit of 262144 bytes",
                details={"size_bytes": "300000", "limit_bytes": "262144"},
                retryable=False,
            ),
            4,
        ),
        "path_check_request": (
            paths_pb2.PathCheckRequest(
                labels_path="/mnt/lab/projects/mice/labels.v003.slp",
                path_mappings={"C:\\Users\\ana\\videos\\day1.mp4": "/mnt/lab/videos/day1.mp4"},
                prefix_mappings={"D:\\data": "/mnt/lab/data"},
                max_suggestions=5,
            ),
            0,
        ),
        "path_check_result": (
            paths_pb2.PathCheckResult(
                labels=paths_pb2.PathEntry(
                    original_path="/mnt/lab/projects/mice/labels.v003.slp",
                    worker_path="/mnt/lab/projects/mice/labels.v003.slp",
                    status=paths_pb2.PATH_STATUS_FOUND,
                ),
                videos=[
                    paths_pb2.VideoCheck(
                        index=0,
                        original_path="C:\\Users\\ana\\videos\\day1.mp4",
                        worker_path="/mnt/lab/videos/day1.mp4",
                        status=paths_pb2.PATH_STATUS_FOUND,
                        kind=paths_pb2.VIDEO_KIND_FILE,
                    ),
                    paths_pb2.VideoCheck(
                        index=1,
                        original_path="D:\\data\\day3.mp4",
                        worker_path="",
                        status=paths_pb2.PATH_STATUS_MISSING,
                        kind=paths_pb2.VIDEO_KIND_FILE,
                        detail="no file at the mapped path",
                        suggestions=[
                            paths_pb2.Suggestion(
                                worker_path="/mnt/lab/data/day3.mp4",
                                reason=paths_pb2.SUGGESTION_REASON_PREFIX_RULE,
                                score=0.9,
                                explanation="prefix rule D:\\data -> /mnt/lab/data",
                            )
                        ],
                    ),
                    paths_pb2.VideoCheck(
                        index=2,
                        original_path="/Users/ana/videos/day4.mp4",
                        status=paths_pb2.PATH_STATUS_EMBEDDED,
                        kind=paths_pb2.VIDEO_KIND_EMBEDDED,
                    ),
                ],
                prefix_proposals=[
                    paths_pb2.PrefixProposal(
                        original_prefix="D:\\data",
                        worker_prefix="/mnt/lab/data",
                        resolves=[1],
                        evidence=3,
                    )
                ],
                check_token="",
                mounts=["/mnt/lab"],
            ),
            2,
        ),
        "job_submit": (
            job_pb2.JobSubmit(job_id="job-0001", spec=_spec(), check_token="ct-7f3a"),
            0,
        ),
        "job_submit--config_paths_only": (
            job_pb2.JobSubmit(job_id="job-0002", spec=paths_only, check_token="ct-7f3b"),
            0,
        ),
        "job_accepted": (
            job_pb2.JobAccepted(
                job_id="job-0001",
                run_dir="/mnt/lab/runs/mice_single_v2",
                warnings=["config_paths ignored because config_content was sent"],
                duplicate=False,
            ),
            3,
        ),
        "job_rejected": (
            job_pb2.JobRejected(
                job_id="job-0001", violations=[violation], message="1 problem with the job"
            ),
            3,
        ),
        "job_progress": (progress, 0),
        "job_log": (
            progress_pb2.JobLog(
                job_id="job-0001",
                sequence=8,
                stream=progress_pb2.LOG_STREAM_STDOUT,
                lines=["Epoch 3: 100%|##########| 12/12", "val/loss=0.0151"],
            ),
            0,
        ),
        "job_complete": (
            progress_pb2.JobComplete(
                job_id="job-0001",
                sequence=120,
                run_dir="/mnt/lab/runs/mice_single_v2",
                outputs=["/mnt/lab/runs/mice_single_v2/best.ckpt"],
                duration_seconds=812.5,
                stopped_early=True,
            ),
            0,
        ),
        "job_failed": (
            progress_pb2.JobFailed(
                job_id="job-0001",
                sequence=9,
                code=progress_pb2.FAILURE_CODE_TRAINER_EXITED,
                exit_code=1,
                message="sleap-nn train exited with status 1",
                log_tail=["RuntimeError: CUDA out of memory"],
                duration_seconds=31.25,
            ),
            0,
        ),
        "job_control": (
            job_pb2.JobControl(job_id="job-0001", action=job_pb2.CONTROL_ACTION_STOP),
            0,
        ),
        "job_attach": (job_pb2.JobAttach(job_id="job-0001", after_sequence=7), 0),
        "job_status": (
            job_pb2.JobStatus(
                job_id="job-0001",
                state=job_pb2.JOB_STATE_RUNNING,
                last_sequence=9,
                run_dir="/mnt/lab/runs/mice_single_v2",
                message="epoch 3 of 50",
            ),
            5,
        ),
        "job_progress_batch": (
            progress_pb2.JobProgressBatch(
                items=[
                    progress,
                    progress_pb2.JobProgress(
                        job_id="job-0001",
                        sequence=8,
                        event=progress_pb2.PROGRESS_EVENT_EPOCH_BEGIN,
                        epoch=4,
                    ),
                ]
            ),
            0,
        ),
    }
    if CURRENT >= (1, 2):
        bodies.update(_v1_2_bodies())
    return bodies


#: message_id of the directory_list_request vector (ids follow the order of _bodies()).
_DIRECTORY_LIST_REQUEST_ID = 20


def _v1_2_bodies() -> dict[str, tuple[object, int]]:
    """Variants showing the 1.2 fields (client file facts, labels suggestions, refusals)."""
    return {
        "path_check_request--client_files": (
            paths_pb2.PathCheckRequest(
                labels_path="/Volumes/lab-share/mice/labels.v003.slp",
                prefix_mappings={"/Volumes/lab-share/mice": "/mnt/lab-share/mice"},
                client_files=[
                    paths_pb2.ClientFile(
                        path="/Volumes/lab-share/mice/videos/day1.mp4",
                        size=1_048_576,
                        mtime_ns=1_767_225_000_000_000_000,
                    )
                ],
            ),
            0,
        ),
        "path_check_result--labels_suggestions": (
            paths_pb2.PathCheckResult(
                labels=paths_pb2.PathEntry(
                    original_path="/Volumes/lab-share/mice/labels.v003.slp",
                    status=paths_pb2.PATH_STATUS_OUTSIDE_MOUNTS,
                    detail="/Volumes/lab-share/mice/labels.v003.slp is not under the worker's "
                    "shared storage (/mnt/lab-share)",
                    suggestions=[
                        paths_pb2.Suggestion(
                            worker_path="/mnt/lab-share/mice/labels.v003.slp",
                            reason=paths_pb2.SUGGESTION_REASON_SAME_NAME,
                            score=0.75,
                            explanation="same name and folder tail 'lab-share/mice'",
                        )
                    ],
                ),
                refused_mappings=[
                    paths_pb2.MappingRefusal(
                        kind=paths_pb2.MAPPING_KIND_PREFIX,
                        original="/Volumes",
                        worker="/mnt",
                        reason="/mnt lies outside the worker's shared storage (/mnt/lab-share)",
                    )
                ],
                mounts=["/mnt/lab-share"],
            ),
            5,
        ),
        "directory_list_request": (
            paths_pb2.DirectoryListRequest(
                path="/mnt/lab-share/mice", page_token="200", page_size=200
            ),
            0,
        ),
        "directory_list": (
            paths_pb2.DirectoryList(
                path="/mnt/lab-share/mice",
                entries=[
                    paths_pb2.DirectoryEntry(
                        name="videos",
                        path="/mnt/lab-share/mice/videos",
                        kind=paths_pb2.ENTRY_KIND_DIRECTORY,
                        mtime_ns=1_767_225_000_000_000_000,
                    ),
                    paths_pb2.DirectoryEntry(
                        name="labels.v003.slp",
                        path="/mnt/lab-share/mice/labels.v003.slp",
                        kind=paths_pb2.ENTRY_KIND_FILE,
                        size=1_048_576,
                        mtime_ns=1_767_225_000_000_000_000,
                    ),
                ],
                next_page_token="",
                total=202,
            ),
            _DIRECTORY_LIST_REQUEST_ID,
        ),
    }


def canonical_vectors() -> dict[str, Envelope]:
    """Vector name -> canonical Envelope, one or more per body type."""
    out: dict[str, Envelope] = {}
    for i, (name, (body, correlation_id)) in enumerate(_bodies().items(), start=1):
        out[name] = make_envelope(
            body,  # type: ignore[arg-type]
            message_id=i,
            correlation_id=correlation_id,
            sent_time_unix_nano=SENT + i,
        )
    whole = out["job_submit"].SerializeToString(deterministic=True)
    out["fragment"] = make_envelope(
        envelope_pb2.Fragment(
            fragmented_message_id=6, index=0, count=2, total_bytes=len(whole), data=whole[:256]
        ),
        message_id=100,
        sent_time_unix_nano=SENT + 100,
    )
    missing = {row.name for row in BODIES if row.since <= CURRENT} - {
        name.split("--")[0] for name in out
    }
    if missing:  # the body table (sleap_rtc_proto/bodies.py) decides what needs a vector
        raise SystemExit(f"make_golden.py has no sample body for {sorted(missing)}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="overwrite existing vectors")
    args = parser.parse_args(argv)
    GOLDEN.mkdir(parents=True, exist_ok=True)
    refused = []
    for name, envelope in canonical_vectors().items():
        files = {
            GOLDEN / f"{name}.binpb": envelope.SerializeToString(deterministic=True),
            GOLDEN / f"{name}.json": to_json(envelope).encode(),
        }
        for path, data in files.items():
            rel = path.relative_to(ROOT)
            if path.exists() and not args.force:
                if path.read_bytes() != data:
                    refused.append(str(rel))
                continue
            path.write_bytes(data)
            print(f"wrote {rel}")
    if refused:
        print(
            "refusing to overwrite existing vectors (use --force only if no release shipped them):"
        )
        for name in refused:
            print(f"  {name}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
