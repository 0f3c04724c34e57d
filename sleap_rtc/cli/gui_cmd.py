"""``sleap-rtc gui [labels.slp]``: SLEAP 1.6.6 with Run Remotely in its training dialog."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "gui",
        help="open SLEAP with Run Remotely in its training dialog",
        description="Start SLEAP's own GUI (the gui extra: pip install 'sleap-rtc[gui]') with "
        "a Run Remotely… button in every training dialog. Room and worker are chosen in "
        "the dialog's remote panel (defaults: client.toml).",
    )
    parser.add_argument("labels", nargs="?", help="a labels file (.slp) to open")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from sleap_rtc.gui.launch import main

    return main([args.labels] if args.labels else [])
