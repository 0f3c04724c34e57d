"""The protocol's body table: one row per Envelope body, the one home of what it means.

Each row says who sends the body, what kind of message it is, which requests it
answers, which rule set validates it, and which protocol version and optional
feature introduced it. Everything else is derived from :data:`BODIES`: the
codec's body list, both sessions' dispatch sets, the rules dispatch
(:func:`validate`), the feature map (:func:`features_for`) and the list of
golden vectors a version must have. A test keeps the table and the schema's
``Envelope.body`` oneof in step.

>>> sorted(ROWS["job_status"].answers)
['job_attach', 'job_control']
>>> sorted(answers_to("job_submit"))
['error', 'job_accepted', 'job_rejected']
>>> sorted(features_for(Version(1, 0), ["progress_batch", "attach", "shiny"]))
['attach']

How to add a message is walked through in ``docs/architecture.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

from google.protobuf.message import Message

from sleap_rtc_proto import rules
from sleap_rtc_proto.v1 import (
    envelope_pb2,
    error_pb2,
    handshake_pb2,
    job_pb2,
    paths_pb2,
    progress_pb2,
)
from sleap_rtc_proto.versions import Version


class Sender(StrEnum):
    """Which peer may send a body; the other side answers any other body UNEXPECTED."""

    CLIENT = "client"
    WORKER = "worker"
    EITHER = "either"


class Kind(StrEnum):
    """What a body is for."""

    #: Asks for an answer; the answer's ``correlation_id`` is the request's message id.
    REQUEST = "request"
    #: Answers one of the requests in the row's ``answers``.
    ANSWER = "answer"
    #: A numbered, unsolicited message of one job (``sequence`` from 1, no gaps).
    JOB_EVENT = "job_event"
    #: ``Error``: answers any request when correlated, or reports a bad frame.
    ERROR = "error"
    #: ``Fragment``: carries part of another message; never reaches the sessions.
    TRANSPORT = "transport"


class Feature(StrEnum):
    """Optional capabilities named in Hello/HelloAck ``features``.

    A feature is in effect when both peers name it and the chosen version is at
    least the ``since`` of every row that needs it (:func:`features_for`).
    """

    FRAGMENTS = "fragments"
    ATTACH = "attach"
    PROGRESS_BATCH = "progress_batch"
    #: 1.2: PathEntry.suggestions for a labels file that is not found.
    LABELS_SUGGESTIONS = "labels_suggestions"
    #: 1.2: PathCheckRequest.client_files (the client's sizes and mtimes).
    CLIENT_FILE_FACTS = "client_file_facts"
    #: 1.2: DirectoryListRequest/DirectoryList (browse the worker's shared storage).
    BROWSE = "browse"
    #: 1.2: ``scheduler`` (SchedulerJob) on job answers and events: the job's place
    #: in the worker's batch scheduler (Slurm).
    SCHEDULER = "scheduler"


_V1_0 = Version(1, 0)
_V1_1 = Version(1, 1)
_V1_2 = Version(1, 2)


@dataclass(frozen=True, slots=True)
class FieldFeature:
    """A field added to an existing body behind a feature (a newer minor).

    The body's sender sets the field only when ``feature`` is in effect; a peer
    without it never sees it set (and would skip it as an unknown field).
    """

    field: str
    feature: Feature
    since: Version

#: A validator: every rule a body breaks (ids in :data:`sleap_rtc_proto.rules.RULES`).
Validator = Callable[[Message], list[rules.Violation]]


@dataclass(frozen=True, slots=True, kw_only=True)
class BodySpec:
    """One row of the body table.

    Attributes:
        name: the Envelope ``body`` oneof field, e.g. ``"job_submit"``.
        message: the body's generated message class.
        sender: who may send it.
        kind: what it is for.
        answers: for an answer, the request bodies it may answer.
        validator: the body's protocol rules (``None``: no rules beyond protobuf).
        since: the first protocol version with this body.
        feature: the feature that must be in effect to send it (``None``: always).
        fields: fields added later behind a feature (see :class:`FieldFeature`).
    """

    name: str
    message: type[Message]
    sender: Sender
    kind: Kind
    answers: frozenset[str] = frozenset()
    validator: Validator | None = None
    since: Version = _V1_0
    feature: Feature | None = None
    fields: tuple[FieldFeature, ...] = ()

    @property
    def full_name(self) -> str:
        """The message's protobuf full name, e.g. ``"sleap_rtc_proto.v1.JobSubmit"``."""
        return str(self.message.DESCRIPTOR.full_name)


def _rule(check: Callable[..., list[rules.Violation]]) -> Validator:
    return check


#: Every body of schema v1, in Envelope field order.
BODIES: tuple[BodySpec, ...] = (
    BodySpec(name="hello", message=handshake_pb2.Hello, sender=Sender.CLIENT, kind=Kind.REQUEST),
    BodySpec(
        name="hello_ack",
        message=handshake_pb2.HelloAck,
        sender=Sender.WORKER,
        kind=Kind.ANSWER,
        answers=frozenset({"hello"}),
    ),
    BodySpec(name="error", message=error_pb2.Error, sender=Sender.EITHER, kind=Kind.ERROR),
    BodySpec(
        name="path_check_request",
        message=paths_pb2.PathCheckRequest,
        sender=Sender.CLIENT,
        kind=Kind.REQUEST,
        validator=_rule(rules.validate_path_check_request),
        fields=(FieldFeature("client_files", Feature.CLIENT_FILE_FACTS, _V1_2),),
    ),
    BodySpec(
        name="path_check_result",
        message=paths_pb2.PathCheckResult,
        sender=Sender.WORKER,
        kind=Kind.ANSWER,
        answers=frozenset({"path_check_request"}),
        fields=(FieldFeature("labels.suggestions", Feature.LABELS_SUGGESTIONS, _V1_2),),
    ),
    BodySpec(
        name="job_submit",
        message=job_pb2.JobSubmit,
        sender=Sender.CLIENT,
        kind=Kind.REQUEST,
        validator=_rule(rules.validate_job_submit),
    ),
    BodySpec(
        name="job_accepted",
        message=job_pb2.JobAccepted,
        sender=Sender.WORKER,
        kind=Kind.ANSWER,
        answers=frozenset({"job_submit"}),
        fields=(FieldFeature("scheduler", Feature.SCHEDULER, _V1_2),),
    ),
    BodySpec(
        name="job_rejected",
        message=job_pb2.JobRejected,
        sender=Sender.WORKER,
        kind=Kind.ANSWER,
        answers=frozenset({"job_submit"}),
    ),
    BodySpec(
        name="job_progress",
        message=progress_pb2.JobProgress,
        sender=Sender.WORKER,
        kind=Kind.JOB_EVENT,
    ),
    BodySpec(
        name="job_log",
        message=progress_pb2.JobLog,
        sender=Sender.WORKER,
        kind=Kind.JOB_EVENT,
        fields=(FieldFeature("scheduler", Feature.SCHEDULER, _V1_2),),
    ),
    BodySpec(
        name="job_complete",
        message=progress_pb2.JobComplete,
        sender=Sender.WORKER,
        kind=Kind.JOB_EVENT,
        fields=(FieldFeature("scheduler", Feature.SCHEDULER, _V1_2),),
    ),
    BodySpec(
        name="job_failed",
        message=progress_pb2.JobFailed,
        sender=Sender.WORKER,
        kind=Kind.JOB_EVENT,
        fields=(FieldFeature("scheduler", Feature.SCHEDULER, _V1_2),),
    ),
    BodySpec(
        name="job_control",
        message=job_pb2.JobControl,
        sender=Sender.CLIENT,
        kind=Kind.REQUEST,
        validator=_rule(rules.validate_job_control),
    ),
    BodySpec(
        name="job_attach",
        message=job_pb2.JobAttach,
        sender=Sender.CLIENT,
        kind=Kind.REQUEST,
        validator=_rule(rules.validate_job_attach),
        feature=Feature.ATTACH,
    ),
    BodySpec(
        name="job_status",
        message=job_pb2.JobStatus,
        sender=Sender.WORKER,
        kind=Kind.ANSWER,
        answers=frozenset({"job_control", "job_attach"}),
        fields=(FieldFeature("scheduler", Feature.SCHEDULER, _V1_2),),
    ),
    BodySpec(
        name="job_progress_batch",
        message=progress_pb2.JobProgressBatch,
        sender=Sender.WORKER,
        kind=Kind.JOB_EVENT,
        since=_V1_1,
        feature=Feature.PROGRESS_BATCH,
    ),
    BodySpec(
        name="directory_list_request",
        message=paths_pb2.DirectoryListRequest,
        sender=Sender.CLIENT,
        kind=Kind.REQUEST,
        since=_V1_2,
        feature=Feature.BROWSE,
    ),
    BodySpec(
        name="directory_list",
        message=paths_pb2.DirectoryList,
        sender=Sender.WORKER,
        kind=Kind.ANSWER,
        answers=frozenset({"directory_list_request"}),
        since=_V1_2,
        feature=Feature.BROWSE,
    ),
    BodySpec(
        name="fragment",
        message=envelope_pb2.Fragment,
        sender=Sender.EITHER,
        kind=Kind.TRANSPORT,
        feature=Feature.FRAGMENTS,
    ),
)

#: Rows by body name.
ROWS: dict[str, BodySpec] = {row.name: row for row in BODIES}
#: Rows by message full name.
ROWS_BY_TYPE: dict[str, BodySpec] = {row.full_name: row for row in BODIES}


def names(*, kind: Kind | None = None, sender: Sender | None = None) -> frozenset[str]:
    """Body names of one kind and/or one sender (EITHER rows match every sender)."""
    return frozenset(
        row.name
        for row in BODIES
        if (kind is None or row.kind is kind)
        and (sender is None or row.sender in (sender, Sender.EITHER))
    )


#: Requests, answers and job events, by name.
REQUESTS = names(kind=Kind.REQUEST)
ANSWERS = names(kind=Kind.ANSWER)
JOB_EVENTS = names(kind=Kind.JOB_EVENT)
#: Bodies only a worker sends (a worker receiving one answers UNEXPECTED) and vice versa.
WORKER_ONLY = frozenset(r.name for r in BODIES if r.sender is Sender.WORKER)
CLIENT_ONLY = frozenset(r.name for r in BODIES if r.sender is Sender.CLIENT)


def answers_to(request: str) -> frozenset[str]:
    """The bodies that may answer ``request``, ``"error"`` included.

    Raises:
        KeyError: ``request`` is not a request body.
    """
    if request not in REQUESTS:
        raise KeyError(f"{request!r} is not a request body")
    return frozenset(r.name for r in BODIES if request in r.answers) | {"error"}


#: The version that introduced each feature (the latest ``since`` of its rows and fields).
FEATURE_SINCE: dict[Feature, Version] = {
    feature: max(
        [
            *(r.since for r in BODIES if r.feature is feature),
            *(f.since for r in BODIES for f in r.fields if f.feature is feature),
        ],
        default=_V1_0,
    )
    for feature in Feature
}

#: Features this code offers and announces by default.
DEFAULT_FEATURES: tuple[Feature, ...] = tuple(Feature)


def features_for(version: Version, named: Iterable[str]) -> list[str]:
    """The features of ``named`` (in their order) that exist at ``version``.

    Unknown names are dropped: a newer peer may name features this code lacks.
    """
    known = {str(f): since for f, since in FEATURE_SINCE.items()}
    return [name for name in named if name in known and known[name] <= version]


def _holder(body: Message, path: str) -> tuple[Message, str] | None:
    """The message holding the last field of dotted ``path`` and that field's name, when
    every message on the way is set (singular message fields only: the table's paths)."""
    *parents, leaf = path.split(".")
    target = body
    for name in parents:
        if not target.HasField(name):
            return None
        target = getattr(target, name)
    field = target.DESCRIPTOR.fields_by_name[leaf]
    is_set = len(getattr(target, leaf)) > 0 if field.is_repeated else target.HasField(leaf)
    return (target, leaf) if is_set else None


def for_peer(body: Message, features: Iterable[str]) -> Message:
    """``body`` as a peer with ``features`` in effect may see it: a copy with every
    field of its row's :attr:`BodySpec.fields` whose feature is not in effect cleared
    (``body`` itself when nothing needs clearing). The sender's half of
    :class:`FieldFeature`'s promise, in one place."""
    row = ROWS_BY_TYPE.get(body.DESCRIPTOR.full_name)
    if row is None or not row.fields:
        return body
    agreed = set(features)
    clear = [
        f.field for f in row.fields if f.feature not in agreed and _holder(body, f.field)
    ]
    if not clear:
        return body
    copy = type(body)()
    copy.CopyFrom(body)
    for path in clear:
        held = _holder(copy, path)
        if held is not None:
            held[0].ClearField(held[1])
    return copy


def validate(body: Message) -> list[rules.Violation]:
    """Every rule ``body`` breaks, by its row's validator (``[]`` for bodies without rules)."""
    row = ROWS_BY_TYPE.get(body.DESCRIPTOR.full_name)
    if row is None or row.validator is None:
        return []
    return row.validator(body)
