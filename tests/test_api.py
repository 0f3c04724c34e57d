"""The public doors: sleap_rtc.api and sleap_rtc.gui.runners (the seed's integration points)."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from rtc_helpers import signaling_server
from slp_factory import make_h5_video, make_labels

from sleap_rtc import api
from sleap_rtc.auth.tokens import TokenIssuer
from sleap_rtc.client.events import JobCompleted
from sleap_rtc.client.resolve import AutoResolver
from sleap_rtc.client.results import COULD_NOT_CONNECT, FlowStatus
from sleap_rtc.client.timeouts import FlowTimeouts
from sleap_rtc.gui import runners
from sleap_rtc.jobs.spec import TrainJobSpec
from sleap_rtc.transport.link import MemoryLink, memory_link_pair
from sleap_rtc.worker.service import WorkerService
from sleap_rtc.worker.serviceconfig import WorkerConfig
from sleap_rtc.worker.trainer import RunLimits

FAKE = Path(__file__).parent / "support" / "fake_sleap_nn.py"
CONFIG = {
    "model_config": {"backbone_config": {}},
    "fake": {"mode": "ok", "epochs": 1, "batches": 2, "batch_sleep": 0.0},
}
FAST = FlowTimeouts(connect_s=5.0, hello_s=5.0, check_s=10.0, submit_s=10.0, tick_s=0.05)


class Recorder:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def handle(self, event: Any) -> None:
        self.events.append(event)


@pytest.fixture
def lab(tmp_path: Path) -> dict[str, Any]:
    mnt = tmp_path / "mnt"
    video = make_h5_video(mnt / "videos" / "a.h5")  # not next to the labels file
    labels = make_labels(mnt / "data" / "labels.slp", ["/Users/me/data/a.h5"])
    return {"tmp": tmp_path, "mnt": mnt, "video": video, "labels": str(labels)}


def worker_connect(lab: dict[str, Any]) -> Any:
    """A connect() that serves each link with a real WorkerService in the caller's loop."""

    async def serve(service: WorkerService, link: MemoryLink) -> None:
        try:
            await service.serve(link, peer_id="api-test")
            for _ in range(200):  # let a running job finish before closing the service
                if not service.registry.active_count():
                    break
                await asyncio.sleep(0.05)
        finally:
            await service.close()

    async def connect() -> MemoryLink:
        service = WorkerService(WorkerConfig(
            mounts=[lab["mnt"]], state_dir=lab["tmp"] / "state", verifier=None,
            trainer_command=(sys.executable, str(FAKE), "train"), worker_id="gpu-1",
            run_limits=RunLimits(no_progress_timeout_s=30, term_grace_s=2),
        ))
        await service.start()
        client_end, worker_end = memory_link_pair()
        asyncio.get_running_loop().create_task(serve(service, worker_end))
        return client_end

    return connect


def test_run_training_with_config_content(lab: dict[str, Any]) -> None:
    sink = Recorder()
    result = api.run_training(
        config_content=yaml.safe_dump(CONFIG),
        labels_path=lab["labels"],
        room="lab",
        worker="gpu-1",
        max_epochs=1,
        resolver=AutoResolver(threshold=0.1),
        progress=[sink],
        connect=worker_connect(lab),
        timeouts=FAST,
    )
    assert result.status is FlowStatus.SUCCESS, result
    assert dict(result.path_mappings) == {"/Users/me/data/a.h5": lab["video"]}
    assert isinstance(sink.events[-1], JobCompleted)


def test_run_training_with_config_path_returns_once_accepted(lab: dict[str, Any]) -> None:
    path = lab["tmp"] / "cfg.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    result = api.run_training(
        config_path=path, labels_path=lab["labels"], follow=False,
        path_mappings={"/Users/me/data/a.h5": lab["video"]},
        connect=worker_connect(lab), timeouts=FAST,
    )
    assert result.ok and result.stage == "submit" and result.accepted is not None


def test_run_training_config_and_config_path_conflict(lab: dict[str, Any]) -> None:
    with pytest.raises(TypeError):
        api.run_training(config_path="/a.yaml", config={"a": 1}, labels_path="/l.slp",
                         connect=worker_connect(lab))


def test_check_paths_reports_found_and_missing(lab: dict[str, Any]) -> None:
    result = api.check_paths(lab["labels"], connect=worker_connect(lab), timeouts=FAST)
    assert result.status is FlowStatus.ERROR and result.check is not None
    assert [v.original_path for v in result.check.missing] == ["/Users/me/data/a.h5"]
    assert result.check.missing[0].suggestions[0].worker_path == lab["video"]
    assert result.job_id == ""

    fixed = api.check_paths(lab["labels"], connect=worker_connect(lab), timeouts=FAST,
                            resolver=AutoResolver(threshold=0.1))
    assert fixed.ok and fixed.labels_path == lab["labels"] and fixed.check_token
    assert dict(fixed.path_mappings) == {"/Users/me/data/a.h5": lab["video"]}


def test_gui_presubmission_then_remote_training(lab: dict[str, Any]) -> None:
    """The dialog's sequence: checks (steps 2-4), build the spec, run it (5-6)."""
    check = runners.run_presubmission_checks(
        lab["labels"], "lab", "gpu-1", resolver=AutoResolver(threshold=0.1),
        connect=worker_connect(lab), timeouts=FAST,
    )
    assert check.ok, check
    spec = TrainJobSpec(config_content=yaml.safe_dump(CONFIG), labels_path=check.labels_path,
                        path_mappings=dict(check.path_mappings),
                        prefix_mappings=dict(check.prefix_mappings))
    result = runners.run_remote_training(
        spec=spec, room_id="lab", worker_id="gpu-1", lossviewer=False,
        connect=worker_connect(lab), timeouts=FAST,
    )
    assert result.ok and result.completion is not None, result


def test_gui_presubmission_cancel_is_silent(lab: dict[str, Any]) -> None:
    result = runners.run_presubmission_checks(
        lab["labels"], "lab", "gpu-1", resolver=lambda view: None,
        connect=worker_connect(lab), timeouts=FAST,
    )
    assert result.status is FlowStatus.CANCELLED and result.message == ""


def test_start_remote_training_in_the_background(lab: dict[str, Any]) -> None:
    spec = TrainJobSpec(config_content=yaml.safe_dump(CONFIG), labels_path=lab["labels"],
                        path_mappings={"/Users/me/data/a.h5": lab["video"]})
    handle = runners.start_remote_training(
        spec, room_id="lab", worker_id="gpu-1", lossviewer=False,
        connect=worker_connect(lab), timeouts=FAST,
    )
    result = handle.result(timeout=60)
    assert handle.done() and result is not None and result.ok, result


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_default_wiring_fails_closed_when_the_server_is_unreachable(
    lab: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No injected connect: settings + stored token + WebRTC; nothing listens -> one message."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(lab["tmp"] / "config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(lab["tmp"] / "state-home"))
    token = TokenIssuer.generate().issue("alice", "lab")
    result = api.run_training(
        config_content=yaml.safe_dump(CONFIG), labels_path=lab["labels"],
        room="lab", worker="gpu-1", server=f"ws://127.0.0.1:{_closed_port()}", token=token,
        timeouts=FlowTimeouts(connect_s=5.0),
    )
    assert result.status is FlowStatus.ERROR
    assert result.message == COULD_NOT_CONNECT
    assert result.job_id == ""


def test_check_paths_records_a_capture(lab: dict[str, Any]) -> None:
    """``capture=`` wraps every link the flow opens (here an injected one) in a recording."""
    from sleap_rtc.capture.read.reader import CaptureReader

    path = lab["tmp"] / "check.mcap"
    result = api.check_paths(lab["labels"], connect=worker_connect(lab), timeouts=FAST,
                             resolver=AutoResolver(threshold=0.1), capture=path)
    assert result.ok, result
    bodies = {record.body for record in CaptureReader([path]).records()}
    assert {"hello", "path_check_request"} <= bodies, bodies


def test_a_capture_that_cannot_be_created_does_not_stop_the_check(
    lab: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    blocker = lab["tmp"] / "file"
    blocker.write_text("")
    result = api.check_paths(lab["labels"], connect=worker_connect(lab), timeouts=FAST,
                             resolver=AutoResolver(threshold=0.1), capture=blocker / "x.mcap")
    assert result.ok, result
    assert "cannot create the capture file" in caplog.text


def test_default_wiring_finds_no_worker_by_name(
    lab: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default wiring looks the worker up by name or peer id in the room (as the CLI does)."""
    monkeypatch.setenv("SLEAP_RTC_CONFIG_DIR", str(lab["tmp"] / "config"))
    monkeypatch.setenv("SLEAP_RTC_STATE_DIR", str(lab["tmp"] / "state-home"))

    async def main() -> Any:
        async with signaling_server(lab["tmp"]) as server:
            return await api.check_paths_async(
                lab["labels"], room="lab", worker="gpu-nowhere", server=server.url,
                token=server.issuer.issue("alice", "lab"), timeouts=FlowTimeouts(connect_s=10.0),
            )

    result = asyncio.run(main())
    assert result.status is FlowStatus.ERROR and result.message == COULD_NOT_CONNECT
    assert result.stage == "connect"
    assert any("no worker 'gpu-nowhere' in room 'lab'" in d for d in result.details), result


def test_the_worker_name_that_sleap_rtc_workers_shows_is_accepted(
    lab: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """api.check_paths(worker=NAME) and the gui runner reach the worker of that name.

    Two workers in the room, each registered with a peer id and a different name;
    the WebRTC connector is replaced by an in-memory worker, recording which peer
    id it was asked for."""
    from rtc_helpers import WORKER_KEY

    from sleap_rtc.client.wiring import list_workers
    from sleap_rtc.config.client import ClientSettings
    from sleap_rtc.signaling.client import SignalingClient
    from sleap_rtc.transport import webrtc

    monkeypatch.setenv("SLEAP_RTC_CONFIG_DIR", str(lab["tmp"] / "config"))
    monkeypatch.setenv("SLEAP_RTC_STATE_DIR", str(lab["tmp"] / "state-home"))
    asked: list[str] = []

    def fake_connector(server: str, *, worker_id: str | None = None, **kw: Any) -> Any:
        asked.append(worker_id or "")
        return worker_connect(lab)

    monkeypatch.setattr(webrtc, "make_connector", fake_connector)

    async def main() -> tuple[list[str], Any, Any]:
        async with signaling_server(lab["tmp"]) as server:
            workers = []
            for peer_id, name in (("peer-a1", "gpu-1"), ("peer-b2", "gpu-2")):
                sig = await SignalingClient.connect(server.url)
                await sig.register(room_id="lab", role="worker", peer_id=peer_id,
                                   worker_key=WORKER_KEY,
                                   metadata={"properties": {"name": name, "status": "available"}})
                workers.append(sig)
            token = server.issuer.issue("alice", "lab")
            try:
                shown = [w.name for w in await list_workers(
                    ClientSettings(server=server.url, room="lab"), token)]  # `sleap-rtc workers`
                by_api = await api.check_paths_async(
                    lab["labels"], room="lab", worker="gpu-2", server=server.url, token=token,
                    timeouts=FAST, resolver=AutoResolver(threshold=0.1))
                by_runner = await asyncio.to_thread(
                    runners.run_presubmission_checks, lab["labels"], "lab", "gpu-2",
                    server=server.url, token=token, timeouts=FAST,
                    resolver=AutoResolver(threshold=0.1))
            finally:
                for sig in workers:
                    await sig.close()
            return shown, by_api, by_runner

    shown, by_api, by_runner = asyncio.run(asyncio.wait_for(main(), 60))
    assert sorted(shown) == ["gpu-1", "gpu-2"]
    assert by_api.ok, by_api
    assert by_runner.ok, by_runner
    assert asked == ["peer-b2", "peer-b2"]  # the name's peer id, not the name, nor gpu-1
