"""The body table: in step with the schema, the golden vectors and the rules dispatch."""

from __future__ import annotations

from pathlib import Path

import pytest

from sleap_rtc_proto import bodies
from sleap_rtc_proto.bodies import (
    BODIES,
    FEATURE_SINCE,
    ROWS,
    Feature,
    Kind,
    Sender,
    answers_to,
    features_for,
    names,
    validate,
)
from sleap_rtc_proto.codec import BODY_NAMES, Envelope
from sleap_rtc_proto.v1 import job_pb2, paths_pb2, progress_pb2, spec_pb2
from sleap_rtc_proto.versions import CURRENT, SUPPORTED, Version

GOLDEN = Path(__file__).resolve().parent / "golden"


def test_every_envelope_body_has_exactly_one_row() -> None:
    oneof = Envelope.DESCRIPTOR.oneofs_by_name["body"]
    schema = {f.name: f.message_type.full_name for f in oneof.fields}
    assert {row.name: row.full_name for row in BODIES} == schema
    assert len(ROWS) == len(BODIES)


def test_rows_are_in_field_number_order_and_codec_follows() -> None:
    numbers = [Envelope.DESCRIPTOR.fields_by_name[row.name].number for row in BODIES]
    assert numbers == sorted(numbers)
    assert tuple(row.name for row in BODIES) == BODY_NAMES


def test_answers_name_requests_and_every_request_has_an_answer() -> None:
    for row in BODIES:
        if row.kind is Kind.ANSWER:
            assert row.answers, row.name
            assert row.answers <= bodies.REQUESTS, row.name
            assert row.sender is Sender.WORKER
        else:
            assert not row.answers, row.name
    for request in bodies.REQUESTS:
        assert answers_to(request) - {"error"}, request
    with pytest.raises(KeyError, match="not a request"):
        answers_to("job_status")


def test_derived_sets() -> None:
    assert answers_to("job_submit") == {"job_accepted", "job_rejected", "error"}
    assert answers_to("job_attach") == answers_to("job_control") == {"job_status", "error"}
    assert {
        "job_progress",
        "job_progress_batch",
        "job_log",
        "job_complete",
        "job_failed",
    } == bodies.JOB_EVENTS
    assert "error" not in bodies.WORKER_ONLY | bodies.CLIENT_ONLY
    assert bodies.WORKER_ONLY.isdisjoint(bodies.CLIENT_ONLY)
    assert names(sender=Sender.CLIENT) == bodies.CLIENT_ONLY | {"error", "fragment"}


def test_versions_and_features() -> None:
    assert all(SUPPORTED.min <= row.since <= CURRENT for row in BODIES)
    assert FEATURE_SINCE[Feature.PROGRESS_BATCH] == Version(1, 1)
    assert FEATURE_SINCE[Feature.ATTACH] == Version(1, 0)
    assert features_for(Version(1, 0), ["progress_batch", "attach"]) == ["attach"]
    assert features_for(Version(1, 1), ["progress_batch", "new_thing"]) == ["progress_batch"]
    for row in BODIES:
        if row.feature is not None:
            assert FEATURE_SINCE[row.feature] >= row.since


def test_fields_added_behind_a_feature() -> None:
    """1.2 adds fields, not bodies: the table names them, and the feature's version follows."""
    assert FEATURE_SINCE[Feature.LABELS_SUGGESTIONS] == Version(1, 2)
    assert FEATURE_SINCE[Feature.CLIENT_FILE_FACTS] == Version(1, 2)
    assert features_for(Version(1, 1), ["client_file_facts", "labels_suggestions"]) == []
    assert features_for(Version(1, 2), ["client_file_facts"]) == ["client_file_facts"]
    for row in BODIES:
        for field in row.fields:
            message = row.message()
            head, _, tail = field.field.partition(".")
            descriptor = message.DESCRIPTOR.fields_by_name[head]  # the field exists
            if tail:
                assert tail in descriptor.message_type.fields_by_name
            assert field.since > row.since and field.since <= CURRENT


@pytest.mark.parametrize(
    "version", sorted(p.name for p in GOLDEN.iterdir() if p.is_dir() and p.name.startswith("v"))
)
def test_every_row_of_a_version_has_a_golden_vector(version: str) -> None:
    major, minor = (int(x) for x in version[1:].split("."))
    present = {p.stem.split("--")[0] for p in (GOLDEN / version).glob("*.binpb")}
    expected = {row.name for row in BODIES if row.since <= Version(major, minor)}
    assert expected <= present, f"{version} lacks vectors for {sorted(expected - present)}"
    newer = {row.name for row in BODIES if row.since > Version(major, minor)}
    assert not newer & present, f"{version} holds vectors of later bodies"


def test_validate_dispatches_by_row() -> None:
    assert validate(job_pb2.JobAttach(job_id="bad id"))[0].rule_id == "job_id.format"
    assert [v.rule_id for v in validate(paths_pb2.PathCheckRequest())] == [
        "path_check.labels_path.required"
    ]
    assert validate(job_pb2.JobSubmit(job_id="j"))[0].rule_id == "job_submit.spec.required"
    assert validate(job_pb2.JobControl(job_id="j"))[0].rule_id == "job_control.action.specified"
    assert validate(job_pb2.JobAccepted()) == []
    assert validate(progress_pb2.JobProgress()) == []
    assert validate(spec_pb2.TrainJobSpec()) == []  # not a body: no row, no rules


def test_for_peer_clears_fields_whose_feature_is_not_in_effect() -> None:
    """The sender's half of FieldFeature: a peer without the feature never sees the field."""
    from sleap_rtc_proto.v1 import scheduler_pb2

    accepted = job_pb2.JobAccepted(
        job_id="j", run_dir="/r", scheduler=scheduler_pb2.SchedulerJob(system="slurm", id="7")
    )
    old = bodies.for_peer(accepted, ["fragments", "attach"])
    assert not old.HasField("scheduler") and old.job_id == "j" and old.run_dir == "/r"
    assert accepted.HasField("scheduler")  # the original is untouched (other peers share it)
    assert bodies.for_peer(accepted, ["scheduler"]) is accepted
    plain = job_pb2.JobAccepted(job_id="j")
    assert bodies.for_peer(plain, []) is plain  # nothing to clear: no copy
    # A nested field (labels.suggestions) and a body without feature fields.
    result = paths_pb2.PathCheckResult()
    result.labels.original_path = "/x.slp"
    result.labels.suggestions.add(worker_path="/y.slp")
    cleared = bodies.for_peer(result, [])
    assert len(cleared.labels.suggestions) == 0 and cleared.labels.original_path == "/x.slp"
    assert len(bodies.for_peer(result, ["labels_suggestions"]).labels.suggestions) == 1
    submit = job_pb2.JobSubmit(job_id="j")
    assert bodies.for_peer(submit, []) is submit


def test_scheduler_fields_are_in_the_table_for_every_job_answer_and_end() -> None:
    rows = {r.name: r for r in BODIES}
    for name in ("job_accepted", "job_status", "job_log", "job_complete", "job_failed"):
        assert [f.field for f in rows[name].fields] == ["scheduler"], name
    assert FEATURE_SINCE[Feature.SCHEDULER] == Version(1, 2)
