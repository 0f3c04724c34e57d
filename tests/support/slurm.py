"""Pytest fixtures for tests on a real single-node Slurm (``scripts/slurm.sh``).

Import the fixtures a test module uses (each is registered under the name without
``_fixture``; importing ``slurm_cluster_fixture`` is needed by the other two)::

    from support.slurm import slurm_cluster_fixture, slurm_fixture  # noqa: F401

and name them as arguments: ``def test_x(slurm: SlurmTest)``.

``slurm_cluster`` (session): a :class:`SlurmCluster`; the cluster already running
(``scripts/slurm.sh status``), else started once (``scripts/slurm.sh start``, bounded);
else the test is skipped with the script's reason. ``SLEAP_RTC_SLURM=0`` skips without
trying (with ``SLEAP_RTC_SLURM_UNAVAILABLE`` as the reason, where ``.ci/run`` could not
start it); ``SLEAP_RTC_SLURM=1`` (set by ``.ci/run`` after it started the cluster) turns
"cannot reach it" into a failure, since a check that could not run must not pass.

``slurm`` (per test): a :class:`SlurmTest`: the cluster plus a job-name prefix of the
test's own; at the end, every job whose name starts with it is cancelled. It holds a
shared lock for the test, so tests in several pytest-xdist workers share the cluster.

``slurm_exclusive`` (per test): the same, holding the slurmctld lock exclusively
(other Slurm tests wait): only such a test may stop or restart slurmctld; at its end
slurmctld is running again. ``slurm_node_exclusive``: the cluster alone; it may also set
the node down. ``slurm_patient``: for long tests (a time limit running out) that take no
lock, so they hold up nobody; they must ride out a slurmctld restart and a node set
down (a job ending NODE_FAIL is tried again).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import pytest

from sleap_rtc.config.worker import SlurmSettings
from sleap_rtc.worker.slurmbatch import JOB_NAME_PREFIX

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "slurm.sh"
#: Seconds ``scripts/slurm.sh start`` may take (apt-get install on a fresh machine).
START_TIMEOUT_S = 240.0
#: Seconds a test waits for the cluster lock (another worker's exclusive test).
LOCK_TIMEOUT_S = 240.0
_LOCK_DIR = Path(tempfile.gettempdir())


def _flock(handle: IO[Any], mode: int, what: str, timeout: float = LOCK_TIMEOUT_S) -> None:
    """``flock`` with a bound: polls ``LOCK_NB`` until ``timeout``, then fails the test."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:g} s for the Slurm test lock ({what})")
        time.sleep(0.02)


def _script(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _env_lines(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.replace("_", "").isalnum():
            out[key] = value
    return out


@dataclass
class SlurmCluster:
    """The running test cluster (one per pytest process; all share the same daemons)."""

    #: What ``scripts/slurm.sh env`` prints (``SLURM_CONF``, ``SLEAP_RTC_SLURM_BIN``...).
    vars: dict[str, str]
    #: The whole environment for a subprocess (``os.environ`` plus :attr:`vars`).
    env: dict[str, str]
    bin_dir: Path
    cpus: int
    partition: str
    #: True while this process holds the exclusive lock (``slurm_exclusive``).
    exclusive: bool = field(default=False)

    def settings(self, **overrides: Any) -> SlurmSettings:
        """:class:`SlurmSettings` for this cluster (short timeouts), with ``overrides``."""
        base = SlurmSettings(
            partition=self.partition,
            bin_dir=self.bin_dir,
            poll_s=0.5,
            command_timeout_s=20.0,
            unreachable_s=30.0,
        )
        return replace(base, **overrides)

    def run(self, *argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """A Slurm command (``squeue ...``) against this cluster, output captured."""
        return subprocess.run(
            [str(self.bin_dir / argv[0]), *argv[1:]],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _controller(self, verb: str) -> None:
        if not self.exclusive:
            raise RuntimeError(
                f"{verb}: only a test using the slurm_exclusive fixture may stop or restart "
                "slurmctld (other pytest-xdist workers share it)"
            )
        done = _script(verb, timeout=90.0)
        if done.returncode != 0:
            raise RuntimeError(f"scripts/slurm.sh {verb} failed: {done.stderr.strip()}")

    def stop_controller(self) -> None:
        """Stop slurmctld (running jobs go on; commands fail "Unable to contact ...")."""
        self._controller("stop-controller")

    def start_controller(self) -> None:
        """Start slurmctld again with its saved state; returns once it answers."""
        self._controller("start-controller")

    def restart_controller(self) -> None:
        self._controller("restart-controller")

    def jobs(self, name_prefix: str) -> list[tuple[str, str, str]]:
        """(id, name, state) of this user's jobs Slurm knows whose name starts so."""
        done = self.run("squeue", "-h", "-t", "all", "--me", "-o", "%i|%j|%T")
        rows = []
        for line in done.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 3 and parts[1].startswith(name_prefix):
                rows.append((parts[0], parts[1], parts[2]))
        return rows

    def drain_queue(self, name_prefix: str) -> list[str]:
        """``scancel`` every queued or running job whose name starts with ``name_prefix``."""
        if len(name_prefix) < 4:
            raise ValueError(f"a prefix this short would cancel others' jobs: {name_prefix!r}")
        live = [
            job_id
            for job_id, _, state in self.jobs(name_prefix)
            if state in ("PENDING", "RUNNING", "CONFIGURING", "SUSPENDED", "REQUEUED")
        ]
        if live:
            self.run("scancel", *live)
        return live


@dataclass
class SlurmTest:
    """The cluster, seen by one test: its own job-name prefix, drained at the end."""

    cluster: SlurmCluster
    #: Start of every job id / raw job name this test uses ("t1a2b3c4d-").
    prefix: str

    def __getattr__(self, name: str) -> Any:
        # env, vars, bin_dir, cpus, partition, settings(), run(), jobs(), *_controller().
        return getattr(self.cluster, name)

    def job_id(self, suffix: str) -> str:
        """A client job id for this test (its Slurm job name starts with the prefix)."""
        return f"{self.prefix}{suffix}"

    def job_name(self, suffix: str) -> str:
        """A raw Slurm job name for this test (for jobs submitted without job_name_for)."""
        return f"{JOB_NAME_PREFIX}{self.prefix}{suffix}"

    def drain_queue(self) -> list[str]:
        """Cancel this test's jobs that are still queued or running; their ids."""
        return self.cluster.drain_queue(JOB_NAME_PREFIX + self.prefix)


def _prefix(nodeid: str) -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return "t" + hashlib.sha256(f"{worker}:{nodeid}:{os.getpid()}".encode()).hexdigest()[:9] + "-"


def _start() -> SlurmCluster:
    """The cluster, started if need be (once per run, under a lock); skip or fail if not."""
    wanted = os.environ.get("SLEAP_RTC_SLURM", "")
    if wanted == "0":
        why = os.environ.get("SLEAP_RTC_SLURM_UNAVAILABLE", "")
        pytest.skip(f"no Slurm cluster: {why}" if why else "Slurm tests turned off "
                    "(SLEAP_RTC_SLURM=0)")
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID", str(os.getpid()))
    failed = _LOCK_DIR / "sleap-rtc-slurm.failed"
    # Shared use first: an exclusive test elsewhere may have slurmctld stopped on purpose.
    with (
        _held(None, _NORMAL),
        open(_LOCK_DIR / "sleap-rtc-slurm.start.lock", "a+") as lock,
    ):
        _flock(lock, fcntl.LOCK_EX, "starting the cluster", timeout=START_TIMEOUT_S + 30)
        why = ""
        with contextlib.suppress(OSError):
            seen_run, _, seen_why = failed.read_text().partition("\n")
            if seen_run == run_id:
                why = seen_why
        if not why and _script("status").returncode != 0:
            try:
                done = _script("start", timeout=START_TIMEOUT_S)
                if done.returncode != 0:
                    why = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else (
                        f"scripts/slurm.sh start exited {done.returncode}"
                    )
            except subprocess.TimeoutExpired:
                why = f"scripts/slurm.sh start took over {START_TIMEOUT_S:g} s"
            if why:
                failed.write_text(f"{run_id}\n{why}")
        if why:
            message = f"no Slurm cluster: {why}"
            if wanted == "1":
                pytest.fail(f"{message} (SLEAP_RTC_SLURM=1 says it was started)")
            pytest.skip(message)
        printed = _script("env")
    found = _env_lines(printed.stdout)
    if printed.returncode != 0 or "SLURM_CONF" not in found:
        pytest.fail(f"scripts/slurm.sh env printed no SLURM_CONF: {printed.stderr.strip()}")
    env = {**os.environ, **found}
    bin_dir = Path(found.get("SLEAP_RTC_SLURM_BIN", "/usr/bin"))
    sinfo = subprocess.run(
        [str(bin_dir / "sinfo"), "-h", "-N", "-o", "%c"],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )
    cpus = int(sinfo.stdout.split()[0]) if sinfo.stdout.split() else 1
    return SlurmCluster(
        vars=found,
        env=env,
        bin_dir=bin_dir,
        cpus=cpus,
        partition=found.get("SLEAP_RTC_SLURM_PARTITION", "debug"),
    )


@pytest.fixture(scope="session", name="slurm_cluster")
def slurm_cluster_fixture() -> SlurmCluster:
    """The shared test cluster (see the module docstring)."""
    return _start()


#: Lock modes: (on slurmctld, on the node). None: not taken.
_NORMAL = (fcntl.LOCK_SH, fcntl.LOCK_SH)
_CONTROLLER = (fcntl.LOCK_EX, fcntl.LOCK_SH)
_NODE = (fcntl.LOCK_EX, fcntl.LOCK_EX)
_PATIENT = (None, None)


@contextlib.contextmanager
def _held(cluster: SlurmCluster | None, modes: tuple[int | None, int | None]) -> Iterator[None]:
    """Two readers-writer locks (slurmctld, the node), always taken in that order.

    A turnstile makes a waiting writer block new readers, so it gets its turn.
    """
    with (
        open(_LOCK_DIR / "sleap-rtc-slurm.turnstile.lock", "a+") as turnstile,
        open(_LOCK_DIR / "sleap-rtc-slurm.use.lock", "a+") as controller,
        open(_LOCK_DIR / "sleap-rtc-slurm.node.lock", "a+") as node,
    ):
        _flock(turnstile, fcntl.LOCK_EX, "turnstile")
        try:
            for handle, mode, what in ((controller, modes[0], "slurmctld"),
                                       (node, modes[1], "node")):
                if mode is not None:
                    _flock(handle, mode, what)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        if cluster is not None:
            cluster.exclusive = modes[0] == fcntl.LOCK_EX
        try:
            yield
        finally:
            if cluster is not None:
                cluster.exclusive = False
            fcntl.flock(node, fcntl.LOCK_UN)
            fcntl.flock(controller, fcntl.LOCK_UN)


@contextlib.contextmanager
def _test(
    cluster: SlurmCluster, request: pytest.FixtureRequest, modes: tuple[int | None, int | None]
) -> Iterator[SlurmTest]:
    test = SlurmTest(cluster, _prefix(request.node.nodeid))
    with _held(cluster, modes):
        try:
            yield test
        finally:
            if modes[0] == fcntl.LOCK_EX and _script("status").returncode != 0:
                _script("start-controller", timeout=90.0)
            test.drain_queue()


@pytest.fixture(name="slurm")
def slurm_fixture(
    slurm_cluster: SlurmCluster, request: pytest.FixtureRequest
) -> Iterator[SlurmTest]:
    """The cluster for one test, shared with other tests (slurmctld stays up)."""
    with _test(slurm_cluster, request, _NORMAL) as test:
        yield test


@pytest.fixture(name="slurm_patient")
def slurm_patient_fixture(
    slurm_cluster: SlurmCluster, request: pytest.FixtureRequest
) -> Iterator[SlurmTest]:
    """For a long test that holds up no other: it must ride out slurmctld restarts
    (``unreachable_s`` long enough) and a node set down (its job ends NODE_FAIL: retry).
    """
    with _test(slurm_cluster, request, _PATIENT) as test:
        yield test


@pytest.fixture(name="slurm_exclusive")
def slurm_exclusive_fixture(
    slurm_cluster: SlurmCluster, request: pytest.FixtureRequest
) -> Iterator[SlurmTest]:
    """The cluster with no other test but patient ones: it may stop and restart slurmctld."""
    with _test(slurm_cluster, request, _CONTROLLER) as test:
        yield test


@pytest.fixture(name="slurm_node_exclusive")
def slurm_node_exclusive_fixture(
    slurm_cluster: SlurmCluster, request: pytest.FixtureRequest
) -> Iterator[SlurmTest]:
    """The cluster alone: it may also set the node down (which kills every job on it)."""
    with _test(slurm_cluster, request, _NODE) as test:
        yield test
