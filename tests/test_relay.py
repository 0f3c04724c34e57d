"""relay.py: real relay processes (``python -m sleap_rtc.worker.relay FOLDER``) running the
stand-in trainers confined, talking CURVE to a real RelayHub on 127.0.0.1."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
import zmq.asyncio
from support.relays import (
    PACED,
    PEEK,
    Collector,
    async_test,
    finish,
    free_port,
    job_folder,
    start_relay,
)

from sleap_rtc.worker import confine
from sleap_rtc.worker.relay import EXIT_ALREADY_STARTED, EXIT_BAD_INPUT
from sleap_rtc.worker.relayhub import RelayHub
from sleap_rtc.worker.relaywire import (
    ABANDONED_FILE,
    RESULT_FILE,
    SECRET_ENV,
    SPEC_FILE,
    STARTED_FILE,
    Hello,
    Log,
    Progress,
    read_result,
    write_spec,
)
from sleap_rtc_proto.v1 import progress_pb2

P = progress_pb2
PACED_COMMAND = (sys.executable, str(PACED), "train")
LANDLOCK = confine.probe().available


async def hub_on(ctx: zmq.asyncio.Context, root: Path, port: int | None = None) -> RelayHub:
    port = port or free_port()
    hub = RelayHub(
        ctx, listen=f"127.0.0.1:{port}", advertise=f"127.0.0.1:{port}", key_dir=root / "keys"
    )
    await hub.start()
    return hub


def expected_events(epochs: int, batches: int) -> list[int]:
    out = [P.PROGRESS_EVENT_TRAIN_BEGIN]
    for _ in range(epochs):
        out.append(P.PROGRESS_EVENT_EPOCH_BEGIN)
        out += [P.PROGRESS_EVENT_BATCH_START, P.PROGRESS_EVENT_BATCH_END] * batches
        out.append(P.PROGRESS_EVENT_EPOCH_END)
    return [*out, P.PROGRESS_EVENT_TRAIN_END]


@async_test
async def test_progress_and_logs_arrive_in_order_and_the_result_is_exact(
    ctx: zmq.asyncio.Context, tmp_path: Path
) -> None:
    hub = await hub_on(ctx, tmp_path)
    got = Collector()
    folder, spec = job_folder(tmp_path, hub, fake={"epochs": 2, "batches": 3}, register=got)
    try:
        status, out, err = await finish(await start_relay(folder))
        assert status == 0, err
        assert got.seqs() == list(range(1, len(got.seqs()) + 1))  # no gap, no duplicate
        assert got.events() == expected_events(2, 3)
        batch_ends = [m.update for m in got.of(Progress) if m.update.batch is not None]
        assert [(u.epoch, u.batch) for u in batch_ends if u.metrics] == [
            (e, b) for e in range(2) for b in range(3)
        ]
        lines = got.lines()
        assert lines[0].startswith("relay: running job job-1 on ")
        trained = [line for line in lines if line.startswith("epoch ")]
        assert (
            trained == [line for line in trained if line.startswith(("epoch 0", "epoch 1"))]
            and len(trained) == 6
        )
        assert [line.split()[1:4] for line in trained] == [
            [str(e), "batch", str(b)] for e in range(2) for b in range(3)
        ]
        if LANDLOCK:
            assert any(line.startswith("trainer confined by Landlock") for line in lines)
        assert got.of(Hello) and got.of(Hello)[0].relay_pid > 0
        assert any(h.trainer_pid for h in got.of(Hello))  # told once the trainer ran
        final = got.result()
        assert final is not None and final.seq == got.seqs()[-1]
        result = final.result
        assert result.completed and not result.stopped_early and result.exit_code == 0
        assert result == read_result(folder)  # the file and the message say the same
        assert str(spec.plan.run_dir / "best.ckpt") in result.outputs
        assert result.log_tail[-1] == "done"
        assert "epoch 1 batch 2" in out  # the batch job's output file keeps the log
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            ["config.yaml", SPEC_FILE, STARTED_FILE, RESULT_FILE]
        )
    finally:
        await hub.close()


async def _stop_run(
    ctx: zmq.asyncio.Context, tmp_path: Path, how: str
) -> tuple[int, Collector, Path]:
    hub = await hub_on(ctx, tmp_path)
    got = Collector()
    hold = tmp_path / "release"
    folder, spec = job_folder(
        tmp_path,
        hub,
        fake={"epochs": 5, "batches": 2, "hold_file": str(hold), "hold_after_epoch": 0},
        command=PACED_COMMAND,
        register=got,
    )
    try:
        proc = await start_relay(folder)
        await got.wait_for(
            lambda: any(m.update.event == P.PROGRESS_EVENT_EPOCH_END for m in got.of(Progress))
        )
        if how == "hub":
            assert hub.send("job-1", "stop") is True
        elif how == "hub-cancel":
            assert hub.send("job-1", "cancel") is True
        else:
            os.kill(proc.pid, signal.SIGINT if how == "SIGINT" else signal.SIGTERM)
        await asyncio.sleep(1.5)  # the stop reaches the trainer, which is held
        hold.write_text("go")
        status, _, _ = await finish(proc)
        assert not (spec.plan.run_dir / "best.ckpt").exists() or how in ("hub", "SIGINT")
        return status, got, folder
    finally:
        await hub.close()


@pytest.mark.parametrize("how", ["hub", "SIGINT"])
def test_stop_early_keeps_the_checkpoint_and_completes(tmp_path: Path, how: str) -> None:
    async def go(ctx: zmq.asyncio.Context, tmp: Path) -> None:
        status, got, folder = await _stop_run(ctx, tmp, how)
        assert status == 0
        result = read_result(folder)
        assert result is not None and result.completed and result.stopped_early
        assert any(o.endswith("best.ckpt") for o in result.outputs)
        epochs = [m.update.epoch for m in got.of(Progress) if m.update.event == 5]
        assert epochs == [0, 1]  # stopped in epoch 1, after its first batch
        assert got.events()[-1] == P.PROGRESS_EVENT_TRAIN_END
        assert got.result() is not None and got.result().result == result  # type: ignore[union-attr]
        note = "the worker asked to stop early" if how == "hub" else "SIGINT"
        assert any(note in line and "stopping after" in line for line in got.lines())

    async_test(go)(tmp_path)


@pytest.mark.parametrize("how", ["SIGTERM", "hub-cancel"])
def test_cancel_terminates_the_trainer(tmp_path: Path, how: str) -> None:
    async def go(ctx: zmq.asyncio.Context, tmp: Path) -> None:
        status, got, folder = await _stop_run(ctx, tmp, how)
        result = read_result(folder)
        assert result is not None and not result.completed
        assert result.failure_code == P.FAILURE_CODE_CANCELLED
        assert result.exit_code == -signal.SIGTERM and status == 128 + signal.SIGTERM
        assert P.PROGRESS_EVENT_TRAIN_END not in got.events()
        assert got.result() is not None and got.result().result == result  # type: ignore[union-attr]

    async_test(go)(tmp_path)


@async_test
async def test_a_second_start_of_the_same_job_runs_nothing(
    ctx: zmq.asyncio.Context, tmp_path: Path
) -> None:
    hub = await hub_on(ctx, tmp_path)
    got = Collector()
    folder, spec = job_folder(tmp_path, hub, fake={"epochs": 1, "batches": 1}, register=got)
    try:
        # Two starts at once (a requeue racing a copy-paste): exactly one runs.
        results = await asyncio.gather(
            finish(await start_relay(folder)), finish(await start_relay(folder))
        )
        statuses = sorted(r[0] for r in results)
        assert statuses == [0, EXIT_ALREADY_STARTED]
        refused = next(r for r in results if r[0] == EXIT_ALREADY_STARTED)
        assert "this job was started before" in refused[2] and "Traceback" not in refused[2]
        argv = json.loads((spec.plan.run_dir / "argv.json").read_text())
        count = len(got.messages)
        before = (folder / RESULT_FILE).read_bytes()
        status, _, err = await finish(await start_relay(folder))
        assert status == EXIT_ALREADY_STARTED and "running nothing" in err
        assert (folder / RESULT_FILE).read_bytes() == before
        assert json.loads((spec.plan.run_dir / "argv.json").read_text()) == argv
        await asyncio.sleep(0.3)
        assert len(got.messages) == count
        assert len([h for h in got.of(Hello)]) >= 1
    finally:
        await hub.close()


@async_test
async def test_an_abandoned_folder_runs_nothing(ctx: zmq.asyncio.Context, tmp_path: Path) -> None:
    hub = await hub_on(ctx, tmp_path)
    folder, spec = job_folder(tmp_path, hub, register=Collector())
    (folder / ABANDONED_FILE).touch()
    try:
        status, _, err = await finish(await start_relay(folder))
        assert status == EXIT_ALREADY_STARTED and "gave this job up" in err
        assert not (spec.plan.run_dir / "argv.json").exists()
    finally:
        await hub.close()


@async_test
async def test_bad_input_is_one_line_and_status_2(ctx: zmq.asyncio.Context, tmp_path: Path) -> None:
    status, _, err = await finish(await start_relay(tmp_path / "nowhere"))
    assert status == EXIT_BAD_INPUT and "cannot claim" in err and "Traceback" not in err
    folder = tmp_path / "relay"
    folder.mkdir()
    (folder / SPEC_FILE).write_text('{"job_id": "j"}')
    status, _, err = await finish(await start_relay(folder))
    assert status == EXIT_BAD_INPUT and "Traceback" not in err
    assert "relay.json: field 'plan' is missing" in err
    assert len(err.strip().splitlines()) == 1


@async_test
async def test_the_secret_key_is_gone_before_the_trainer_starts(
    ctx: zmq.asyncio.Context, tmp_path: Path
) -> None:
    """The relay folder lies in the mounts the trainer may read: a trainer that prints
    the spec file sees no secret key, and (confined) cannot write into the folder."""
    hub = await hub_on(ctx, tmp_path)
    got = Collector()
    shared = tmp_path / "shared"
    spec_path = shared / "jobs" / "job-1" / "relay" / SPEC_FILE
    show = tmp_path / "tools" / "show_spec.py"  # the trainer may read its program's folder
    show.parent.mkdir()
    peek = shutil.copy(PEEK, show.parent / PEEK.name)
    show.write_text(
        "import pathlib, sys\n"
        f"print('SPEC', pathlib.Path({str(spec_path)!r}).read_text().replace(chr(10), ' '))\n"
        "sys.stdout.flush()\n"
        f"import runpy; runpy.run_path({str(peek)!r}, run_name='__main__')\n"
    )
    folder, spec = job_folder(
        tmp_path,
        hub,
        command=(sys.executable, str(show), "train"),
        peek={"read": [str(spec_path)], "write": [str(spec_path.parent / RESULT_FILE)]},
        register=got,
    )
    assert len(spec.client_secret) == 40 and spec.client_secret in spec_path.read_text()
    try:
        status, _, err = await finish(await start_relay(folder))
        shown = [line for line in got.lines() if line.startswith("SPEC ")]
        assert len(shown) == 1, (got.lines(), err)
        seen = json.loads(shown[0][5:])
        assert seen["client_secret"] == "" and seen["client_public"] == spec.client_public
        assert spec.client_secret not in "\n".join(got.lines())
        assert f"PEEK read {spec_path} ok" in got.lines()  # the threat is real
        if LANDLOCK:
            assert f"PEEK write {spec_path.parent / RESULT_FILE} EACCES" in got.lines()
        result = read_result(folder)
        assert result is not None and not result.completed  # no training: reported as such
        assert status == 1
    finally:
        await hub.close()


@async_test
async def test_a_hub_restart_loses_nothing_and_duplicates_nothing(
    ctx: zmq.asyncio.Context, tmp_path: Path
) -> None:
    """The worker's hub goes away mid-training and a new one (same port, same keys)
    comes back 1 s later: the relay reconnects by itself, the new hub takes over from
    the last delivered sequence, and the two together saw every message once."""
    port = free_port()
    hub = await hub_on(ctx, tmp_path, port)
    first = Collector()
    folder, spec = job_folder(
        tmp_path,
        hub,
        fake={"epochs": 3, "batches": 60, "batch_sleep": 0.02},
        register=first,
    )
    second = Collector()
    try:
        proc = await start_relay(folder)
        await first.wait_for(lambda: len(first.of(Progress)) >= 20)
        after = hub.last_seq("job-1")
        await hub.close()
        await asyncio.sleep(1.0)  # the trainer goes on; the relay keeps what it made
        hub = await hub_on(ctx, tmp_path, port)
        hub.register("job-1", spec.client_public, second, after_seq=after)
        status, _, err = await finish(proc)
        assert status == 0, err
        await second.wait_for(lambda: second.result() is not None)
        seqs = [s for s in first.seqs() if s <= after] + second.seqs()
        assert seqs == list(range(1, seqs[-1] + 1))
        assert second.seqs()[0] == after + 1
        assert second.of(Hello)[0].seq == after
        events = [
            m.update.event
            for m in (*first.of(Progress), *second.of(Progress))
            if m.seq <= after or m in second.messages
        ]
        assert events == expected_events(3, 60)
        assert not [m for m in second.of(Log) if m.first]  # nothing had to be dropped
    finally:
        await hub.close()


@async_test
async def test_the_result_survives_a_worker_that_is_down_at_the_end(
    ctx: zmq.asyncio.Context, tmp_path: Path
) -> None:
    port = free_port()
    hub = await hub_on(ctx, tmp_path, port)
    first = Collector()
    folder, spec = job_folder(
        tmp_path,
        hub,
        fake={"epochs": 1, "batches": 20, "batch_sleep": 0.02},
        register=first,
        result_wait_s=60,
    )
    try:
        proc = await start_relay(folder)
        await first.wait_for(lambda: bool(first.of(Progress)))
        await hub.close()
        for _ in range(300):  # the run ends while the worker is down
            if (folder / RESULT_FILE).exists():
                break
            await asyncio.sleep(0.05)
        on_disk = read_result(folder)
        assert on_disk is not None and on_disk.completed
        assert proc.returncode is None  # still waiting for the worker to hear it
        hub = await hub_on(ctx, tmp_path, port)
        second = Collector()
        # A worker that lost its position (after_seq 0): the relay's Hello says what an
        # earlier life acknowledged, and the rest (with the result) comes again.
        hub.register("job-1", spec.client_public, second, after_seq=0)
        status, _, _ = await finish(proc, timeout=30)
        assert status == 0
        final = second.result()
        assert final is not None and final.result == on_disk
        hello = second.of(Hello)[0]
        assert hello.seq == hello.acked and second.seqs()[0] == hello.acked + 1
        assert second.seqs() == list(range(hello.acked + 1, final.seq + 1))
    finally:
        await hub.close()


@async_test
async def test_a_worker_that_never_comes_back_still_finds_the_result_file(
    ctx: zmq.asyncio.Context, tmp_path: Path
) -> None:
    hub = await hub_on(ctx, tmp_path)
    folder, _ = job_folder(
        tmp_path, hub, fake={"epochs": 1, "batches": 1}, register=None, result_wait_s=1.0
    )
    try:
        # Never registered: the hub refuses the handshake throughout.
        status, _, err = await finish(await start_relay(folder))
        assert status == 0
        assert "did not acknowledge the result within 1 s" in err
        assert "refused the handshake" in err
        result = read_result(folder)
        assert result is not None and result.completed
    finally:
        await hub.close()


@async_test
async def test_the_secret_can_come_in_the_environment_and_never_reaches_the_trainer(
    ctx: zmq.asyncio.Context, tmp_path: Path
) -> None:
    """A worker may keep the secret off the shared storage altogether (other jobs'
    trainers may read the mounts while this job waits in the queue) and hand it to the
    batch job's environment: the relay takes it from there, the trainer never sees it."""
    hub = await hub_on(ctx, tmp_path)
    got = Collector()
    folder, spec = job_folder(
        tmp_path,
        hub,
        command=(sys.executable, str(PEEK), "train"),
        peek={"env": [SECRET_ENV]},
        register=got,
    )
    write_spec(folder, dataclasses.replace(spec, client_secret=""))
    try:
        status, _, err = await finish(await start_relay(folder))
        assert status == EXIT_BAD_INPUT and f"{SECRET_ENV} is not set" in err
        (folder / STARTED_FILE).unlink()  # (a fresh job folder, as far as the relay knows)
        status, _, err = await finish(await start_relay(folder, **{SECRET_ENV: spec.client_secret}))
        assert status == 1, err  # the peek trainer trains nothing
        assert f"PEEK env {SECRET_ENV} <unset>" in got.lines()
        assert spec.client_secret not in "\n".join(got.lines())
        assert got.of(Hello) and got.result() is not None  # it authenticated with it
    finally:
        await hub.close()
