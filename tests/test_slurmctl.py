"""The Slurm command adapter: parsers on real captured output, then the real cluster.

Captured from Slurm 22.05.8 (Debian 12) on the test cluster of ``scripts/slurm.sh``.
OUT_OF_MEMORY cannot be provoked there: it needs the cgroup plugins, which a machine
without systemd cannot run (a memory kill by ``jobacct_gather/linux`` +
``OverMemoryKill`` was tried: it ends FAILED 0:9, captured below), so its parsing is
tested on the captured FAILED line with the state Slurm's docs name put in.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.slurm import (  # noqa: F401
    SlurmTest,
    slurm_cluster_fixture,
    slurm_exclusive_fixture,
    slurm_fixture,
    slurm_node_exclusive_fixture,
    slurm_patient_fixture,
)

from sleap_rtc.config.worker import SlurmSettings
from sleap_rtc.worker.slurmctl import (
    TERMINAL_STATES,
    SbatchRefused,
    SlurmCommands,
    SlurmError,
    SlurmJobInfo,
    SlurmUnreachable,
    is_unreachable,
    parse_sbatch_id,
    parse_show_job,
    refusal,
)

_TAIL = (
    " Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode={code} "
    "RunTime=00:00:00 TimeLimit=UNLIMITED TimeMin=N/A SubmitTime=2026-12-01T12:17:22 "
    "EligibleTime=2026-12-01T12:17:22 AccrueTime=2026-12-01T12:17:22 "
    "StartTime=2026-12-01T12:17:22 EndTime=2026-12-01T12:17:22 Deadline=N/A "
    "SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026-12-01T12:17:22 Scheduler=Main "
    "Partition=debug AllocNode:Sid=localhost:13064 ReqNodeList=(null) ExcNodeList=(null) "
    "NodeList={node} BatchHost={node} NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 "
    "ReqB:S:C:T=0:0:*:* TRES=cpu=1,node=1,billing=1 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* "
    "CoreSpec=* MinCPUsNode=1 MinMemoryNode=0 MinTmpDiskNode=0 Features=(null) "
    "DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null) "
    "Command=/tmp/sl/f.sh WorkDir=/tmp/sl StdErr=/tmp/sl/slurm-2.out StdIn=/dev/null "
    "StdOut=/tmp/sl/slurm-2.out Power= "
)


def captured(job_id: int, state: str, reason: str, code: str, node: str = "vm") -> str:
    head = (
        f"JobId={job_id} JobName=cap-{job_id} UserId=root(0) GroupId=root(0) MCS_label=N/A "
        f"Priority=4294901758 Nice=0 Account=(null) QOS=(null) JobState={state} Reason={reason}"
    )
    return head + _TAIL.format(code=code, node=node)


# What `scontrol -o show job ID` printed (only the id, name and these four fields vary).
FAILED_3 = captured(2, "FAILED", "NonZeroExitCode", "3:0")
RUNNING = captured(1, "RUNNING", "None", "0:0")
CANCELLED = captured(1, "CANCELLED", "None", "0:15")
TIMEOUT = captured(8, "TIMEOUT", "TimeLimit", "0:15")
NODE_FAIL = captured(10, "NODE_FAIL", "NodeDown", "0:15")
LAUNCH_FAILED = captured(9, "FAILED", "JobLaunchFailure", "0:53")  # --chdir=/nonexistent
MEMORY_KILL = captured(3, "FAILED", "JobLaunchFailure", "0:9")  # OverMemoryKill, no cgroups
PENDING = captured(7, "PENDING", "Resources", "0:0", node="(null)")
NO_ROOM = captured(4, "PENDING", "PartitionConfig", "0:0", node="(null)")
OOM = captured(11, "OUT_OF_MEMORY", "OutOfMemory", "0:125")  # see the module docstring

UNREACHABLE = [
    "sbatch: error: Batch job submission failed: Unable to contact slurm controller "
    "(connect failure)",
    "slurm_load_jobs error: Unable to contact slurm controller (connect failure)",
    "scancel: error: Kill job error on job id 8: Unable to contact slurm controller "
    "(connect failure)",
]
REFUSED = [
    (
        "sbatch: error: invalid partition specified: nope\n"
        "sbatch: error: Batch job submission failed: Invalid partition name specified",
        "--partition",
    ),
    ("sbatch: error: Invalid generic resource (gres) specification", "--gres"),
    (
        "sbatch: error: Memory specification can not be satisfied\n"
        "sbatch: error: Batch job submission failed: Requested node configuration is not "
        "available",
        "--mem",
    ),
    ("sbatch: error: Invalid --time specification", "--time"),
    ("sbatch: unrecognized option '--bogus'\nTry \"sbatch --help\" for more information",
     "--bogus"),
    ("sbatch: error: Batch job submission failed: Invalid account or account/partition "
     "combination specified", "--account"),
    ("sbatch: error: Batch job submission failed: Something new", ""),
]


@pytest.mark.parametrize(
    ("line", "state", "reason", "code", "sig", "node", "terminal"),
    [
        (FAILED_3, "FAILED", "NonZeroExitCode", 3, 0, "vm", True),
        (RUNNING, "RUNNING", "", 0, 0, "vm", False),
        (CANCELLED, "CANCELLED", "", 0, 15, "vm", True),
        (TIMEOUT, "TIMEOUT", "TimeLimit", 0, 15, "vm", True),
        (NODE_FAIL, "NODE_FAIL", "NodeDown", 0, 15, "vm", True),
        (LAUNCH_FAILED, "FAILED", "JobLaunchFailure", 0, 53, "vm", True),
        (MEMORY_KILL, "FAILED", "JobLaunchFailure", 0, 9, "vm", True),
        (PENDING, "PENDING", "Resources", 0, 0, "", False),
        (NO_ROOM, "PENDING", "PartitionConfig", 0, 0, "", False),
        (OOM, "OUT_OF_MEMORY", "OutOfMemory", 0, 125, "vm", True),
    ],
)
def test_show_job_lines(
    line: str, state: str, reason: str, code: int, sig: int, node: str, terminal: bool
) -> None:
    info = parse_show_job(line + "\n")
    assert info is not None
    assert (info.state, info.reason, info.exit_code, info.signal, info.node, info.terminal) == (
        state, reason, code, sig, node, terminal
    )
    assert info.job_id == line.split()[0].removeprefix("JobId=")
    assert info.name == f"cap-{info.job_id}"


def test_values_with_spaces_run_to_the_next_key() -> None:
    line = FAILED_3.replace("JobName=cap-2", "JobName=my job").replace(
        "Reason=NonZeroExitCode", "Reason=ReqNodeNotAvail, UnavailableNodes:vm"
    ).replace("WorkDir=/tmp/sl", "WorkDir=/tmp/a b")
    info = parse_show_job(line)
    assert info is not None
    assert (info.name, info.reason, info.exit_code) == (
        "my job", "ReqNodeNotAvail, UnavailableNodes:vm", 3
    )


def test_no_job_is_none() -> None:
    assert parse_show_job("") is None
    assert parse_show_job("slurm_load_jobs error: Invalid job id specified\n") is None
    assert parse_show_job("No jobs in the system\n") is None


@settings()
@given(st.text())
def test_show_job_never_raises(text: str) -> None:
    info = parse_show_job(text)
    assert info is None or (info.job_id and info.state)


def test_sbatch_ids() -> None:
    assert parse_sbatch_id("12\n") == "12"
    assert parse_sbatch_id("12;cluster2\n") == "12"
    for bad in ("", "\n", "sbatch: error: x", "12 13", "--x"):
        with pytest.raises(SlurmError, match="no job id"):
            parse_sbatch_id(bad)


@pytest.mark.parametrize(("stderr", "option"), REFUSED)
def test_refusals_name_the_option(stderr: str, option: str) -> None:
    named, reason = refusal(stderr)
    assert named == option
    assert reason and "sbatch:" not in reason and "--help" not in reason
    assert not is_unreachable(stderr)


@pytest.mark.parametrize("stderr", UNREACHABLE)
def test_unreachable_words(stderr: str) -> None:
    assert is_unreachable(stderr)


def test_bad_arguments_are_refused_before_any_command() -> None:
    cmds = SlurmCommands(SlurmSettings(bin_dir=Path("/nonexistent")))
    for call in (
        cmds.query("--all"),
        cmds.cancel("1 2"),
        cmds.cancel("12", signal="INT; rm"),
        cmds.find("a,b"),
        cmds.submit(Path("/x"), job_name="a b", cwd=Path("/")),
    ):
        with pytest.raises(ValueError):
            asyncio.run(call)


def test_missing_commands_are_a_clear_answer() -> None:
    cmds = SlurmCommands(SlurmSettings(bin_dir=Path("/nonexistent")))
    assert asyncio.run(cmds.available()) == "sbatch not found in /nonexistent"
    with pytest.raises(SlurmError, match="squeue: cannot run it"):
        asyncio.run(cmds.find("sleap-rtc-x"))


# --- The real cluster -------------------------------------------------------------------------


def script(tmp_path: Path, body: str, name: str = "job.sh") -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/bash\n" + body + "\n")
    path.chmod(0o755)
    return path


async def wait_for(
    cmds: SlurmCommands, job_id: str, done: frozenset[str] | None = None, timeout: float = 60.0
) -> SlurmJobInfo:
    """Poll until the job is in ``done`` (default: terminal), bounded."""
    deadline = time.monotonic() + timeout
    while True:
        info = await cmds.query(job_id)
        assert info is not None, f"Slurm forgot job {job_id}"
        if (info.state in done) if done else info.terminal:
            return info
        assert time.monotonic() < deadline, f"job {job_id} still {info.state} after {timeout} s"
        await asyncio.sleep(0.2)


@pytest.mark.slurm
def test_submit_query_find_cancel(slurm: SlurmTest, tmp_path: Path) -> None:
    cmds = SlurmCommands(slurm.settings(), env=slurm.vars)
    name = slurm.job_name("sleep")
    batch = script(tmp_path, "sleep 120")

    async def go() -> tuple[str, SlurmJobInfo, list[SlurmJobInfo], SlurmJobInfo]:
        assert await cmds.available() is None
        job_id = await cmds.submit(batch, job_name=name, cwd=tmp_path)
        running = await wait_for(cmds, job_id, frozenset({"RUNNING"}))
        found = await cmds.find(name)
        await cmds.cancel(job_id)
        ended = await wait_for(cmds, job_id)
        await cmds.cancel(job_id)  # again: it already ended, no error
        return job_id, running, found, ended

    job_id, running, found, ended = asyncio.run(go())
    assert running.node and running.name == name and not running.terminal
    assert [i.job_id for i in found] == [job_id]
    assert (ended.state, ended.signal) == ("CANCELLED", 15)


@pytest.mark.slurm
def test_exit_codes_and_unknown_jobs(slurm: SlurmTest, tmp_path: Path) -> None:
    cmds = SlurmCommands(slurm.settings(), env=slurm.vars)

    async def go() -> tuple[SlurmJobInfo, SlurmJobInfo, SlurmJobInfo | None, list[SlurmJobInfo]]:
        fail = await cmds.submit(
            script(tmp_path, "echo failing; exit 3", "f.sh"),
            job_name=slurm.job_name("exit3"), cwd=tmp_path,
        )
        ok = await cmds.submit(
            script(tmp_path, "exit 0", "ok.sh"), job_name=slurm.job_name("ok"), cwd=tmp_path
        )
        return (
            await wait_for(cmds, fail),
            await wait_for(cmds, ok),
            await cmds.query("999999999"),
            await cmds.find(slurm.job_name("never-submitted")),
        )

    failed, ok, unknown, none = asyncio.run(go())
    assert (failed.state, failed.reason, failed.exit_code, failed.signal) == (
        "FAILED", "NonZeroExitCode", 3, 0
    )
    assert (ok.state, ok.exit_code, ok.signal) == ("COMPLETED", 0, 0)
    assert unknown is None
    assert none == []
    assert (tmp_path / f"slurm-{failed.job_id}.out").read_text() == "failing\n"


@pytest.mark.slurm
def test_time_limit_ends_as_timeout(slurm_patient: SlurmTest, tmp_path: Path) -> None:
    """``--time=1`` (a minute: Slurm's smallest) ends after ~68 s as TIMEOUT.

    Patient: slurmctld may be restarted meanwhile (the limit still holds), or the node
    set down by another test (then it is tried once more).
    """
    slurm = slurm_patient
    cmds = SlurmCommands(slurm.settings(unreachable_s=60), env=slurm.vars)
    batch = script(tmp_path, "#SBATCH --time=1\n#SBATCH --no-requeue\nsleep 300")

    async def go() -> SlurmJobInfo:
        for _ in range(2):
            job_id = await cmds.submit(batch, job_name=slurm.job_name("timeout"), cwd=tmp_path)
            # It may wait for a CPU first (other tests' jobs); the limit counts from start.
            info = await wait_for(cmds, job_id, frozenset({"RUNNING"}) | TERMINAL_STATES, 120)
            info = await wait_for(cmds, job_id, timeout=150)
            if info.state != "NODE_FAIL":  # a node-exclusive test set the node down
                break
        return info

    info = asyncio.run(go())
    assert (info.state, info.reason) == ("TIMEOUT", "TimeLimit")


@pytest.mark.parametrize(
    ("option", "named", "words"),
    [
        ("--partition=no-such-partition", "--partition", "Invalid partition"),
        ("--gres=bogus", "--gres", "generic resource"),
        ("--mem=999999G", "--mem", "Memory specification"),
        ("--bogus-option", "--bogus-option", "unrecognized option"),
    ],
)
@pytest.mark.slurm
def test_sbatch_refusals_name_the_option(
    slurm: SlurmTest, tmp_path: Path, option: str, named: str, words: str
) -> None:
    cmds = SlurmCommands(slurm.settings(), env=slurm.vars)
    name = slurm.job_name("refused")

    async def go() -> tuple[SbatchRefused, float, list[SlurmJobInfo]]:
        start = time.monotonic()
        with pytest.raises(SbatchRefused) as caught:
            await cmds.submit(script(tmp_path, f"#SBATCH {option}\ntrue"), job_name=name,
                              cwd=tmp_path)
        took = time.monotonic() - start
        # The adapter stays usable: the next job goes through.
        ok = await cmds.submit(script(tmp_path, "true", "ok.sh"), job_name=name, cwd=tmp_path)
        await wait_for(cmds, ok)
        return caught.value, took, await cmds.find(name)

    refused, took, found = asyncio.run(go())
    assert refused.option == named
    assert words in refused.reason and words in str(refused)
    assert took < 5  # not retried
    # Only the good one ran. (A job refused for --mem is still recorded, as FAILED
    # BadConstraints: Slurm 22.05 keeps a record of it for MinJobAge.)
    assert [i.state for i in found if i.reason != "BadConstraints"] == ["COMPLETED"]
    assert all(i.state == "FAILED" for i in found if i.reason == "BadConstraints")


def fake_bin(tmp_path: Path, slurm: SlurmTest, **wrappers: str) -> Path:
    """A bin_dir of links to the real commands, with some replaced by bash wrappers."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sbatch", "squeue", "scontrol", "scancel", "sinfo"):
        if name in wrappers:
            wrapper = bin_dir / name
            real = slurm.bin_dir / name
            wrapper.write_text(f"#!/bin/bash\nREAL={real}\n{wrappers[name]}\n")
            wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
        else:
            (bin_dir / name).symlink_to(slurm.bin_dir / name)
    return bin_dir


@pytest.mark.slurm
def test_a_timed_out_sbatch_that_went_through_is_not_submitted_again(
    slurm: SlurmTest, tmp_path: Path
) -> None:
    """sbatch submits, then hangs past the timeout: the retry finds the job, submits none."""
    calls = tmp_path / "calls"
    bin_dir = fake_bin(
        tmp_path, slurm,
        sbatch=f'echo call >> {calls}\n"$REAL" "$@" > {tmp_path}/id\nexec sleep 60',
    )
    cmds = SlurmCommands(
        slurm.settings(bin_dir=bin_dir, command_timeout_s=2, unreachable_s=20), env=slurm.vars
    )
    name = slurm.job_name("twice")

    async def go() -> tuple[str, list[SlurmJobInfo]]:
        job_id = await cmds.submit(script(tmp_path, "sleep 30"), job_name=name, cwd=tmp_path)
        return job_id, await cmds.find(name)

    job_id, found = asyncio.run(go())
    assert calls.read_text() == "call\n"  # sbatch ran once
    assert job_id == (tmp_path / "id").read_text().strip()
    assert [i.job_id for i in found] == [job_id]


@pytest.mark.slurm
def test_a_job_of_that_name_still_queued_or_running_is_not_submitted_again(
    slurm: SlurmTest, tmp_path: Path
) -> None:
    """A worker killed between sbatch and its job store: the retry gets the same job."""
    calls = tmp_path / "calls"
    bin_dir = fake_bin(tmp_path, slurm, sbatch=f'echo call >> {calls}\nexec "$REAL" "$@"')
    cmds = SlurmCommands(slurm.settings(bin_dir=bin_dir), env=slurm.vars)
    name = slurm.job_name("again")

    async def go() -> tuple[str, str, str, str]:
        first = await cmds.submit(script(tmp_path, "sleep 30"), job_name=name, cwd=tmp_path)
        again = await cmds.submit(script(tmp_path, "sleep 30"), job_name=name, cwd=tmp_path)
        await cmds.cancel(first)
        await wait_for(cmds, first)
        # Once it has ended, a new submission is a new job (whether to is the caller's call).
        third = await cmds.submit(script(tmp_path, "true"), job_name=name, cwd=tmp_path)
        return first, again, third, calls.read_text()

    first, again, third, called = asyncio.run(go())
    assert again == first
    assert third != first
    assert called == "call\ncall\n"


@pytest.mark.slurm
def test_a_hung_command_is_killed_and_reported(slurm: SlurmTest, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    bin_dir = fake_bin(tmp_path, slurm, scontrol=f"echo $$ >> {pids}\nexec sleep 60")
    cmds = SlurmCommands(
        slurm.settings(bin_dir=bin_dir, command_timeout_s=1, unreachable_s=3), env=slurm.vars
    )

    async def go() -> float:
        start = time.monotonic()
        with pytest.raises(SlurmUnreachable, match=r"scontrol -o show job 1: .*no answer"):
            await cmds.query("1")
        return time.monotonic() - start

    took = asyncio.run(go())
    assert 2.5 < took < 6
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) >= 2  # retried
    for pid in started:  # and none left running
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.slurm
def test_other_failures_are_not_retried(slurm: SlurmTest, tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    bin_dir = fake_bin(
        tmp_path, slurm,
        scontrol=f"echo call >> {calls}\necho 'scontrol: error: Access/permission denied' >&2\n"
        "exit 1",
    )
    cmds = SlurmCommands(slurm.settings(bin_dir=bin_dir, unreachable_s=30), env=slurm.vars)
    with pytest.raises(SlurmError, match="Access/permission denied") as caught:
        asyncio.run(cmds.query("1"))
    assert not isinstance(caught.value, SlurmUnreachable)
    assert calls.read_text() == "call\n"


@pytest.mark.slurm
def test_unreachable_controller(slurm_exclusive: SlurmTest, tmp_path: Path) -> None:
    """slurmctld down: every call ends SlurmUnreachable within its bound, then recovers."""
    slurm = slurm_exclusive
    cmds = SlurmCommands(slurm.settings(command_timeout_s=10, unreachable_s=6), env=slurm.vars)
    name = slurm.job_name("down")
    batch = script(tmp_path, "sleep 20")
    running = asyncio.run(cmds.submit(batch, job_name=slurm.job_name("survivor"), cwd=tmp_path))
    asyncio.run(wait_for(cmds, running, frozenset({"RUNNING"})))
    slurm.stop_controller()
    try:

        async def down() -> tuple[str | None, list[tuple[str, float]]]:
            why = await cmds.available()
            took = []
            for label, call in (
                ("submit", cmds.submit(batch, job_name=name, cwd=tmp_path)),
                ("query", cmds.query(running)),
                ("cancel", cmds.cancel(running)),
            ):
                start = time.monotonic()
                with pytest.raises(SlurmUnreachable, match="did not answer for 6 s"):
                    await call
                took.append((label, time.monotonic() - start))
            return why, took

        why, took = asyncio.run(down())
        assert why is not None and "slurmctld does not answer" in why
        for label, seconds in took:
            # The bound plus at most one attempt's own wait (sbatch/squeue give up in 4-8 s).
            assert seconds < 6 + 10, (label, seconds)
    finally:
        slurm.start_controller()
    found = asyncio.run(cmds.find(name))
    assert found == []  # the refused submit left nothing behind
    # The job that was running when slurmctld went away ran on.
    info = asyncio.run(cmds.query(running))
    assert info is not None and info.state in ("RUNNING", "COMPLETED")


@pytest.mark.slurm
def test_submit_rides_out_a_short_controller_outage(
    slurm_exclusive: SlurmTest, tmp_path: Path
) -> None:
    slurm = slurm_exclusive
    cmds = SlurmCommands(slurm.settings(command_timeout_s=15, unreachable_s=60), env=slurm.vars)
    name = slurm.job_name("outage")
    slurm.stop_controller()

    async def go() -> tuple[str, list[SlurmJobInfo]]:
        task = asyncio.create_task(
            cmds.submit(script(tmp_path, "true"), job_name=name, cwd=tmp_path)
        )
        await asyncio.sleep(3)
        assert not task.done()
        await asyncio.to_thread(slurm.start_controller)
        job_id = await asyncio.wait_for(task, 60)
        return job_id, await cmds.find(name)

    try:
        job_id, found = asyncio.run(go())
    finally:
        slurm.start_controller()
    assert [i.job_id for i in found] == [job_id]


@pytest.mark.slurm
def test_node_failure_reads_back_as_node_fail(
    slurm_node_exclusive: SlurmTest, tmp_path: Path
) -> None:
    """A node set DOWN under a running job: NODE_FAIL, and (``--no-requeue``) it stays so."""
    slurm = slurm_node_exclusive
    cmds = SlurmCommands(slurm.settings(), env=slurm.vars)
    node = slurm.run("sinfo", "-h", "-N", "-o", "%N").stdout.split()[0]

    async def go() -> SlurmJobInfo:
        job_id = await cmds.submit(
            script(tmp_path, "#SBATCH --no-requeue\nsleep 120"),
            job_name=slurm.job_name("nodefail"), cwd=tmp_path,
        )
        await wait_for(cmds, job_id, frozenset({"RUNNING"}))
        down = await asyncio.to_thread(
            slurm.run, "scontrol", "update", f"nodename={node}", "state=down", "reason=test"
        )
        assert down.returncode == 0, down.stderr
        return await wait_for(cmds, job_id)

    try:
        info = asyncio.run(go())
    finally:
        deadline = time.monotonic() + 30
        while slurm.run("sinfo", "-h", "-N", "-o", "%T").stdout.strip() != "idle":
            slurm.run("scontrol", "update", f"nodename={node}", "state=resume")
            assert time.monotonic() < deadline, "the node did not come back"
            time.sleep(0.5)
    assert (info.state, info.reason) == ("NODE_FAIL", "NodeDown")


@pytest.mark.slurm
def test_cancel_with_a_signal_reaches_the_batch_shell(slurm: SlurmTest, tmp_path: Path) -> None:
    got = tmp_path / "got"
    batch = script(
        tmp_path,
        f"trap 'echo USR1 > {got}; exit 0' USR1\nfor i in $(seq 600); do sleep 0.1; done",
    )
    cmds = SlurmCommands(slurm.settings(), env=slurm.vars)

    async def go() -> SlurmJobInfo:
        job_id = await cmds.submit(batch, job_name=slurm.job_name("usr1"), cwd=tmp_path)
        await wait_for(cmds, job_id, frozenset({"RUNNING"}))
        await asyncio.sleep(1)  # the trap is set
        await cmds.cancel(job_id, signal="USR1", batch=True)
        return await wait_for(cmds, job_id)

    info = asyncio.run(go())
    assert got.read_text() == "USR1\n"
    assert (info.state, info.exit_code) == ("COMPLETED", 0)

