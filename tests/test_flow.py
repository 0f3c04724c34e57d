"""The presubmission flow against the real WorkerService over in-memory links.

Every row of the seed's two error tables is triggered by its real cause here:
an expired JWT with a failing login, a worker that cannot be reached, an SLP
the worker cannot see, some / all videos missing, a user who cancels, a job
the worker rejects, a link that drops during submit (and a safe retry), a job
that fails during training. Real SLP files (sleap-io), the real worker, the
stand-in trainer (tests/support/fake_sleap_nn.py).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from slp_factory import make_h5_video, make_labels

from sleap_rtc.auth.tokens import TokenIssuer, TokenVerifier
from sleap_rtc.client.auth import AuthCheck
from sleap_rtc.client.events import JobCompleted, ProgressReceived
from sleap_rtc.client.flow import PresubmissionFlow
from sleap_rtc.client.resolve import AutoResolver, PrefixStore, TerminalResolver
from sleap_rtc.client.results import (
    CONNECTION_LOST,
    COULD_NOT_CONNECT,
    LOGIN_REQUIRED,
    NO_ANSWER,
    FlowResult,
    FlowStatus,
)
from sleap_rtc.client.timeouts import FlowTimeouts
from sleap_rtc.client.views import CheckView, Resolution
from sleap_rtc.transport.link import MemoryLink, memory_link_pair
from sleap_rtc.worker.service import WorkerService
from sleap_rtc.worker.serviceconfig import WorkerConfig
from sleap_rtc.worker.trainer import RunLimits
from sleap_rtc_proto.codec import decode
from sleap_rtc_proto.rules import is_valid_job_id
from sleap_rtc_proto.stream import MessageStream
from sleap_rtc_proto.v1 import handshake_pb2, paths_pb2, progress_pb2
from sleap_rtc_proto.versions import SUPPORTED

FAKE = Path(__file__).parent / "support" / "fake_sleap_nn.py"
FAKE_COMMAND = (sys.executable, str(FAKE), "train")
ROOM = "lab"
FAST = FlowTimeouts(connect_s=2.0, hello_s=2.0, check_s=5.0, submit_s=5.0, control_s=5.0,
                    idle_s=20.0, tick_s=0.05)


def fake_config(mode: str = "ok", **fake: Any) -> dict[str, Any]:
    return {
        "model_config": {"backbone_config": {}},
        "trainer_config": {"max_epochs": 2},
        "fake": {"mode": mode, "epochs": 2, "batches": 2, "batch_sleep": 0.0, **fake},
    }


@dataclass
class Lab:
    """A worker's mount with real files, and the client's view of them."""

    tmp: Path
    mnt: Path
    data: Path
    video_a: str
    video_b: str
    project: Path = Path("/")  # where labels files go (not next to the videos)

    def __post_init__(self) -> None:
        self.project = self.mnt / "project"


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    mnt = tmp_path / "mnt"
    data = mnt / "data"
    a = make_h5_video(data / "a.h5")
    b = make_h5_video(data / "b.h5")
    return Lab(tmp_path, mnt, data, a, b)


@dataclass
class Recorder:
    """A progress sink that keeps what it got."""

    events: list[Any] = field(default_factory=list)

    def handle(self, event: Any) -> None:
        self.events.append(event)


@dataclass
class Harness:
    service: WorkerService
    connects: int = 0
    links: list[MemoryLink] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    on_link: Callable[[MemoryLink, MemoryLink], None] | None = None

    async def connect(self) -> MemoryLink:
        self.connects += 1
        client_end, worker_end = memory_link_pair()
        if self.on_link is not None:
            self.on_link(client_end, worker_end)
        self.links.append(client_end)
        self.tasks.append(asyncio.create_task(self.service.serve(worker_end, peer_id="client")))
        return client_end

    def jobs(self) -> list[Any]:
        return self.service.registry.jobs()


def with_worker(
    lab: Lab, body: Callable[[Harness], Awaitable[Any]], **config: Any
) -> Any:
    async def main() -> Any:
        base: dict[str, Any] = dict(
            mounts=[lab.mnt],
            state_dir=lab.tmp / "state",
            verifier=None,
            trainer_command=FAKE_COMMAND,
            worker_id="gpu-1",
            run_limits=RunLimits(no_progress_timeout_s=30, term_grace_s=2),
        )
        base.update(config)
        service = WorkerService(WorkerConfig(**base))
        await service.start()
        harness = Harness(service)
        try:
            return await asyncio.wait_for(body(harness), timeout=60)
        finally:
            await service.close()
            for task in harness.tasks:
                task.cancel()
            await asyncio.gather(*harness.tasks, return_exceptions=True)

    return asyncio.run(main())


def flow_for(h: Harness, **kw: Any) -> PresubmissionFlow:
    kw.setdefault("timeouts", FAST)
    return PresubmissionFlow(connect=h.connect, **kw)


def argv_record(result: FlowResult) -> dict[str, Any]:
    assert result.accepted is not None
    record: dict[str, Any] = json.loads((Path(result.accepted.run_dir) / "argv.json").read_text())
    return record


# ----------------------------------------------------------------------------- success


def test_all_found_one_connection_submit_and_progress_to_completion(lab: Lab) -> None:
    labels = make_labels(lab.project / "labels.slp", [lab.video_a, lab.video_b])
    sink = Recorder()
    accepted: list[Any] = []

    async def body(h: Harness) -> FlowResult:
        flow = flow_for(h, sinks=[sink], on_accepted=accepted.append)
        result = await flow.run(config=fake_config(), labels_path=str(labels), max_epochs=2)
        assert h.connects == 1  # path check, submit and progress on one connection
        assert len(h.jobs()) == 1
        return result

    result = with_worker(lab, body)
    assert result.status is FlowStatus.SUCCESS, result
    assert result.stage == "done"
    assert is_valid_job_id(result.job_id) and result.job_id.startswith("job-")
    assert result.labels_path == str(labels)
    assert result.check is not None and len(result.check.found) == 2
    assert result.check_token
    assert accepted and accepted[0].job_id == result.job_id
    assert result.completion is not None and not result.completion.stopped_early
    progress = [e.progress for e in sink.events if isinstance(e, ProgressReceived)]
    assert progress[0].event == progress_pb2.PROGRESS_EVENT_TRAIN_BEGIN
    assert progress[-1].event == progress_pb2.PROGRESS_EVENT_TRAIN_END
    assert isinstance(sink.events[-1], JobCompleted)
    seqs = [e.progress.sequence for e in sink.events if isinstance(e, ProgressReceived)]
    assert seqs == sorted(seqs)
    assert argv_record(result)["overrides"]["trainer_config.max_epochs"] == "2"


def test_config_from_yaml_file_and_content(lab: Lab, tmp_path: Path) -> None:
    labels = make_labels(lab.project / "labels.slp", [lab.video_a])
    config_file = tmp_path / "cfg.yaml"
    config_file.write_text(
        "model_config:\n  backbone_config: {}\nfake:\n  mode: ok\n  epochs: 1\n  batches: 1\n"
    )

    async def body(h: Harness) -> list[FlowResult]:
        first = await flow_for(h, follow_progress=False).run(
            config=config_file, labels_path=str(labels))
        second = await flow_for(h, follow_progress=False).run(
            config_content=config_file.read_text(), labels_path=str(labels))
        return [first, second]

    for result in with_worker(lab, body, max_concurrent_jobs=4):
        assert result.ok and result.stage == "submit", result


def test_embedded_only_labels_need_no_resolution(lab: Lab) -> None:
    pkg = make_labels(lab.project / "labels.pkg.slp", [lab.video_a], embed=True)
    calls: list[CheckView] = []

    async def body(h: Harness) -> FlowResult:
        return await flow_for(h, resolver=calls.append, follow_progress=False).run(
            config=fake_config(), labels_path=str(pkg))

    result = with_worker(lab, body)
    assert result.ok, result
    assert calls == []
    assert result.check is not None and result.check.embedded_only


# ----------------------------------------------------------------------------- presubmission rows


def test_row_jwt_expired_login_fails(lab: Lab) -> None:
    """Seed: JWT expired, login fails -> "Login required. Please try again."."""
    issuer = TokenIssuer.generate()
    expired = issuer.issue("alice", ROOM, ttl_s=60, now=1_000.0)
    verifier = TokenVerifier.for_issuer(issuer)
    logins: list[int] = []

    def failing_login() -> str:
        logins.append(1)
        raise RuntimeError("browser login was closed")

    async def body(h: Harness) -> FlowResult:
        auth = AuthCheck(get_token=lambda: expired, login=failing_login, verifier=verifier,
                         room=ROOM)
        return await flow_for(h, auth=auth).run(config=fake_config(), labels_path="/x/l.slp")

    result = with_worker(lab, body)
    assert result.status is FlowStatus.ERROR
    assert result.message == "Login required. Please try again." == LOGIN_REQUIRED
    assert result.stage == "auth"
    assert logins == [1]


@pytest.mark.parametrize(
    "stored, login_result",
    [(None, None), ("not-a-jwt", None), ("not-a-jwt", "still-not-a-jwt")],
)
def test_missing_or_malformed_token_and_no_usable_login(
    lab: Lab, stored: str | None, login_result: str | None
) -> None:
    issuer = TokenIssuer.generate()

    async def body(h: Harness) -> tuple[FlowResult, int]:
        auth = AuthCheck(get_token=lambda: stored, login=lambda: login_result,
                         verifier=TokenVerifier.for_issuer(issuer))
        result = await flow_for(h, auth=auth).run(config=fake_config(), labels_path="/x/l.slp")
        return result, h.connects

    result, connects = with_worker(lab, body)
    assert result.message == LOGIN_REQUIRED
    assert connects == 0  # never connected, nothing submitted


def test_expired_jwt_then_login_succeeds_and_the_worker_accepts_it(lab: Lab) -> None:
    labels = make_labels(lab.project / "labels.slp", [lab.video_a])
    issuer = TokenIssuer.generate()
    verifier = TokenVerifier.for_issuer(issuer)
    expired = issuer.issue("alice", ROOM, ttl_s=60, now=1_000.0)

    async def login() -> str:
        return issuer.issue("alice", ROOM)

    async def body(h: Harness) -> FlowResult:
        auth = AuthCheck(get_token=lambda: expired, login=login, verifier=verifier, room=ROOM)
        return await flow_for(h, auth=auth, follow_progress=False).run(
            config=fake_config(), labels_path=str(labels))

    result = with_worker(lab, body, verifier=lambda t: verifier.verify(t, room=ROOM))
    assert result.ok, result


def test_worker_refusing_the_token_means_login_required(lab: Lab) -> None:
    issuer = TokenIssuer.generate()
    other = TokenIssuer.generate()
    worker_verifier = TokenVerifier.for_issuer(issuer)
    forged = other.issue("mallory", ROOM)

    async def body(h: Harness) -> FlowResult:
        auth = AuthCheck(get_token=lambda: forged, login=lambda: None)  # expiry-only check
        return await flow_for(h, auth=auth).run(config=fake_config(), labels_path="/x/l.slp")

    result = with_worker(lab, body, verifier=lambda t: worker_verifier.verify(t, room=ROOM))
    assert result.message == LOGIN_REQUIRED
    assert any("refused the token" in d for d in result.details)


def test_row_worker_unreachable_connect_raises(lab: Lab) -> None:
    """Seed: worker unreachable -> "Could not connect to worker. Check that the worker ..."."""

    async def refused() -> MemoryLink:
        raise ConnectionRefusedError("no route to the worker")

    async def body(h: Harness) -> FlowResult:
        flow = PresubmissionFlow(connect=refused, timeouts=FAST)
        result = await flow.run(config=fake_config(), labels_path="/x/l.slp")
        assert h.jobs() == []
        return result

    result = with_worker(lab, body)
    assert result.status is FlowStatus.ERROR
    assert result.message == "Could not connect to worker. Check that the worker is running."
    assert result.stage == "connect" and result.job_id == ""


def test_unreachable_connect_hangs_is_bounded(lab: Lab) -> None:
    async def hangs() -> MemoryLink:
        await asyncio.sleep(30)
        raise AssertionError("unreachable")

    async def body(h: Harness) -> FlowResult:
        timeouts = FlowTimeouts(connect_s=0.2)
        return await PresubmissionFlow(connect=hangs, timeouts=timeouts).run(
            config=fake_config(), labels_path="/x/l.slp")

    result = with_worker(lab, body)
    assert result.message == COULD_NOT_CONNECT


def test_unreachable_when_nobody_answers_hello(lab: Lab) -> None:
    async def silent() -> MemoryLink:
        client_end, _worker_end = memory_link_pair()  # nobody serves the other end
        return client_end

    async def body(h: Harness) -> FlowResult:
        timeouts = FlowTimeouts(hello_s=0.2)
        return await PresubmissionFlow(connect=silent, timeouts=timeouts).run(
            config=fake_config(), labels_path="/x/l.slp")

    result = with_worker(lab, body)
    assert result.message == COULD_NOT_CONNECT
    assert result.stage == "connect"


def test_unreachable_when_the_link_closes_at_once(lab: Lab) -> None:
    async def closing() -> MemoryLink:
        client_end, worker_end = memory_link_pair()
        await worker_end.close()
        return client_end

    async def body(h: Harness) -> FlowResult:
        return await PresubmissionFlow(connect=closing, timeouts=FAST).run(
            config=fake_config(), labels_path="/x/l.slp")

    assert with_worker(lab, body).message == COULD_NOT_CONNECT


@pytest.mark.parametrize("where, status", [("outside", "outside_mounts"), ("inside", "missing")])
def test_row_slp_not_found_on_worker_is_a_missing_path(lab: Lab, where: str, status: str) -> None:
    """Seed: SLP not found on worker -> shown in the resolution UI as a missing path."""
    labels = make_labels(lab.project / "labels.slp", [lab.video_a])
    # Not on the worker (nor on this machine: the worker's view is what counts).
    client_labels = (
        "/Users/me/project/labels.slp" if where == "outside" else str(lab.data / "old" / "l.slp")
    )
    seen: list[CheckView] = []

    def resolver(view: CheckView) -> Resolution:
        seen.append(view)
        return Resolution(path_mappings={client_labels: str(labels)})

    async def body(h: Harness) -> FlowResult:
        return await flow_for(h, resolver=resolver, follow_progress=False).run(
            config=fake_config(), labels_path=client_labels)

    result = with_worker(lab, body)
    first = seen[0]
    assert first.labels.status == status
    assert first.missing_paths() == [client_labels]
    assert result.ok, result
    assert result.labels_path == str(labels)
    assert client_labels not in result.path_mappings  # became labels_path, not a video map
    assert len(seen) == 1


def test_row_some_videos_missing_get_suggestions_then_recheck(lab: Lab) -> None:
    """Seed: some videos missing -> resolution with suggestions; mappings re-checked."""
    client_a = "/Users/me/data/a.h5"
    labels = make_labels(lab.project / "labels.slp", [client_a, lab.video_b])
    seen: list[CheckView] = []
    auto = AutoResolver(threshold=0.1)

    def resolver(view: CheckView) -> Resolution:
        seen.append(view)
        return auto(view)

    async def body(h: Harness) -> FlowResult:
        return await flow_for(h, resolver=resolver).run(
            config=fake_config(), labels_path=str(labels))

    result = with_worker(lab, body)
    first = seen[0]
    assert [v.original_path for v in first.found] == [lab.video_b]
    [missing] = first.missing
    assert missing.original_path == client_a and missing.status == "outside_mounts"
    assert missing.suggestions and missing.suggestions[0].worker_path == lab.video_a
    assert first.hint is None
    assert result.ok, result
    assert result.check is not None and result.check.attempt == 2 and result.check.passed
    assert dict(result.path_mappings) == {client_a: lab.video_a}
    record = argv_record(result)
    assert [client_a, lab.video_a] in record["video_path_map"] + record["prefix_map"]


def test_row_all_videos_missing_hint_names_the_mounts(lab: Lab) -> None:
    """Seed: all videos missing -> resolution with a hint about the shared storage mount."""
    labels = make_labels(lab.project / "labels.slp", ["/Volumes/share/data/a.h5",
                                                  "/Volumes/share/data/b.h5"])
    seen: list[CheckView] = []

    def resolver(view: CheckView) -> Resolution:
        seen.append(view)
        return Resolution(prefix_mappings={"/Volumes/share/data": str(lab.data)})

    async def body(h: Harness) -> FlowResult:
        return await flow_for(h, resolver=resolver, follow_progress=False).run(
            config=fake_config(), labels_path=str(labels))

    result = with_worker(lab, body)
    first = seen[0]
    assert first.all_videos_missing
    assert first.hint is not None and "shared storage" in first.hint
    assert str(lab.mnt) in first.hint and first.mounts == (str(lab.mnt),)
    assert result.ok, result
    assert dict(result.prefix_mappings) == {"/Volumes/share/data": str(lab.data)}


def test_all_missing_without_resolver_fails_with_the_list_and_hint(lab: Lab) -> None:
    labels = make_labels(lab.project / "labels.slp", ["/Volumes/share/x.h5"])

    async def body(h: Harness) -> FlowResult:
        result = await flow_for(h).run(config=fake_config(), labels_path=str(labels))
        assert h.jobs() == []
        return result

    result = with_worker(lab, body)
    assert result.status is FlowStatus.ERROR
    assert "/Volumes/share/x.h5" in result.message and "shared storage" in result.message


def test_row_user_cancels_resolution(lab: Lab) -> None:
    """Seed: user cancels resolution -> silent return to the dialog, nothing submitted."""
    labels = make_labels(lab.project / "labels.slp", ["/Users/me/gone.h5"])

    async def body(h: Harness) -> FlowResult:
        result = await flow_for(h, resolver=lambda view: None).run(
            config=fake_config(), labels_path=str(labels))
        assert h.jobs() == []
        return result

    result = with_worker(lab, body)
    assert result.status is FlowStatus.CANCELLED
    assert result.message == ""
    assert result.job_id == "" and not result.submitted


def test_resolution_edited_in_the_terminal(lab: Lab) -> None:
    labels = make_labels(lab.project / "labels.slp", ["/Users/me/a_renamed.h5"])
    answers = iter(["/nope", lab.video_a])  # a typo (re-prompted), then a typed path
    out = Console(file=open(lab.tmp / "term.txt", "w"), width=120)  # noqa: SIM115

    async def body(h: Harness) -> FlowResult:
        resolver = TerminalResolver(console=out, input=lambda prompt: next(answers))
        return await flow_for(h, resolver=resolver, follow_progress=False).run(
            config=fake_config(), labels_path=str(labels))

    result = with_worker(lab, body)
    assert result.ok, result
    assert dict(result.path_mappings) == {"/Users/me/a_renamed.h5": lab.video_a}


def test_mapping_that_still_misses_is_rechecked_and_reported(lab: Lab) -> None:
    labels = make_labels(lab.project / "labels.slp", ["/Users/me/zzz.h5"])
    rounds: list[int] = []

    def stubborn(view: CheckView) -> Resolution:
        rounds.append(view.attempt)
        return Resolution(path_mappings={"/Users/me/zzz.h5": str(lab.data / "still-missing.h5")})

    async def body(h: Harness) -> FlowResult:
        flow = flow_for(h, resolver=stubborn, max_rounds=2)
        result = await flow.run(config=fake_config(), labels_path=str(labels))
        assert h.jobs() == []
        return result

    result = with_worker(lab, body)
    assert rounds == [1, 2]
    assert result.status is FlowStatus.ERROR and "still missing" in result.message


def test_auto_resolver_below_threshold_fails_with_the_list(lab: Lab) -> None:
    labels = make_labels(lab.project / "labels.slp", ["/Users/me/data/a.h5"])

    async def body(h: Harness) -> FlowResult:
        return await flow_for(h, resolver=AutoResolver(threshold=1.01)).run(
            config=fake_config(), labels_path=str(labels))

    result = with_worker(lab, body)
    assert result.status is FlowStatus.ERROR and result.stage == "resolve"
    assert "/Users/me/data/a.h5" in result.message


def test_saved_prefixes_are_offered_first_and_learned(lab: Lab) -> None:
    labels = make_labels(lab.project / "labels.slp", ["/Volumes/share/data/a.h5"])
    store = PrefixStore(lab.tmp / "prefixes.json")
    store.remember({"/Volumes/share/data": str(lab.data)}, worker_id="gpu-1")
    seen: list[CheckView] = []
    auto = AutoResolver()

    def resolver(view: CheckView) -> Resolution:
        seen.append(view)
        return auto(view)

    async def body(h: Harness) -> FlowResult:
        return await flow_for(h, resolver=resolver, store=store, follow_progress=False).run(
            config=fake_config(), labels_path=str(labels))

    result = with_worker(lab, body)
    assert result.ok, result
    assert seen[0].saved_prefixes[0].original_prefix == "/Volumes/share/data"
    assert len(seen) == 1

    # Typed mappings teach the store a prefix for next time.
    labels2 = make_labels(lab.project / "labels2.slp", ["/home/me/stuff/data/b.h5"])
    store2 = PrefixStore(lab.tmp / "prefixes2.json")

    async def body2(h: Harness) -> FlowResult:
        resolver = lambda view: Resolution(  # noqa: E731
            path_mappings={"/home/me/stuff/data/b.h5": lab.video_b})
        return await flow_for(h, resolver=resolver, store=store2, follow_progress=False).run(
            config=fake_config(), labels_path=str(labels2))

    assert with_worker(lab, body2).ok
    assert store2.load("gpu-1") == {"/home/me/stuff/data": str(lab.mnt / "data")}  # specific form


# ----------------------------------------------------------------------------- post-submission rows


def test_a_saved_rule_the_worker_would_refuse_is_dropped_with_a_note(lab: Lab) -> None:
    """The issue's second-train failure: an old saved "/Volumes -> <above the mount>" rule is
    left out (and forgotten) instead of failing every later train."""
    labels = make_labels(lab.project / "labels.slp", ["/Volumes/lab/mnt/data/a.h5"])
    store = PrefixStore(lab.tmp / "prefixes.json")
    store.remember({"/Volumes": str(lab.tmp)}, worker_id="gpu-1")  # lab.tmp holds the mount
    seen: list[CheckView] = []
    auto = AutoResolver()

    def resolver(view: CheckView) -> Resolution:
        seen.append(view)
        return auto(view)

    async def body(h: Harness) -> FlowResult:
        return await flow_for(h, resolver=resolver, store=store, follow_progress=False).run(
            config=fake_config(), labels_path=str(labels))

    result = with_worker(lab, body)
    assert result.ok, result
    assert seen[0].saved_prefixes == ()
    assert seen[0].dropped_saved == ("/Volumes",)
    assert "not under the worker's shared storage" in seen[0].notes[0]
    assert "/Volumes" not in store.load("gpu-1")  # forgotten
    assert store.load("gpu-1") == {"/Volumes/lab/mnt/data": str(lab.data)}  # specific form


def test_a_mapping_the_worker_refuses_is_dropped_and_never_resent(lab: Lab) -> None:
    labels = make_labels(lab.project / "labels.slp", ["/Volumes/lab/mnt/data/a.h5"])
    (lab.mnt / "escape").symlink_to(lab.tmp)  # a link out of the mount
    seen: list[CheckView] = []
    auto = AutoResolver()

    def resolver(view: CheckView) -> Resolution:
        seen.append(view)
        return auto(view)

    async def body(h: Harness) -> FlowResult:
        return await flow_for(h, resolver=resolver, follow_progress=False).run(
            config=fake_config(), labels_path=str(labels),
            prefix_mappings={"/Volumes/lab": str(lab.mnt / "escape")})

    result = with_worker(lab, body)
    assert result.ok, result
    (refused,) = seen[0].refused
    assert refused.original == "/Volumes/lab" and "symbolic link" in refused.reason
    assert seen[0].videos[0].status == "refused"
    assert "/Volumes/lab" not in result.prefix_mappings


def test_client_file_facts_rank_the_same_size_file_first(lab: Lab) -> None:
    """1.2: the client's own copy (same path here, both sides on one machine) has a size;
    the same-name file of that size is suggested first, above a same-name decoy."""
    laptop = lab.tmp / "laptop" / "data"
    make_h5_video(laptop / "a.h5")
    decoy = lab.mnt / "elsewhere" / "data" / "a.h5"
    decoy.parent.mkdir(parents=True)
    decoy.write_bytes(b"not the same size")
    labels = make_labels(lab.project / "labels.slp", [str(laptop / "a.h5")])
    seen: list[CheckView] = []

    def resolver(view: CheckView) -> Resolution | None:
        seen.append(view)
        return None

    async def body(h: Harness) -> FlowResult:
        return await flow_for(h, resolver=resolver, follow_progress=False).run(
            config=fake_config(), labels_path=str(labels))

    with_worker(lab, body)
    best = seen[0].videos[0].suggestions[0]
    assert best.worker_path == lab.video_a and best.reason == "same_name_and_size"


def test_row_job_rejected_shows_the_reasons_field_by_field(lab: Lab) -> None:
    """Seed: JOB_REJECTED -> error popup with the worker's rejection reasons."""
    labels = make_labels(lab.project / "labels.slp", [lab.video_a])
    outside = lab.tmp / "elsewhere" / "val.slp"
    make_labels(outside, [lab.video_a])

    async def body(h: Harness) -> FlowResult:
        result = await flow_for(h).run(
            config=fake_config(), labels_path=str(labels), val_labels_path=str(outside),
            resume_ckpt_path=str(lab.data / "missing.ckpt"),
        )
        assert h.jobs() == []
        return result

    result = with_worker(lab, body)
    assert result.status is FlowStatus.ERROR and result.stage == "submit"
    fields = {v.field for v in result.violations}
    assert {"spec.val_labels_path", "spec.resume_ckpt_path"} <= fields
    for violation in result.violations:
        assert f"{violation.field}: {violation.message}" in result.message
    codes = {v.field: v.code for v in result.violations}
    assert codes["spec.val_labels_path"] == "outside_mounts"
    assert codes["spec.resume_ckpt_path"] == "not_found"


def test_bad_config_is_rejected_by_the_worker_with_its_reason(lab: Lab) -> None:
    labels = make_labels(lab.project / "labels.slp", [lab.video_a])

    async def body(h: Harness) -> FlowResult:
        return await flow_for(h).run(config={"trainer_config": {"max_epochs": 1}},
                                     labels_path=str(labels))

    result = with_worker(lab, body)
    assert result.status is FlowStatus.ERROR and result.violations
    assert result.violations[0].field.startswith("spec.config")


def drop_job_accepted(client_end: MemoryLink, worker_end: MemoryLink) -> None:
    """The worker accepts, but the answer is lost and the link drops."""

    def drop(frame: bytes) -> bool:
        try:
            name = decode(frame).WhichOneof("body")
        except Exception:
            return False
        if name == "job_accepted":
            asyncio.get_running_loop().call_soon(
                lambda: asyncio.ensure_future(worker_end.close()))
            return True
        return False

    worker_end.drop = drop


def test_row_connection_lost_during_submit_then_safe_retry(lab: Lab) -> None:
    """Seed: WebRTC drops during submit -> "Connection lost. Try again."; retry is safe."""
    labels = make_labels(lab.project / "labels.slp", [lab.video_a])
    sink = Recorder()

    async def body(h: Harness) -> tuple[FlowResult, FlowResult, int]:
        config = fake_config(epochs=2, batches=5, batch_sleep=0.05)  # still running at retry
        h.on_link = drop_job_accepted
        lost = await flow_for(h).run(config=config, labels_path=str(labels))
        h.on_link = None
        retry = await flow_for(h, sinks=[sink]).run(
            config=config, labels_path=str(labels), retry_job_id=lost.job_id)
        return lost, retry, len(h.jobs())

    lost, retry, jobs = with_worker(lab, body)
    assert lost.status is FlowStatus.ERROR
    assert lost.message == "Connection lost. Try again." == CONNECTION_LOST
    assert lost.stage == "submit" and is_valid_job_id(lost.job_id)
    assert retry.ok, retry
    assert retry.job_id == lost.job_id
    assert retry.accepted is not None and retry.accepted.duplicate
    assert jobs == 1  # the worker never started the job twice
    # The retry re-attached: it saw the whole run, in order, each event once, although
    # the replay and the live events interleave on the wire.
    progress = [e.progress for e in sink.events if isinstance(e, ProgressReceived)]
    assert progress[0].event == progress_pb2.PROGRESS_EVENT_TRAIN_BEGIN
    assert isinstance(sink.events[-1], JobCompleted)
    seqs = [_seq(e) for e in sink.events]
    assert seqs == list(range(1, len(seqs) + 1))


def _seq(event: Any) -> int:
    for name in ("progress", "log", "complete", "failed"):
        if hasattr(event, name):
            return int(getattr(event, name).sequence)
    raise AssertionError(event)


def test_row_job_failed_during_training_gives_details(lab: Lab) -> None:
    """Seed: JOB_FAILED during training -> error popup with the failure details."""
    labels = make_labels(lab.project / "labels.slp", [lab.video_a])

    async def body(h: Harness) -> FlowResult:
        return await flow_for(h).run(config=fake_config("fail"), labels_path=str(labels))

    result = with_worker(lab, body)
    assert result.status is FlowStatus.ERROR and result.stage == "progress"
    assert result.message.startswith("Training failed: ")
    assert result.failure is not None
    assert result.failure.exit_code == 1
    assert result.failure.code == "trainer_exited"
    assert any("CUDA out of memory" in line for line in result.failure.log_tail)
    assert result.submitted


def test_stop_request_ends_training_early(lab: Lab) -> None:
    labels = make_labels(lab.project / "labels.slp", [lab.video_a])

    class StopAfterFirstBatch(Recorder):
        def stop_requested(self) -> bool:
            return any(isinstance(e, ProgressReceived)
                       and e.progress.event == progress_pb2.PROGRESS_EVENT_BATCH_END
                       for e in self.events)

    sink = StopAfterFirstBatch()

    async def body(h: Harness) -> FlowResult:
        return await flow_for(h, sinks=[sink]).run(
            config=fake_config(epochs=50, batches=20, batch_sleep=0.02),
            labels_path=str(labels))

    result = with_worker(lab, body)
    assert result.ok and result.completion is not None and result.completion.stopped_early


# ----------------------------------------------------------------------------- bad input


def test_config_that_is_not_a_mapping_never_connects(lab: Lab, tmp_path: Path) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model_config: [unclosed\n")

    async def body(h: Harness) -> list[FlowResult]:
        results = [
            await flow_for(h).run(config_content="- just\n- a list\n", labels_path="/x/l.slp"),
            await flow_for(h).run(config=bad_yaml, labels_path="/x/l.slp"),
            await flow_for(h).run(config=tmp_path / "absent.yaml", labels_path="/x/l.slp"),
            await flow_for(h).run(labels_path="/x/l.slp"),
        ]
        assert h.connects == 0
        return results

    results = with_worker(lab, body)
    assert all(r.status is FlowStatus.ERROR and r.stage == "config" for r in results)
    assert "mapping" in results[0].message
    assert "line" in results[1].message


class BadWorker:
    """A scripted worker: answers Hello properly, then misbehaves on the path check."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.submits = 0

    async def serve(self, link: MemoryLink) -> None:
        stream = MessageStream()
        try:
            while True:
                env = stream.receive(await link.recv(), 0.0)
                if env is None:
                    continue
                name = env.WhichOneof("body")
                if name == "hello":
                    ack = handshake_pb2.HelloAck(chosen_version=SUPPORTED.max.to_proto(),
                                                 worker_id="bad")
                    for f in stream.send(ack, correlation_id=env.message_id)[1]:
                        await link.send(f)
                elif name == "path_check_request":
                    await self.misbehave(stream, link, env.message_id)
                elif name == "job_submit":
                    self.submits += 1
        except Exception:
            return

    async def misbehave(self, stream: MessageStream, link: MemoryLink, mid: int) -> None:
        if self.behaviour == "garbage":
            await link.send(b"\x00\x01garbage\xff")
        elif self.behaviour == "wrong_correlation":
            for f in stream.send(paths_pb2.PathCheckResult(), correlation_id=mid + 41)[1]:
                await link.send(f)
        elif self.behaviour == "late":
            await asyncio.sleep(0.5)
            for f in stream.send(paths_pb2.PathCheckResult(), correlation_id=mid)[1]:
                await link.send(f)
        elif self.behaviour == "close":
            await link.close()


@pytest.mark.parametrize("behaviour, message", [
    ("garbage", NO_ANSWER),
    ("wrong_correlation", NO_ANSWER),
    ("late", NO_ANSWER),
    ("close", CONNECTION_LOST),
])
def test_misbehaving_worker_ends_with_one_message_and_nothing_submitted(
    behaviour: str, message: str
) -> None:
    worker = BadWorker(behaviour)

    async def main() -> FlowResult:
        tasks = []

        async def connect() -> MemoryLink:
            client_end, worker_end = memory_link_pair()
            tasks.append(asyncio.create_task(worker.serve(worker_end)))
            return client_end

        timeouts = FlowTimeouts(check_s=0.3, hello_s=1.0)
        flow = PresubmissionFlow(connect=connect, timeouts=timeouts, resolver=AutoResolver())
        result = await flow.run(config=fake_config(), labels_path="/x/l.slp")
        await asyncio.sleep(0.3)  # a late answer arrives after the flow gave up
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return result

    result = asyncio.run(asyncio.wait_for(main(), 20))
    assert result.status is FlowStatus.ERROR
    assert result.message == message
    assert result.stage == "check"
    assert worker.submits == 0


def test_worker_closing_during_progress_reattaches(lab: Lab) -> None:
    labels = make_labels(lab.project / "labels.slp", [lab.video_a])
    sink = Recorder()

    def close_after_first_batch(client_end: MemoryLink, worker_end: MemoryLink) -> None:
        if getattr(close_after_first_batch, "done", False):
            return

        def drop(frame: bytes) -> bool:
            try:
                env = decode(frame)
            except Exception:
                return False
            name = env.WhichOneof("body")
            items = ([env.job_progress] if name == "job_progress" else
                     list(env.job_progress_batch.items) if name == "job_progress_batch" else [])
            if any(i.event == progress_pb2.PROGRESS_EVENT_BATCH_END for i in items):
                close_after_first_batch.done = True  # type: ignore[attr-defined]
                asyncio.get_running_loop().call_soon(
                    lambda: asyncio.ensure_future(worker_end.close()))
                return True
            return False

        worker_end.drop = drop

    async def body(h: Harness) -> tuple[FlowResult, int]:
        h.on_link = close_after_first_batch
        result = await flow_for(h, sinks=[sink]).run(
            config=fake_config(epochs=2, batches=3, batch_sleep=0.05), labels_path=str(labels))
        return result, h.connects

    result, connects = with_worker(lab, body)
    assert result.ok, result
    assert connects == 2  # one reconnect to re-attach
    seqs = [e.progress.sequence for e in sink.events if isinstance(e, ProgressReceived)]
    assert seqs == sorted(set(seqs))  # nothing twice, in order
    assert isinstance(sink.events[-1], JobCompleted)


def test_a_broken_resolver_ends_with_a_message_and_nothing_submitted(lab: Lab) -> None:
    labels = make_labels(lab.project / "labels.slp", ["/Users/me/gone.h5"])

    def broken(view: CheckView) -> Resolution:
        raise RuntimeError("dialog crashed")

    async def body(h: Harness) -> FlowResult:
        result = await flow_for(h, resolver=broken).run(config=fake_config(),
                                                        labels_path=str(labels))
        assert h.jobs() == []
        return result

    result = with_worker(lab, body)
    assert result.status is FlowStatus.ERROR and "dialog crashed" in result.message


def test_async_resolver_is_awaited(lab: Lab) -> None:
    labels = make_labels(lab.project / "labels.slp", ["/Volumes/share/data/a.h5"])

    async def resolver(view: CheckView) -> Resolution:
        await asyncio.sleep(0)
        return Resolution(prefix_mappings={"/Volumes/share/data": str(lab.data)})

    async def body(h: Harness) -> FlowResult:
        return await flow_for(h, resolver=resolver, follow_progress=False).run(
            config=fake_config(), labels_path=str(labels))

    assert with_worker(lab, body).ok


# ----------------------------------------------------------------------------- retry and binding


def client_bodies(link: MemoryLink) -> list[str]:
    """The bodies the client sent on ``link``, in order."""
    out = []
    for frame in link.sent:
        try:
            out.append(decode(frame).WhichOneof("body") or "")
        except Exception:
            out.append("")
    return out


def test_retry_of_a_known_job_attaches_without_a_second_check_or_submit(lab: Lab) -> None:
    """The retry's mappings differ (new saved rules): no conflict, the job is followed."""
    labels = make_labels(lab.project / "labels.slp", ["/Volumes/share/data/a.h5"])
    sink = Recorder()
    first_rule = {"/Volumes/share/data": str(lab.data)}
    changed_rule = {"/Volumes/share": str(lab.mnt)}  # same files, different mappings

    async def body(h: Harness) -> tuple[FlowResult, FlowResult, int]:
        config = fake_config(epochs=2, batches=5, batch_sleep=0.05)
        h.on_link = drop_job_accepted
        lost = await flow_for(h).run(config=config, labels_path=str(labels),
                                     prefix_mappings=first_rule)
        h.on_link = None
        retry = await flow_for(h, sinks=[sink]).run(
            config=config, labels_path=str(labels), prefix_mappings=changed_rule,
            retry_job_id=lost.job_id)
        return lost, retry, len(h.jobs())

    lost, retry, jobs = with_worker(lab, body)
    assert lost.message == CONNECTION_LOST and lost.stage == "submit"
    assert retry.ok, retry
    assert retry.job_id == lost.job_id and jobs == 1
    assert retry.accepted is not None and retry.accepted.duplicate
    assert retry.accepted.run_dir
    assert retry.check is None  # nothing was checked again
    assert not retry.violations
    assert isinstance(sink.events[-1], JobCompleted)
    assert [_seq(e) for e in sink.events] == list(range(1, len(sink.events) + 1))


def test_retry_known_job_sends_only_attach(lab: Lab) -> None:
    labels = make_labels(lab.project / "labels.slp", [lab.video_a])

    async def body(h: Harness) -> tuple[FlowResult, list[str]]:
        h.on_link = drop_job_accepted
        lost = await flow_for(h).run(config=fake_config(), labels_path=str(labels))
        h.on_link = None
        retry = await flow_for(h, follow_progress=False).run(
            config=fake_config(), labels_path=str(labels), retry_job_id=lost.job_id)
        return retry, client_bodies(h.links[1])

    retry, bodies = with_worker(lab, body)
    assert retry.ok and retry.stage == "submit", retry
    assert bodies == ["hello", "job_attach"]


def test_retry_of_a_job_the_worker_never_got_checks_and_submits_it(lab: Lab) -> None:
    """The JobSubmit was lost on the way: the attach answers NOT_FOUND, then check + submit."""
    labels = make_labels(lab.project / "labels.slp", [lab.video_a])

    def lose_the_submit(client_end: MemoryLink, worker_end: MemoryLink) -> None:
        def drop(frame: bytes) -> bool:
            if decode(frame).WhichOneof("body") == "job_submit":
                asyncio.get_running_loop().call_soon(
                    lambda: asyncio.ensure_future(client_end.close()))
                return True
            return False

        client_end.drop = drop

    async def body(h: Harness) -> tuple[FlowResult, FlowResult, int, list[str]]:
        h.on_link = lose_the_submit
        lost = await flow_for(h).run(config=fake_config(), labels_path=str(labels))
        assert h.jobs() == []
        h.on_link = None
        retry = await flow_for(h).run(config=fake_config(), labels_path=str(labels),
                                      retry_job_id=lost.job_id)
        return lost, retry, len(h.jobs()), client_bodies(h.links[1])

    lost, retry, jobs, bodies = with_worker(lab, body)
    assert lost.message == CONNECTION_LOST and lost.stage == "submit"
    assert retry.ok and retry.stage == "done", retry
    assert retry.job_id == lost.job_id and jobs == 1
    assert retry.accepted is not None and not retry.accepted.duplicate
    assert retry.check is not None and retry.check_token
    assert bodies[:4] == ["hello", "job_attach", "path_check_request", "job_submit"]


def test_submit_carries_exactly_the_mappings_of_the_passing_check(lab: Lab) -> None:
    """The check token binds the submit to the last passing check's mappings: the submit
    carries those exactly (video path_mappings, prefix_mappings), minus the labels file's
    own mapping, which became labels_path."""
    client_labels = "/Users/me/project/labels.slp"
    labels = make_labels(lab.project / "labels.slp",
                         ["/Users/me/data/a.h5", "/Volumes/share/data/b.h5"])
    given = {client_labels: str(labels), "/Users/me/data/a.h5": lab.video_a}
    resolved_prefix = {"/Volumes/share/data": str(lab.data)}
    unused = {"/Elsewhere": str(lab.mnt / "other")}  # matches nothing; still bound and sent

    async def body(h: Harness) -> tuple[FlowResult, list[Any]]:
        flow = flow_for(h, follow_progress=False,
                        resolver=lambda view: Resolution(prefix_mappings=resolved_prefix))
        result = await flow.run(config=fake_config(), labels_path=client_labels,
                                path_mappings=given, prefix_mappings=unused)
        return result, [decode(f) for f in h.links[0].sent]

    result, sent = with_worker(lab, body)
    assert result.ok, result
    checks = [e.path_check_request for e in sent if e.WhichOneof("body") == "path_check_request"]
    [submit] = [e.job_submit for e in sent if e.WhichOneof("body") == "job_submit"]
    final_check = checks[-1]
    assert len(checks) == 2  # the first missed b.h5; the resolution was re-checked
    expected_paths = {k: v for k, v in final_check.path_mappings.items() if k != client_labels}
    assert dict(submit.spec.path_mappings) == expected_paths
    assert dict(submit.spec.prefix_mappings) == dict(final_check.prefix_mappings)
    assert client_labels in final_check.path_mappings
    assert client_labels not in submit.spec.path_mappings
    assert submit.spec.labels_path == str(labels)
    assert expected_paths == {"/Users/me/data/a.h5": lab.video_a}
    assert dict(submit.spec.prefix_mappings) == {**unused, **resolved_prefix}
    assert dict(result.path_mappings) == expected_paths
    assert dict(result.prefix_mappings) == dict(submit.spec.prefix_mappings)
    assert submit.check_token == result.check_token
