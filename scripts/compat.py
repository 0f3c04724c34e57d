"""The compatibility gate: one command, run by CI (``make compat``).

1. ``buf lint`` and ``buf format --diff --exit-code`` on proto/.
2. Regenerate the bindings into a temporary folder and fail if they differ from
   the committed ``sleap_rtc_proto/v1`` files.
3. ``buf breaking`` against every baseline image in ``compat/baselines/``
   (every release, not just the latest: a change that is compatible with the
   last release but breaks an older one still fails).

Every check runs even when an earlier one fails; exits non-zero with the
failing tools' own messages. buf comes from the
``buf-bin`` wheel in the dev extra, installed next to this Python.
"""

from __future__ import annotations

import difflib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINES = ROOT / "compat" / "baselines"
BINDINGS = ROOT / "sleap_rtc_proto" / "v1"
MAX_DIFF_LINES = 40

sys.path.insert(0, str(ROOT / "scripts"))
import gen_proto  # noqa: E402


class GateFailure(Exception):
    """One check of the gate failed; the message says which and why."""


def find_buf() -> str:
    """The buf executable next to ``sys.executable`` (buf-bin), else on PATH."""
    here = Path(sys.executable).parent
    for name in ("buf", "buf.exe"):
        if (here / name).exists():
            return str(here / name)
    found = shutil.which("buf")
    if found is None:
        raise GateFailure("buf not found: install the dev extra (buf-bin) into this environment")
    return found


def run_buf(buf: str, *args: str) -> None:
    """Run buf in the repository root; its own output goes to the console."""
    print(f"$ buf {' '.join(args)}", flush=True)
    result = subprocess.run([buf, *args], cwd=ROOT)
    if result.returncode != 0:
        raise GateFailure(f"`buf {' '.join(args)}` failed (exit {result.returncode}); see above")


def check_lint_and_format(buf: str) -> None:
    run_buf(buf, "lint")
    run_buf(buf, "format", "--diff", "--exit-code")


def binding_files(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in [*sorted(folder.glob("*_pb2.py*")), folder / "__init__.py"]}


def check_bindings() -> None:
    """Regenerate into a temp dir and compare with the committed bindings."""
    print("$ regenerate bindings and compare with sleap_rtc_proto/v1", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        gen_proto.generate(Path(tmp))
        fresh = binding_files(Path(tmp) / gen_proto.PACKAGE)
        committed = binding_files(BINDINGS)
        problems: list[str] = []
        for name in sorted(set(fresh) | set(committed)):
            if name not in committed:
                problems.append(f"missing from the commit: sleap_rtc_proto/v1/{name}")
                continue
            if name not in fresh:
                problems.append(f"stale (no .proto generates it): sleap_rtc_proto/v1/{name}")
                continue
            old = committed[name].read_text().splitlines(keepends=True)
            new = fresh[name].read_text().splitlines(keepends=True)
            if old != new:
                diff = list(
                    difflib.unified_diff(old, new, f"committed/{name}", f"regenerated/{name}")
                )
                changed = sum(1 for line in diff if line[:1] in "+-") - 2
                problems.append(f"differs: sleap_rtc_proto/v1/{name} ({changed} lines changed)")
                sys.stdout.writelines(diff[:MAX_DIFF_LINES])
                if len(diff) > MAX_DIFF_LINES:
                    print(f"... ({len(diff) - MAX_DIFF_LINES} more diff lines)")
    if problems:
        for problem in problems:
            print(problem)
        raise GateFailure(
            "committed bindings are out of date: run `make proto` "
            "(python scripts/gen_proto.py) and commit the result"
        )


def check_breaking(buf: str) -> None:
    """``buf breaking`` against every committed baseline image."""
    baselines = sorted(BASELINES.glob("*.binpb"))
    if not baselines:
        raise GateFailure(f"no baseline images in {BASELINES.relative_to(ROOT)}")
    failed = []
    for image in baselines:
        try:
            run_buf(buf, "breaking", "--against", str(image.relative_to(ROOT)))
        except GateFailure:
            failed.append(image.name)
    if failed:
        raise GateFailure(f"breaking changes against baseline(s): {', '.join(failed)}")


def main() -> int:
    """Run every check (a failing one does not hide the others); 1 if any failed."""
    try:
        buf = find_buf()
    except GateFailure as exc:
        print(f"compat: FAILED: {exc}", file=sys.stderr)
        return 1
    failures: list[str] = []
    checks: list[Callable[[], None]] = [
        partial(check_lint_and_format, buf),
        check_bindings,
        partial(check_breaking, buf),
    ]
    for check in checks:
        try:
            check()
        except GateFailure as exc:
            failures.append(str(exc))
    if failures:
        for failure in failures:
            print(f"compat: FAILED: {failure}", file=sys.stderr)
        return 1
    print("compat: OK (lint, format, bindings, breaking against every baseline)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
