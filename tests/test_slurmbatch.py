"""The batch script: rendering and refusals (pure), then the real sbatch and bash reading it."""

from __future__ import annotations

import asyncio
import json
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.slurm import SlurmTest, slurm_cluster_fixture, slurm_fixture  # noqa: F401

from sleap_rtc.config.worker import SlurmSettings
from sleap_rtc.worker.slurmbatch import (
    JOB_NAME_PREFIX,
    job_name_for,
    render_batch_script,
    write_batch_script,
)
from sleap_rtc.worker.slurmctl import SlurmCommands, SlurmJobInfo

RUN = Path("/runs/j1")
LOG = RUN / "slurm.log"


def render(settings: SlurmSettings | None = None, **kw: object) -> str:
    args: dict[str, object] = {
        "job_name": "sleap-rtc-j1",
        "run_dir": RUN,
        "log_file": LOG,
        "relay_argv": ["/py/bin/python", "-m", "relay"],
    }
    args.update(kw)
    return render_batch_script(settings or SlurmSettings(), **args)  # type: ignore[arg-type]


def sbatch_lines(text: str) -> list[str]:
    lines = text.splitlines()
    return [line.removeprefix("#SBATCH ") for line in lines if line.startswith("#SBATCH")]


def test_every_option_is_one_line_in_order() -> None:
    full = SlurmSettings(
        partition="gpu",
        account="lab",
        qos="high",
        time_limit="1-00:00:00",
        cpus_per_task=8,
        mem="16G",
        gres="gpu:a100:1",
        extra_sbatch=("--constraint=a100|h100", "--exclusive"),
        setup=("module load cuda/12", "source /opt/env/bin/activate"),
    )
    text = render(full)
    assert text.startswith("#!/bin/bash\n")
    assert sbatch_lines(text) == [
        "--job-name=sleap-rtc-j1",
        "--output=/runs/j1/slurm.log",
        "--error=/runs/j1/slurm.log",
        "--chdir=/runs/j1",
        "--nodes=1",
        "--ntasks=1",
        "--no-requeue",
        "--export=NONE",
        "--partition=gpu",
        "--account=lab",
        "--qos=high",
        "--time=1-00:00:00",
        "--cpus-per-task=8",
        "--mem=16G",
        "--gres=gpu:a100:1",
        "--constraint=a100|h100",
        "--exclusive",
    ]
    body = text.splitlines()
    # Setup after every #SBATCH line (sbatch stops reading them at the first command).
    assert body.index("module load cuda/12") > max(
        i for i, line in enumerate(body) if line.startswith("#SBATCH")
    )
    assert body[-1] == "exec /py/bin/python -m relay"


def test_empty_options_are_left_to_the_cluster() -> None:
    lines = sbatch_lines(render())
    assert not any(
        line.split("=")[0] in ("--partition", "--account", "--qos", "--time", "--mem", "--gres",
                               "--cpus-per-task")
        for line in lines
    )


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("partition", "debug\n#SBATCH --wrap=rm", "--partition"),
        ("partition", "a b", "--partition"),
        ("account", 'x"y', "--account"),
        ("qos", "q#c", "--qos"),
        ("mem", "1G\\", "--mem"),
        ("gres", "gpu:1\r", "--gres"),
        ("time_limit", "10\x00", "--time"),
    ],
)
def test_values_that_could_inject_are_refused(field: str, value: str, named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        render(SlurmSettings(**{field: value}))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ("--output=/etc/passwd", "set by sleap-rtc"),
        ("--job-name=x", "set by sleap-rtc"),
        ("--requeue", "set by sleap-rtc"),
        ("-o/tmp/x", "not one --option"),
        ("--constraint=a100 --wrap=x", "not one --option"),
        ("--comment=a\n#SBATCH --x", "not one --option"),
        ("constraint=a100", "not one --option"),
    ],
)
def test_extra_sbatch_must_be_one_option_not_ours(extra: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        render(SlurmSettings(extra_sbatch=(extra,)))


def test_setup_lines_must_be_single_lines() -> None:
    with pytest.raises(ValueError, match=r"setup\[1\]"):
        render(SlurmSettings(setup=("module load x", "echo a\nexec evil")))


def test_paths_and_names_are_checked() -> None:
    with pytest.raises(ValueError, match=r"--output.*'%'"):
        render(log_file=Path("/runs/%j.log"))
    with pytest.raises(ValueError, match=r"--chdir.*absolute"):
        render(run_dir=Path("runs/j1"))
    with pytest.raises(ValueError, match="--chdir"):
        render(run_dir=Path("/runs/a b"))
    with pytest.raises(ValueError, match="--job-name"):
        render(job_name="x\n#SBATCH --wrap=y")
    with pytest.raises(ValueError, match="relay_argv"):
        render(relay_argv=[])


@settings()
@given(st.text(max_size=300))
def test_job_names_are_safe_bounded_and_distinct(job_id: str) -> None:
    name = job_name_for(job_id)
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name), name
    assert name.startswith(JOB_NAME_PREFIX)
    assert job_name_for(job_id) == name  # stable across calls (and restarts)
    # Ids that sanitize alike still get different names (the hash of the whole id).
    assert job_name_for(job_id + "/") != job_name_for(job_id + "_")
    # Always fits an #SBATCH line.
    assert sbatch_lines(render(job_name=name))[0] == f"--job-name={name}"


def test_bash_runs_the_relay_with_every_argument_intact(tmp_path: Path) -> None:
    """What a client could put in an argument stays one argument: nothing runs."""
    canary = tmp_path / "pwned"
    hostile = [
        "a b",
        f"$(touch {canary})",
        f"`touch {canary}`",
        f"'; touch {canary}; '",
        f"x\ntouch {canary}",
        "--",
        "*",
        "",
    ]
    argv = [sys.executable, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))", *hostile]
    script = tmp_path / "batch.sh"
    write_batch_script(
        script,
        render(
            SlurmSettings(setup=("export SLEAP_RTC_SETUP=ran",)),
            run_dir=tmp_path,
            log_file=tmp_path / "log",
            relay_argv=argv,
        ),
    )
    done = subprocess.run([str(script)], capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == hostile
    assert not canary.exists()


def test_a_failing_setup_line_stops_the_script(tmp_path: Path) -> None:
    marker = tmp_path / "relay-ran"
    script = tmp_path / "batch.sh"
    write_batch_script(
        script,
        render(
            SlurmSettings(setup=("false",)),
            run_dir=tmp_path,
            log_file=tmp_path / "log",
            relay_argv=["touch", str(marker)],
        ),
    )
    done = subprocess.run([str(script)], capture_output=True, timeout=30)
    assert done.returncode == 1
    assert not marker.exists()


def test_write_is_atomic_and_0700(tmp_path: Path) -> None:
    path = tmp_path / "batch.sh"
    path.write_text("old")
    write_batch_script(path, "#!/bin/bash\necho new\n")
    assert path.read_text() == "#!/bin/bash\necho new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    with pytest.raises(UnicodeEncodeError):
        write_batch_script(path, "#!/bin/bash\necho \udcff\n")
    assert path.read_text() == "#!/bin/bash\necho new\n"  # the old one, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch.sh"]  # no temp left


# --- The real Slurm ------------------------------------------------------------------------


async def wait_ended(cmds: SlurmCommands, job_id: str, timeout: float = 60.0) -> SlurmJobInfo:
    deadline = time.monotonic() + timeout
    while True:
        info = await cmds.query(job_id)
        assert info is not None
        if info.terminal or time.monotonic() > deadline:
            return info
        await asyncio.sleep(0.2)


@pytest.mark.slurm
def test_sbatch_takes_a_script_with_every_option_set(slurm: SlurmTest, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    log = run_dir / "slurm.log"
    settings = slurm.settings(
        time_limit="2",
        cpus_per_task=1,
        mem="20M",
        account="lab",
        qos="normal",
        extra_sbatch=("--comment=sleap-rtc-test",),
        setup=("echo setup-ran", "export RELAY_FROM_SETUP=yes"),
    )
    name = job_name_for(slurm.job_id("every-option"))
    argv = [sys.executable, "-c", "import os, sys; print('relay', os.getcwd(), "
            "os.environ['RELAY_FROM_SETUP'], sys.argv[1:], "
            "os.environ.get('SLEAP_RTC_WORKER_CREDENTIAL', 'no credential'))", "a b"]
    script = run_dir / "batch.sh"
    write_batch_script(
        script,
        render_batch_script(settings, job_name=name, run_dir=run_dir, log_file=log,
                            relay_argv=argv),
    )
    # The worker's environment holds its credential: it must not travel with the job.
    cmds = SlurmCommands(settings, env={**slurm.vars, "SLEAP_RTC_WORKER_CREDENTIAL": "s3cret"})

    async def go() -> tuple[str, SlurmJobInfo]:
        job_id = await cmds.submit(script, job_name=name, cwd=run_dir)
        return job_id, await wait_ended(cmds, job_id)

    job_id, info = asyncio.run(go())
    assert (info.state, info.exit_code, info.name) == ("COMPLETED", 0, name)
    shown = slurm.run("scontrol", "-o", "show", "job", job_id).stdout
    for field in ("Partition=debug", "TimeLimit=00:02:00", "MinMemoryNode=20M",
                  "Requeue=0", "NumNodes=1", "CPUs/Task=1", f"WorkDir={run_dir}",
                  f"StdOut={log}", "Comment=sleap-rtc-test"):
        assert field in shown, (field, shown)
    assert log.read_text().splitlines() == [
        "setup-ran",
        f"relay {run_dir} yes ['a b'] no credential",
    ]


@pytest.mark.slurm
def test_scancel_batch_int_reaches_the_relay_itself(slurm: SlurmTest, tmp_path: Path) -> None:
    """``exec``: the relay is the batch step's process, so ``--batch --signal=INT`` hits it."""
    got = tmp_path / "got-int"
    ready = tmp_path / "ready"
    relay = (
        "import pathlib, signal, sys, time\n"
        f"def stop(*_): pathlib.Path({str(got)!r}).write_text('INT'); sys.exit(0)\n"
        "signal.signal(signal.SIGINT, stop)\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "for _ in range(600): time.sleep(0.1)\n"
        "sys.exit(5)\n"
    )
    settings = slurm.settings(time_limit="2")
    name = job_name_for(slurm.job_id("int"))
    script = tmp_path / "batch.sh"
    write_batch_script(
        script,
        render_batch_script(settings, job_name=name, run_dir=tmp_path,
                            log_file=tmp_path / "log", relay_argv=[sys.executable, "-c", relay]),
    )
    cmds = SlurmCommands(settings, env=slurm.vars)

    async def go() -> SlurmJobInfo:
        job_id = await cmds.submit(script, job_name=name, cwd=tmp_path)
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert ready.exists(), (tmp_path / "log").read_text()
        await cmds.cancel(job_id, signal="INT", batch=True)
        return await wait_ended(cmds, job_id)

    info = asyncio.run(go())
    assert got.read_text() == "INT"
    assert (info.state, info.exit_code) == ("COMPLETED", 0)

