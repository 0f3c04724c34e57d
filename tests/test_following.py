"""Following an accepted job (step 6): liveness probes, reattach, sequence order.

The real WorkerService over in-memory links, with short probe timeouts. A dead
worker is a link whose worker end swallows every frame after JobAccepted (the
transport notices nothing, as when a worker process is killed) and a connect
that fails afterwards; a slow but healthy job is one whose trainer stays silent
for longer than the probe interval.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from slp_factory import make_h5_video, make_labels
from test_flow import Harness, Lab, Recorder, fake_config, with_worker

from sleap_rtc.client.events import JobCompleted, ProgressReceived, sequence_of
from sleap_rtc.client.flow import PresubmissionFlow
from sleap_rtc.client.following import Reorder
from sleap_rtc.client.results import CONNECTION_LOST, FlowResult
from sleap_rtc.client.timeouts import FlowTimeouts
from sleap_rtc.transport.link import MemoryLink
from sleap_rtc.worker.service import WorkerService
from sleap_rtc.worker.serviceconfig import WorkerConfig
from sleap_rtc_proto.codec import decode
from sleap_rtc_proto.v1 import progress_pb2

PROBE_AFTER_S = 0.3
PROBE_TIMEOUT_S = 0.3
PROBING = FlowTimeouts(connect_s=2.0, hello_s=1.0, check_s=5.0, submit_s=5.0, control_s=2.0,
                       probe_after_s=PROBE_AFTER_S, probe_timeout_s=PROBE_TIMEOUT_S, tick_s=0.02)
#: A job that runs far longer than any test waits (the worker kills it on close).
LONG_JOB = fake_config(epochs=50, batches=20, batch_sleep=0.05)


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    mnt = tmp_path / "mnt"
    data = mnt / "data"
    return Lab(tmp_path, mnt, data, make_h5_video(data / "a.h5"), make_h5_video(data / "b.h5"))


def body_of(frame: bytes) -> str:
    try:
        return decode(frame).WhichOneof("body") or ""
    except Exception:
        return ""


def go_silent_after_acceptance(worker_end: MemoryLink) -> None:
    """From JobAccepted on, the worker end swallows every frame; the link stays open."""
    silent = [False]

    def drop(frame: bytes) -> bool:
        if silent[0]:
            return True
        if body_of(frame) == "job_accepted":
            silent[0] = True
        return False

    worker_end.drop = drop


def first_link_goes_silent(h: Harness) -> Callable[[MemoryLink, MemoryLink], None]:
    def on_link(client_end: MemoryLink, worker_end: MemoryLink) -> None:
        if h.connects == 1:
            go_silent_after_acceptance(worker_end)

    return on_link


def sent_bodies(link: MemoryLink) -> list[str]:
    return [body_of(frame) for frame in link.sent]


def test_dead_worker_is_noticed_within_the_probe_bound(lab: Lab) -> None:
    """Killed worker: silence, an unanswered probe, a reconnect that fails -> lost, fast."""
    labels = make_labels(lab.project / "labels.slp", [lab.video_a])
    accepted_at: list[float] = []

    async def body(h: Harness) -> tuple[FlowResult, float, Harness]:
        h.on_link = first_link_goes_silent(h)

        async def connect() -> MemoryLink:
            if h.connects >= 1:  # the worker process is gone: nobody to connect to
                raise ConnectionRefusedError("the worker is not in the room")
            return await h.connect()

        flow = PresubmissionFlow(connect=connect, timeouts=PROBING,
                                 on_accepted=lambda a: accepted_at.append(time.monotonic()))
        result = await flow.run(config=LONG_JOB, labels_path=str(labels))
        return result, time.monotonic() - accepted_at[0], h

    result, took, h = with_worker(lab, body)
    assert result.message == CONNECTION_LOST, result
    assert result.stage == "progress" and result.submitted
    assert any("liveness probe" in d for d in result.details)
    assert any("re-attaches" in d for d in result.details)
    # Silence (probe_after_s) + the unanswered probe (probe_timeout_s) + slack; the
    # transport alone would have taken ~30 s.
    print(f"dead worker noticed {took:.2f} s after acceptance")
    assert took < PROBE_AFTER_S + PROBE_TIMEOUT_S + 1.5, took
    assert "job_attach" in sent_bodies(h.links[0])  # the probe went out


def test_silent_link_to_a_live_worker_reconnects_and_finishes(lab: Lab) -> None:
    """The probe fails on a dead link, but the worker lives: reattach, nothing lost."""
    labels = make_labels(lab.project / "labels.slp", [lab.video_a])
    sink = Recorder()

    async def body(h: Harness) -> tuple[FlowResult, int]:
        h.on_link = first_link_goes_silent(h)
        flow = PresubmissionFlow(connect=h.connect, timeouts=PROBING, sinks=[sink])
        result = await flow.run(config=fake_config(epochs=2, batches=4, batch_sleep=0.1),
                                labels_path=str(labels))
        return result, h.connects

    result, connects = with_worker(lab, body)
    assert result.ok, result
    assert connects == 2
    # Everything the silent link swallowed was replayed: the whole run, in order, once.
    assert [sequence_of(e) for e in sink.events] == list(range(1, len(sink.events) + 1))
    progress = [e.progress for e in sink.events if isinstance(e, ProgressReceived)]
    assert progress[0].event == progress_pb2.PROGRESS_EVENT_TRAIN_BEGIN
    assert isinstance(sink.events[-1], JobCompleted)


def test_slow_but_healthy_job_is_not_reported_lost(lab: Lab) -> None:
    """Silences longer than probe_after_s: each probe is answered, the job finishes."""
    labels = make_labels(lab.project / "labels.slp", [lab.video_a])
    silence_s = 2 * (PROBE_AFTER_S + PROBE_TIMEOUT_S)

    async def body(h: Harness) -> tuple[FlowResult, Harness]:
        flow = PresubmissionFlow(connect=h.connect, timeouts=PROBING)
        result = await flow.run(config=fake_config(epochs=1, batches=2, batch_sleep=silence_s),
                                labels_path=str(labels))
        return result, h

    result, h = with_worker(lab, body)
    assert result.ok, result
    assert result.completion is not None and not result.completion.stopped_early
    assert h.connects == 1  # never treated as lost
    probes = sent_bodies(h.links[0]).count("job_attach")
    assert probes >= 2, probes  # several probes, all answered


def test_probing_off_never_probes(lab: Lab) -> None:
    labels = make_labels(lab.project / "labels.slp", [lab.video_a])
    timeouts = FlowTimeouts(probe_after_s=0, idle_s=60, tick_s=0.02)

    async def body(h: Harness) -> tuple[FlowResult, Harness]:
        flow = PresubmissionFlow(connect=h.connect, timeouts=timeouts)
        result = await flow.run(config=fake_config(epochs=1, batches=2, batch_sleep=0.5),
                                labels_path=str(labels))
        return result, h

    result, h = with_worker(lab, body)
    assert result.ok, result
    assert "job_attach" not in sent_bodies(h.links[0])


def test_a_worker_that_forgot_the_job_ends_the_flow(lab: Lab) -> None:
    """After a reconnect the worker (restarted) no longer knows the job: say so, don't wait."""
    labels = make_labels(lab.project / "labels.slp", [lab.video_a])

    async def body(h: Harness) -> FlowResult:
        h.on_link = first_link_goes_silent(h)
        fresh = WorkerService(WorkerConfig(mounts=[lab.mnt], state_dir=lab.tmp / "state2",
                                           verifier=None, worker_id="gpu-1"))
        await fresh.start()
        tasks: list[asyncio.Task[None]] = []

        async def connect() -> MemoryLink:
            if h.connects == 0:
                return await h.connect()
            from sleap_rtc.transport.link import memory_link_pair

            client_end, worker_end = memory_link_pair()
            tasks.append(asyncio.create_task(fresh.serve(worker_end, peer_id="client")))
            return client_end

        try:
            flow = PresubmissionFlow(connect=connect, timeouts=PROBING)
            return await flow.run(config=LONG_JOB, labels_path=str(labels))
        finally:
            await fresh.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    result = with_worker(lab, body)
    assert result.status.value == "error" and result.stage == "progress"
    assert "no longer knows job" in result.message and result.job_id in result.message


def test_probe_defaults_and_the_silence_rule() -> None:
    default = FlowTimeouts()
    assert default.probe_after_s == 5.0 and default.probe_timeout_s == 5.0
    assert default.silence_s == 5.0
    assert FlowTimeouts(probe_after_s=0, idle_s=42).silence_s == 42


def test_reorder_releases_in_sequence_and_skips_stale_gaps() -> None:
    now = [0.0]
    order = Reorder(lambda: now[0])

    def ev(seq: int) -> ProgressReceived:
        return ProgressReceived(progress=progress_pb2.JobProgress(job_id="j", sequence=seq))

    def seqs(events: list[Any]) -> list[int]:
        return [e.progress.sequence for e in events]

    assert seqs(order.add(ev(2))) == []
    assert seqs(order.add(ev(1))) == [1, 2]
    assert order.add(ev(2)) == [] and order.add(ev(1)) == []  # duplicates dropped
    assert order.add(ev(5)) == []
    now[0] = 10.0  # 3 and 4 are gone for good: skip ahead
    assert seqs(order.expire()) == [5]
    assert order.delivered == 5
    assert seqs(order.add(ProgressReceived(progress=progress_pb2.JobProgress(job_id="j")))) == [0]


# --- death noticed at every step (check, resolution, submit), not only while following ---


def go_silent_after(worker_end: MemoryLink, body_name: str) -> None:
    """From the first ``body_name`` frame on (sent), the worker end swallows every frame."""
    silent = [False]

    def drop(frame: bytes) -> bool:
        if silent[0]:
            return True
        if body_of(frame) == body_name:
            silent[0] = True
        return False

    worker_end.drop = drop


def dead_worker_flow(
    lab: Lab, silent_after: str, labels: Path, resolver: Any = None
) -> tuple[FlowResult, float, Harness]:
    async def body(h: Harness) -> tuple[FlowResult, float, Harness]:
        def on_link(client_end: MemoryLink, worker_end: MemoryLink) -> None:
            go_silent_after(worker_end, silent_after)

        h.on_link = on_link

        async def connect() -> MemoryLink:
            if h.connects >= 1:
                raise ConnectionRefusedError("the worker is not in the room")
            return await h.connect()

        # Each request's own timeout is far longer than the probe bound.
        timeouts = FlowTimeouts(connect_s=2.0, hello_s=2.0, check_s=30.0, submit_s=30.0,
                                control_s=2.0, probe_after_s=PROBE_AFTER_S,
                                probe_timeout_s=PROBE_TIMEOUT_S, tick_s=0.02)
        flow = PresubmissionFlow(connect=connect, timeouts=timeouts, resolver=resolver)
        started = time.monotonic()
        result = await flow.run(config=LONG_JOB, labels_path=str(labels))
        return result, time.monotonic() - started, h

    out: tuple[FlowResult, float, Harness] = with_worker(lab, body)
    return out


def test_dead_worker_during_check_is_noticed_within_the_probe_bound(lab: Lab) -> None:
    labels = make_labels(lab.project / "labels.slp", [lab.video_a])
    result, took, h = dead_worker_flow(lab, "hello_ack", labels)
    assert result.message == CONNECTION_LOST and result.stage == "check", result
    assert any("liveness probe" in d for d in result.details)
    assert took < PROBE_AFTER_S + PROBE_TIMEOUT_S + 1.5, took
    assert h.jobs() == []


def test_dead_worker_during_submit_is_noticed_within_the_probe_bound(lab: Lab) -> None:
    """Death between check and accept: the submit's own 30 s timeout is not waited out."""
    labels = make_labels(lab.project / "labels.slp", [lab.video_a])
    result, took, h = dead_worker_flow(lab, "path_check_result", labels)
    assert result.message == CONNECTION_LOST and result.stage == "submit", result
    assert any("liveness probe" in d for d in result.details)
    assert any("never starts twice" in d for d in result.details)
    assert took < PROBE_AFTER_S + PROBE_TIMEOUT_S + 1.5, took
    assert "job_attach" in sent_bodies(h.links[0])


def test_dead_worker_during_resolution_is_noticed_within_the_probe_bound(lab: Lab) -> None:
    """The user is still mapping paths when the worker dies: the flow says so at once."""
    labels = make_labels(lab.project / "labels.slp", ["/laptop/videos/a.h5"])
    asked: list[Any] = []

    async def slow_user(view: Any) -> Any:
        asked.append(view)
        await asyncio.sleep(30)  # a user who takes their time

    result, took, h = dead_worker_flow(lab, "path_check_result", labels, resolver=slow_user)
    assert asked, "the resolver was never asked"
    assert result.message == CONNECTION_LOST and result.stage == "resolve", result
    assert took < PROBE_AFTER_S + PROBE_TIMEOUT_S + 1.5, took
    assert h.jobs() == []


def test_a_live_worker_is_not_reported_lost_during_a_slow_resolution(lab: Lab) -> None:
    labels = make_labels(lab.project / "labels.slp", ["/laptop/videos/a.h5"])

    async def body(h: Harness) -> tuple[FlowResult, Harness]:
        async def slow_user(view: Any) -> Any:
            from sleap_rtc.client.views import Resolution

            await asyncio.sleep(3 * (PROBE_AFTER_S + PROBE_TIMEOUT_S))
            return Resolution({"/laptop/videos/a.h5": lab.video_a}, {})

        flow = PresubmissionFlow(connect=h.connect, timeouts=PROBING, resolver=slow_user)
        result = await flow.run(config=fake_config(epochs=1, batches=1),
                                labels_path=str(labels))
        return result, h

    result, h = with_worker(lab, body)
    assert result.ok, result
    assert h.connects == 1
    assert sent_bodies(h.links[0]).count("job_attach") >= 2  # probed, and answered


def test_after_a_lost_connection_the_client_does_not_promise_the_job_runs(lab: Lab) -> None:
    labels = make_labels(lab.project / "labels.slp", [lab.video_a])
    result, _, _ = dead_worker_flow(lab, "job_accepted", labels)
    assert result.stage == "progress" and result.message == CONNECTION_LOST
    text = " ".join(result.details)
    assert "keeps running on the worker" not in text
    assert "if the worker stopped, its trainer stopped with it" in text
    assert "never trains twice" in text
