"""The tiny real training, local backend vs Slurm backend, in one process, alternating.

Run: ``python -m bench.slurm [ROUNDS]`` (default 2 rounds of each). Needs sleap-nn
(the train extra) and a running Slurm (``scripts/slurm.sh start``); prints why not
and returns otherwise. Each round trains the demo's dataset for 2 epochs on the CPU,
first with ``backend = "local"`` then with ``backend = "slurm"`` (the same worker
settings otherwise, confinement ``auto``), through the real WorkerService and the
client's WorkerConnection over an in-memory link. Figures: submit -> JobAccepted,
submit -> first JobProgress (for Slurm: sbatch, scheduling, the relay starting the
trainer, the first event through the relay hop), submit -> the job's end; the
medians of the rounds, and Slurm's minus local's (the cost of going through
Slurm, with the local backend as the same-process baseline). The per-message cost
of the relay hop alone is ``bench.relay``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sleap_rtc.client.connection import WorkerConnection
from sleap_rtc.client.events import JobCompleted, JobFailedEvent, ProgressReceived
from sleap_rtc.client.session import ClientSession
from sleap_rtc.config.worker import SlurmSettings
from sleap_rtc.demo import CLIENT_PREFIX, make_dataset, training_config_yaml
from sleap_rtc.transport.link import memory_link_pair
from sleap_rtc.worker.service import WorkerService
from sleap_rtc.worker.serviceconfig import WorkerConfig
from sleap_rtc.worker.trainer import RunLimits
from sleap_rtc_proto.v1 import job_pb2, spec_pb2

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm.sh"


@dataclass(frozen=True)
class Round:
    backend: str
    accepted_s: float
    first_progress_s: float
    total_s: float
    ok: bool


def _slurm_env() -> dict[str, str] | None:
    status = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True, text=True,
                            timeout=60, check=False)
    if status.returncode != 0:
        return None
    printed = subprocess.run(["bash", str(SCRIPT), "env"], capture_output=True, text=True,
                             timeout=60, check=False)
    found = dict(
        line.split("=", 1) for line in printed.stdout.splitlines() if "=" in line
    )
    return found if "SLURM_CONF" in found else None


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _one(root: Path, backend: str, env: dict[str, str], command: str, n: int) -> Round:
    data = make_dataset(root / f"{backend}-{n}", frames=16)
    port = _port()
    partition = env.get("SLEAP_RTC_SLURM_PARTITION", "debug")
    config = WorkerConfig(
        mounts=[data.share],
        state_dir=root / f"state-{backend}-{n}",
        verifier=None,
        trainer_command=(command, "train"),
        build_index=False,
        run_limits=RunLimits(no_progress_timeout_s=300, max_run_s=600),
        backend=backend,
        slurm=SlurmSettings(
            partition=partition,
            bin_dir=Path(env.get("SLEAP_RTC_SLURM_BIN", "/usr/bin")),
            listen=f"127.0.0.1:{port}",
            worker_address=f"127.0.0.1:{port}",
            poll_s=0.5,
        ),
        slurm_env=env,
    )
    service = WorkerService(config)
    await service.start()
    client_end, worker_end = memory_link_pair()
    serving = asyncio.create_task(service.serve(worker_end, peer_id="bench"))
    conn = WorkerConnection(client_end, ClientSession(client_name="bench"))
    try:
        await conn.hello(timeout_s=10)
        mapping = {CLIENT_PREFIX: str(data.project)}
        check = await conn.check_paths(
            str(data.labels_path), prefix_mappings=mapping, timeout_s=60
        )
        spec = spec_pb2.TrainJobSpec(
            labels_path=str(data.labels_path),
            config_content=training_config_yaml(str(data.labels_path), max_epochs=2),
            prefix_mappings=mapping,
            max_epochs=2,
        )
        job_id = f"bench-{backend}-{n}"
        started = time.perf_counter()
        answer = await conn.submit(job_id, spec, check_token=check.check_token, timeout_s=60)
        accepted = time.perf_counter() - started
        if not isinstance(answer, job_pb2.JobAccepted):
            raise RuntimeError(f"{backend}: not accepted: {answer}")
        first = 0.0
        ok = False
        async for event in conn.events(job_id, idle_timeout_s=600):
            if isinstance(event, ProgressReceived) and not first:
                first = time.perf_counter() - started
            if isinstance(event, JobCompleted | JobFailedEvent):
                ok = isinstance(event, JobCompleted)
        return Round(backend, accepted, first, time.perf_counter() - started, ok)
    finally:
        await conn.close()
        await service.close()
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    rounds = int(args[0]) if args and args[0].isdigit() else 2
    if importlib.util.find_spec("sleap_nn") is None:
        print("skipped: sleap-nn is not installed (the train extra)")
        return
    beside = Path(sys.executable).parent / "sleap-nn"
    command = str(beside) if beside.exists() else shutil.which("sleap-nn")
    if command is None:
        print("skipped: no sleap-nn command")
        return
    env = _slurm_env()
    if env is None:
        print("skipped: no Slurm answers (start one: scripts/slurm.sh start)")
        return
    os.environ.update(env)
    results: list[Round] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(rounds):
            for backend in ("local", "slurm"):
                result = asyncio.run(_one(Path(tmp), backend, env, command, n))
                results.append(result)
                print(
                    f"  round {n + 1} {backend:5}: accepted {result.accepted_s * 1000:7.1f} ms,"
                    f" first progress {result.first_progress_s:6.2f} s,"
                    f" end {result.total_s:6.2f} s{'' if result.ok else '  (FAILED)'}",
                    flush=True,
                )
    print(f"tiny real training (2 epochs, CPU), median of {rounds} alternating rounds:")
    median: dict[str, tuple[float, float, float]] = {}
    for backend in ("local", "slurm"):
        mine = [r for r in results if r.backend == backend]
        median[backend] = (
            statistics.median(r.accepted_s for r in mine),
            statistics.median(r.first_progress_s for r in mine),
            statistics.median(r.total_s for r in mine),
        )
        a, f, t = median[backend]
        print(f"  {backend:5}: submit->accepted {a * 1000:7.1f} ms, "
              f"submit->first progress {f:6.2f} s, submit->end {t:6.2f} s")
    (la, lf, lt), (sa, sf, st) = median["local"], median["slurm"]
    print(f"  slurm - local: accepted {(sa - la) * 1000:+.1f} ms, "
          f"first progress {sf - lf:+.2f} s, end {st - lt:+.2f} s "
          f"(x{st / lt:.2f} of local's total)")
    print("  (the first round's local submit also pays the one-time import of sleap-nn's "
          "config schema)")


if __name__ == "__main__":
    main()
