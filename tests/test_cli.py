"""The command line: --help everywhere, documented exit codes, one-line errors, config errors."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sleap_rtc.cli import main as cli_main
from sleap_rtc.cli.exits import ExitCode

COMMANDS = ["signal", "worker", "login", "workers", "check", "train", "demo"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never read or write the user's own config, tokens or state."""
    monkeypatch.setenv("SLEAP_RTC_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("SLEAP_RTC_STATE_DIR", str(tmp_path / "state"))
    for name in ("SLEAP_RTC_TOKEN", "SLEAP_RTC_TOKEN_FILE", "SLEAP_RTC_WORKER_CREDENTIAL"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def run_cli(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``sleap-rtc`` in a subprocess (as a user would); bounded in time."""
    return subprocess.run(
        [sys.executable, "-m", "sleap_rtc.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def test_top_level_help_lists_every_command_and_exit_codes() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout
    assert "exit codes" in result.stdout
    assert "5 login required" in result.stdout.replace("\n", " ")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli_main.main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert f"sleap-rtc {command}" in out
    assert "--help" in out


def test_inspect_command_is_included_when_present(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        import sleap_rtc.cli.inspect_cmd  # noqa: F401
    except ImportError:
        pytest.skip("the capture inspector is not installed")
    with pytest.raises(SystemExit) as info:
        cli_main.main(["inspect", "--help"])
    assert info.value.code == 0


def test_help_is_fast() -> None:
    """``sleap-rtc --help`` imports no heavy library (aiortc, torch, sleap-io)."""
    code = (
        "import sys, time; t = time.perf_counter();"
        "from sleap_rtc.cli.main import build_parser; build_parser();"
        "heavy = [m for m in ('aiortc', 'torch', 'sleap_io', 'zmq', 'h5py', 'rich', 'websockets')"
        " if m in sys.modules]; print(heavy, time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    heavy, _, seconds = out.stdout.strip().rpartition(" ")
    assert heavy == "[]", out.stdout
    assert float(seconds) < 1.0


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main.main([]) == ExitCode.USAGE
    assert "COMMAND" in capsys.readouterr().out


def test_unknown_option_is_a_usage_error() -> None:
    result = run_cli("train", "--no-such-flag")
    assert result.returncode == ExitCode.USAGE
    assert "Traceback" not in result.stderr


def test_exit_codes_are_stable() -> None:
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 4, 5]
    assert int(ExitCode.LOGIN_REQUIRED) == 5 and int(ExitCode.UNREACHABLE) == 4


def test_bad_worker_config_is_one_line_naming_key_and_file(isolated: Path) -> None:
    config = isolated / "worker.toml"
    config.write_text('room = "lab"\n[limits]\nconcurrency = "many"\n')
    result = run_cli("worker", "--config", str(config), "--check-config")
    assert result.returncode == ExitCode.USAGE
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(config) in lines[0] and "limits.concurrency" in lines[0]


def test_bad_toml_syntax(isolated: Path) -> None:
    config = isolated / "client.toml"
    config.write_text("server = \n")
    result = run_cli("workers", "--config", str(config))
    assert result.returncode == ExitCode.USAGE
    assert str(config) in result.stderr and "invalid TOML" in result.stderr


def test_default_client_config_is_read(isolated: Path) -> None:
    folder = isolated / "config"
    folder.mkdir()
    (folder / "client.toml").write_text('sever = "ws://x:1"\n')
    result = run_cli("workers")
    assert result.returncode == ExitCode.USAGE
    assert "client.toml: sever: unknown key" in result.stderr


def test_worker_check_config_prints_merged_settings(isolated: Path) -> None:
    share = isolated / "share"
    share.mkdir()
    config = isolated / "worker.toml"
    config.write_text(f'room = "lab"\nname = "box"\nmounts = ["{share}"]\n')
    result = run_cli(
        "worker", "--config", str(config), "--room", "other", "--concurrency", "2", "--check-config"
    )
    assert result.returncode == 0, result.stderr
    assert "room:            other" in result.stdout
    assert "concurrency:     2" in result.stdout
    assert f"share = {share}" in result.stdout


def test_worker_needs_a_mount_and_a_credential(isolated: Path) -> None:
    result = run_cli("worker", "--room", "lab")
    assert result.returncode == ExitCode.USAGE
    assert "at least one mount" in result.stderr
    result = run_cli("worker", "--mount", str(isolated / "missing"))
    assert result.returncode == ExitCode.USAGE
    assert "not an existing folder" in result.stderr
    result = run_cli("worker", "--mount", str(isolated))
    assert result.returncode == ExitCode.USAGE
    assert "no worker credential" in result.stderr


def test_missing_token_is_login_required() -> None:
    result = run_cli("workers", "--server", "ws://127.0.0.1:9")
    assert result.returncode == ExitCode.LOGIN_REQUIRED
    assert "Login required" in result.stderr
    assert "Traceback" not in result.stderr


def test_token_file_that_does_not_exist(isolated: Path) -> None:
    result = run_cli("workers", "--token-file", str(isolated / "nope"))
    assert result.returncode == ExitCode.LOGIN_REQUIRED
    assert "does not exist" in result.stderr


def test_unreachable_signaling_server_exits_4(isolated: Path) -> None:
    from sleap_rtc.auth.tokens import TokenIssuer

    token = TokenIssuer.generate().issue("alice", "lab")
    started = time.monotonic()
    result = run_cli(
        "workers",
        "--server",
        "ws://127.0.0.1:9",
        "--room",
        "lab",
        "--timeout",
        "3",
        env={"SLEAP_RTC_TOKEN": token},
    )
    assert result.returncode == ExitCode.UNREACHABLE, result.stderr
    assert "signaling server" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert time.monotonic() - started < 30


def test_train_needs_a_training_config(isolated: Path) -> None:
    result = run_cli("train", str(isolated / "labels.slp"))
    assert result.returncode == ExitCode.USAGE
    assert "--training-config" in result.stderr
    result = run_cli("train", "x.slp", "-t", str(isolated / "nope.yaml"))
    assert result.returncode == ExitCode.USAGE
    assert "does not exist" in result.stderr


def test_train_rejects_a_bad_job_id() -> None:
    result = run_cli("train", "x.slp", "-t", __file__, "--job-id", "../etc")
    assert result.returncode == ExitCode.USAGE
    assert "job id" in result.stderr


def test_signal_port_in_use_is_one_line(isolated: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_cli("signal", "--port", str(port), "--state-dir", str(isolated / "sig"))
    assert result.returncode == ExitCode.FAILED
    assert "cannot listen" in result.stderr and "Traceback" not in result.stderr


def test_login_status_without_token(isolated: Path) -> None:
    result = run_cli("login", "--status", "--server", "ws://127.0.0.1:9")
    assert result.returncode == ExitCode.LOGIN_REQUIRED
    assert "not logged in" in result.stdout


def test_internal_errors_are_one_line_without_debug(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sleap_rtc.cli import workers_cmd

    def boom(args: object) -> int:
        raise RuntimeError("kaput")

    monkeypatch.setattr(cli_main, "build_parser", _parser_with(workers_cmd.add_parser, boom))
    code = cli_main.main(["workers"])
    err = capsys.readouterr().err
    assert code == ExitCode.FAILED
    assert "internal error: RuntimeError: kaput" in err
    assert "Traceback" not in err
    with pytest.raises(RuntimeError):
        cli_main.main(["--debug", "workers"])


def _typed_errors() -> list[tuple[Exception, ExitCode]]:
    from sleap_rtc import demo
    from sleap_rtc.client import wiring
    from sleap_rtc.worker import runtime

    return [
        (wiring.LoginRefused("Login required: refused"), ExitCode.LOGIN_REQUIRED),
        (wiring.SignalingUnreachable("cannot reach ws://x"), ExitCode.UNREACHABLE),
        (wiring.UnknownRoom("room 'x': unknown room"), ExitCode.UNREACHABLE),
        (wiring.WorkerNotFound("Could not connect to worker. (none)"), ExitCode.UNREACHABLE),
        (wiring.WorkerUnreachable("Could not connect to worker. (ice)"), ExitCode.UNREACHABLE),
        (wiring.SignalingRefused("signaling server refused: no [bad]"), ExitCode.FAILED),
        (wiring.CaptureUnwritable("cannot write the capture x"), ExitCode.USAGE),
        (runtime.WorkerSetupError("cannot use jwks_file x"), ExitCode.USAGE),
        (runtime.WorkerCredentialRefused("refused the worker credential"), ExitCode.LOGIN_REQUIRED),
        (runtime.RegistrationFailed("unreachable [unreachable]"), ExitCode.UNREACHABLE),
        (demo.DemoSetupError("sleap-nn is not installed"), ExitCode.USAGE),
        (demo.DemoWorkerNotReady("did not register in time"), ExitCode.UNREACHABLE),
        (demo.DemoFailed("demo failed: disk full"), ExitCode.FAILED),
    ]


@pytest.mark.parametrize("debug", [False, True])
def test_typed_errors_are_one_line_with_their_exit_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], debug: bool
) -> None:
    """cli/exits.py maps every typed error of the library; never a traceback, even --debug."""
    from sleap_rtc.cli import workers_cmd

    for error, expected in _typed_errors():

        def fail(args: object, error: Exception = error) -> int:
            raise error

        monkeypatch.setattr(cli_main, "build_parser", _parser_with(workers_cmd.add_parser, fail))
        code = cli_main.main(["--debug", "workers"] if debug else ["workers"])
        err = capsys.readouterr().err
        assert code == expected, (error, code)
        assert err == f"sleap-rtc workers: error: {error}\n"


def test_signaling_failures_become_typed_errors() -> None:
    from sleap_rtc.client import wiring
    from sleap_rtc.config.client import ClientSettings
    from sleap_rtc.signaling.client import SignalingError

    settings = ClientSettings(server="ws://h:1", room="lab")
    cases = {
        "bad_token": wiring.LoginRefused,
        "unreachable": wiring.SignalingUnreachable,
        "timeout": wiring.SignalingUnreachable,
        "unknown_room": wiring.UnknownRoom,
        "rate_limited": wiring.SignalingRefused,
    }
    for code, kind in cases.items():
        error = wiring.signaling_failure(SignalingError(code, "why"), settings)
        assert type(error) is kind, code
        assert error.is_auth is (kind is wiring.LoginRefused)
    refused = wiring.signaling_failure(SignalingError("bad_token", "expired"), settings)
    assert "sleap-rtc login --server ws://h:1 --room lab" in refused.message


def _parser_with(
    add_parser: Callable[[Any], argparse.ArgumentParser], handler: Callable[[Any], int]
) -> Callable[[], argparse.ArgumentParser]:
    def build() -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog="sleap-rtc")
        parser.add_argument("-v", "--verbose", action="count", default=0)
        parser.add_argument("--debug", action="store_true")
        sub = parser.add_subparsers(dest="command")
        add_parser(sub).set_defaults(func=handler)
        return parser

    return build


def test_reattach_errors_map_to_exit_codes() -> None:
    from sleap_rtc.cli.exits import typed_exit
    from sleap_rtc.client import reattach

    cases = {
        reattach.ReattachUnreachable: ExitCode.UNREACHABLE,
        reattach.ReattachLoginRequired: ExitCode.LOGIN_REQUIRED,
        reattach.ReattachRefused: ExitCode.FAILED,
    }
    for kind, code in cases.items():
        mapped = typed_exit(kind("why it failed"))
        assert mapped is not None and mapped.code == code, kind
        assert mapped.message == "why it failed"


def test_train_reattach_to_a_job_that_failed_while_nobody_watched(tmp_path: Path) -> None:
    """`train --job-id` after a worker restart: the job's JobFailed, not a new training."""
    import asyncio

    from sleap_rtc.cli.exits import CliError
    from sleap_rtc.cli.train_cmd import reattach
    from sleap_rtc.transport.link import memory_link_pair
    from sleap_rtc.worker.jobrecord import RunResult
    from sleap_rtc.worker.service import WorkerService
    from sleap_rtc.worker.serviceconfig import WorkerConfig
    from sleap_rtc_proto.v1 import progress_pb2

    async def main() -> CliError:
        (tmp_path / "mnt").mkdir()
        service = WorkerService(
            WorkerConfig(mounts=[tmp_path / "mnt"], state_dir=tmp_path / "state", verifier=None,
                         build_index=False)
        )
        await service.start()
        tasks: list[asyncio.Task[None]] = []
        try:
            from sleap_rtc.worker.jobrecord import Job
            from sleap_rtc.worker.trainplan import TrainPlan
            from sleap_rtc_proto.v1 import job_pb2

            plan = TrainPlan(tmp_path / "c.yaml", "l.slp", tmp_path / "mnt", "job-9")
            job = Job(job_id="job-9", spec_hash="x", owner="", accepted=job_pb2.JobAccepted(
                job_id="job-9"), plan=plan, store=service.registry.store)
            job.finish(RunResult(completed=False,
                                 failure_code=progress_pb2.FAILURE_CODE_WORKER_SHUTDOWN,
                                 message="the worker stopped while this job ran"))
            service.registry.remember(job)

            async def connect() -> Any:
                client_end, worker_end = memory_link_pair()
                tasks.append(asyncio.create_task(service.serve(worker_end)))
                return client_end

            with pytest.raises(CliError) as info:
                await reattach("", "job-9", [], connect, lambda: False)
            assert await reattach("", "job-unknown", [], connect, lambda: False) is None
            return info.value
        finally:
            await service.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    error = asyncio.run(main())
    assert error.code == ExitCode.FAILED
    assert "Training failed: the worker stopped while this job ran" in error.message


def _readme_commands() -> list[str]:
    """Every ``sleap-rtc ...`` command line of README.md: in code blocks and inline code."""
    import re

    text = (REPO / "README.md").read_text(encoding="utf-8")
    found: list[str] = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        block = block.replace("\\\n", " ")
        for line in block.splitlines():
            line = line.split("#", 1)[0]
            if "sleap-rtc " in line:
                found.append(line[line.index("sleap-rtc ") :].strip())
    for span in re.findall(r"`(sleap-rtc [^`]+)`", text):
        found.append(" ".join(span.split()))
    return found


def test_every_readme_command_parses_with_the_options_it_shows(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A README command or option that does not exist (`login --user` once) fails here."""
    import shlex

    commands = _readme_commands()
    assert len(commands) > 15, commands
    parser = cli_main.build_parser()
    bad = []
    for command in commands:
        argv = shlex.split(command.replace("[", "").replace("]", ""))[1:]
        if argv[-1:] == ["..."]:
            argv = argv[:-1]
        try:
            try:
                args = parser.parse_args(argv)
            except SystemExit as exc:
                if exc.code == 0:  # --help / --version
                    continue
                # Inline mentions leave out the positional (`check --json`): add one.
                args = parser.parse_args([*argv, "LABELS.slp"])
        except SystemExit:
            bad.append(command)
            continue
        if getattr(args, "func", None) is None and getattr(args, "command", None) is None:
            bad.append(command)
    capsys.readouterr()
    assert not bad, "README commands that do not parse:\n" + "\n".join(bad)


def test_login_user_and_token_file_together_is_a_usage_error(isolated: Path) -> None:
    token = isolated / "t"
    token.write_text("x")
    result = run_cli("login", "--user", "bob", "--token-file", str(token))
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert "either --user or --token-file" in result.stderr


def test_login_user_without_a_passphrase_on_stdin_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sleap_rtc.cli.main", "login", "--user", "bob"],
        capture_output=True, text=True, timeout=60, input="", cwd=REPO,
    )
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert "no login passphrase" in result.stderr
