"""Compatibility: fixed descriptors, golden vectors, and lossless future-minor round trips.

`make compat` (scripts/compat.py: buf lint/format/breaking, bindings freshness) is
run once here as well, so a plain `pytest` catches the same breaks.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from sleap_rtc_proto.codec import BODY_NAMES, Envelope, UnknownBody, body_name, body_of, decode
from sleap_rtc_proto.rules import validate_job_submit
from sleap_rtc_proto.stream import MessageStream
from sleap_rtc_proto.v1 import (
    envelope_pb2,
    error_pb2,
    handshake_pb2,
    job_pb2,
    paths_pb2,
    progress_pb2,
    scheduler_pb2,
    spec_pb2,
    version_pb2,
)

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"
VECTORS = sorted(GOLDEN.glob("v*/*.binpb"))
FDP = descriptor_pb2.FieldDescriptorProto

# -- descriptors --------------------------------------------------------------------------------

TRAIN_JOB_SPEC_FIELDS = {
    "config_content": 1,
    "config_paths": 2,
    "labels_path": 3,
    "path_mappings": 4,
    "prefix_mappings": 5,
    "val_labels_path": 6,
    "max_epochs": 7,
    "batch_size": 8,
    "learning_rate": 9,
    "run_name": 10,
    "resume_ckpt_path": 11,
}
ENVELOPE_FIELDS = {
    "version": 1,
    "message_id": 2,
    "correlation_id": 3,
    "sent_time_unix_nano": 4,
    "hello": 10,
    "hello_ack": 11,
    "error": 12,
    "path_check_request": 20,
    "path_check_result": 21,
    "job_submit": 30,
    "job_accepted": 31,
    "job_rejected": 32,
    "job_progress": 33,
    "job_log": 34,
    "job_complete": 35,
    "job_failed": 36,
    "job_control": 37,
    "job_attach": 38,
    "job_status": 39,
    "job_progress_batch": 40,
    "directory_list_request": 41,
    "directory_list": 42,
    "fragment": 100,
}


def test_train_job_spec_config_fields() -> None:
    fields = spec_pb2.TrainJobSpec.DESCRIPTOR.fields_by_name
    content, paths = fields["config_content"], fields["config_paths"]
    assert content.has_presence and not content.is_repeated
    assert content.type == content.TYPE_STRING and content.number == 1
    assert paths.is_repeated and paths.type == paths.TYPE_STRING and paths.number == 2
    for name in (
        "val_labels_path",
        "max_epochs",
        "batch_size",
        "learning_rate",
        "run_name",
        "resume_ckpt_path",
    ):
        assert fields[name].has_presence, name
    assert not fields["labels_path"].has_presence


def test_field_numbers_are_fixed() -> None:
    spec = {f.name: f.number for f in spec_pb2.TrainJobSpec.DESCRIPTOR.fields}
    assert spec == TRAIN_JOB_SPEC_FIELDS
    envelope = {f.name: f.number for f in Envelope.DESCRIPTOR.fields}
    assert envelope == ENVELOPE_FIELDS
    body = Envelope.DESCRIPTOR.oneofs_by_name["body"]
    assert {f.name for f in body.fields} == {n for n, num in ENVELOPE_FIELDS.items() if num >= 10}
    assert Envelope.DESCRIPTOR.full_name == "sleap_rtc_proto.v1.Envelope"


def test_every_enum_starts_with_unspecified() -> None:
    for module in (
        envelope_pb2,
        error_pb2,
        handshake_pb2,
        job_pb2,
        paths_pb2,
        progress_pb2,
        spec_pb2,
    ):
        for enum in module.DESCRIPTOR.enum_types_by_name.values():
            zero = enum.values_by_number[0].name
            assert zero.endswith("_UNSPECIFIED"), zero


# -- golden vectors -----------------------------------------------------------------------------


def test_every_body_type_has_a_vector() -> None:
    names = {path.stem.split("--")[0] for path in VECTORS}
    assert set(BODY_NAMES) <= names
    for path in VECTORS:
        assert path.with_suffix(".json").exists(), path


def _unknown_fields(message: Message) -> list[str]:
    found = [f"{message.DESCRIPTOR.full_name}#{f.field_number}" for f in UnknownFieldSet(message)]
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            values = (
                value.values() if field.message_type.fields_by_name["value"].message_type else []
            )
        else:
            values = value if field.is_repeated else [value]
        for item in values:
            found += _unknown_fields(item)
    return found


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_golden_vector_decodes_to_its_json(path: Path) -> None:
    data = path.read_bytes()
    decoded = decode(data)
    expected = json_format.Parse(path.with_suffix(".json").read_text(), Envelope())
    assert decoded == expected
    assert _unknown_fields(decoded) == [], "a field of this vector is no longer in the schema"
    assert body_name(decoded) == path.stem.split("--")[0]
    rendered = json_format.MessageToJson(decoded, preserving_proto_field_name=True)
    assert json.loads(rendered) == json.loads(path.with_suffix(".json").read_text())
    assert decoded.SerializeToString(deterministic=True) == data


def test_make_golden_refuses_to_overwrite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import make_golden
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    monkeypatch.setattr(make_golden, "GOLDEN", tmp_path)
    monkeypatch.setattr(make_golden, "ROOT", tmp_path)
    assert make_golden.main([]) == 0
    assert {p.stem for p in tmp_path.glob("*.binpb")} >= set(BODY_NAMES)
    target = tmp_path / "hello.binpb"
    target.write_bytes(b"changed")
    (tmp_path / "error.json").unlink()
    assert make_golden.main([]) == 1
    assert target.read_bytes() == b"changed"
    assert (tmp_path / "error.json").exists()  # missing vectors are still added
    assert make_golden.main(["--force"]) == 0
    assert target.read_bytes() != b"changed"


# -- a future minor version ---------------------------------------------------------------------


def _future_classes() -> dict[str, type[Message]]:
    """Today's schema plus v1.1 additions, in a separate pool: a TrainJobSpec field, an enum
    value, and a new Envelope body."""
    files = {}
    for module in (
        version_pb2,
        error_pb2,
        handshake_pb2,
        scheduler_pb2,
        spec_pb2,
        job_pb2,
        paths_pb2,
        progress_pb2,
        envelope_pb2,
    ):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        files[proto.name] = proto
    spec_file = files["sleap_rtc_proto/v1/spec.proto"]
    spec = next(m for m in spec_file.message_type if m.name == "TrainJobSpec")
    spec.field.add(
        name="augmentation_preset", number=12, type=FDP.TYPE_STRING, label=FDP.LABEL_OPTIONAL
    )
    spec.field.add(name="gpu_ids", number=13, type=FDP.TYPE_UINT32, label=FDP.LABEL_REPEATED)
    job_file = files["sleap_rtc_proto/v1/job.proto"]
    action = next(e for e in job_file.enum_type if e.name == "ControlAction")
    action.value.add(name="CONTROL_ACTION_PAUSE", number=3)
    env_file = files["sleap_rtc_proto/v1/envelope.proto"]
    pause = env_file.message_type.add(name="JobPause")
    pause.field.add(name="job_id", number=1, type=FDP.TYPE_STRING, label=FDP.LABEL_OPTIONAL)
    pause.field.add(name="seconds", number=2, type=FDP.TYPE_UINT32, label=FDP.LABEL_OPTIONAL)
    envelope = next(m for m in env_file.message_type if m.name == "Envelope")
    envelope.field.add(
        name="job_pause",
        number=43,
        type=FDP.TYPE_MESSAGE,
        type_name=".sleap_rtc_proto.v1.JobPause",
        label=FDP.LABEL_OPTIONAL,
        oneof_index=0,
    )
    pool = descriptor_pool.DescriptorPool()
    for proto in files.values():
        pool.Add(proto)
    return {
        name: message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"sleap_rtc_proto.v1.{name}")
        )
        for name in ("Envelope", "JobSubmit", "JobControl", "JobPause")
    }


@pytest.fixture(scope="module")
def future() -> dict[str, type[Message]]:
    return _future_classes()


def _future_envelope(future: dict[str, type[Message]], message_id: int, **body: Message) -> Message:
    env = future["Envelope"](message_id=message_id)
    env.version.major, env.version.minor = 1, 1  # type: ignore[attr-defined]
    for name, value in body.items():
        getattr(env, name).CopyFrom(value)
    return env


def test_future_spec_field_round_trips_without_loss(future: dict[str, type[Message]]) -> None:
    submit = future["JobSubmit"](job_id="job-9")
    spec = submit.spec  # type: ignore[attr-defined]
    spec.config_content = "trainer_config:\n  max_epochs: 3\n"
    spec.labels_path = "/mnt/lab/labels.slp"
    spec.augmentation_preset = "heavy"
    spec.gpu_ids.extend([0, 3])
    env = _future_envelope(future, 1, job_submit=submit)
    data = env.SerializeToString()

    today = decode(data)
    body = body_of(today)
    assert isinstance(body, job_pb2.JobSubmit)
    assert body.spec.config_content == spec.config_content
    assert body.spec.labels_path == "/mnt/lab/labels.slp"
    assert len(UnknownFieldSet(body.spec)) == 2  # kept, not dropped
    assert validate_job_submit(body) == []
    body.check_token = "ct-1"  # today's code edits a known field and forwards the message

    again = future["Envelope"].FromString(today.SerializeToString())
    assert again.job_submit.spec == spec  # type: ignore[attr-defined]
    assert again.job_submit.check_token == "ct-1"  # type: ignore[attr-defined]
    assert list(again.job_submit.spec.gpu_ids) == [0, 3]  # type: ignore[attr-defined]


def test_future_body_is_unknown_and_kept(future: dict[str, type[Message]]) -> None:
    pause = future["JobPause"](job_id="job-9", seconds=30)
    env = _future_envelope(future, 2, job_pause=pause)
    data = env.SerializeToString()

    today = MessageStream().receive(data, now=0.0)
    assert today is not None
    body = body_of(today)
    assert body == UnknownBody(43, pause.SerializeToString())
    assert body_name(today) == "unknown_body_43"
    assert future["Envelope"].FromString(today.SerializeToString()) == env


def test_future_enum_value_round_trips(future: dict[str, type[Message]]) -> None:
    control = future["JobControl"](job_id="job-9", action=3)
    env = _future_envelope(future, 3, job_control=control)
    today = decode(env.SerializeToString())
    assert today.job_control.action == 3
    assert future["Envelope"].FromString(today.SerializeToString()) == env


# -- the gate itself ----------------------------------------------------------------------------


def test_compat_gate_passes() -> None:
    buf = Path(sys.executable).parent / "buf"
    if not buf.exists() and shutil.which("buf") is None:
        pytest.skip("buf not installed (dev extra)")
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "compat.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert list((ROOT / "compat" / "baselines").glob("*.binpb"))


# -- protocol 1.2 against a 1.1 peer ------------------------------------------------------------


def _release_classes(version: str) -> dict[str, type[Message]]:
    """The message classes of a released schema, from its baseline image (no bindings)."""
    image = descriptor_pb2.FileDescriptorSet.FromString(
        (ROOT / "compat" / "baselines" / f"{version}.binpb").read_bytes()
    )
    pool = descriptor_pool.DescriptorPool()
    for file in image.file:
        pool.Add(file)
    names = ("PathCheckRequest", "PathCheckResult")
    return {
        n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"sleap_rtc_proto.v1.{n}"))
        for n in names
    }


def test_a_1_1_peer_reads_a_1_2_path_check_and_a_1_2_worker_reads_a_1_1_request() -> None:
    old = _release_classes("v1.1")
    result = paths_pb2.PathCheckResult(
        labels=paths_pb2.PathEntry(
            original_path="/Volumes/s/l.slp",
            status=paths_pb2.PATH_STATUS_OUTSIDE_MOUNTS,
            detail="not under the worker's shared storage (/mnt/s)",
            suggestions=[paths_pb2.Suggestion(worker_path="/mnt/s/l.slp", score=0.7)],
        ),
        videos=[paths_pb2.VideoCheck(index=0, status=paths_pb2.PATH_STATUS_REFUSED)],
        refused_mappings=[paths_pb2.MappingRefusal(original="/Volumes", worker="/mnt")],
        mounts=["/mnt/s"],
    )
    seen = old["PathCheckResult"].FromString(result.SerializeToString())
    assert seen.labels.original_path == "/Volumes/s/l.slp"  # type: ignore[attr-defined]
    assert seen.labels.detail.startswith("not under")  # type: ignore[attr-defined]
    assert list(seen.mounts) == ["/mnt/s"]  # type: ignore[attr-defined]
    # The new status is an unknown value there: not FOUND, so the old client does not pass.
    assert seen.videos[0].status == paths_pb2.PATH_STATUS_REFUSED  # type: ignore[attr-defined]
    request = old["PathCheckRequest"](labels_path="/mnt/s/l.slp", prefix_mappings={"/a": "/mnt/s"})
    today = paths_pb2.PathCheckRequest.FromString(request.SerializeToString())
    assert today.labels_path == "/mnt/s/l.slp" and not today.client_files
    facts = paths_pb2.PathCheckRequest(
        labels_path="/x", client_files=[paths_pb2.ClientFile(path="/x/a.mp4", size=3)]
    )
    assert old["PathCheckRequest"].FromString(facts.SerializeToString()).labels_path == "/x"  # type: ignore[attr-defined]


def test_file_facts_go_only_to_a_worker_that_names_the_feature(tmp_path: Path) -> None:
    """The client session leaves out ``client_files`` unless the worker agreed to it."""
    from support.pair import SessionPair

    from sleap_rtc.client.pathrequest import file_facts, path_check_request
    from sleap_rtc.client.session import ClientSession
    from sleap_rtc.worker.events import RequestReceived

    video = tmp_path / "a.mp4"
    video.write_bytes(b"12345")
    facts = file_facts([str(video), str(tmp_path / "gone.mp4"), "C:\\x\\a.mp4", "rel/a.mp4"])
    assert [(f.path, f.size) for f in facts] == [(str(video), 5)]
    request = path_check_request("/l.slp", path_mappings={}, prefix_mappings={}, facts=facts)
    seen = {}
    for features in (("attach",), ("attach", "client_file_facts")):
        pair = SessionPair(client=ClientSession(token="good", features=features))
        pair.handshake()
        pair.client.request(request, now=pair.now)
        received = [e for e in pair.roundtrip()[0] if isinstance(e, RequestReceived)]
        assert len(received) == 1
        seen[features[-1]] = [f.size for f in received[0].body.client_files]
    assert seen == {"attach": [], "client_file_facts": [5]}
    assert len(request.client_files) == 1  # the caller's message is left as it was
