#!/usr/bin/env python3
"""A stand-in for ``sleap-nn train`` that speaks sleap-nn's exact ZMQ shapes, fast.

Same CLI shape: ``fake_sleap_nn.py train --config CFG.yaml [--video-path-map OLD NEW]...
[--prefix-map OLD NEW]... [++key=value overrides]``. It connects a PUB to
``trainer_config.zmq.publish_port`` and a SUB to ``controller_port`` on 127.0.0.1,
publishes ``{"what", "event", "logs", ...}`` JSON like sleap-nn's ProgressReporterZMQ,
obeys ``{"command": "stop"}`` after the current batch, and writes ``best.ckpt`` and
``argv.json`` into ``<ckpt_dir>/<run_name>``.

Behaviour comes from the config's ``fake:`` section (or the FAKE_MODE environment
variable): ``mode`` = ok | exit_now | exit0 | fail | hang | child_hang; ``epochs``,
``batches``, ``batch_sleep`` (seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml
import zmq


def parse_overrides(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, _, value = item.lstrip("+").partition("=")
        value = value.strip()
        if value.startswith("[") and value.endswith("]"):
            value = value[1:-1]
        if len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1].replace("\\'", "'")
        out[key] = value
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command")
    parser.add_argument("--config", required=True)
    parser.add_argument("--video-path-map", nargs=2, action="append", default=[])
    parser.add_argument("--prefix-map", nargs=2, action="append", default=[])
    args, rest = parser.parse_known_args()
    args.overrides = rest
    if args.video_path_map and args.prefix_map:
        print("Cannot use multiple path replacement options.", file=sys.stderr)
        return 2
    cfg = yaml.safe_load(Path(args.config).read_text()) or {}
    fake = cfg.get("fake") or {}
    mode = os.environ.get("FAKE_MODE") or fake.get("mode", "ok")
    ov = parse_overrides(args.overrides)
    print(f"fake trainer starting, mode={mode}", flush=True)
    if mode == "exit_now":
        print("Error: something is wrong with the config", file=sys.stderr, flush=True)
        return 3
    if mode == "exit0":
        return 0
    if mode == "hang":
        time.sleep(600)
        return 0
    run_dir = Path(ov["trainer_config.ckpt_dir"]) / ov["trainer_config.run_name"]
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "argv": sys.argv,
        "overrides": ov,
        "video_path_map": args.video_path_map,
        "prefix_map": args.prefix_map,
        "pid": os.getpid(),
        "pgid": os.getpgid(0),
    }
    if mode == "child_hang":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        record["child_pid"] = child.pid
    (run_dir / "argv.json").write_text(json.dumps(record))
    ctx = zmq.Context()
    # An XPUB is a PUB that also hears subscriptions: what it publishes before the
    # worker's SUB has subscribed is dropped (the slow joiner), so wait for that
    # subscription instead of sleeping a while and hoping. A stop sent before our SUB
    # joined is lost; the worker repeats it.
    pub = ctx.socket(zmq.XPUB)
    pub.connect(f"tcp://127.0.0.1:{ov['trainer_config.zmq.publish_port']}")
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://127.0.0.1:{ov['trainer_config.zmq.controller_port']}")
    if pub.poll(10_000, zmq.POLLIN):
        pub.recv()  # b"\x01": the worker subscribed

    def send(event: str, logs: dict | None = None, **kw: object) -> None:
        pub.send_string(json.dumps(dict(what="", event=event, logs=logs, **kw)))

    def stop_asked() -> bool:
        while sub.poll(0, zmq.POLLIN):
            if json.loads(sub.recv_string()).get("command") == "stop":
                return True
        return False

    epochs = int(ov.get("trainer_config.max_epochs", fake.get("epochs", 2)))
    batches = int(fake.get("batches", 3))
    batch_sleep = float(fake.get("batch_sleep", 0.01))
    if mode == "child_hang":
        epochs, batches, batch_sleep = 1000, 1000, 0.05
    send("train_begin", wandb_url=None)
    stopped = False
    loss = 1.0
    for epoch in range(epochs):
        send("epoch_begin", epoch=epoch)
        for batch in range(batches):
            send("batch_start", batch=batch)
            time.sleep(batch_sleep)
            loss *= 0.9
            print(f"epoch {epoch} batch {batch} loss {loss:.4f}", flush=True)
            send("batch_end", epoch=epoch, batch=batch, logs={"loss": loss, "lr": 1e-4})
            if stop_asked():
                stopped = True
                break
        send("epoch_end", epoch=epoch, logs={"train/loss": loss * 1.1, "val/loss": loss})
        if stopped:
            break
        if mode == "fail":
            print(
                "Traceback (most recent call last):\nRuntimeError: CUDA out of memory",
                file=sys.stderr,
                flush=True,
            )
            return 1
    (run_dir / "best.ckpt").write_bytes(b"checkpoint")
    (run_dir / "training_config.yaml").write_text(Path(args.config).read_text())
    send("train_end")
    pub.close(linger=1000)  # ctx.term() below waits until what is queued has been sent
    sub.close(linger=0)
    ctx.term()
    print("done" + (" (stopped early)" if stopped else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
