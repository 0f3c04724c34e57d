"""Run every benchmark module in bench/ that has a ``main()``, or those named in argv."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent


def discover() -> dict[str, Callable[[], object]]:
    """Module name -> its ``main``, for every public module in bench/ that defines one."""
    found: dict[str, Callable[[], object]] = {}
    for info in sorted(pkgutil.iter_modules([str(HERE)]), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"bench.{info.name}")
        main = getattr(module, "main", None)
        if callable(main):
            found[info.name] = main
    return found


def main(argv: list[str] | None = None) -> int:
    names = sys.argv[1:] if argv is None else argv
    if any(n in ("-h", "--help") for n in names):
        print("usage: python -m bench [NAME ...]   (no names: run every benchmark)")
        return 0
    available = discover()
    unknown = [n for n in names if n not in available]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(available)}")
        return 2
    for name in names or list(available):
        print(f"== bench.{name} ==", flush=True)
        start = time.perf_counter()
        available[name]()
        print(f"== bench.{name}: {time.perf_counter() - start:.1f} s ==\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
