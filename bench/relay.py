"""The Slurm relay hop: what carrying progress through the relay costs per message.

The same stand-in trainer (tests/support/fake_sleap_nn.py: sleap-nn's ZMQ shapes, one
output line per batch) runs twice per size, confined the same way:

1. direct: :class:`~sleap_rtc.worker.trainer.TrainerRun` in this process, as the local
   backend runs it;
2. relayed: ``python -m sleap_rtc.worker.relay`` (a real process, which runs the same
   TrainerRun) forwarding over CURVE to a :class:`~sleap_rtc.worker.relayhub.RelayHub`
   in this process, until its Result is delivered.

Each at a small size and at ~20,000 progress messages; the per-message cost of the hop
is the difference of the two slopes, so process start-up (the relay's own Python) is
not counted in it, and is reported on its own.

Run: ``python -m bench.relay`` (or ``python -m bench relay``).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq.asyncio

from sleap_rtc.worker import confine
from sleap_rtc.worker.launcher import LaunchPolicy, Mode
from sleap_rtc.worker.relayhub import RelayHub
from sleap_rtc.worker.relaywire import Progress, RelayMessage, RelaySpec, Result, write_spec
from sleap_rtc.worker.trainer import RunLimits, TrainerRun
from sleap_rtc.worker.trainplan import TrainPlan
from sleap_rtc.worker.zmqprogress import ProgressUpdate

FAKE = Path(__file__).resolve().parent.parent / "tests" / "support" / "fake_sleap_nn.py"
COMMAND = (sys.executable, str(FAKE), "train")
SMALL_BATCHES = 50
#: 2 progress messages per batch, plus 4: ~20,000 messages.
LARGE_BATCHES = 9_998
REPEATS = 3
LIMITS = RunLimits(no_progress_timeout_s=120.0)
#: The bar: the hop costs at most this much per message (the trainer sends ~1 per batch).
PER_MESSAGE_BAR_S = 200e-6


def _plan(root: Path, name: str, batches: int) -> TrainPlan:
    folder = root / name
    (folder / "ckpt" / "run").mkdir(parents=True)
    config = folder / "config.yaml"
    fake = {"epochs": 1, "batches": batches, "batch_sleep": 0}
    config.write_text(json.dumps({"model_config": {}, "fake": fake}))
    return TrainPlan(config, "/data/labels.slp", folder / "ckpt", "run")


def _policy(root: Path) -> LaunchPolicy:
    return LaunchPolicy(Mode.AUTO, confine.probe(), root / "tmp", mounts=(str(root),))


class _Count:
    def __init__(self) -> None:
        self.progress = 0

    def progress_(self, update: ProgressUpdate) -> None:
        self.progress += 1

    def log(self, stream: int, lines: list[str]) -> None:
        pass


async def _direct(root: Path, name: str, batches: int) -> tuple[float, int]:
    ctx = zmq.asyncio.Context()
    count = _Count()

    class Sink:
        progress = staticmethod(count.progress_)
        log = staticmethod(count.log)

    try:
        start = time.perf_counter()
        run = TrainerRun(
            COMMAND,
            _plan(root, name, batches),
            Sink(),
            context=ctx,
            limits=LIMITS,
            sandbox=_policy(root),
        )
        result = await run.run()
        assert result.completed, result.message
        return time.perf_counter() - start, count.progress
    finally:
        ctx.destroy(linger=0)


async def _relayed(root: Path, name: str, batches: int) -> tuple[float, int]:
    ctx = zmq.asyncio.Context()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hub = RelayHub(
        ctx, listen=f"127.0.0.1:{port}", advertise=f"127.0.0.1:{port}", key_dir=root / "keys"
    )
    await hub.start()
    done = asyncio.Event()
    seen = {"progress": 0}

    def on_message(msg: RelayMessage) -> None:
        if isinstance(msg, Progress):
            seen["progress"] += 1
        elif isinstance(msg, Result):
            done.set()

    try:
        plan = _plan(root, name, batches)
        public, secret = hub.new_keys()
        folder = root / name / "relay"
        write_spec(
            folder,
            RelaySpec(
                job_id=name,
                endpoint=hub.endpoint,
                server_key=hub.server_key,
                client_public=public,
                client_secret=secret,
                trainer_command=COMMAND,
                plan=plan,
                confinement="auto",
                mounts=(str(root),),
                limits=LIMITS,
            ),
        )
        hub.register(name, public, on_message)
        start = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sleap_rtc.worker.relay",
            str(folder),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ},
        )
        await asyncio.wait_for(done.wait(), 300)
        elapsed = time.perf_counter() - start
        await asyncio.wait_for(proc.wait(), 60)
        return elapsed, seen["progress"]
    finally:
        await hub.close()
        ctx.destroy(linger=0)


async def _measure(root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, fn in (("direct", _direct), ("relayed", _relayed)):
        for size, batches in (("small", SMALL_BATCHES), ("large", LARGE_BATCHES)):
            times, counts = [], set()
            for i in range(REPEATS):
                elapsed, count = await fn(root, f"{kind}-{size}-{i}", batches)
                times.append(elapsed)
                counts.add(count)
            out[f"{kind}_{size}_s"] = statistics.median(times)
            out[f"{kind}_{size}_messages"] = max(counts)
            out[f"{kind}_{size}_all_arrived"] = len(counts) == 1
    n = out["direct_large_messages"] - out["direct_small_messages"]
    direct_slope = (out["direct_large_s"] - out["direct_small_s"]) / n
    relay_slope = (out["relayed_large_s"] - out["relayed_small_s"]) / n
    out["per_message_direct_s"] = direct_slope
    out["per_message_relayed_s"] = relay_slope
    out["per_message_hop_s"] = relay_slope - direct_slope
    out["startup_hop_s"] = out["relayed_small_s"] - out["direct_small_s"]
    out["relayed_rate_per_s"] = out["relayed_large_messages"] / out["relayed_large_s"]
    return out


def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        res = asyncio.run(_measure(Path(tmp)))
    lost = res["direct_large_messages"] - res["relayed_large_messages"]
    ok = res["per_message_hop_s"] <= PER_MESSAGE_BAR_S and lost == 0
    print(
        f"[relay] stand-in trainer, confined ({confine.probe().describe()}), "
        f"{res['direct_large_messages']:,} progress messages, median of {REPEATS}"
    )
    print(
        f"  direct TrainerRun: {res['direct_large_s']:.2f} s "
        f"({res['per_message_direct_s'] * 1e6:.1f} us/message beyond start-up)"
    )
    print(
        f"  through the relay: {res['relayed_large_s']:.2f} s "
        f"({res['per_message_relayed_s'] * 1e6:.1f} us/message), "
        f"{res['relayed_rate_per_s']:,.0f} messages/s, {lost} missing"
    )
    print(
        f"  the hop: {res['per_message_hop_s'] * 1e6:.1f} us/message "
        f"(bar {PER_MESSAGE_BAR_S * 1e6:.0f} us: {'ok' if ok else 'MISSED'}); "
        f"start-up {res['startup_hop_s'] * 1e3:.0f} ms (the relay's own Python)"
    )
    return res


if __name__ == "__main__":
    main()
