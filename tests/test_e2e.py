"""End to end across real processes on loopback: ``sleap-rtc signal``, ``sleap-rtc worker``
and the client (``sleap-rtc train`` / ``check`` / ``workers`` subprocesses, or the API).

The worker runs the stand-in trainer (tests/support/fake_sleap_nn.py) so jobs take
seconds; the data is a real SLEAP dataset written with sleap-io. Every wait is bounded,
and each test stops only the processes it started (each in its own process group, so a
worker's trainer goes with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

from sleap_rtc.auth.tokens import TokenIssuer
from sleap_rtc.cli.exits import ExitCode
from sleap_rtc.demo import CLIENT_PREFIX, DemoDataset, make_dataset, training_config_yaml

pytestmark = pytest.mark.e2e
T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
FAKE = REPO / "tests" / "support" / "fake_sleap_nn.py"
#: The stand-in trainer, paced by the test (``fake.hold_file``): see its docstring.
PACED = REPO / "tests" / "support" / "paced_trainer.py"
PY = sys.executable
CLI = [PY, "-m", "sleap_rtc.cli.main"]
COULD_NOT_CONNECT = "Could not connect to worker. Check that the worker is running."


def wait_for(
    predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05
) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def read_ready(path: Path) -> str | None:
    """The text a ``--ready-file`` holds, once written (atomically)."""
    return path.read_text().strip() or None if path.exists() else None


class Proc:
    """A CLI process in its own process group, output in a log file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str]) -> None:
        self.log = log
        self._fh = log.open("wb")
        self.popen = subprocess.Popen(
            args,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_output(self, pattern: str, timeout: float) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            match = re.search(pattern, self.output())
            if match is None and self.popen.poll() is not None:
                raise AssertionError(
                    f"process exited ({self.popen.returncode}) before printing {pattern!r}:\n"
                    + self.output()
                )
            return match

        return wait_for(found, timeout, f"{pattern!r} in {self.log.name}")

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.log.name} still running after {timeout:g} s") from None

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        """Signal this process and every child it started (its own group)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.kill_group(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.kill_group(signal.SIGKILL)
                self.popen.wait(5)
        else:
            self.kill_group(signal.SIGKILL)  # leftover children of a dead leader
        self._fh.close()


@dataclass
class Lab:
    root: Path
    env: dict[str, str]
    url: str
    issuer: TokenIssuer
    data: DemoDataset
    worker_peer: str
    keys: dict[str, Path]
    procs: list[Proc] = field(default_factory=list)

    def token_file(
        self,
        room: str = "lab",
        *,
        ttl: float = 3600,
        issuer: TokenIssuer | None = None,
        text: str | None = None,
    ) -> Path:
        token = (
            text if text is not None else (issuer or self.issuer).issue("alice", room, ttl_s=ttl)
        )
        path = self.root / f"token-{uuid.uuid4().hex[:8]}"
        path.write_text(token)
        path.chmod(0o600)
        return path

    def client_args(self, room: str = "lab", token: Path | None = None) -> list[str]:
        token = token or self.token_file(room)
        return [
            "--server",
            self.url,
            "--room",
            room,
            "--token-file",
            str(token),
            "--loopback",
            "--timeout",
            "10",
        ]

    def cli(
        self, *args: str, timeout: float = 90, input: str = ""
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            cwd=REPO,
            input=input,
        )

    def start(self, name: str, *args: str) -> Proc:
        proc = Proc([*CLI, *args], self.root / f"{name}-{uuid.uuid4().hex[:6]}.log", self.env)
        self.procs.append(proc)
        return proc

    def start_worker(
        self, name: str, state: Path, *extra: str, room: str = "lab", trainer: Path = FAKE
    ) -> tuple[Proc, str]:
        ready = self.root / f"{name}-{uuid.uuid4().hex[:6]}.id"
        proc = self.start(
            name,
            "worker",
            "--server",
            self.url,
            "--room",
            room,
            "--name",
            name,
            "--credential-file",
            str(self.keys[room]),
            "--mount",
            f"lab-share={self.data.share}",
            "--loopback",
            "--trainer-command",
            f"{PY} {trainer} train",
            "--state-dir",
            str(state),
            "--ready-file",
            str(ready),
            *extra,
        )
        peer = wait_for(lambda: read_ready(ready), 60, f"{name} to register")
        return proc, peer

    def training_config(
        self,
        *,
        epochs: int = 2,
        batches: int = 3,
        batch_sleep: float = 0.01,
        hold_file: Path | None = None,
    ) -> Path:
        text = training_config_yaml(str(self.data.labels_path))
        text += f"fake:\n  epochs: {epochs}\n  batches: {batches}\n  batch_sleep: {batch_sleep}\n"
        if hold_file is not None:  # the paced trainer waits for it after epoch 0
            text += f"  hold_file: {hold_file}\n  hold_after_epoch: 0\n"
        path = self.root / f"config-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(text)
        return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("e2e")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLEAP_RTC_")}
    env.update(
        SLEAP_RTC_CONFIG_DIR=str(root / "config"),
        SLEAP_RTC_STATE_DIR=str(root / "state"),
        PYTHONUNBUFFERED="1",
    )
    (root / "sig").mkdir()
    secrets = {"lab": "lab-worker-key-0123456789", "other": "other-worker-key-0123456789"}
    rooms = "".join(
        f'[rooms.{name}]\nworker_key = "{key}"\nlogin_secret = "pass-{name}"\n\n'
        for name, key in {**secrets, "empty": "empty-worker-key-0123456789"}.items()
    )
    (root / "sig" / "rooms.toml").write_text(rooms)
    keys = {}
    for name, key in secrets.items():
        keys[name] = root / f"{name}.key"
        keys[name].write_text(key + "\n")
        keys[name].chmod(0o600)
    data = make_dataset(root)
    procs: list[Proc] = []
    try:
        url_file = root / "sig.url"
        sig = Proc(
            [
                *CLI,
                "signal",
                "--port",
                "0",
                "--state-dir",
                str(root / "sig"),
                "--ready-file",
                str(url_file),
            ],
            root / "signal.log",
            env,
        )
        procs.append(sig)
        url = wait_for(lambda: read_ready(url_file), 60, "signal")
        issuer = TokenIssuer.load_or_create(root / "sig" / "signing_key.pem")
        lab = Lab(root, env, url, issuer, data, "", keys, procs)
        _, lab.worker_peer = lab.start_worker("lab-worker", root / "worker-state")
        yield lab
    finally:
        for proc in reversed(procs):
            proc.stop()


# ----------------------------------------------------------------------------- happy path


def test_happy_path_train_with_suggestion_accepted(lab: Lab) -> None:
    config = lab.training_config()
    result = lab.cli(
        "train", str(lab.data.labels_path), "-t", str(config), "--yes", *lab.client_args()
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    worker_video = str(lab.data.video_worker_path)
    assert (
        f"Accepted the worker's suggestion: {lab.data.video_client_path} -> {worker_video}" in out
    )
    assert "accepted; run folder on the worker:" in out
    assert "Training ended." in out
    match = re.search(r"job \S+ accepted; run folder on the worker: (\S+)", out)
    assert match, out
    run_dir = Path(match.group(1))
    assert (run_dir / "best.ckpt").exists()
    argv = json.loads((run_dir / "argv.json").read_text())
    maps = argv["video_path_map"] + argv["prefix_map"]
    assert [lab.data.video_client_path, worker_video] in maps


def test_train_interactive_choice_and_cancel(lab: Lab) -> None:
    args = [
        "train",
        str(lab.data.labels_path),
        "-t",
        str(lab.training_config()),
        "--no-saved-mappings",
        *lab.client_args(),
    ]
    cancelled = lab.cli(*args, input="c\n")
    assert cancelled.returncode == ExitCode.CANCELLED, cancelled.stdout + cancelled.stderr
    assert "nothing was submitted" in cancelled.stdout
    no_answer = lab.cli(*args)  # stdin at EOF: nobody to ask, so nothing is submitted
    assert no_answer.returncode == ExitCode.CANCELLED
    chosen = lab.cli(*args, input="1\n")
    assert chosen.returncode == 0, chosen.stdout + chosen.stderr
    assert "Training ended." in chosen.stdout


def test_check_prints_missing_and_suggestion_then_passes_with_a_mapping(lab: Lab) -> None:
    labels = str(lab.data.labels_path)
    # Without the rules an earlier train saved (check applies them as train does).
    result = lab.cli("check", labels, "--no-saved-mappings", *lab.client_args())
    assert result.returncode == ExitCode.FAILED, result.stderr
    assert "0 found, 1 not usable on the worker" in result.stdout
    assert f"suggestion: {lab.data.video_client_path} -> {lab.data.video_worker_path}" in (
        result.stdout.replace("\n", "")
    )
    mapped = lab.cli(
        "check",
        labels,
        "--map",
        lab.data.video_client_path,
        str(lab.data.video_worker_path),
        "--json",
        *lab.client_args(),
    )
    assert mapped.returncode == 0, mapped.stdout + mapped.stderr
    report = json.loads(mapped.stdout)
    assert report["ok"] is True
    assert report["videos"][0]["status"] == "found"


def test_workers_lists_the_rooms_worker(lab: Lab) -> None:
    result = lab.cli("workers", "--json", *lab.client_args())
    assert result.returncode == 0, result.stderr
    workers = json.loads(result.stdout)
    assert [w["name"] for w in workers] == ["lab-worker"]
    assert workers[0]["metadata"]["properties"]["mounts"] == ["lab-share"]


# ----------------------------------------------------------------------------- refusals


def test_worker_not_running(lab: Lab) -> None:
    result = lab.cli("check", str(lab.data.labels_path), *lab.client_args(room="empty"))
    assert result.returncode == ExitCode.UNREACHABLE
    assert COULD_NOT_CONNECT in result.stderr
    assert "Traceback" not in result.stderr
    named = lab.cli(
        "train",
        str(lab.data.labels_path),
        "-t",
        str(lab.training_config()),
        "--yes",
        "--worker",
        "no-such-worker",
        *lab.client_args(),
    )
    assert named.returncode == ExitCode.UNREACHABLE
    assert COULD_NOT_CONNECT in named.stderr


def test_signaling_server_not_running(lab: Lab) -> None:
    result = lab.cli(
        "check",
        str(lab.data.labels_path),
        "--server",
        "ws://127.0.0.1:9",
        "--room",
        "lab",
        "--token-file",
        str(lab.token_file()),
        "--timeout",
        "3",
    )
    assert result.returncode == ExitCode.UNREACHABLE
    assert "signaling server" in result.stderr


def test_worker_refused_or_unreachable(lab: Lab) -> None:
    bad_key = lab.root / "bad.key"
    bad_key.write_text("not-the-worker-key\n")
    common = [
        "worker",
        "--room",
        "lab",
        "--mount",
        str(lab.data.share),
        "--loopback",
        "--state-dir",
        str(lab.root / "refused-state"),
    ]
    refused = lab.cli(*common, "--server", lab.url, "--credential-file", str(bad_key), timeout=60)
    assert refused.returncode == ExitCode.LOGIN_REQUIRED, refused.stdout + refused.stderr
    assert "refused the worker credential" in refused.stderr
    # An unreachable server is waited for (see test_worker_started_before_the_server...),
    # not an exit 4; Ctrl-C (SIGINT) while waiting ends it cleanly.
    gone = lab.start(
        "worker-gone", *common, "--server", "ws://127.0.0.1:9",
        "--credential-file", str(lab.keys["lab"]),
    )
    gone.wait_output(r"signaling server ws://127.0.0.1:9 not reachable yet .*retrying in 1 s", 60)
    gone.popen.send_signal(signal.SIGINT)
    assert gone.wait(30) == ExitCode.OK, gone.output()
    assert "Traceback" not in refused.stderr + gone.output()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_worker_started_before_the_server_waits_then_registers_and_logs_each_job(
    lab: Lab,
) -> None:
    """A worker whose signaling server is not up yet retries with backoff, saying so,
    registers once the server starts, and logs every job at default verbosity."""
    port = _free_port()
    url = f"ws://127.0.0.1:{port}"
    ready = lab.root / f"early-{uuid.uuid4().hex[:6]}.id"
    worker = lab.start(
        "worker-early", "worker", "--server", url, "--room", "lab", "--name", "early",
        "--credential-file", str(lab.keys["lab"]), "--mount", f"lab-share={lab.data.share}",
        "--loopback", "--trainer-command", f"{PY} {FAKE} train",
        "--state-dir", str(lab.root / "early-state"), "--ready-file", str(ready),
    )
    worker.wait_output(rf"signaling server {re.escape(url)} not reachable yet .*retrying in 2 s",
                       60)
    assert worker.popen.poll() is None, worker.output()
    state = lab.root / f"sig-late-{uuid.uuid4().hex[:6]}"
    state.mkdir()
    for name in ("rooms.toml", "signing_key.pem"):
        (state / name).write_bytes((lab.root / "sig" / name).read_bytes())
        (state / name).chmod(0o600)
    lab.start("signal-late", "signal", "--port", str(port), "--state-dir", str(state))
    peer = wait_for(lambda: read_ready(ready), 60, "the early worker to register")
    assert peer in worker.output()
    client = [*lab.client_args(), "--server", url, "--worker", "early"]
    ok = lab.cli("train", str(lab.data.labels_path), "-t", str(lab.training_config()), "--yes",
                 *client)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    job = re.search(r"job (\S+) accepted", ok.stdout)
    assert job, ok.stdout
    jid = re.escape(job.group(1))
    worker.wait_output(rf"job {jid} finished in \d+\.\d s; outputs in /", 30)
    out = worker.output()
    assert re.search(rf"job {jid} accepted from alice; run folder /", out), out
    assert re.search(rf"job {jid} started: ", out), out
    # A failing job: the worker says so; the client says it once, its exit status once.
    failing = lab.training_config()
    failing.write_text(failing.read_text().replace("fake:\n", "fake:\n  mode: fail\n"))
    bad = lab.cli("train", str(lab.data.labels_path), "-t", str(failing), "--yes", *client)
    assert bad.returncode == ExitCode.FAILED, bad.stdout + bad.stderr
    failed = re.search(r"job (\S+) accepted", bad.stdout)
    assert failed, bad.stdout
    worker.wait_output(rf"job {re.escape(failed.group(1))} failed: the trainer exited with "
                       r"status 1", 30)
    assert bad.stderr.count("Training failed") == 1, bad.stderr
    assert "Training failed" not in bad.stdout, bad.stdout
    assert bad.stderr.count("status 1") == 1 and "exit code" not in bad.stderr, bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert bad.stdout.count("CUDA out of memory") == 1, bad.stdout  # the tail, once
    assert bad.stderr.count("CUDA out of memory") == 1, bad.stderr  # the last line, once


def test_check_output_off_a_terminal_keeps_whole_paths(lab: Lab) -> None:
    """Piped (logs, CI), the check table neither cuts paths with "…" nor wraps them."""
    result = lab.cli("check", str(lab.data.labels_path), "--no-saved-mappings",
                     *lab.client_args())
    assert result.returncode == ExitCode.FAILED, result.stderr
    lines = result.stdout.splitlines()
    assert "…" not in result.stdout, result.stdout
    assert any(lab.data.video_client_path in line for line in lines), result.stdout
    assert any(f"1. {lab.data.video_worker_path} (" in line for line in lines), result.stdout
    suggestion = f"suggestion: {lab.data.video_client_path} -> {lab.data.video_worker_path}"
    assert any(suggestion in line for line in lines), result.stdout


def test_workers_json_is_an_array_of_objects_as_its_help_says(lab: Lab) -> None:
    helped = lab.cli("workers", "--help")
    assert "JSON array with one object per worker" in " ".join(helped.stdout.split())
    result = lab.cli("workers", "--json", *lab.client_args())
    assert result.returncode == 0, result.stderr
    workers = json.loads(result.stdout)
    assert isinstance(workers, list) and workers
    for worker in workers:
        assert set(worker) == {"peer_id", "name", "status", "metadata", "connected_at"}
        assert {"gpu", "mounts", "versions", "confinement"} <= set(worker["metadata"]["properties"])


def test_wrong_room(lab: Lab) -> None:
    """A token for room 'lab' does not open room 'other' (the server refuses it)."""
    result = lab.cli("workers", *lab.client_args(room="other", token=lab.token_file("lab")))
    assert result.returncode == ExitCode.LOGIN_REQUIRED, result.stdout + result.stderr
    assert "Login required" in result.stderr


def test_expired_token(lab: Lab) -> None:
    token = lab.token_file(ttl=-300)
    result = lab.cli("check", str(lab.data.labels_path), *lab.client_args(token=token))
    assert result.returncode == ExitCode.LOGIN_REQUIRED
    assert "expired" in result.stderr


@pytest.mark.parametrize("kind", ["other_key", "alg_none", "garbage"])
def test_forged_tokens(lab: Lab, kind: str) -> None:
    import base64

    if kind == "other_key":
        token = lab.token_file(issuer=TokenIssuer.generate())
    elif kind == "alg_none":

        def b64(obj: dict[str, object]) -> str:
            return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

        claims = {
            "sub": "mallory",
            "room": "lab",
            "aud": "sleap-rtc",
            "iss": "sleap-rtc-signal",
            "iat": int(time.time()),
            "exp": int(time.time()) + 3600,
        }
        token = lab.token_file(text=f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}.")
    else:
        token = lab.token_file(text="not-a-jwt")
    result = lab.cli("check", str(lab.data.labels_path), *lab.client_args(token=token))
    assert result.returncode == ExitCode.LOGIN_REQUIRED, result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_worker_verifies_the_token_itself(lab: Lab) -> None:
    """Signaling let the client in with a good token; the Hello carries a forged one:
    the worker refuses it (it does not take the signaling server's word)."""
    from sleap_rtc.client.auth import AuthCheck
    from sleap_rtc.client.flow import PresubmissionFlow
    from sleap_rtc.client.results import LOGIN_REQUIRED
    from sleap_rtc.transport.webrtc import make_connector

    good = lab.issuer.issue("alice", "lab")
    forged = TokenIssuer.generate().issue("alice", "lab")
    connect = make_connector(
        lab.url, room_id="lab", token=good, worker_id=lab.worker_peer, loopback=True, timeout=10
    )
    flow = PresubmissionFlow(
        connect=connect, auth=AuthCheck(get_token=lambda: forged, login=lambda: None)
    )
    result = asyncio.run(asyncio.wait_for(flow.check(str(lab.data.labels_path)), 60))
    assert result.stage == "auth"
    assert result.message == LOGIN_REQUIRED
    assert any("token" in d for d in result.details)


def test_second_client_in_another_room_cannot_see_or_reach_the_worker(lab: Lab) -> None:
    other = lab.client_args(room="other")
    listed = lab.cli("workers", "--json", *other)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []
    reach = lab.cli(
        "check", str(lab.data.labels_path), "--worker", lab.worker_peer, *lab.client_args("other")
    )
    assert reach.returncode == ExitCode.UNREACHABLE
    assert COULD_NOT_CONNECT in reach.stderr
    # The lab worker is still fine for its own room.
    assert lab.cli("workers", *lab.client_args()).returncode == 0


# ----------------------------------------------------------------------------- mid-job


def worker_status(lab: Lab, name: str) -> str:
    """The status ``sleap-rtc workers`` shows for the worker called ``name``."""
    listed = lab.cli("workers", "--json", *lab.client_args())
    assert listed.returncode == 0, listed.stdout + listed.stderr
    return next(str(w["status"]) for w in json.loads(listed.stdout) if w["name"] == name)


def test_connection_dropped_mid_job_then_reattach(lab: Lab) -> None:
    """The trainer holds after epoch 1 until the second client has re-attached, so the job
    is still running then however slow the machine is (nothing here races a clock)."""
    gate = lab.root / f"release-{uuid.uuid4().hex[:6]}"
    worker, _ = lab.start_worker("reattach", lab.root / "reattach-state", trainer=PACED)
    try:
        config = lab.training_config(epochs=4, batches=4, batch_sleep=0.02, hold_file=gate)
        job_id = f"job-{uuid.uuid4().hex}"
        args = [
            "train",
            str(lab.data.labels_path),
            "-t",
            str(config),
            "--yes",
            "--job-id",
            job_id,
            "--worker",
            "reattach",
            *lab.client_args(),
        ]
        first = lab.start("client-drop", *args)
        first.wait_output(r"epoch 1: ", 60)
        first.kill_group(signal.SIGKILL)  # the connection drops with the client
        first.wait(10)
        assert "Training ended" not in first.output()
        wait_for(lambda: worker_status(lab, "reattach") == "busy", 30, "busy", interval=0.2)
        again = lab.start("client-again", *args)
        again.wait_output(r"running on the worker: re-attached", 60)
        gate.touch()  # now the job may go on
        assert again.wait(60) == 0, again.output()
        out = again.output()
        for epoch in range(1, 5):
            assert f"epoch {epoch}: " in out  # the missed progress is replayed, the rest follows
        assert out.count("epoch 1: ") == 1  # ...once
        assert "Training ended." in out
        wait_for(
            lambda: worker_status(lab, "reattach") == "available", 30, "available", interval=0.2
        )
    finally:
        gate.touch()
        worker.stop()


def test_worker_killed_mid_job_then_restarted_the_retry_tells_the_truth(lab: Lab) -> None:
    """kill -9 of the worker process while its (quiet) trainer runs: the trainer dies with
    it, the client does not promise the job runs on, and after a restart on the same state
    folder the retry with the same job id reports the failure and its reason -- it does
    not train a second time."""
    gate = lab.root / f"release-{uuid.uuid4().hex[:6]}"
    state = lab.root / "restart-state"
    runs = lab.data.share / "sleap-rtc-runs"
    worker, _ = lab.start_worker("restart", state, trainer=PACED)
    second: Proc | None = None
    try:
        config = lab.training_config(epochs=3, batches=2, hold_file=gate)
        job_id = f"job-{uuid.uuid4().hex}"
        args = ["train", str(lab.data.labels_path), "-t", str(config), "--yes",
                "--job-id", job_id, "--worker", "restart", *lab.client_args()]
        first = lab.start("client-crash", *args)
        first.wait_output(r"epoch 1: ", 60)
        run_dir = Path(re.findall(r"run folder on the worker: (\S+)", first.output())[0])
        trainer_pid = json.loads((run_dir / "argv.json").read_text())["pid"]
        before = sorted(p.name for p in runs.iterdir())
        worker.popen.send_signal(signal.SIGKILL)  # the worker process only, not its group
        worker.popen.wait(10)
        wait_for(lambda: not Path(f"/proc/{trainer_pid}/cmdline").exists()
                 or not Path(f"/proc/{trainer_pid}/cmdline").read_bytes(), 2, "the trainer to die")
        gate.touch()  # an orphan would train on from here
        assert first.wait(60) == ExitCode.UNREACHABLE, first.output()
        out = first.output()
        assert "Connection lost" in out and "keeps running on the worker" not in out, out
        assert "if the worker stopped, its trainer stopped with it" in out
        second, _ = lab.start_worker("restart", state, trainer=PACED)
        again = lab.start("client-retry", *args)
        assert again.wait(60) == ExitCode.FAILED, again.output()
        out = again.output()
        assert "failed on the worker: re-attached" in out, out
        assert "Training failed: the worker stopped while this job ran" in out, out
        assert "Training ended" not in out
        assert sorted(p.name for p in runs.iterdir()) == before  # no <job>-1: never twice
    finally:
        gate.touch()
        worker.stop()
        if second is not None:
            second.stop()


def test_workers_shows_busy_during_a_job_and_available_after(lab: Lab) -> None:
    gate = lab.root / f"release-{uuid.uuid4().hex[:6]}"
    worker, _ = lab.start_worker("status", lab.root / "status-state", trainer=PACED)
    try:
        assert worker_status(lab, "status") == "available"
        config = lab.training_config(epochs=2, batches=2, hold_file=gate)
        submit = lab.cli(
            "train",
            str(lab.data.labels_path),
            "-t",
            str(config),
            "--yes",
            "--detach",
            "--worker",
            "status",
            *lab.client_args(),
        )
        assert submit.returncode == 0, submit.stdout + submit.stderr
        # The trainer holds after its first epoch, so the job runs until released.
        wait_for(lambda: worker_status(lab, "status") == "busy", 30, "busy", interval=0.2)
        listed = lab.cli("workers", *lab.client_args())
        assert re.search(r"status\s.*busy", listed.stdout, re.S), listed.stdout
        gate.touch()
        wait_for(lambda: worker_status(lab, "status") == "available", 30, "available", interval=0.2)
    finally:
        gate.touch()
        worker.stop()


class LossViewerStandIn:
    """Binds like SLEAP's LossViewer: a SUB on one free loopback port (progress comes
    in) and a PUB on another (Stop goes out); a thread polls the SUB like its QTimer."""

    def __init__(self) -> None:
        import threading

        import zmq

        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.setsockopt(zmq.RCVHWM, 0)
        self.publish_port = self.sub.bind_to_random_port("tcp://127.0.0.1")
        self.ctl = self.ctx.socket(zmq.PUB)
        self.controller_port = self.ctl.bind_to_random_port("tcp://127.0.0.1")
        self.messages: list[dict[str, object]] = []
        self._running = True
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        import zmq

        while self._running:
            if self.sub.poll(20, zmq.POLLIN):
                while self.sub.poll(0, zmq.POLLIN):
                    self.messages.append(json.loads(self.sub.recv_string()))

    def close(self) -> None:
        self._running = False
        self._thread.join(5)
        self.sub.close(linger=0)
        self.ctl.close(linger=0)
        self.ctx.term()


def test_train_republishes_progress_to_the_lossviewer(lab: Lab) -> None:
    viewer = LossViewerStandIn()
    try:
        result = lab.cli(
            "train",
            str(lab.data.labels_path),
            "-t",
            str(lab.training_config(epochs=3, batches=2)),
            "--yes",
            "--quiet",
            "--lossviewer",
            str(viewer.publish_port),
            str(viewer.controller_port),
            *lab.client_args(),
        )
        assert result.returncode == 0, result.stdout + result.stderr
        wait_for(
            lambda: any(m["event"] == "train_end" for m in viewer.messages),
            10,
            "train_end at the LossViewer",
        )
    finally:
        viewer.close()
    messages = viewer.messages
    ends = [m for m in messages if m["event"] == "epoch_end"]
    assert messages[0]["event"] == "train_begin"  # LossViewer drops everything before it
    assert messages[0]["what"] == ""
    assert sum(m["event"] == "train_begin" for m in messages) == 1
    assert [m["epoch"] for m in ends] == [0, 1, 2]
    for end in ends:
        logs = end["logs"]
        assert isinstance(logs, dict) and {"train/loss", "val/loss"} <= set(logs)
    assert messages[-1]["event"] == "train_end"


def test_ctrl_c_stops_early_and_keeps_the_checkpoint(lab: Lab) -> None:
    config = lab.training_config(epochs=30, batches=5, batch_sleep=0.1)
    client = lab.start(
        "client-stop",
        "train",
        str(lab.data.labels_path),
        "-t",
        str(config),
        "--yes",
        *lab.client_args(),
    )
    client.wait_output(r"epoch 1: ", 60)
    client.popen.send_signal(signal.SIGINT)
    assert client.wait(60) == 0, client.output()
    out = client.output()
    assert "stopping early" in out
    assert "stopped early" in out
    assert "epoch 30:" not in out


def test_ctrl_c_twice_leaves_the_job_running_and_exits_3(lab: Lab) -> None:
    """The exit codes the README and cli/exits.py promise: Ctrl-C once is a stop early
    (0, above); a second one leaves the job on the worker and exits 3 (cancelled). The
    trainer holds after epoch 1, so the stop cannot end the job between the two."""
    gate = lab.root / f"release-{uuid.uuid4().hex[:6]}"
    worker, _ = lab.start_worker("twice", lab.root / "twice-state", trainer=PACED)
    try:
        config = lab.training_config(epochs=3, batches=2, hold_file=gate)
        client = lab.start("client-twice", "train", str(lab.data.labels_path), "-t",
                           str(config), "--yes", "--worker", "twice", *lab.client_args())
        client.wait_output(r"epoch 1: ", 60)
        client.popen.send_signal(signal.SIGINT)
        client.wait_output(r"stopping early", 30)
        client.popen.send_signal(signal.SIGINT)
        assert client.wait(60) == ExitCode.CANCELLED, client.output()
        assert "left the job running on the worker" in client.output()
        assert worker_status(lab, "twice") == "busy"  # the job is still there
    finally:
        gate.touch()
        worker.stop()


def test_attach_api_gets_the_rest_after_a_sequence(lab: Lab) -> None:
    """JobAttach over a fresh WebRTC connection resumes after the last seen sequence."""
    from sleap_rtc.client.auth import AuthCheck
    from sleap_rtc.client.connection import WorkerConnection
    from sleap_rtc.client.events import JobCompleted, ProgressReceived
    from sleap_rtc.client.flow import PresubmissionFlow
    from sleap_rtc.client.resolve import AutoResolver
    from sleap_rtc.client.session import ClientSession
    from sleap_rtc.transport.webrtc import make_connector

    token = lab.issuer.issue("alice", "lab")
    connect = make_connector(
        lab.url, room_id="lab", token=token, worker_id=lab.worker_peer, loopback=True, timeout=10
    )
    config = lab.training_config(epochs=3, batches=6, batch_sleep=0.1).read_text()

    async def scenario() -> tuple[list[int], int]:
        flow = PresubmissionFlow(
            connect=connect,
            auth=AuthCheck(get_token=lambda: token, login=lambda: None),
            resolver=AutoResolver(threshold=0.5, use_saved=False),
            follow_progress=False,
        )
        submitted = await flow.run(labels_path=str(lab.data.labels_path), config_content=config)
        assert submitted.ok, submitted.message
        job_id = submitted.job_id
        # First connection: read some progress, then drop it.
        conn = WorkerConnection(await connect(), ClientSession(token=token))
        await conn.hello()
        await conn.attach(job_id, 0)
        seen: list[int] = []
        while len(seen) < 5:
            event = await conn.next_event(timeout_s=30)
            if isinstance(event, ProgressReceived):
                seen.append(event.progress.sequence)
        await conn.close()
        last = max(seen)
        # Second connection: attach after the last sequence seen.
        conn = WorkerConnection(await connect(), ClientSession(token=token))
        await conn.hello()
        status = await conn.attach(job_id, last)
        assert status.job_id == job_id
        rest: list[int] = []
        while True:
            event = await conn.next_event(timeout_s=30)
            seq = getattr(getattr(event, "progress", None), "sequence", None)
            if isinstance(event, JobCompleted):
                rest.append(event.complete.sequence)
                break
            if seq:
                rest.append(seq)
        await conn.close()
        return rest, last

    rest, last = asyncio.run(asyncio.wait_for(scenario(), 120))
    assert rest and min(rest) > last  # nothing seen twice, nothing before the cut
    assert rest == sorted(rest)


def test_worker_killed_mid_job_client_told_and_temp_config_gone_after_restart(lab: Lab) -> None:
    state = lab.root / "victim-state"
    victim, _ = lab.start_worker("victim", state)
    config = lab.training_config(epochs=50, batches=10, batch_sleep=0.1)
    client = lab.start(
        "client-victim",
        "train",
        str(lab.data.labels_path),
        "-t",
        str(config),
        "--yes",
        "--worker",
        "victim",
        *lab.client_args(),
    )
    client.wait_output(r"epoch 1: ", 60)
    leftovers = [
        p for p in state.rglob("*") if p.is_file() and "config" in str(p.relative_to(state))
    ]
    assert leftovers, "the running job should have a temp config in the state dir"
    victim.kill_group(signal.SIGKILL)  # the worker and its trainer die without cleanup
    victim.wait(10)
    code = client.wait(90)
    assert code == ExitCode.UNREACHABLE, client.output()
    assert "Connection lost. Try again." in client.output()
    assert all(p.exists() for p in leftovers)  # nothing cleaned up a SIGKILL...
    restarted, _ = lab.start_worker("victim", state)
    assert not any(p.exists() for p in leftovers)  # ...until the worker started again
    restarted.stop()


# ----------------------------------------------------------------------------- login


def test_browser_login_then_commands_use_the_saved_token(lab: Lab) -> None:
    import urllib.parse
    import urllib.request

    proc = lab.start("login", "login", "--no-browser", "--server", lab.url, "--room", "lab")
    url = proc.wait_output(r"Log in at: (\S+)", 30).group(1)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert query["redirect_uri"].startswith("http://127.0.0.1:")
    submit = urllib.parse.urlunsplit(
        urllib.parse.urlsplit(url)._replace(
            path="/login/submit",
            query=urllib.parse.urlencode({**query, "user": "bob", "secret": "pass-lab"}),
        )
    )
    with urllib.request.urlopen(submit, timeout=10) as resp:  # follows the loopback redirect
        assert resp.status == 200
    assert proc.wait(30) == 0, proc.output()
    assert "logged in to room 'lab'" in proc.output()
    status = lab.cli("login", "--status", "--server", lab.url)
    assert status.returncode == 0 and "bob" in status.stdout
    store = Path(lab.env["SLEAP_RTC_CONFIG_DIR"]) / "tokens.json"
    assert store.stat().st_mode & 0o777 == 0o600
    listed = lab.cli("workers", "--server", lab.url, "--room", "lab", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [w["name"] for w in json.loads(listed.stdout)] == ["lab-worker"]
    assert lab.cli("login", "--logout", "--server", lab.url).returncode == 0
    again = lab.cli("workers", "--server", lab.url, "--room", "lab")
    assert again.returncode == ExitCode.LOGIN_REQUIRED


def test_headless_login_from_a_token_file(lab: Lab) -> None:
    good = lab.cli(
        "login", "--server", lab.url, "--room", "lab", "--token-file", str(lab.token_file())
    )
    assert good.returncode == 0, good.stderr
    forged = lab.cli(
        "login",
        "--server",
        lab.url,
        "--room",
        "lab",
        "--token-file",
        str(lab.token_file(issuer=TokenIssuer.generate())),
    )
    assert forged.returncode == ExitCode.LOGIN_REQUIRED
    assert "not valid" in forged.stderr
    lab.cli("login", "--logout", "--server", lab.url)


def test_headless_login_with_the_rooms_passphrase_on_stdin(lab: Lab) -> None:
    """No browser, no token from anyone: `login --user NAME`, passphrase piped in."""
    wrong = lab.cli("login", "--server", lab.url, "--room", "lab", "--user", "bob",
                    input="not-the-passphrase\n")
    assert wrong.returncode == ExitCode.LOGIN_REQUIRED, wrong.stdout + wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
    good = lab.cli("login", "--server", lab.url, "--room", "lab", "--user", "bob",
                   input="pass-lab\n")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "as bob" in good.stdout
    try:
        status = lab.cli("login", "--status", "--server", lab.url)
        assert status.returncode == 0 and "user:    bob" in status.stdout, status.stdout
        listed = lab.cli("workers", "--server", lab.url, "--room", "lab", "--json")
        assert listed.returncode == 0, listed.stderr
        assert "lab-worker" in [w["name"] for w in json.loads(listed.stdout)]
    finally:
        lab.cli("login", "--logout", "--server", lab.url)


# ----------------------------------------------------------------------------- capture


def test_worker_and_client_captures_decode_with_inspect(lab: Lab) -> None:
    worker_capture = lab.root / "worker.mcap"
    client_capture = lab.root / "client.mcap"
    proc, _ = lab.start_worker(
        "recorded", lab.root / "recorded-state", "--capture", str(worker_capture)
    )
    result = lab.cli(
        "train",
        str(lab.data.labels_path),
        "-t",
        str(lab.training_config()),
        "--yes",
        "--worker",
        "recorded",
        "--capture",
        str(client_capture),
        *lab.client_args(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    proc.stop()  # the worker finishes its capture file on a clean stop
    for capture in (client_capture, worker_capture):
        assert capture.exists(), capture
        info = lab.cli("inspect", "info", str(capture))
        assert info.returncode == 0, info.stdout + info.stderr
        listing = lab.cli("inspect", "cat", str(capture))
        assert listing.returncode == 0, listing.stderr
        for body in ("hello", "path_check_request", "job_submit", "job_complete"):
            assert body in listing.stdout.lower(), (capture, listing.stdout[:2000])
        # Every token starts with the same JWT header: none may appear (tokens are redacted).
        assert lab.issuer.issue("x", "lab")[:20] not in listing.stdout


# ----------------------------------------------------------------------------- README layout


def test_readme_layout_two_trains_in_a_row_with_saved_rules(lab: Lab) -> None:
    """The README's layout: the share is /Volumes/<share> on the laptop and /mnt/<share>
    on the worker (both under a temp folder). The first train accepts the suggestions
    (the labels file's too, protocol 1.2) and saves the rules in their specific form;
    the second applies them, the worker accepts them at submit, and both succeed."""
    import sleap_io as sio

    root = lab.root / f"readme-{uuid.uuid4().hex[:6]}"
    data = make_dataset(root / "mnt")  # root/mnt/lab-share/project/...
    laptop = root / "Volumes" / "lab-share" / "project"
    labels = sio.load_slp(str(data.labels_path), open_videos=False)
    labels.replace_filenames(prefix_map={CLIENT_PREFIX: str(laptop)}, open_videos=False)
    sio.save_slp(labels, str(data.labels_path))
    client_labels = str(laptop / "labels.slp")  # as the laptop names it
    env = {
        **lab.env,
        "SLEAP_RTC_CONFIG_DIR": str(root / "laptop-config"),
        "SLEAP_RTC_STATE_DIR": str(root / "laptop-state"),
    }
    ready = root / "worker.id"
    worker = lab.start(
        "readme-worker",
        "worker",
        "--server",
        lab.url,
        "--room",
        "lab",
        "--name",
        "readme",
        "--credential-file",
        str(lab.keys["lab"]),
        "--mount",
        f"lab-share={data.share}",
        "--loopback",
        "--trainer-command",
        f"{PY} {FAKE} train",
        "--state-dir",
        str(root / "worker-state"),
        "--ready-file",
        str(ready),
    )
    try:
        wait_for(lambda: read_ready(ready), 60, "the README worker to register")
        config = lab.training_config()
        args = [*CLI, "train", client_labels, "-t", str(config), "--yes", "--worker", "readme"]
        runs = []
        for _ in range(2):
            run = subprocess.run(
                [*args, *lab.client_args()],
                capture_output=True,
                text=True,
                timeout=120,
                env=env,
                cwd=REPO,
            )
            assert run.returncode == 0, run.stdout + run.stderr
            assert "Training ended." in run.stdout
            runs.append(run.stdout)
        first, second = runs
        assert "Accepted the worker's suggestion" in first, first
        saved = json.loads((root / "laptop-state" / "mappings.json").read_text())
        rules = saved["workers"]
        worker_rules = next(iter(rules.values()))
        # Specific form, worker side inside the mount: never "/Volumes -> /mnt".
        assert worker_rules == {
            str(laptop): str(data.project),
            str(laptop / "videos"): str(data.project / "videos"),
        }
        assert "Applied the saved prefix rule" in second
        assert "Accepted the worker's suggestion" not in second
        check = subprocess.run(
            [*CLI, "check", client_labels, "--json", "--worker", "readme", *lab.client_args()],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=REPO,
        )
        assert check.returncode == 0, check.stdout + check.stderr  # check agrees with train
        report = json.loads(check.stdout)
        assert report["ok"] is True and report["labels"]["status"] == "found"
        # The same saved rule train applied (the labels folder's covers the videos too).
        assert report["applied_prefix_mappings"] == {str(laptop): str(data.project)}
        assert f"Applied the saved prefix rule: {laptop} -> {data.project}" in second
    finally:
        worker.stop()

