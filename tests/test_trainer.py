"""trainer.py: the sleap-nn command line, ZMQ translation, and runs of a stand-in trainer."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import pytest
import zmq.asyncio
from hypothesis import given
from hypothesis import strategies as st

from sleap_rtc.worker.jobrecord import RunResult
from sleap_rtc.worker.trainer import LineSplitter, RunLimits, TrainerRun
from sleap_rtc.worker.trainplan import TrainPlan, build_command, hydra_quote
from sleap_rtc.worker.zmqprogress import ProgressTranslator, ProgressUpdate, sanitize_metrics
from sleap_rtc_proto.v1 import progress_pb2

FAKE = Path(__file__).parent / "support" / "fake_sleap_nn.py"
FAKE_COMMAND = (sys.executable, str(FAKE), "train")
P = progress_pb2


def plan_for(tmp_path: Path, mode: str = "ok", name: str = "run", **fake: object) -> TrainPlan:
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(json.dumps({"model_config": {}, "fake": {"mode": mode, **fake}}))
    ckpt = tmp_path / f"ckpt-{name}"
    ckpt.mkdir()
    return TrainPlan(config_file=cfg, labels_path="/data/labels.slp", ckpt_dir=ckpt, run_name=name)


class Sink:
    def __init__(self) -> None:
        self.updates: list[ProgressUpdate] = []
        self.logs: list[tuple[int, list[str]]] = []

    def progress(self, update: ProgressUpdate) -> None:
        self.updates.append(update)

    def log(self, stream: int, lines: list[str]) -> None:
        self.logs.append((stream, lines))

    def events(self) -> list[int]:
        return [u.event for u in self.updates]

    def lines(self) -> list[str]:
        return [line for _, lines in self.logs for line in lines]


async def run_plan(
    plan: TrainPlan, *, limits: RunLimits | None = None, command=FAKE_COMMAND
) -> tuple[RunResult, Sink, TrainerRun]:
    ctx = zmq.asyncio.Context()
    try:
        sink = Sink()
        run = TrainerRun(command, plan, sink, context=ctx, limits=limits or RunLimits())
        result = await asyncio.wait_for(run.run(), timeout=60)
        return result, sink, run
    finally:
        ctx.term()


# --- the command line ----------------------------------------------------------


def test_build_command_shape() -> None:
    plan = TrainPlan(
        config_file=Path("/state/configs/job-a.yaml"),
        labels_path="/mnt/lab/l.slp",
        ckpt_dir=Path("/mnt/lab/runs/a"),
        run_name="a",
        val_labels_path="/mnt/lab/v.slp",
        max_epochs=3,
        batch_size=8,
        learning_rate=0.001,
        resume_ckpt_path="/mnt/lab/old/best.ckpt",
        video_path_map=(("C:\\data\\v.mp4", "/mnt/lab/v.mp4"),),
    )
    argv = build_command(("sleap-nn", "train"), plan, publish_port=5001, controller_port=5002)
    assert Path(argv[0]).name == "sleap-nn"  # found on PATH or beside this Python
    assert argv[1:4] == ["train", "--config", "/state/configs/job-a.yaml"]
    assert argv[4:7] == ["--video-path-map", "C:\\data\\v.mp4", "/mnt/lab/v.mp4"]
    overrides = argv[7:]
    assert overrides[0] == "++data_config.train_labels_path=['/mnt/lab/l.slp']"
    assert not overrides[0].endswith((".yaml", ".yml"))  # sleap-nn would take it as the config
    for expected in (
        "++trainer_config.ckpt_dir='/mnt/lab/runs/a'",
        "++trainer_config.run_name='a'",
        "++trainer_config.save_ckpt=true",
        "++trainer_config.zmq.publish_port=5001",
        "++trainer_config.zmq.controller_port=5002",
        "++data_config.val_labels_path=['/mnt/lab/v.slp']",
        "++trainer_config.max_epochs=3",
        "++trainer_config.train_data_loader.batch_size=8",
        "++trainer_config.val_data_loader.batch_size=8",
        "++trainer_config.optimizer.lr=0.001",
        "++trainer_config.resume_ckpt_path='/mnt/lab/old/best.ckpt'",
    ):
        assert expected in overrides


def test_mixed_maps_become_prefix_maps_exact_first() -> None:
    plan = TrainPlan(
        config_file=Path("/c.yaml"),
        labels_path="/l.slp",
        ckpt_dir=Path("/r"),
        run_name="r",
        video_path_map=(("/u/x/v.mp4", "/m/v.mp4"),),
        prefix_map=(("/u", "/m/u"), ("/u/deep/er", "/m/d")),
    )
    argv = build_command(("t",), plan, publish_port=1, controller_port=2)
    assert "--video-path-map" not in argv
    # Unchecked config paths are nulled when the spec has none.
    assert "++data_config.val_labels_path=null" in argv
    assert "++trainer_config.resume_ckpt_path=null" in argv
    i = argv.index("--prefix-map")
    assert argv[i : i + 9] == [
        "--prefix-map", "/u/x/v.mp4", "/m/v.mp4",
        "--prefix-map", "/u/deep/er", "/m/d",
        "--prefix-map", "/u", "/m/u",
    ]  # fmt: skip


def test_hydra_quote_refuses_interpolation() -> None:
    with pytest.raises(ValueError, match="cannot be passed"):
        hydra_quote("/mnt/${oc.env:HOME}/a.slp")


@given(
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
        max_size=40,
    ).filter(lambda s: "${" not in s)
)
def test_hydra_quote_round_trips_through_hydras_parser(value: str) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    (override,) = parser.parse_overrides([f"++a.b=[{hydra_quote('/x' + value)}]"])
    assert override.value() == ["/x" + value]


# --- translation -----------------------------------------------------------------


def test_translator_maps_sleap_nn_shapes() -> None:
    t = ProgressTranslator()
    msgs = [
        {"what": "", "event": "train_begin", "logs": None, "wandb_url": None},
        {"what": "", "event": "epoch_begin", "logs": None, "epoch": 2},
        {"what": "", "event": "batch_start", "logs": None, "batch": 5},
        {"what": "", "event": "batch_end", "logs": {"loss": 0.5, "x": "s"}, "epoch": 2, "batch": 5},
        {"what": "", "event": "epoch_end", "logs": {"train/loss": 1, "val/loss": 0.25}, "epoch": 2},
        {"what": "", "event": "train_end", "logs": None},
    ]
    out = [t.translate(json.dumps(m)) for m in msgs]
    assert [u.event for u in out if u] == [
        P.PROGRESS_EVENT_TRAIN_BEGIN, P.PROGRESS_EVENT_EPOCH_BEGIN, P.PROGRESS_EVENT_BATCH_START,
        P.PROGRESS_EVENT_BATCH_END, P.PROGRESS_EVENT_EPOCH_END, P.PROGRESS_EVENT_TRAIN_END,
    ]  # fmt: skip
    begin, _epoch_begin, batch_start, batch_end, epoch_end, _end = out
    assert begin is not None and begin.epoch is None and begin.what == ""
    assert batch_start is not None and (batch_start.epoch, batch_start.batch) == (2, 5)
    assert batch_end is not None and dict(batch_end.metrics) == {"loss": 0.5}
    assert epoch_end is not None and dict(epoch_end.metrics) == {
        "train/loss": 1.0,
        "val/loss": 0.25,
    }
    assert epoch_end.batch is None
    proto = batch_end.to_proto("j1", 7)
    assert (proto.job_id, proto.sequence, proto.epoch, proto.batch) == ("j1", 7, 2, 5)
    assert t.seen_begin and t.seen_end


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe",
        "not json",
        "[]",
        "{}",
        '{"event": "nope"}',
        '{"event": 3}',
        '{"command":"stop"}',
    ],
)
def test_translator_ignores_what_is_not_progress(raw: str | bytes) -> None:
    assert ProgressTranslator().translate(raw) is None


def test_translator_drops_bad_numbers() -> None:
    u = ProgressTranslator().translate('{"event": "batch_end", "epoch": -1, "batch": 1e99}')
    assert u is not None and u.epoch is None and u.batch is None
    assert sanitize_metrics({"a": True, "b": 2, 3: 4.0, "c": None}) == {"b": 2.0}


@given(st.binary(max_size=200))
def test_translator_never_raises(data: bytes) -> None:
    ProgressTranslator().translate(data)


def test_line_splitter() -> None:
    s = LineSplitter(max_line_chars=10)
    assert s.feed(b"a\nb\r\nc\rd") == ["a", "b", "c"]
    assert s.feed("é".encode()[:1]) == []
    assert s.feed("é".encode()[1:] + b"\n") == ["dé"]
    assert s.feed(b"x" * 25) == ["x" * 10]
    assert s.feed(b"", final=True) == []


# --- runs of the stand-in trainer ---------------------------------------------------


def test_run_completes_with_progress_logs_and_outputs(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, epochs=2, batches=3)
    result, sink, run = asyncio.run(run_plan(plan))
    assert result.completed, result
    assert not result.stopped_early and result.exit_code == 0
    events = sink.events()
    assert events[0] == P.PROGRESS_EVENT_TRAIN_BEGIN and events[-1] == P.PROGRESS_EVENT_TRAIN_END
    assert events.count(P.PROGRESS_EVENT_EPOCH_END) == 2
    assert events.count(P.PROGRESS_EVENT_BATCH_END) == 6
    assert str(plan.run_dir / "best.ckpt") in result.outputs
    assert sink.logs[0][0] == P.LOG_STREAM_WORKER and sink.logs[0][1][0].startswith("$ ")
    assert any("loss" in line for line in sink.lines())
    record = json.loads((plan.run_dir / "argv.json").read_text())
    assert int(record["overrides"]["trainer_config.zmq.publish_port"]) == run.publish_port
    assert run.publish_port != run.controller_port


def test_two_concurrent_runs_get_different_ports(tmp_path: Path) -> None:
    async def both() -> list[tuple[RunResult, Sink, TrainerRun]]:
        return list(
            await asyncio.gather(
                run_plan(plan_for(tmp_path, name="a", batch_sleep=0.05)),
                run_plan(plan_for(tmp_path, name="b", batch_sleep=0.05)),
            )
        )

    (ra, sa, a), (rb, sb, b) = asyncio.run(both())
    assert ra.completed and rb.completed
    assert len({a.publish_port, a.controller_port, b.publish_port, b.controller_port}) == 4
    assert sa.events().count(P.PROGRESS_EVENT_BATCH_END) == 6  # no cross-talk
    assert sb.events().count(P.PROGRESS_EVENT_BATCH_END) == 6


def test_stop_ends_gracefully_with_stopped_early(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, epochs=50, batches=20, batch_sleep=0.02)

    async def go() -> tuple[RunResult, Sink]:
        ctx = zmq.asyncio.Context()
        sink = Sink()
        run = TrainerRun(FAKE_COMMAND, plan, sink, context=ctx)
        task = asyncio.create_task(run.run())
        for _ in range(200):
            if P.PROGRESS_EVENT_BATCH_END in sink.events():
                break
            await asyncio.sleep(0.05)
        run.stop()
        result = await asyncio.wait_for(task, 30)
        ctx.term()
        return result, sink

    result, sink = asyncio.run(go())
    assert result.completed and result.stopped_early
    events = sink.events()
    assert events[-1] == P.PROGRESS_EVENT_TRAIN_END
    assert events.count(P.PROGRESS_EVENT_EPOCH_END) < 50
    assert (plan.run_dir / "best.ckpt").exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours still answers kill(0); check its state.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_cancel_kills_the_process_group(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, mode="child_hang")

    async def go() -> RunResult:
        ctx = zmq.asyncio.Context()
        run = TrainerRun(FAKE_COMMAND, plan, Sink(), context=ctx, limits=RunLimits(term_grace_s=2))
        task = asyncio.create_task(run.run())
        argv = plan.run_dir / "argv.json"
        for _ in range(200):
            if argv.exists() and argv.stat().st_size:
                break
            await asyncio.sleep(0.05)
        run.cancel()
        result = await asyncio.wait_for(task, 30)
        ctx.term()
        return result

    result = asyncio.run(go())
    assert not result.completed
    assert result.failure_code == P.FAILURE_CODE_CANCELLED
    assert result.exit_code is not None and result.exit_code < 0
    record = json.loads((plan.run_dir / "argv.json").read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (_alive(record["child_pid"]) or _alive(record["pid"])):
        time.sleep(0.05)
    assert not _alive(record["pid"])
    assert not _alive(record["child_pid"])  # the whole group went


def test_hang_times_out(tmp_path: Path) -> None:
    limits = RunLimits(no_progress_timeout_s=1.0, term_grace_s=1.0)
    result, _, _ = asyncio.run(run_plan(plan_for(tmp_path, mode="hang"), limits=limits))
    assert result.failure_code == P.FAILURE_CODE_TIMEOUT
    assert "no progress" in result.message


def test_max_run_time_times_out(tmp_path: Path) -> None:
    limits = RunLimits(max_run_s=1.0, term_grace_s=1.0)
    plan = plan_for(tmp_path, epochs=1000, batch_sleep=0.05)
    result, _, _ = asyncio.run(run_plan(plan, limits=limits))
    assert result.failure_code == P.FAILURE_CODE_TIMEOUT
    assert "longer than" in result.message


def test_exit_at_once_fails_with_exit_code_and_tail(tmp_path: Path) -> None:
    result, _, _ = asyncio.run(run_plan(plan_for(tmp_path, mode="exit_now")))
    assert result.failure_code == P.FAILURE_CODE_TRAINER_EXITED
    assert result.exit_code == 3
    assert any("something is wrong" in line for line in result.log_tail)


def test_exit_zero_without_training_is_not_success(tmp_path: Path) -> None:
    result, _, _ = asyncio.run(run_plan(plan_for(tmp_path, mode="exit0")))
    assert not result.completed
    assert result.failure_code == P.FAILURE_CODE_TRAINER_EXITED
    assert "never reported" in result.message


def test_crash_mid_training(tmp_path: Path) -> None:
    result, sink, _ = asyncio.run(run_plan(plan_for(tmp_path, mode="fail")))
    assert result.failure_code == P.FAILURE_CODE_TRAINER_EXITED and result.exit_code == 1
    assert any("out of memory" in line for line in result.log_tail)
    assert P.PROGRESS_EVENT_TRAIN_BEGIN in sink.events()


def test_missing_trainer(tmp_path: Path) -> None:
    command = (str(tmp_path / "no-such-trainer"), "train")
    result, _, _ = asyncio.run(run_plan(plan_for(tmp_path), command=command))
    assert result.failure_code == P.FAILURE_CODE_TRAINER_NOT_FOUND
    assert result.exit_code is None


def test_trainer_program_is_found_beside_this_python_when_not_on_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from sleap_rtc.worker.trainplan import resolve_program

    bindir = tmp_path / "venv" / "bin"
    bindir.mkdir(parents=True)
    (bindir / "sleap-nn").write_text("#!/bin/sh\n")
    monkeypatch.setattr(sys, "executable", str(bindir / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert resolve_program(["sleap-nn", "train"]) == [str(bindir / "sleap-nn"), "train"]
    # Not installed anywhere: left as given, so starting it fails as TRAINER_NOT_FOUND.
    assert resolve_program(["no-such-trainer"]) == ["no-such-trainer"]
    # A program given with a folder is never second-guessed.
    assert resolve_program(["/opt/x/sleap-nn", "train"]) == ["/opt/x/sleap-nn", "train"]
    with pytest.raises(ValueError):
        resolve_program([])
