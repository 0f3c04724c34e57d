"""WorkerService end to end over in-memory links: a raw protocol client, the real service,
real SLP files, the stand-in trainer. Drops, reorders, reconnects."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from slp_factory import make_h5_video, make_labels
from support.client import RawClient

from sleap_rtc.auth.tokens import TokenIssuer, TokenVerifier
from sleap_rtc.transport.link import MemoryLink, memory_link_pair
from sleap_rtc.worker.service import WorkerService
from sleap_rtc.worker.serviceconfig import WorkerConfig
from sleap_rtc.worker.trainer import RunLimits
from sleap_rtc_proto.codec import body_of
from sleap_rtc_proto.v1 import error_pb2, handshake_pb2, job_pb2, paths_pb2, progress_pb2, spec_pb2

FAKE = Path(__file__).parent / "support" / "fake_sleap_nn.py"
FAKE_COMMAND = (sys.executable, str(FAKE), "train")
E = error_pb2
P = progress_pb2


@dataclass
class Env:
    tmp: Path
    mnt: Path
    state: Path
    labels: Path
    video: str


@pytest.fixture
def env(tmp_path: Path) -> Env:
    mnt = tmp_path / "mnt"
    video = make_h5_video(mnt / "data" / "v.h5")
    labels = make_labels(mnt / "data" / "labels.slp", [video])
    return Env(tmp_path, mnt, tmp_path / "state", labels, video)


def fake_config(mode: str = "ok", **fake: Any) -> str:
    return f"model_config:\n  backbone_config: {{}}\nfake: {json.dumps({'mode': mode, **fake})}\n"


def config_for(env: Env, **kw: Any) -> WorkerConfig:
    base: dict[str, Any] = dict(
        mounts=[env.mnt],
        state_dir=env.state,
        verifier=None,
        trainer_command=FAKE_COMMAND,
        build_index=False,
        run_limits=RunLimits(no_progress_timeout_s=30, term_grace_s=2),
    )
    base.update(kw)
    return WorkerConfig(**base)


def run(
    env: Env,
    body: Callable[[WorkerService, Callable[..., Awaitable[Any]]], Awaitable[Any]],
    **kw: Any,
) -> Any:
    """Start a service, run ``body(service, connect)``, always close."""

    async def main() -> Any:
        service = WorkerService(config_for(env, **kw))
        await service.start()
        serving: list[asyncio.Task[None]] = []

        async def connect(hello: bool = True, token: str = "") -> tuple[RawClient, MemoryLink]:
            client_end, worker_end = memory_link_pair()
            serving.append(asyncio.create_task(service.serve(worker_end, peer_id="c")))
            client = RawClient(client_end)
            if hello:
                ack = await client.hello(token)
                assert ack.WhichOneof("body") == "hello_ack", ack
            return client, client_end

        try:
            async with asyncio.timeout(60):
                return await body(service, connect)
        finally:
            await service.close()
            for task in serving:
                task.cancel()
            await asyncio.gather(*serving, return_exceptions=True)

    return asyncio.run(main())


def submit_msg(env: Env, job_id: str, token: str, **spec: Any) -> job_pb2.JobSubmit:
    spec.setdefault("config_content", fake_config())
    return job_pb2.JobSubmit(
        job_id=job_id,
        spec=spec_pb2.TrainJobSpec(labels_path=str(env.labels), **spec),
        check_token=token,
    )


async def check(client: RawClient, env: Env) -> paths_pb2.PathCheckResult:
    answer = await client.request(paths_pb2.PathCheckRequest(labels_path=str(env.labels)))
    result = body_of(answer)
    assert isinstance(result, paths_pb2.PathCheckResult), answer
    return result


def configs_left(env: Env) -> list[Path]:
    return list((env.state / "configs").glob("*"))


# --- the happy path --------------------------------------------------------------


def test_hello_check_submit_progress_complete(env: Env) -> None:
    async def body(service: WorkerService, connect: Any) -> None:
        client, _ = await connect()
        result = await check(client, env)
        assert result.labels.status == paths_pb2.PATH_STATUS_FOUND
        assert [v.status for v in result.videos] == [paths_pb2.PATH_STATUS_FOUND]
        assert result.check_token
        answer = await client.request(submit_msg(env, "job-1", result.check_token))
        accepted = body_of(answer)
        assert isinstance(accepted, job_pb2.JobAccepted), answer
        assert not accepted.duplicate
        assert accepted.run_dir == str(service.runs_dir / "job-1")  # not .../job-1/job-1
        end = await client.until_job_end("job-1")
        assert isinstance(end, P.JobComplete), end
        assert end.run_dir == accepted.run_dir
        assert str(Path(accepted.run_dir) / "best.ckpt") in end.outputs
        messages = client.job_messages("job-1")
        assert [m.sequence for m in messages] == list(range(1, len(messages) + 1))
        progress = [m for m in messages if isinstance(m, P.JobProgress)]
        assert progress[0].event == P.PROGRESS_EVENT_TRAIN_BEGIN
        assert progress[-1].event == P.PROGRESS_EVENT_TRAIN_END
        assert any(isinstance(m, P.JobLog) for m in messages)
        assert configs_left(env) == []

    run(env, body)


def test_auth_gate_and_token_errors(env: Env) -> None:
    issuer = TokenIssuer.generate()
    verifier = TokenVerifier.for_issuer(issuer)

    async def body(service: WorkerService, connect: Any) -> None:
        client, _ = await connect(hello=False)
        answer = await client.request(paths_pb2.PathCheckRequest(labels_path=str(env.labels)))
        err = body_of(answer)
        assert isinstance(err, E.Error) and err.code == E.ERROR_CODE_UNAUTHENTICATED
        answer = await client.request(submit_msg(env, "j", ""))
        assert body_of(answer).code == E.ERROR_CODE_UNAUTHENTICATED  # type: ignore[union-attr]
        bad = await client.hello("not-a-jwt")
        assert bad.WhichOneof("body") == "error"
        assert body_of(bad).code == E.ERROR_CODE_UNAUTHENTICATED  # type: ignore[union-attr]
        assert "malformed" in body_of(bad).message  # type: ignore[union-attr]
        wrong_room = await client.hello(issuer.issue("ann", "other-room"))
        assert "wrong_room" in body_of(wrong_room).message  # type: ignore[union-attr]
        ok = await client.hello(issuer.issue("ann", "lab"))
        ack = body_of(ok)
        assert ok.WhichOneof("body") == "hello_ack" and ack.subject == "ann"  # type: ignore[union-attr]
        assert ack.worker_id == "w-test" and ack.limits.max_concurrent_jobs == 1  # type: ignore[union-attr]
        assert str(env.mnt.resolve()) in ack.mounts  # type: ignore[union-attr]
        result = await check(client, env)
        assert result.check_token

    run(
        env,
        body,
        verifier=lambda token: verifier.verify(token, room="lab"),
        worker_id="w-test",
    )


def test_submit_must_carry_the_checked_mappings(env: Env) -> None:
    """Intake verifies the token against the submit's mappings (the labels one may go)."""
    video = make_h5_video(env.mnt / "videos" / "cam1.h5")
    other = make_h5_video(env.mnt / "videos" / "cam2.h5")
    labels = make_labels(env.mnt / "proj" / "mapped.slp", ["/Users/me/vids/cam1.h5"])
    client_labels = "/Users/me/mapped.slp"
    checked = {client_labels: str(labels), "/Users/me/vids/cam1.h5": video}

    async def body(service: WorkerService, connect: Any) -> None:
        client, _ = await connect()
        request = paths_pb2.PathCheckRequest(labels_path=client_labels, path_mappings=checked)
        result = body_of(await client.request(request))
        assert isinstance(result, paths_pb2.PathCheckResult) and result.check_token, result

        def submit(job_id: str, mappings: dict[str, str]) -> job_pb2.JobSubmit:
            return job_pb2.JobSubmit(
                job_id=job_id,
                spec=spec_pb2.TrainJobSpec(
                    labels_path=result.labels.worker_path,
                    config_content=fake_config(),
                    path_mappings=mappings,
                ),
                check_token=result.check_token,
            )

        extra = {"/Users/me/vids/cam1.h5": video, "/Users/me/vids/cam2.h5": other}
        rejected = body_of(await client.request(submit("extra", extra)))
        assert isinstance(rejected, job_pb2.JobRejected), rejected
        [violation] = rejected.violations
        assert violation.code == job_pb2.VIOLATION_CODE_STALE_CHECK
        assert "'/Users/me/vids/cam2.h5'" in violation.message
        assert "not part of the path check" in violation.message
        other_target = body_of(
            await client.request(submit("diff", {"/Users/me/vids/cam1.h5": other}))
        )
        assert isinstance(other_target, job_pb2.JobRejected)
        assert other_target.violations[0].code == job_pb2.VIOLATION_CODE_STALE_CHECK
        video_only = {"/Users/me/vids/cam1.h5": video}
        accepted = body_of(await client.request(submit("ok", video_only)))
        assert isinstance(accepted, job_pb2.JobAccepted), accepted
        end = await client.until_job_end("ok")
        assert isinstance(end, P.JobComplete), end
        argv = json.loads((Path(accepted.run_dir) / "argv.json").read_text())
        assert argv["video_path_map"] == [["/Users/me/vids/cam1.h5", video]]
        assert configs_left(env) == []

    run(env, body)


def test_index_is_built_in_a_thread_at_start(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from sleap_rtc.worker.index import FileIndex

    release = threading.Event()
    walks: list[str] = []
    build = FileIndex._build

    def slow_build(self: FileIndex, stop: threading.Event | None = None) -> Any:
        walks.append(threading.current_thread().name)
        assert release.wait(10)
        return build(self, stop)

    monkeypatch.setattr(FileIndex, "_build", slow_build)
    lost = make_labels(env.mnt / "proj" / "lost.slp", ["/Users/me/gone/v.h5"])

    async def body(service: WorkerService, connect: Any) -> None:
        assert service.index is not None and not service.index.built
        while not walks:  # start() returned; the walk runs elsewhere
            await asyncio.sleep(0.01)
        assert walks[0] != threading.main_thread().name
        client, _ = await connect()
        assert (await check(client, env)).check_token  # no suggestions needed: no wait
        request = paths_pb2.PathCheckRequest(labels_path=str(lost))
        pending = asyncio.ensure_future(client.request(request))
        await asyncio.sleep(0.2)
        assert not pending.done()  # suggestions need the index: the check waits for the walk
        release.set()
        result = body_of(await pending)
        assert isinstance(result, paths_pb2.PathCheckResult), result
        assert result.videos[0].suggestions[0].worker_path == str(Path(env.video).resolve())
        assert service.index.built and len(walks) == 1  # one walk, not two

    run(env, body, build_index=True)


def test_close_during_the_start_up_walk_gives_it_up(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sleap_rtc.worker.index import FileIndex

    entered = threading.Event()
    build = FileIndex._build
    outcome: list[bool] = []

    def slow_build(self: FileIndex, stop: threading.Event | None = None) -> Any:
        entered.set()
        assert stop is not None and stop.wait(10)  # close() sets it
        snap = build(self, stop)
        outcome.append(snap is None)
        return snap

    monkeypatch.setattr(FileIndex, "_build", slow_build)

    async def main() -> WorkerService:
        service = WorkerService(config_for(env, build_index=True))
        await service.start()
        assert await asyncio.to_thread(entered.wait, 10)
        async with asyncio.timeout(10):
            await service.close()
        return service

    service = asyncio.run(main())
    assert outcome == [True] and service.index is not None and not service.index.built


# --- faults on the link ------------------------------------------------------------


def test_dropped_frame_is_retried_and_reordered_requests_are_correlated(env: Env) -> None:
    async def body(service: WorkerService, connect: Any) -> None:
        client, link = await connect()
        dropped: list[bytes] = []

        def drop_first(frame: bytes) -> bool:
            if not dropped:
                dropped.append(frame)
                return True
            return False

        link.drop = drop_first
        lost = await client.send(paths_pb2.PathCheckRequest(labels_path=str(env.labels)))
        with pytest.raises(TimeoutError):
            await client.answer(lost, timeout=0.3)
        result = await check(client, env)  # the retry is answered
        assert result.check_token
        # Reordered requests: each answer names its request.
        link.reorder_window = 3
        ids = [
            await client.send(paths_pb2.PathCheckRequest(labels_path=str(env.labels))),
            await client.send(job_pb2.JobAttach(job_id="nope")),
            await client.send(paths_pb2.PathCheckRequest(labels_path=str(env.mnt / "x.slp"))),
        ]
        link.reorder_window = 0
        found = body_of(await client.answer(ids[0]))
        missing = body_of(await client.answer(ids[2]))
        not_found = body_of(await client.answer(ids[1]))
        assert found.labels.status == paths_pb2.PATH_STATUS_FOUND  # type: ignore[union-attr]
        assert missing.labels.status == paths_pb2.PATH_STATUS_MISSING  # type: ignore[union-attr]
        assert not_found.code == E.ERROR_CODE_NOT_FOUND  # type: ignore[union-attr]

    run(env, body)


def test_worker_to_client_reorder_is_recoverable_by_sequence(env: Env) -> None:
    async def body(service: WorkerService, connect: Any) -> None:
        client, link = await connect()
        token = (await check(client, env)).check_token
        await client.request(submit_msg(env, "job-r", token))
        assert link.peer is not None
        link.peer.reorder_window = 4  # the worker's sends get shuffled
        await asyncio.sleep(2.0)
        link.peer.reorder_window = 0
        # Attach to flush anything held and get the rest.
        await client.request(job_pb2.JobAttach(job_id="job-r", after_sequence=0))
        end = await client.until_job_end("job-r")
        assert isinstance(end, P.JobComplete)
        seqs = [m.sequence for m in client.job_messages("job-r")]
        assert seqs == list(range(1, end.sequence + 1))  # complete once sorted

    run(env, body)


def test_link_closed_mid_job_then_attach_gets_the_rest(env: Env) -> None:
    async def body(service: WorkerService, connect: Any) -> None:
        client, link = await connect()
        token = (await check(client, env)).check_token
        cfg = fake_config(epochs=3, batches=5, batch_sleep=0.05)
        accepted = await client.request(submit_msg(env, "job-a", token, config_content=cfg))
        assert accepted.WhichOneof("body") == "job_accepted"
        while not any(isinstance(m, P.JobProgress) for m in client.job_messages("job-a")):
            await client.next()
        seen = client.job_messages("job-a")
        last = seen[-1].sequence
        await link.close()
        await asyncio.sleep(0.5)  # the job keeps running without a connection
        job = service.registry.get("job-a")
        assert job is not None and job.last_sequence > last

        client2, _ = await connect()
        status = body_of(
            await client2.request(job_pb2.JobAttach(job_id="job-a", after_sequence=last))
        )
        assert isinstance(status, job_pb2.JobStatus)
        assert status.state in (job_pb2.JOB_STATE_RUNNING, job_pb2.JOB_STATE_COMPLETED)
        end = await client2.until_job_end("job-a")
        assert isinstance(end, P.JobComplete)
        rest = client2.job_messages("job-a")
        assert [m.sequence for m in rest] == list(range(last + 1, end.sequence + 1))
        assert configs_left(env) == []

    run(env, body)


# --- idempotency, limits, control --------------------------------------------------


def test_duplicate_submit_same_answer_one_run_and_conflict(env: Env) -> None:
    async def body(service: WorkerService, connect: Any) -> None:
        client, _ = await connect()
        token = (await check(client, env)).check_token
        first = body_of(await client.request(submit_msg(env, "job-d", token)))
        again = body_of(await client.request(submit_msg(env, "job-d", token)))
        assert isinstance(first, job_pb2.JobAccepted) and isinstance(again, job_pb2.JobAccepted)
        assert again.duplicate and again.run_dir == first.run_dir
        other = submit_msg(env, "job-d", token, max_epochs=7)
        conflict = body_of(await client.request(other))
        assert isinstance(conflict, job_pb2.JobRejected)
        assert conflict.violations[0].code == job_pb2.VIOLATION_CODE_CONFLICT
        end = await client.until_job_end("job-d")
        assert isinstance(end, P.JobComplete)
        again2 = body_of(await client.request(submit_msg(env, "job-d", token)))
        assert again2.duplicate  # type: ignore[union-attr]
        await asyncio.sleep(0.3)
        assert len(list(service.runs_dir.iterdir())) == 1  # one run folder: one run
        begins = [
            m
            for m in client.job_messages("job-d")
            if isinstance(m, P.JobProgress) and m.event == P.PROGRESS_EVENT_TRAIN_BEGIN
        ]
        assert len(begins) == 1

    run(env, body)


def test_busy_then_stop_then_control_errors(env: Env) -> None:
    async def body(service: WorkerService, connect: Any) -> None:
        client, _ = await connect()
        token = (await check(client, env)).check_token
        cfg = fake_config(epochs=100, batches=10, batch_sleep=0.02)
        assert body_of(await client.request(submit_msg(env, "j1", token, config_content=cfg)))
        busy = body_of(await client.request(submit_msg(env, "j2", token)))
        assert isinstance(busy, E.Error) and busy.code == E.ERROR_CODE_BUSY and busy.retryable
        while not any(
            isinstance(m, P.JobProgress) and m.event == P.PROGRESS_EVENT_BATCH_END
            for m in client.job_messages("j1")
        ):
            await client.next()
        stop = job_pb2.JobControl(job_id="j1", action=job_pb2.CONTROL_ACTION_STOP)
        status = body_of(await client.request(stop))
        assert isinstance(status, job_pb2.JobStatus) and status.state == job_pb2.JOB_STATE_STOPPING
        end = await client.until_job_end("j1")
        assert isinstance(end, P.JobComplete) and end.stopped_early
        after = body_of(await client.request(stop))
        assert isinstance(after, job_pb2.JobStatus) and after.state == job_pb2.JOB_STATE_COMPLETED
        unknown = body_of(
            await client.request(
                job_pb2.JobControl(job_id="zz", action=job_pb2.CONTROL_ACTION_CANCEL)
            )
        )
        assert unknown.code == E.ERROR_CODE_NOT_FOUND  # type: ignore[union-attr]
        # The slot is free again.
        ok = body_of(await client.request(submit_msg(env, "j2", token)))
        assert isinstance(ok, job_pb2.JobAccepted)

    run(env, body, max_concurrent_jobs=1)


def test_cancel_via_control(env: Env) -> None:
    async def body(service: WorkerService, connect: Any) -> None:
        client, _ = await connect()
        token = (await check(client, env)).check_token
        cfg = fake_config(epochs=100, batches=10, batch_sleep=0.05)
        await client.request(submit_msg(env, "jc", token, config_content=cfg))
        while not client.job_messages("jc"):
            await client.next()
        cancel = job_pb2.JobControl(job_id="jc", action=job_pb2.CONTROL_ACTION_CANCEL)
        await client.request(cancel)
        end = await client.until_job_end("jc")
        assert isinstance(end, P.JobFailed) and end.code == P.FAILURE_CODE_CANCELLED
        assert end.HasField("exit_code")
        assert configs_left(env) == []

    run(env, body)


def test_rejections_reach_the_client(env: Env) -> None:
    outside = env.tmp / "outside.slp"
    make_labels(outside, [env.video])

    async def body(service: WorkerService, connect: Any) -> None:
        client, _ = await connect()
        token = (await check(client, env)).check_token
        bad_yaml = body_of(
            await client.request(submit_msg(env, "y", token, config_content="a: [\nb"))
        )
        assert isinstance(bad_yaml, job_pb2.JobRejected)
        assert bad_yaml.violations[0].code == job_pb2.VIOLATION_CODE_BAD_CONFIG
        assert bad_yaml.violations[0].line >= 1
        escape = job_pb2.JobSubmit(
            job_id="o",
            spec=spec_pb2.TrainJobSpec(
                labels_path=str(env.mnt / ".." / "outside.slp"), config_content=fake_config()
            ),
            check_token=token,
        )
        rejected = body_of(await client.request(escape))
        assert isinstance(rejected, job_pb2.JobRejected)
        codes = {v.code for v in rejected.violations}
        assert job_pb2.VIOLATION_CODE_OUTSIDE_MOUNTS in codes
        no_token = body_of(await client.request(submit_msg(env, "t", "")))
        assert no_token.violations[0].code == job_pb2.VIOLATION_CODE_STALE_CHECK  # type: ignore[union-attr]
        rules = body_of(await client.request(job_pb2.JobSubmit(job_id="-bad")))
        assert isinstance(rules, job_pb2.JobRejected)
        assert {v.rule_id for v in rules.violations} >= {
            "job_id.format",
            "job_submit.spec.required",
        }
        assert configs_left(env) == []

    run(env, body)


def test_close_fails_running_jobs_with_worker_shutdown(env: Env) -> None:
    holder: dict[str, Any] = {}

    async def body(service: WorkerService, connect: Any) -> None:
        client, _ = await connect()
        token = (await check(client, env)).check_token
        cfg = fake_config(epochs=100, batches=10, batch_sleep=0.05)
        await client.request(submit_msg(env, "js", token, config_content=cfg))
        while not client.job_messages("js"):
            await client.next()
        holder["job"] = service.registry.get("js")
        holder["config"] = holder["job"].config_file
        assert holder["config"].exists()

    run(env, body)
    job = holder["job"]
    assert isinstance(job.final, P.JobFailed)
    assert job.final.code == P.FAILURE_CODE_WORKER_SHUTDOWN
    assert not holder["config"].exists()
    assert configs_left(env) == []


def test_start_removes_stale_configs_and_refuses_state_in_mount(env: Env) -> None:
    stale = env.state / "configs" / "job-old-1234.yaml"
    stale.parent.mkdir(parents=True)
    stale.write_text("model_config: {}\n")

    async def body(service: WorkerService, connect: Any) -> None:
        assert not stale.exists()

    run(env, body)
    with pytest.raises(ValueError, match="inside a user mount"):
        WorkerService(config_for(env, state_dir=env.mnt / "state"))


# --- progress batching (protocol 1.1) ----------------------------------------------


def _progress_frames(client: RawClient, job_id: str) -> tuple[int, int]:
    """(datachannel messages carrying the job's progress, JobProgress items in them)."""
    frames = items = 0
    for envelope in client.inbox:
        body = body_of(envelope)
        if isinstance(body, P.JobProgressBatch):
            assert len(body.items) >= 2
            assert all(i.job_id == job_id for i in body.items)
            frames, items = frames + 1, items + len(body.items)
        elif isinstance(body, P.JobProgress) and body.job_id == job_id:
            frames, items = frames + 1, items + 1
    return frames, items


def _fast_submit(env: Env, job_id: str, token: str) -> job_pb2.JobSubmit:
    config = fake_config(epochs=2, batches=400, batch_sleep=0)
    return submit_msg(env, job_id, token, config_content=config)


def test_fast_trainer_progress_arrives_batched_in_order(env: Env) -> None:
    async def body(service: WorkerService, connect: Any) -> None:
        client, _ = await connect(hello=False)
        ack = body_of(await client.hello(features=("fragments", "attach", "progress_batch")))
        assert isinstance(ack, handshake_pb2.HelloAck) and "progress_batch" in ack.features
        token = (await check(client, env)).check_token
        await client.request(_fast_submit(env, "job-b", token))
        end = await client.until_job_end("job-b")
        assert isinstance(end, P.JobComplete), end
        messages = client.job_messages("job-b")
        assert [m.sequence for m in messages] == list(range(1, end.sequence + 1))
        # in arrival order too: batches keep sequence order, logs keep their place
        arrival = [
            s
            for e in client.inbox
            for s in (
                [i.sequence for i in e.job_progress_batch.items]
                if e.WhichOneof("body") == "job_progress_batch"
                else [body_of(e).sequence]  # type: ignore[union-attr]
                if e.WhichOneof("body") in ("job_progress", "job_log", "job_complete")
                else []
            )
        ]
        assert arrival == sorted(arrival) and len(arrival) == len(set(arrival))
        progress = [m for m in messages if isinstance(m, P.JobProgress)]
        batch_ends = [m for m in progress if m.event == P.PROGRESS_EVENT_BATCH_END]
        assert len(batch_ends) == 800
        frames, items = _progress_frames(client, "job-b")
        assert items == len(progress)
        assert frames < items, (frames, items)

    run(env, body)


def test_v1_0_client_gets_plain_progress(env: Env) -> None:
    from sleap_rtc_proto.versions import Version

    async def body(service: WorkerService, connect: Any) -> None:
        client, _ = await connect(hello=False)
        answer = await client.hello(
            features=("fragments", "attach", "progress_batch"), max_version=Version(1, 0)
        )
        ack = body_of(answer)
        assert isinstance(ack, handshake_pb2.HelloAck), answer
        assert (ack.chosen_version.major, ack.chosen_version.minor) == (1, 0)
        assert "progress_batch" not in ack.features and "attach" in ack.features
        token = (await check(client, env)).check_token
        await client.request(_fast_submit(env, "job-o", token))
        end = await client.until_job_end("job-o")
        assert isinstance(end, P.JobComplete), end
        assert all(e.WhichOneof("body") != "job_progress_batch" for e in client.inbox)
        assert all((e.version.major, e.version.minor) == (1, 0) for e in client.inbox)
        messages = client.job_messages("job-o")
        assert [m.sequence for m in messages] == list(range(1, end.sequence + 1))

    run(env, body)


def test_every_request_in_the_body_table_has_a_handler(env: Env) -> None:
    """A request row without a worker handler would be answered INTERNAL: none is."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import make_golden

    from sleap_rtc_proto import bodies

    samples = {name: body for name, (body, _) in make_golden._bodies().items()}

    async def body(service: WorkerService, connect: Callable[..., Awaitable[Any]]) -> None:
        client, _ = await connect()
        for name in sorted(bodies.REQUESTS - {"hello"}):
            answer = await client.request(samples[name])  # type: ignore[arg-type]
            got = answer.WhichOneof("body")
            assert got in bodies.answers_to(name), (name, got)
            if got == "error":
                assert answer.error.code != E.ERROR_CODE_INTERNAL, (name, answer.error.message)

    run(env, body)


def test_labels_suggestions_only_where_the_feature_was_agreed(env: Env) -> None:
    """1.2 labels-file suggestions go to a client that named the feature, not to others."""
    moved = str(env.mnt / "old" / env.labels.name)  # not there; the same name is in data/

    async def body(service: WorkerService, connect: Callable[..., Awaitable[Any]]) -> None:
        got = {}
        for features in (("fragments", "attach", "labels_suggestions"), ("fragments",)):
            client, _ = await connect(hello=False)
            ack = await client.hello(features=features)
            assert ack.WhichOneof("body") == "hello_ack"
            for _ in range(50):  # the start-up index walk runs in a thread
                answer = await client.request(paths_pb2.PathCheckRequest(labels_path=moved))
                result = body_of(answer)
                assert isinstance(result, paths_pb2.PathCheckResult)
                if result.labels.suggestions or "labels_suggestions" not in features:
                    break
                await asyncio.sleep(0.05)
            got[features[-1]] = [s.worker_path for s in result.labels.suggestions]
        assert got["labels_suggestions"] == [str(env.labels)]
        assert got["fragments"] == []

    run(env, body, build_index=True)


# --- browsing the shared storage (1.2, feature "browse") -------------------------


async def listing(client: RawClient, **request: Any) -> paths_pb2.DirectoryList | Any:
    return body_of(await client.request(paths_pb2.DirectoryListRequest(**request)))


async def browser(connect: Any) -> RawClient:
    client, _ = await connect(hello=False)
    ack = await client.hello(features=("fragments", "attach", "browse"))
    assert "browse" in ack.hello_ack.features, ack
    return client  # type: ignore[no-any-return]


def test_browse_lists_inside_the_mounts_only(env: Env) -> None:
    outside = env.tmp / "secret"
    outside.mkdir()
    (outside / "key.txt").write_text("x")
    (env.mnt / "data" / "out").symlink_to(outside)  # a link out of the mounts
    (env.mnt / "data" / "inner").symlink_to(env.mnt / "data" / "v.h5")  # a link inside
    (env.mnt / "data" / "sub").mkdir()

    async def body(service: WorkerService, connect: Any) -> None:
        client = await browser(connect)
        roots = await listing(client)
        assert isinstance(roots, paths_pb2.DirectoryList), roots
        assert [e.path for e in roots.entries] == [str(env.mnt.resolve())]
        assert roots.entries[0].kind == paths_pb2.ENTRY_KIND_DIRECTORY
        data = await listing(client, path=str(env.mnt / "data"))
        assert isinstance(data, paths_pb2.DirectoryList), data
        names = [e.name for e in data.entries]
        assert names == ["sub", "inner", "labels.slp", "v.h5"]  # folders first; no "out"
        by_name = {e.name: e for e in data.entries}
        assert by_name["labels.slp"].size == env.labels.stat().st_size
        assert by_name["labels.slp"].path == str(env.labels.resolve())
        assert data.total == 4 and data.next_page_token == ""
        for refused in (str(outside), str(env.mnt / "data" / "out"), f"{env.mnt}/../secret"):
            error = await listing(client, path=refused)
            assert isinstance(error, E.Error), error
            assert error.code == E.ERROR_CODE_FORBIDDEN
            assert refused in error.message and error.details["path"] == refused
        not_dir = await listing(client, path=str(env.labels))
        assert isinstance(not_dir, E.Error) and not_dir.code == E.ERROR_CODE_INVALID_ARGUMENT
        assert "is not a folder" in not_dir.message
        missing = await listing(client, path=str(env.mnt / "nope"))
        assert isinstance(missing, E.Error) and missing.code == E.ERROR_CODE_NOT_FOUND
        relative = await listing(client, path="data")
        assert isinstance(relative, E.Error) and relative.code == E.ERROR_CODE_INVALID_ARGUMENT
        still = await listing(client, path=str(env.mnt))  # the peer stays usable
        assert isinstance(still, paths_pb2.DirectoryList)

    run(env, body)


def test_browse_pages_are_bounded_and_complete(env: Env) -> None:
    from sleap_rtc.worker.browse import MAX_PAGE_SIZE

    many = env.mnt / "many"
    many.mkdir()
    for i in range(MAX_PAGE_SIZE + 7):
        (many / f"f{i:04d}.mp4").write_bytes(b"")

    async def body(service: WorkerService, connect: Any) -> None:
        client = await browser(connect)
        seen: list[str] = []
        token, pages = "", 0
        while True:
            page = await listing(client, path=str(many), page_token=token, page_size=3 * 1000)
            assert isinstance(page, paths_pb2.DirectoryList), page
            assert len(page.entries) <= MAX_PAGE_SIZE and page.total == MAX_PAGE_SIZE + 7
            seen += [e.name for e in page.entries]
            pages += 1
            token = page.next_page_token
            if not token:
                break
        assert pages == 2 and seen == sorted(p.name for p in many.iterdir())
        small = await listing(client, path=str(many), page_size=5)
        assert [e.name for e in small.entries] == seen[:5] and small.next_page_token == "5"
        for bad in ("x", "-1", str(MAX_PAGE_SIZE + 7), "٣"):
            error = await listing(client, path=str(many), page_token=bad)
            assert isinstance(error, E.Error) and error.code == E.ERROR_CODE_INVALID_ARGUMENT

    run(env, body)


def test_browse_needs_the_feature_and_hides_undisclosed_mounts(env: Env) -> None:
    async def body(service: WorkerService, connect: Any) -> None:
        client, _ = await connect(hello=False)
        assert (await client.hello(features=("fragments",))).WhichOneof("body") == "hello_ack"
        error = await listing(client, path=str(env.mnt))
        assert isinstance(error, E.Error) and error.code == E.ERROR_CODE_UNEXPECTED
        other = await browser(connect)
        roots = await listing(other)
        assert isinstance(roots, E.Error) and roots.code == E.ERROR_CODE_FORBIDDEN
        assert isinstance(await listing(other, path=str(env.mnt)), paths_pb2.DirectoryList)

    run(env, body, disclose_mounts=False)
