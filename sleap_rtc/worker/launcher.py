"""The trainer's launcher: confine this process with Landlock, check the files, exec the trainer.

``python -I -m sleap_rtc.worker.launcher LAUNCH.json -- TRAINER ARGS...``

Landlock binds only the calling thread (and what it execs), so the worker
does not confine itself; this small process applies the ruleset the worker
wrote into ``LAUNCH.json`` and a seccomp filter that denies Unix-domain and
UDP sockets and ``listen()`` (what Landlock ABI 7 leaves open), checks that
every file the path check covered is still the same file (device, inode,
size, mtime, no link on the way), and then ``exec``s the trainer, which
inherits the confinement. Exit status 126 (with a line on stderr) when
confinement was required but is unavailable, or a checked file changed.

:class:`LaunchPolicy` is the worker's half: it builds the allow-list (see the
README's "Confinement"), a private temp folder, a scrubbed environment and
the launcher's command line for one run.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from sleap_rtc.worker import confine

#: Exit status of a launch refused before the trainer ran.
REFUSED = 126

#: System files the trainer reads (measured with sleap-nn 0.3.5; ../REFERENCE.md).
SYSTEM_READ_FILES = (
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/proc/cpuinfo",  # without it torch silently uses generic CPU kernels (~30% slower)
    "/proc/stat",
    "/proc/meminfo",
    "/dev/urandom",  # else `import torch` aborts
)
SYSTEM_READ_DIRS = ("/sys/devices/system/cpu", "/sys/fs/cgroup")
SYSTEM_EXEC_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin")
#: GPU device files and folders (added when present; see the README).
GPU_DEVICE_GLOBS = ("nvidiactl", "nvidia[0-9]*", "nvidia-uvm*", "nvidia-modeset")
GPU_READ_DIRS = (
    "/proc/driver/nvidia",
    "/sys/bus/pci/devices",
    "/sys/devices/system/node",
    "/sys/module/nvidia",
)
#: Environment variables passed through from the worker (none carries a secret).
PASS_ENV = ("LANG", "LC_ALL", "TZ", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")


class ConfinementRequired(ValueError):
    """The operator requires confinement and this host cannot provide it."""


class Mode(StrEnum):
    """``[trainer] confinement``: off, auto (confine when the kernel allows) or require."""

    OFF = "off"
    AUTO = "auto"
    REQUIRE = "require"


@dataclass
class Launch:
    """One prepared launch: the command, its environment and the private temp to remove."""

    argv: list[str]
    env: dict[str, str]
    temp_dir: Path
    note: str

    def cleanup(self) -> None:
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@dataclass(frozen=True)
class LaunchPolicy:
    """How the worker starts trainers.

    Attributes:
        mode: :class:`Mode`.
        availability: what the kernel offers (:func:`.confine.probe`, at start-up).
        temp_root: folder (outside the mounts) for each run's private temp.
        mounts: the mount roots (read-only for the trainer).
        allow_reporting: the operator allows reporting services (wandb).
        extra_read: more read-only paths the operator allows.
        extra_env: the operator's trainer environment.
    """

    mode: Mode
    availability: confine.Availability
    temp_root: Path
    mounts: tuple[str, ...]
    allow_reporting: bool = False
    extra_read: tuple[str, ...] = ()
    extra_env: Mapping[str, str] = field(default_factory=dict)

    @property
    def confines(self) -> bool:
        return self.mode is not Mode.OFF and self.availability.available

    def prepare(
        self,
        command: Sequence[str],
        argv: Sequence[str],
        *,
        run_dir: Path,
        config_file: Path,
        manifest: Sequence[Sequence[Any]] = (),
        publish_port: int,
        controller_port: int,
    ) -> Launch:
        """The launch of ``argv`` (``command`` is the trainer prefix within it).

        Raises:
            OSError: the private temp folder cannot be made.
        """
        self.temp_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        temp = self.temp_root / f"run-{secrets.token_hex(6)}"
        temp.mkdir(mode=0o700)
        try:
            return self._prepare(
                temp, command, argv, run_dir, config_file, manifest, publish_port, controller_port
            )
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise

    def _prepare(
        self,
        temp: Path,
        command: Sequence[str],
        argv: Sequence[str],
        run_dir: Path,
        config_file: Path,
        manifest: Sequence[Sequence[Any]],
        publish_port: int,
        controller_port: int,
    ) -> Launch:
        # The trainer's --config sits alone in a folder of its own: Hydra's config
        # folder then holds nothing else to find.
        (temp / "config").mkdir()
        config_copy = temp / "config" / config_file.name
        shutil.copyfile(config_file, config_copy)
        args = list(argv)
        if "--config" in args:
            args[args.index("--config") + 1] = str(config_copy)
        program = shutil.which(args[0]) or args[0]
        args[0] = os.path.abspath(program)  # not realpath: a venv's python is a link
        env = self._env(temp)
        if self.mode is Mode.OFF:
            return Launch(args, env, temp, "confinement off (operator setting)")
        rules = self.rules(command, temp, run_dir, config_copy, publish_port, controller_port)
        spec = {
            "require": self.mode is Mode.REQUIRE,
            "paths": rules.paths,
            "ports": rules.connect_ports,
            "manifest": [list(m) for m in manifest],
        }
        spec_file = temp / "launch.json"
        spec_file.write_text(json.dumps(spec))
        launcher = [sys.executable, "-I", "-m", "sleap_rtc.worker.launcher", str(spec_file), "--"]
        sockets = " + seccomp socket filter" if confine.socket_filter_supported() else ""
        note = (
            f"confined by {self.availability.describe()}{sockets}"
            if self.availability.available
            else f"NOT confined: {self.availability.describe()}"
        )
        return Launch([*launcher, *args], env, temp, note)

    def _env(self, temp: Path) -> dict[str, str]:
        home = temp / "home"
        cache = temp / "cache"
        for folder in (home, cache, temp / "tmp"):
            folder.mkdir(mode=0o700)
        bindir = str(Path(sys.executable).parent)
        env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
        env.update(
            PATH=f"{bindir}:/usr/local/bin:/usr/bin:/bin",
            HOME=str(home),
            TMPDIR=str(temp / "tmp"),
            MPLCONFIGDIR=str(cache / "matplotlib"),
            XDG_CACHE_HOME=str(cache),
            XDG_CONFIG_HOME=str(home / ".config"),
            TORCH_HOME=str(cache / "torch"),
            CUDA_CACHE_PATH=str(cache / "cuda"),
            TRITON_CACHE_DIR=str(cache / "triton"),
            PYTHONUNBUFFERED="1",
            PYTHONNOUSERSITE="1",
        )
        env.update(self.extra_env)
        if not self.allow_reporting:
            env["WANDB_MODE"] = "disabled"
            env["WANDB_DISABLED"] = "true"
        return env

    def rules(
        self,
        command: Sequence[str],
        temp: Path,
        run_dir: Path,
        config_copy: Path,
        publish_port: int,
        controller_port: int,
    ) -> confine.Rules:
        """The allow-list of one run (see the README's "Confinement")."""
        rules = confine.Rules()
        rules.allow(
            dict.fromkeys([sys.prefix, sys.base_prefix, *SYSTEM_EXEC_DIRS]), confine.READ_EXEC
        )
        # The operator's trainer program and script, with their folders (a script may
        # import its neighbours).
        programs = [os.path.realpath(p) for p in command if os.path.isfile(p)]
        if command and not os.path.isfile(command[0]) and (found := shutil.which(command[0])):
            programs.append(os.path.realpath(found))
        rules.allow(dict.fromkeys(os.path.dirname(p) for p in programs), confine.READ_EXEC)
        rules.allow(SYSTEM_READ_FILES, confine.READ)
        rules.allow(SYSTEM_READ_DIRS, confine.READ)
        rules.allow(self.mounts, confine.READ)
        rules.allow(self.extra_read, confine.READ)
        rules.allow(["/dev/null"], confine.DEVICE)
        if _uses_worker_processes(config_copy):
            rules.allow(["/dev/shm"], confine.READ_WRITE)  # DataLoader workers share memory
        rules.allow([str(run_dir), str(temp)], confine.READ_WRITE)
        gpus = sorted(
            str(p) for pattern in GPU_DEVICE_GLOBS for p in Path("/dev").glob(pattern)
        ) + sorted(str(p) for p in Path("/dev/nvidia-caps").glob("*"))
        if gpus:
            rules.allow(gpus, confine.DEVICE)
            rules.allow(GPU_READ_DIRS, confine.READ)
            rules.allow([str(p) for p in Path("/sys/devices").glob("pci*")], confine.READ)
        rules.connect_ports.extend([int(publish_port), int(controller_port)])
        return rules


def _uses_worker_processes(config: Path) -> bool:
    """Whether the (canonical) config asks for DataLoader worker processes."""
    import yaml

    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        trainer = data.get("trainer_config") or {}
        counts = [
            (trainer.get(k) or {}).get("num_workers", 0)
            for k in ("train_data_loader", "val_data_loader")
        ]
    except (OSError, yaml.YAMLError, AttributeError):
        return True
    return any(not isinstance(c, int) or c > 0 for c in counts)


# --- the launcher process ----------------------------------------------------------


def _refuse(message: str) -> int:
    print(f"sleap-rtc launcher: {message}", file=sys.stderr, flush=True)
    return REFUSED


def check_manifest(manifest: Sequence[Sequence[Any]]) -> str | None:
    """None when every ``[path, dev, inode, size, mtime_ns]`` is the same file, else why."""
    for path, dev, inode, size, mtime_ns in manifest:
        try:
            st = os.lstat(path)
        except OSError as exc:
            return f"{path} cannot be examined since the check: {exc.strerror or exc}"
        if stat.S_ISLNK(st.st_mode) or os.path.realpath(path) != path:
            return f"{path} is now reached through a link; refused"
        if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != (dev, inode, size, mtime_ns):
            return f"{path} changed since the path check; refused"
    return None


def _second_layer() -> None:
    """The seccomp socket filter (Unix sockets, UDP, listen), where the host allows it."""
    try:
        confine.restrict_sockets()
    except confine.ConfinementError as exc:
        print(f"sleap-rtc launcher: no socket filter: {exc}", file=sys.stderr, flush=True)


def main(args: Sequence[str]) -> int:
    """Confine, check, exec. Returns only on refusal."""
    if len(args) < 3 or args[1] != "--":
        return _refuse("usage: launcher LAUNCH.json -- TRAINER [ARGS...]")
    try:
        spec = json.loads(Path(args[0]).read_text())
    except (OSError, ValueError) as exc:
        return _refuse(f"cannot read the launch file: {exc}")
    trainer = list(args[2:])
    found = confine.probe()
    if found.available:
        rules = confine.Rules([(str(p), int(r)) for p, r in spec["paths"]], list(spec["ports"]))
        try:
            confine.restrict(rules, found.abi)
        except confine.ConfinementError as exc:
            if spec.get("require"):
                return _refuse(f"confinement required but it failed: {exc}")
            print(f"sleap-rtc launcher: running unconfined: {exc}", file=sys.stderr)
        else:
            _second_layer()
    elif spec.get("require"):
        return _refuse(f"confinement required but {found.describe()}")
    else:
        print(f"sleap-rtc launcher: running unconfined: {found.describe()}", file=sys.stderr)
    reason = check_manifest(spec.get("manifest") or [])
    if reason is not None:
        return _refuse(reason)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(trainer[0], trainer)
    except OSError as exc:
        return _refuse(f"could not start the trainer {trainer[0]!r}: {exc.strerror or exc}")
    return REFUSED  # pragma: no cover - execv does not return


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
