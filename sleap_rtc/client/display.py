"""A terminal progress display for the CLI (a progress sink, rich).

>>> import io
>>> from rich.console import Console
>>> from sleap_rtc.client.events import ProgressReceived
>>> from sleap_rtc_proto.v1 import progress_pb2 as p
>>> out = io.StringIO()
>>> display = TerminalProgress(console=Console(file=out, width=100, color_system=None))
>>> display.handle(ProgressReceived(progress=p.JobProgress(
...     event=p.PROGRESS_EVENT_EPOCH_END, epoch=0,
...     metrics={"val/loss": 0.25, "train/loss": 0.5, "lr-Adam": 1e-4, "val/mAP": 0.7})))
>>> print(out.getvalue().strip())
epoch 1: train/loss 0.5000  val/loss 0.2500  lr-Adam 0.0001

By default only the losses and the learning rate are shown; ``verbose=True``
shows every metric the trainer reports. sleap-nn reports ``train/loss`` one epoch
late (its first ``epoch_end`` has only ``val/loss``), so the first epoch line
without it says so, once.

When stdout is not a terminal (a log file, CI, a pipe), :func:`plain_console`
neither wraps lines nor cuts table cells: paths stay whole.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TextIO

from rich.console import Console
from rich.markup import escape

from sleap_rtc.client.events import (
    Event,
    JobCompleted,
    JobFailedEvent,
    LogReceived,
    ProgressReceived,
)
from sleap_rtc_proto.v1 import progress_pb2

#: Width of a console that is not a terminal: wide enough that no table cell is cut.
UNBOUNDED_WIDTH = 100_000

#: Said once, on the first epoch line that has ``val/loss`` but no ``train/loss``.
TRAIN_LOSS_LAG_NOTE = "(train/loss is reported from epoch 2 on: sleap-nn sends it one epoch late)"


def plain_console(file: TextIO | None = None) -> Console:
    """A rich console for ``file`` (stdout): as usual on a terminal; otherwise one
    that never wraps a line nor cuts a table cell with "…" (logs keep whole paths).

    >>> import io
    >>> out = io.StringIO()
    >>> plain_console(out).print("x" * 300)
    >>> len(out.getvalue().strip())
    300
    """
    stream = file if file is not None else sys.stdout
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return Console(file=file)
    return Console(file=stream, width=UNBOUNDED_WIDTH, soft_wrap=True, color_system=None)


#: Loss names shown by default, in this order (sleap-nn's and LossViewer's).
_LOSSES = ("loss", "train/loss", "train_loss", "val/loss", "val_loss")


def _rank(name: str) -> int | None:
    """Where a metric goes in the default line (None: only shown when verbose)."""
    if name in _LOSSES:
        return _LOSSES.index(name)
    last = name.lower().rsplit("/", 1)[-1]
    if last in ("lr", "learning_rate") or last.startswith(("lr-", "lr_", "learning_rate")):
        return len(_LOSSES)
    return None


def format_metrics(metrics: Mapping[str, float], *, verbose: bool = False) -> str:
    """``name value`` pairs: the losses, then the learning rate; with ``verbose``
    every other metric after them (by name).

    >>> format_metrics({"val/mAP": 0.5, "val/loss": 0.25, "train/loss": 0.5, "lr": 3e-05})
    'train/loss 0.5000  val/loss 0.2500  lr 3e-05'
    >>> format_metrics({"val/mAP": 0.5, "val/loss": 0.25}, verbose=True)
    'val/loss 0.2500  val/mAP 0.5000'
    """
    ranked = [(_rank(name), name) for name in metrics]
    shown = sorted(
        ((len(_LOSSES) + 1 if rank is None else rank, name) for rank, name in ranked
         if verbose or rank is not None),
    )
    return "  ".join(f"{name} {_number(metrics[name])}" for _, name in shown)


def _number(value: float) -> str:
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
        return f"{value:.3g}"
    return f"{value:.4f}"


class TerminalProgress:
    """Prints training progress: one line per epoch, batch losses every ``batch_every``.

    Args:
        console: where to print (default stdout).
        batch_every: print every n-th batch_end (0: never).
        show_logs: also print the trainer's output lines.
        max_epochs: shown as "epoch 3/10" when known.
        verbose: print every metric; by default only the losses (train/loss,
            val/loss, a batch's loss) and the learning rate.
    """

    def __init__(
        self,
        *,
        console: Console | None = None,
        batch_every: int = 0,
        show_logs: bool = False,
        max_epochs: int | None = None,
        verbose: bool = False,
    ) -> None:
        self.console = console or plain_console()
        self._lag_noted = False
        self.batch_every = batch_every
        self.show_logs = show_logs
        self.max_epochs = max_epochs
        self.verbose = verbose

    def _epoch(self, epoch: int) -> str:
        return f"{epoch + 1}/{self.max_epochs}" if self.max_epochs else str(epoch + 1)

    def handle(self, event: Event) -> None:
        c = self.console
        if isinstance(event, ProgressReceived):
            p = event.progress
            metrics = escape(format_metrics(p.metrics, verbose=self.verbose))
            if p.event == progress_pb2.PROGRESS_EVENT_TRAIN_BEGIN:
                c.print(f"Training started (job {escape(p.job_id)}).")
            elif p.event == progress_pb2.PROGRESS_EVENT_EPOCH_END:
                line = f"epoch {self._epoch(p.epoch)}: {metrics}".rstrip()
                lagged = "val/loss" in p.metrics and "train/loss" not in p.metrics
                if lagged and not self._lag_noted:
                    self._lag_noted = True
                    line += f"  {TRAIN_LOSS_LAG_NOTE}"
                c.print(line)
            elif (
                p.event == progress_pb2.PROGRESS_EVENT_BATCH_END
                and self.batch_every
                and p.batch % self.batch_every == 0
            ):
                c.print(f"  epoch {self._epoch(p.epoch)} batch {p.batch + 1}: {metrics}")
            elif p.event == progress_pb2.PROGRESS_EVENT_TRAIN_END:
                c.print("Training ended.")
        elif isinstance(event, LogReceived) and event.log.HasField("scheduler"):
            # The worker's batch scheduler moved the job (queued, running, ended).
            for line in event.log.lines:
                c.print(escape(line))
        elif isinstance(event, LogReceived) and self.show_logs:
            for line in event.log.lines:
                c.print(f"[dim]{escape(line)}[/]")
        elif isinstance(event, JobCompleted):
            done = event.complete
            how = "stopped early" if done.stopped_early else "finished"
            c.print(
                f"[green]Job {escape(done.job_id)} {how}[/] in {done.duration_seconds:.1f} s; "
                f"outputs in {escape(done.run_dir)}"
            )
        elif isinstance(event, JobFailedEvent):
            # Only the trainer's last lines: the failure itself is the command's one
            # error line (stderr), so it is not printed twice.
            tail = event.failed.log_tail[-20:]
            if tail:
                c.print(f"Job {escape(event.failed.job_id)}: the trainer's last output:")
            for line in tail:
                c.print(f"[dim]{escape(line)}[/]")
